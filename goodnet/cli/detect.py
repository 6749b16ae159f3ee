"""``goodnet detect``: run-time backdoor input detection with STRIP, BaDExpert or both.

``goodnet detect --model M --valid V [--test T] [--poisoned-test BT ...] --method strip|badexpert|both --frr F``
fits the chosen detector(s) on the clean validation file V only (STRIP: its bank and threshold; BaDExpert: the
backdoor expert, the auxiliary model and the threshold on a reserved part), then reports the false rejection
rate on T and the false acceptance rate (poisoned inputs not flagged) on each BT, with the keys of
``goodnet strip``, and a histogram PNG per detector in ``--out``. With ``both`` an input is flagged when either
detector flags it; each is calibrated at its share of --frr (:class:`goodnet.defenses.either.EitherDetector`)
and the joint FRR is checked on a second clean split: T when given, else a held-out part of V.
T and BT are read batch by batch; V is read into memory.
"""

import os

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_lines, execution_from_args,
                         prepare_out_dir, print_json)

HELP = "detect backdoor inputs at run time with STRIP, BaDExpert or both (FRR on clean data, FAR on poisoned)"
METHODS = ("strip", "badexpert", "both")
PLOTS = {"strip": "detect_strip.png", "badexpert": "detect_badexpert.png"}


def add_arguments(parser):
    from goodnet.calibration import CALIBRATION_FIELDS, CalibrationOptions
    from goodnet.cli.options import add_options
    from goodnet.defenses.badexpert import BaDExpertOptions
    from goodnet.defenses.either import EitherOptions
    from goodnet.defenses.strip import StripOptions

    parser.add_argument("--model", required=True, help="the model to watch (the suspect model), .h5 or .keras")
    parser.add_argument("--valid", required=True, help="labelled clean validation file: everything is fitted on it")
    parser.add_argument("--test", help="clean test file: false rejection rate (with both: the joint FRR check)")
    parser.add_argument("--poisoned-test", nargs="+", action="extend", default=[], metavar="FILE",
                        help="poisoned test file(s): false acceptance rate of each")
    parser.add_argument("--method", choices=METHODS, default="both",
                        help="detector: strip, badexpert, or both (flagged when either flags; default both)")
    add_options(parser, CalibrationOptions)
    add_options(parser, StripOptions, exclude=CALIBRATION_FIELDS, group="STRIP")
    add_options(parser, BaDExpertOptions, exclude=CALIBRATION_FIELDS, group="BaDExpert")
    add_options(parser, EitherOptions, group="both")
    parser.add_argument("--out", default=".", help="folder for the histograms (default: the current folder)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the histograms")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _options(args):
    from goodnet.calibration import CalibrationOptions
    from goodnet.cli.options import check_options, options_from_args
    from goodnet.defenses.badexpert import BaDExpertOptions
    from goodnet.defenses.either import EitherOptions
    from goodnet.defenses.strip import StripOptions

    return tuple(check_options(options_from_args(args, cls)) for cls in
                 (CalibrationOptions, StripOptions, BaDExpertOptions, EitherOptions))


def run(args):
    import contextlib

    from goodnet.data import LabFile, load_h5
    from goodnet.models import load_model

    options = _options(args)   # every flag against its rule, before any work
    if args.strip_precision != "float32" and args.precision != "float32":
        raise CommandError(f"--strip-precision {args.strip_precision} and --precision {args.precision} are two "
                           "ways to reduce precision; choose one")
    if not args.no_plot:
        prepare_out_dir(args, [PLOTS[name] for name in _detectors(args.method)])
    with execution_from_args(args).placement(), contextlib.ExitStack() as stack:
        valid = load_h5(args.valid)
        test = stack.enter_context(LabFile(args.test)) if args.test else None
        poisoned = [stack.enter_context(LabFile(path)) for path in args.poisoned_test]
        classifier = load_model(args.model, scale=args.scale, num_classes=args.num_classes, clean=valid)
        valid.check_classes(classifier.num_classes)
        _, execution_report = configure_execution(args, classifier, valid)
        report = _detect(args, options, classifier, valid, test, poisoned)
        report.update(execution_report)
    if args.json:
        print_json(report)
    else:
        print("\n".join(_lines(report)))
    return 0


def _detectors(method):
    return ("strip", "badexpert") if method == "both" else (method,)


def _fit(args, options, classifier, valid, test):
    """{name: fitted detector} and the gate (an EitherDetector, or None for one detector)."""
    import dataclasses

    from goodnet.defenses.badexpert import BaDExpert
    from goodnet.defenses.either import EitherDetector
    from goodnet.defenses.strip import STRIP

    calibration, strip_options, expert_options, either_options = options
    progress = False if args.no_progress else None
    shared = dataclasses.asdict(calibration)
    strip_options = dataclasses.replace(strip_options, **shared)
    expert_options = dataclasses.replace(expert_options, **shared)
    if args.method == "strip":
        return {"strip": STRIP.from_options(strip_options, progress=progress).fit(classifier, valid.images)}, None
    if args.method == "badexpert":
        return {"badexpert": BaDExpert.from_options(expert_options, progress=progress).fit(classifier, valid)}, None
    gate = EitherDetector(frr=calibration.frr, strip_share=either_options.strip_share,
                          check_fraction=either_options.check_fraction, strip=strip_options, badexpert=expert_options,
                          seed=strip_options.seed, progress=progress).fit(classifier, valid, check=test)
    return {"strip": gate.strip_, "badexpert": gate.badexpert_}, gate


def _scores(name, detector, data, offset):
    """Scores (lower: more suspicious) of a detector on in-memory images or an open file."""
    if name == "strip":
        return detector.entropy(data, seed=detector.seed + 2 + offset)   # goodnet strip's seeds
    return detector.score(data)


