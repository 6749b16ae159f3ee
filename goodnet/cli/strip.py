"""``goodnet strip`` / ``python strip.py``: STRIP run-time trojan detection on a model.

``strip.py --model M --valid V --test T --poisoned-test BT [BT ...] --frr 0.01``
holds out a clean bank from V, learns the threshold on the rest of V (by
default certified: its FRR is at most --frr with probability --confidence),
reports the calibration's FRR bounds, then the false rejection rate on T and
the false acceptance rate (poisoned inputs not flagged) on each BT, and writes
a histogram PNG of the entropies.
T and BT are read batch by batch (memory stays bounded); V is read into memory.
"""

import os

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         prepare_out_file, print_json)

HELP = "STRIP: detect trojaned inputs at run time (FRR on clean test data, FAR on poisoned data)"


def add_arguments(parser):
    from goodnet.cli.options import add_options
    from goodnet.defenses.strip import StripOptions

    parser.add_argument("--model", required=True, help="the model to watch (the BadNet), .h5 or .keras")
    parser.add_argument("--valid", required=True, help="clean validation file: the bank and the threshold")
    parser.add_argument("--test", help="clean test file: false rejection rate")
    parser.add_argument("--poisoned-test", nargs="+", action="extend", default=[], metavar="FILE",
                        help="poisoned test file(s): false acceptance rate of each")
    add_options(parser, StripOptions)   # every STRIP option: its flag, default, rule's choices and help
    parser.add_argument("--plot", default="strip_entropy.png", help="histogram PNG (default strip_entropy.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the histogram")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def run(args):
    import contextlib

    from goodnet.data import LabFile, load_h5
    from goodnet.models import load_model

    from goodnet.cli.options import check_options, options_from_args
    from goodnet.defenses.strip import StripOptions

    check_options(options_from_args(args, StripOptions))   # every STRIP flag against its rule, before any work
    if args.strip_precision != "float32" and args.precision != "float32":
        raise CommandError(f"--strip-precision {args.strip_precision} and --precision {args.precision} are two "
                           "ways to reduce precision; choose one")
    if not args.no_plot:
        prepare_out_file(args.plot, "--plot")
    with execution_from_args(args).placement(), contextlib.ExitStack() as stack:
        # The validation file (bank and threshold) is read into memory; the test files are opened here
        # (validated up front) and streamed batch by batch: memory stays bounded whatever their size.
        valid = load_h5(args.valid)
        test = stack.enter_context(LabFile(args.test)) if args.test else None
        poisoned = [stack.enter_context(LabFile(path)) for path in args.poisoned_test]
        classifier = load_model(args.model, scale=args.scale, num_classes=args.num_classes, clean=valid)
        _, execution_report = configure_execution(args, classifier, valid)
        report = _detect(args, classifier, valid, test, poisoned, execution_report)
    if args.json:
        print_json(report)
    else:
        print("\n".join(_lines(report)))
    return 0


PRECISION_SAMPLE = 256   # clean validation inputs on which a reduced precision is compared with float32


def _detect(args, classifier, valid, test, poisoned, execution_report):
    """Fit STRIP on ``valid``, score the (streamed) test files, write the histogram; return the report."""
    import numpy as np

    from goodnet.cli.options import options_from_args
    from goodnet.defenses.strip import STRIP, StripOptions
    from goodnet.plots import strip_entropy_histogram

    options = options_from_args(args, StripOptions)
    strip = STRIP.from_options(options, progress=False if args.no_progress else None).fit(classifier, valid.images)
    report = {"model": args.model, "scale": classifier.scale, "valid": args.valid, "bank_size": len(strip.bank_),
              "threshold": strip.threshold_, "threshold_method": options.threshold_method, "target_frr": options.frr,
              "calibration": strip.calibration_.describe(), "copies": options.copies, "blend": options.blend,
              "draws": options.draws,
              "clean_entropy_mean": strip.entropy_mean_, "clean_entropy_std": strip.entropy_std_,
              "valid_false_rejection_rate": float(np.mean(strip.clean_entropies_ < strip.threshold_))}
    report.update(execution_report)
    if args.strip_precision != "float32" or args.precision != "float32":
        # Reduced precision is never silently on: its effect on STRIP, measured on clean validation inputs.
        report["strip_precision_report"] = strip.precision_effect(valid.images[:PRECISION_SAMPLE])
    histogram = {}
    clean_entropies = strip.clean_entropies_
    if test is not None:
        clean_entropies = strip.entropy(test, seed=strip.seed + 2)
        report["test"] = args.test
        report["false_rejection_rate"] = float(np.mean(clean_entropies < strip.threshold_))
        if strip.early_stop:
            report["early_stop_false_rejection_rate"] = float(np.mean(strip.predict_trojaned(test, seed=strip.seed + 2)))
    report["poisoned"] = []
    for offset, data in enumerate(poisoned):
        seed = strip.seed + 3 + offset
        entropies = strip.entropy(data, seed=seed)
        detected = float(np.mean(entropies < strip.threshold_))
        item = {"file": data.path, "false_acceptance_rate": 1.0 - detected, "detection_rate": detected,
                "entropy_mean": float(np.mean(entropies))}
        if strip.early_stop:
            item["early_stop_false_acceptance_rate"] = 1.0 - float(np.mean(strip.predict_trojaned(data, seed)))
            item["early_stop_mean_copies"] = float(np.mean(strip.last_copies_used_))
        report["poisoned"].append(item)
        histogram[os.path.basename(data.path)] = entropies
    if not args.no_plot:
        report["plot"] = strip_entropy_histogram(clean_entropies, histogram, strip.threshold_, args.plot,
                                                 title=f"STRIP entropy: {os.path.basename(args.model)}")
    return report


def _lines(report):
    lines = [f"Threshold: {report['threshold']:.6f} bits ({report['threshold_method']}, target FRR "
             f"{report['target_frr'] * 100:g} %, {report['copies']} copies, {report['blend']} blend)",
             f"Calibration: {report['calibration']['summary']}",
             f"Clean validation entropy: {report['clean_entropy_mean']:.4f} +- {report['clean_entropy_std']:.4f}"]
    if report["calibration"]["warning"]:
        lines.append(f"Warning: {report['calibration']['warning']}")
    if "false_rejection_rate" in report:
        lines.append(f"False Rejection Rate: {report['false_rejection_rate'] * 100}")
    for entry in report.get("poisoned", []):
        lines.append(f"False Acceptance Rate ({os.path.basename(entry['file'])}): "
                     f"{entry['false_acceptance_rate'] * 100}")
    if "plot" in report:
        lines.append(f"Histogram: {report['plot']}")
    effect = report.get("strip_precision_report")
    if effect:
        lines.append(f"STRIP in {effect['strip_precision']} against float32 on {effect['images']} clean validation "
                     f"inputs: same decision for {effect['decision_agreement'] * 100:.2f} %, entropies differ by at "
                     f"most {effect['max_entropy_difference']:.4f} bits")
    return lines + execution_lines(report)
