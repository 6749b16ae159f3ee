"""``goodnet combine`` (also ``goodnet repair BADNET --repaired BPRIME``): B and a repaired B' as one GoodNet file.

    goodnet combine BADNET --repaired BPRIME --out G.h5 [--strip --valid V [--gate-detector strip|badexpert|both]
                    [--copies N ...]]

builds the GoodNet G (B's class where B and B' agree, N = "poisoned" where
they disagree), optionally gated (``--strip``) by a run-time detector fitted on
B with --valid: STRIP (also N where the input's STRIP entropy under B is below
the threshold learned on --valid; the default), BaDExpert (N where its score
is below its threshold; --valid must be labelled) or both (N where either
flags, each at its share of --frr), and saves it as one model file. STRIP's
flags, defaults and help come from :class:`goodnet.defenses.strip.StripOptions`
(the paper's additive blend by default; its draws are fixed, so the model
file is deterministic), BaDExpert's from
:class:`goodnet.defenses.badexpert.BaDExpertOptions` and the both gate's from
:class:`goodnet.defenses.either.EitherOptions`; --threshold, --frr and
--confidence calibrate every detector.
"""

from goodnet.cli import (CommandError, add_combine_options, add_gate_options, add_model_options, configure_execution,
                         execution_from_args, execution_lines, prepare_out_file, print_json)
from goodnet.cli.options import add_options, check_options, options_from_args

HELP = "combine a BadNet B and a repaired B' into a GoodNet (N where they disagree), optionally STRIP-gated"

STRIP_FLAGS = ("threshold_method", "frr", "confidence", "copies", "blend", "alpha", "bank_size", "seed")
"""The STRIP options the combine form has flags for (the others keep :class:`StripOptions`' defaults)."""
BADEXPERT_GROUP = "BaDExpert gate (--strip --gate-detector badexpert or both)"
EITHER_GROUP = "both gate (--strip --gate-detector both)"


def add_arguments(parser):
    from goodnet.defenses.strip import StripOptions

    parser.add_argument("model", metavar="BADNET", help="the BadNet B (.h5 or .keras)")
    parser.add_argument("--repaired", metavar="BPRIME", required=True, help="a repaired model B' (e.g. a pruned model)")
    parser.add_argument("--out", required=True, help="the output model file (.h5 or .keras)")
    parser.add_argument("--valid", help="clean validation file (needed by --strip; picks --scale auto)")
    strip = add_combine_options(parser)
    add_options(strip, StripOptions, only=STRIP_FLAGS)
    add_gate_arguments(parser, strip)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def add_gate_arguments(parser, group):
    """``--gate-detector`` (into the STRIP gate ``group``) and the BaDExpert and both gates' flags."""
    from goodnet.defenses.badexpert import BaDExpertOptions
    from goodnet.defenses.either import EitherOptions

    add_gate_options(parser, group, BaDExpertOptions, EitherOptions, BADEXPERT_GROUP, EITHER_GROUP)


def gate_options(args):
    """(:class:`GateOptions`, :class:`BaDExpertOptions`, :class:`EitherOptions`) of the parsed flags; the
    BaDExpert calibration is STRIP's (``--threshold``, ``--frr``, ``--confidence``)."""
    from goodnet.defenses.badexpert import BaDExpertOptions
    from goodnet.defenses.combine import GateOptions
    from goodnet.defenses.either import EitherOptions

    return tuple(options_from_args(args, cls) for cls in (GateOptions, BaDExpertOptions, EitherOptions))


def strip_options(args):
    """The combine form's :class:`StripOptions`: the parsed flags, fixed draws (``--blend`` unset: StripOptions')."""
    from goodnet.defenses.strip import StripOptions

    return options_from_args(args, StripOptions, draws="fixed", blend=args.blend or StripOptions.blend)


def _load_pair(args, valid):
    from goodnet.models import load_model

    bad = load_model(args.model, scale=args.scale, num_classes=args.num_classes, clean=valid)
    repaired_scale = args.repaired_scale
    if repaired_scale == "auto" and valid is None:
        from goodnet.models import load_keras

        _, metadata = load_keras(args.repaired)
        repaired_scale = metadata.get("scale", bad.scale)
    repaired = load_model(args.repaired, scale=repaired_scale, num_classes=bad.num_classes, clean=valid)
    return bad, repaired


def run(args):
    options = check_options(strip_options(args))   # every STRIP flag against its rule, before any work
    gates = tuple(check_options(entry) for entry in gate_options(args))
    if not args.out.endswith((".h5", ".keras")):
        raise CommandError(f"{args.out}: --out: expected a model file name ending in .h5 or .keras")
    prepare_out_file(args.out)
    if args.strip and not args.valid:
        raise CommandError("--strip: expected --valid CLEAN.h5 (the bank and the threshold come from it)")
    if hasattr(args, "gate_detector") and not args.strip:
        raise CommandError(f"--gate-detector {args.gate_detector}: expected --strip as well (it chooses the "
                           "detector of the gate --strip adds)")
    execution = execution_from_args(args)
    if not args.strip and (execution.precision != "float32" or int(execution.devices or 1) > 1
                           or execution.jit_compile):
        raise CommandError("--devices/--strategy/--precision/--xla: the combine form runs a model only with "
                           "--strip (the STRIP calibration); without it only --device applies")
    with execution.placement():
        return _combine(args, options, gates)


