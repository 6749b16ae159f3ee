"""``goodnet demo``: build the built-in benchmark and BadNet on first use, then run every defense.

    goodnet demo [--dataset digits|faces] [--pruning-aware] [--data-loop] [--json]

The flags, defaults and help come from :class:`goodnet.demo.DemoOptions`
(``--sizes TRAIN VALID TEST`` is its ``sizes`` dict, ``--out`` its ``out_dir``).
"""

from goodnet.cli import positive, prepare_out_dir, print_json
from goodnet.cli.options import add_options, options_from_args

HELP = "run every defense on the built-in benchmark and BadNet (built on first use under data/ and models/)"

PLACES = ("data_dir", "models_dir", "out_dir")


def add_arguments(parser):
    from goodnet.demo import DemoOptions

    add_options(parser, DemoOptions, exclude=PLACES)
    parser.add_argument("--sizes", nargs=3, type=positive, default=None, metavar=("TRAIN", "VALID", "TEST"),
                        help="benchmark sizes (faces: per identity; default: the benchmark's)")
    add_options(parser, DemoOptions, only=PLACES)
    parser.add_argument("--json", action="store_true", help="end with one JSON object holding every figure")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _percent(value):
    return "-" if value is None else f"{value * 100:6.2f}%"


def summary_lines(figures):
    """The demo's text report."""
    lines = [f"goodnet demo: {figures['dataset']} benchmark ({figures['benchmark']}), trigger {figures['trigger']} "
             f"-> class {figures['target']}{' (pruning-aware BadNet)' if figures['pruning_aware'] else ''}",
             f"BadNet {figures['badnet']}: clean test accuracy {_percent(figures['clean_accuracy'])}, "
             f"attack success rate {_percent(figures['attack_success_rate'])}", "",
             "pruning defense (lab rule, test data):"]
    for name, entry in figures["pruning"].items():
        if isinstance(entry, dict):
            lines.append(f"  model_{name} ({entry['channels']} channels): clean {_percent(entry['clean_accuracy'])}, "
                         f"ASR {_percent(entry['attack_success_rate'])}")
    strip = figures["strip"]
    lines += [f"STRIP alone ({strip['copies']} copies, threshold on validation data), test data: FRR {_percent(strip['false_rejection_rate'])}, "
              f"FAR {_percent(strip['false_acceptance_rate'])}", "",
              f"repair (chosen on validation data: {figures['repair']['chosen']}), test data:",
              f"  {'candidate':<22} {'clean':>8} {'ASR':>8} {'detect':>8} {'FRR':>8}"]
    for name, entry in figures["repair"]["candidates"].items():
        marker = " <- chosen" if name == figures["repair"]["chosen"] else ""
        lines.append(f"  {name:<22} {_percent(entry['clean_accuracy']):>8} {_percent(entry['attack_success_rate']):>8} "
                     f"{_percent(entry['detection_rate']):>8} {_percent(entry['false_rejection_rate']):>8}{marker}")
    lines += ["", f"repaired model: {figures['repair']['model']}", f"report: {figures['repair']['report']}",
              "plots: " + ", ".join(sorted(set([figures["pruning"]["curve_png"]] + list(figures["plots"].values())))),
              f"time: {figures['seconds']['prepare']} s to build or load the benchmark and BadNet, "
              f"{figures['seconds']['defenses']} s for the defenses"
              + (f", {figures['seconds']['data_loop']} s for the data loop" if "data_loop" in figures else "")]
    if "data_loop" in figures:
        lines[-1:-1] = [""] + data_loop_lines(figures["data_loop"])
    return lines


def _figure(value):
    return " n/a" if value is None else f"{value:.2f}"


def data_loop_lines(loop):
    """The data loop's part of the report: detection per method, the cleaned set, the three models."""
    lines = [f"data loop (the BadNet's poisoned training set: {loop['training_images']} images, {loop['poisoned']} "
             "poisoned), detection against the ground truth:",
             f"  {'method':<10} {'flagged':>7} {'precision':>9} {'recall':>7} {'F1':>5}  classes falsely flagged"]
    for method, entry in loop["methods"].items():
        lines.append(f"  {method:<10} {entry['flagged']:>7} {_figure(entry['precision']):>9} "
                     f"{_figure(entry['recall']):>7} {_figure(entry['f1']):>5}  "
                     f"{', '.join(map(str, entry['falsely_flagged_classes'])) or 'none'}")
    used = loop["by"] or "none (no method found a suspicious class)"
    lines += [f"cleaned set ({used}'s flags dropped, chosen from the detectors' verdicts): {loop['kept']} kept, "
              f"{loop['removed']} removed, {loop['poisoned_kept']} poisoned kept; {loop['clean_set']}",
              f"  {'model':<28} {'clean':>8} {'ASR':>8}"]
    names = {"badnet": "BadNet", "retrained": "retrained on the cleaned set", "clean": "trained on the clean set"}
    for key, name in names.items():
        entry = loop["models"][key]
        lines.append(f"  {name:<28} {_percent(entry['clean_accuracy']):>8} {_percent(entry['attack_success_rate']):>8}")
    lines.append(f"inspection report: {loop['report']}")
    return lines


def run(args):
    from goodnet.demo import DemoOptions, run_demo

    prepare_out_dir(args)

    options = options_from_args(args, DemoOptions,
                                sizes=dict(zip(("train", "valid", "test"), args.sizes)) if args.sizes else None)
    figures = run_demo(options, progress=False if args.no_progress else None)
    print("\n".join(summary_lines(figures)))
    if args.json:
        print_json(figures)
    return 0
