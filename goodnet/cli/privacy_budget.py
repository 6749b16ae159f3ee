"""``goodnet privacy-budget``: the (epsilon, delta) privacy budget of a DP-SGD run, from an RDP accountant.

    goodnet privacy-budget --examples 60000 --batch-size 256 --noise-multiplier 1.1 --epochs 60 --delta 1e-5
    goodnet privacy-budget --examples 60000 --epochs 60 --target-epsilon 3

Prints the number of steps (``ceil(epochs * N / B)``), the Poisson sampling
rate ``q = B / N`` and epsilon at ``--delta`` under two conversions of the
same Renyi-DP accounting of the Poisson-subsampled Gaussian mechanism: the
classic one (Mironov 2017; goodnet's own RDP) and dp-accounting's tighter one,
each with the order that gives it. ``--target-epsilon`` prints instead the
smallest noise multiplier that keeps epsilon within the budget under each
conversion. The flags are the fields of :class:`goodnet.privacy.PrivacyOptions`.
"""

import math

from goodnet.cli import CommandError, print_json

# Pure NumPy/SciPy accounting: no TensorFlow needed.
NEEDS_TENSORFLOW = False

HELP = "DP-SGD privacy budget: epsilon at delta from an RDP accountant (classic and dp-accounting's conversions)"


def add_arguments(parser):
    from goodnet.cli.options import add_options
    from goodnet.privacy import PrivacyOptions

    add_options(parser, PrivacyOptions)   # every accounting option: its flag, default, rule and help
    parser.add_argument("--target-epsilon", type=float, default=None, metavar="EPSILON",
                        help="print the smallest noise multiplier whose epsilon is at most this budget, under each "
                             "conversion (--noise-multiplier is then only the search's start)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args):
    from goodnet.cli.options import options_from_args
    from goodnet.errors import OptionError
    from goodnet.privacy import CONVERSIONS, PrivacyOptions, noise_for_epsilon, privacy_budget, \
        validate_privacy_options

    options = validate_privacy_options(options_from_args(args, PrivacyOptions), flags=True)
    target = args.target_epsilon
    if target is not None and not (target > 0 and math.isfinite(target)):
        raise CommandError(f"--target-epsilon: expected a number > 0, got {target:g}")
    budget = privacy_budget(options)
    report = budget.to_dict()
    if target is not None:
        found = {}
        for conversion in CONVERSIONS:
            try:
                found[conversion] = noise_for_epsilon(target, options, conversion)
            except OptionError as error:   # the target cannot be reached within the noise range searched
                raise CommandError(f"--target-epsilon: {str(error).split(': ', 1)[1]}") from None
        kept = {key: value for key, value in report.items() if key not in ("noise_multiplier", "classic", "tight",
                                                                           "warnings")}
        report = {**kept, "target_epsilon": target, **{name: found[name].to_dict() for name in CONVERSIONS},
                  "warnings": budget.setting_warnings() + [note for name in CONVERSIONS
                                                           for note in found[name].edge_warnings(options.orders)]}
    if args.json:
        print_json(report)
    else:
        print("\n".join(_lines(report, options)))
    return 0


def _lines(report, options):
    """The text report: the setting, steps and q, then epsilon (or the noise multiplier) under each conversion."""
    from goodnet.privacy import CONVERSIONS, LABELS

    width = max(len(label) for label in LABELS.values()) + 1
    setting = (f"examples N {report['examples']}, batch size B {report['batch_size']}, epochs {report['epochs']:g}, "
               f"delta {report['delta']:g}")
    lines = ["DP-SGD privacy budget (RDP accountant, Poisson-subsampled Gaussian, add-or-remove-one neighbours)"]
    if "target_epsilon" not in report:
        setting = setting.replace(", epochs", f", noise multiplier {report['noise_multiplier']:g}, epochs")
    lines += [f"  {setting}",
              f"  steps: {report['steps']} (ceil({report['epochs']:g} * {report['examples']} / "
              f"{report['batch_size']}))",
              f"  sampling probability q: {report['sampling_probability']:.6g} ({report['batch_size']} / "
              f"{report['examples']})",
              f"  orders searched: {report['orders']} ({min(options.orders):g} to {max(options.orders):g})"]
    if "target_epsilon" in report:
        lines.append(f"Noise multiplier for epsilon <= {report['target_epsilon']:g} at delta {report['delta']:g}:")
        for name in CONVERSIONS:
            entry = report[name]
            noise = math.ceil(entry["noise_multiplier"] * 1e5) / 1e5   # rounded up: still within the budget
            lines.append(f"  {(LABELS[name] + ':').ljust(width)} {noise:.5f}  (epsilon {entry['epsilon']:.4f}, "
                         f"best order {entry['order']:g})")
    else:
        lines.append(f"Epsilon at delta {report['delta']:g}:")
        for name in CONVERSIONS:
            entry = report[name]
            lines.append(f"  {(LABELS[name] + ':').ljust(width)} {entry['epsilon']:.4f}  "
                         f"(best order {entry['order']:g})")
    lines += [f"Note: {note}" for note in report["warnings"]]
    return lines