def _fit_detector(args, options, gates, bad, valid):
    """The fitted gate detector and its report entries."""
    import dataclasses

    from goodnet.calibration import CALIBRATION_FIELDS
    from goodnet.defenses.badexpert import BaDExpert
    from goodnet.defenses.either import EitherDetector
    from goodnet.defenses.strip import STRIP

    gate, expert_options, either_options = gates
    progress = False if args.no_progress else None
    expert_options = dataclasses.replace(expert_options, **{name: getattr(options, name)
                                                            for name in CALIBRATION_FIELDS})
    if gate.detector == "strip":
        strip = STRIP.from_options(options, progress=progress).fit(bad, valid.images)
        return strip, _strip_entries(strip, options)
    if gate.detector == "badexpert":
        expert = BaDExpert.from_options(expert_options, progress=progress).fit(bad, valid)
        return expert, _expert_entries(expert, options)
    either = EitherDetector(frr=options.frr, strip_share=either_options.strip_share,
                            check_fraction=either_options.check_fraction, strip=options, badexpert=expert_options,
                            seed=options.seed, progress=progress).fit(bad, valid)
    entries = {"threshold": {"strip": either.strip_.threshold_, "badexpert": either.badexpert_.threshold_},
               "threshold_method": options.threshold_method, "target_frr": options.frr,
               "shares": dict(either.shares_), "check": dict(either.check_),
               "strip_gate": _strip_entries(either.strip_, options),
               "badexpert_gate": _expert_entries(either.badexpert_, options)}
    return either, entries


def _strip_entries(strip, options):
    return {"copies": options.copies, "blend": options.blend, "threshold": strip.threshold_,
            "threshold_method": options.threshold_method, "target_frr": strip.frr,
            "calibration": strip.calibration_.describe(),
            "clean_entropy_mean": strip.entropy_mean_, "clean_entropy_std": strip.entropy_std_}


def _expert_entries(expert, options):
    return {"threshold": expert.threshold_, "threshold_method": options.threshold_method, "target_frr": expert.frr,
            "calibration": expert.calibration_.describe(), "combination": expert.combination,
            "expert_rate": expert.expert_rate_, "expert_accuracy": expert.expert_accuracy_,
            "expert_steps": expert.expert_steps_, "auxiliary_accuracy": expert.auxiliary_accuracy_}


def _combine(args, options, gates):
    from goodnet.data import load_h5
    from goodnet.defenses.combine import build_gated_goodnet, build_goodnet
    from goodnet.models import save_model

    valid = load_h5(args.valid) if args.valid else None
    bad, repaired = _load_pair(args, valid)
    report = {"badnet": args.model, "repaired": args.repaired, "out": args.out, "scale": bad.scale,
              "repaired_scale": repaired.scale, "num_classes": bad.num_classes, "strip": bool(args.strip)}
    if args.strip:
        _, execution_report = configure_execution(args, bad, valid)
        report.update(execution_report)
        detector, entries = _fit_detector(args, options, gates, bad, valid)
        goodnet = build_gated_goodnet(bad, repaired, detector)
        report["gate_detector"] = gates[0].detector
        report.update(entries)
    else:
        goodnet = build_goodnet(bad, repaired)
    save_model(goodnet, args.out, protect=[args.model, args.repaired] + ([args.valid] if args.valid else []))
    if args.json:
        print_json(report)
    else:
        kind = {"strip": "STRIP-gated GoodNet", "badexpert": "BaDExpert-gated GoodNet",
                "both": "GoodNet gated by STRIP or BaDExpert"}[gates[0].detector] if args.strip else "GoodNet"
        print(f"{kind} written to {args.out} ({bad.num_classes} classes + 'poisoned' = {bad.num_classes})")
        if args.strip:
            print("\n".join(_gate_lines(detector, options)))
            print("\n".join(execution_lines(report)))
    return 0


def _gate_lines(detector, options):
    """The text form's lines on the gate's detector(s)."""
    strip = getattr(detector, "strip_", detector if hasattr(detector, "entropy_mean_") else None)
    expert = getattr(detector, "badexpert_", detector if hasattr(detector, "expert_") else None)
    lines = []
    if strip is not None:
        lines.append(f"STRIP threshold: {strip.threshold_:.6f} bits ({options.copies} copies, {options.blend} blend, "
                     f"{options.threshold_method}: {strip.calibration_.summary()})")
    if expert is not None:
        lines.append(f"BaDExpert threshold: {expert.threshold_:.6f} ({expert.combination} score, expert rate "
                     f"{expert.expert_rate_:g}; {options.threshold_method}: {expert.calibration_.summary()})")
    if hasattr(detector, "check_"):
        check = detector.check_
        lines.append(f"joint FRR {check['false_rejection_rate'] * 100:.2f}% on {check['n']} clean check images "
                     f"({check['source']}; target {check['target_frr']:g})")
    return lines