def _describe(name, detector):
    entry = {"threshold": float(detector.threshold_), "target_frr": float(detector.frr),
             "threshold_method": detector.threshold_method, "calibration": detector.calibration_.describe()}
    if name == "strip":
        entry.update({"copies": int(detector.copies), "blend": detector.blend, "bank_size": len(detector.bank_),
                      "clean_entropy_mean": detector.entropy_mean_, "clean_entropy_std": detector.entropy_std_})
    else:
        entry.update({key: value for key, value in detector.summary().items() if key not in ("defense", "params")})
        entry["combination"] = detector.combination
    return entry


def _detect(args, options, classifier, valid, test, poisoned):
    import numpy as np

    detectors, gate = _fit(args, options, classifier, valid, test)
    report = {"model": args.model, "scale": classifier.scale, "valid": args.valid, "method": args.method,
              "target_frr": float(options[0].frr),
              "detectors": {name: _describe(name, detector) for name, detector in detectors.items()}}
    if gate is not None:
        report["shares"] = dict(gate.shares_)
        report["joint_check"] = dict(gate.check_)
    clean = {name: (detector.clean_entropies_ if name == "strip" else detector.clean_scores_)
             for name, detector in detectors.items()}
    if test is not None:
        report["test"] = args.test
        flags = {}
        for name, detector in detectors.items():
            clean[name] = _scores(name, detector, test, 0)
            flags[name] = clean[name] < detector.threshold_
            report["detectors"][name]["false_rejection_rate"] = float(np.mean(flags[name]))
        report["false_rejection_rate"] = float(np.mean(np.logical_or.reduce(list(flags.values()))))
    report["poisoned"] = []
    histograms = {name: {} for name in detectors}
    for offset, data in enumerate(poisoned, start=1):
        flags, item = {}, {"file": data.path, "detectors": {}}
        for name, detector in detectors.items():
            scores = _scores(name, detector, data, offset)
            flags[name] = scores < detector.threshold_
            histograms[name][os.path.basename(data.path)] = scores
            item["detectors"][name] = {"false_acceptance_rate": 1.0 - float(np.mean(flags[name])),
                                       "detection_rate": float(np.mean(flags[name]))}
        detected = float(np.mean(np.logical_or.reduce(list(flags.values()))))
        item.update({"false_acceptance_rate": 1.0 - detected, "detection_rate": detected})
        report["poisoned"].append(item)
    if not args.no_plot:
        report["plots"] = {name: _histogram(name, clean[name], histograms[name], detector.threshold_,
                                            os.path.join(args.out, PLOTS[name]), os.path.basename(args.model))
                           for name, detector in detectors.items()}
    return report


def _histogram(name, clean, poisoned, threshold, path, model):
    """One detector's histogram: clean and poisoned scores, the threshold."""
    from goodnet.plots import score_histogram, strip_entropy_histogram

    if name == "strip":
        return strip_entropy_histogram(clean, poisoned, threshold, path, title=f"STRIP entropy: {model}")
    return score_histogram(clean, poisoned, threshold, path, f"BaDExpert score: {model}",
                           "BaDExpert score (low: the backdoor expert agrees with the model, the auxiliary model "
                           "does not)")


NAMES = {"strip": "STRIP", "badexpert": "BaDExpert"}


def _lines(report):
    lines = [f"Method: {report['method']} (target FRR {report['target_frr'] * 100:g} %)"]
    for name, entry in report["detectors"].items():
        lines.append(f"{NAMES[name]}: threshold {entry['threshold']:.6f} ({entry['threshold_method']}, FRR "
                     f"{entry['target_frr'] * 100:g} %); calibration: {entry['calibration']['summary']}")
        if name == "badexpert":
            lines.append(f"BaDExpert: backdoor expert at learning rate {entry['expert_rate']:g}, stopped after "
                         f"{entry['expert_steps']} steps: clean accuracy "
                         f"{entry['expert_accuracy'] * 100:.2f} % (target {entry['expert_target'] * 100:.2f} %); "
                         f"auxiliary model {entry['auxiliary_accuracy'] * 100:.2f} %, model "
                         f"{entry['original_accuracy'] * 100:.2f} % on the calibration part")
        if entry["calibration"]["warning"]:
            lines.append(f"Warning: {entry['calibration']['warning']}")
        if "false_rejection_rate" in entry:
            lines.append(f"{NAMES[name]} False Rejection Rate: {entry['false_rejection_rate'] * 100}")
    check = report.get("joint_check")
    if check:
        lines.append(f"Joint FRR check ({check['source']}): {check['rejected']} of {check['n']} clean inputs "
                     f"flagged = {check['false_rejection_rate'] * 100:.2f} %, at most "
                     f"{check['frr_upper_bound'] * 100:.2f} % at {check['confidence'] * 100:g} % confidence "
                     f"(target {check['target_frr'] * 100:g} %)")
    if "false_rejection_rate" in report:
        lines.append(f"False Rejection Rate: {report['false_rejection_rate'] * 100}")
    for entry in report["poisoned"]:
        parts = ", ".join(f"{NAMES[name]} {value['false_acceptance_rate'] * 100:.2f}"
                          for name, value in entry["detectors"].items())
        lines.append(f"False Acceptance Rate ({os.path.basename(entry['file'])}): "
                     f"{entry['false_acceptance_rate'] * 100}" + (f" ({parts})" if len(entry["detectors"]) > 1 else ""))
    for name, path in report.get("plots", {}).items():
        lines.append(f"Histogram ({NAMES[name]}): {path}")
    return lines + execution_lines(report)
