"""``goodnet combine`` (also ``goodnet repair BADNET --repaired BPRIME``): B and a repaired B' as one GoodNet file.

    goodnet combine BADNET --repaired BPRIME --out G.h5 [--strip --valid V [--copies N ...]]

builds the GoodNet G (B's class where B and B' agree, N = "poisoned" where
they disagree), optionally gated by STRIP (also N where the input's STRIP
entropy under B is below the threshold learned on --valid), and saves it as one
model file. STRIP's flags, defaults and help come from
:class:`goodnet.defenses.strip.StripOptions` (the paper's additive blend by
default); its draws are fixed, so the model file is deterministic.
"""

from goodnet.cli import (CommandError, add_combine_options, add_model_options, configure_execution,
                         execution_from_args, execution_lines, prepare_out_file, print_json)
from goodnet.cli.options import add_options, check_options, options_from_args

HELP = "combine a BadNet B and a repaired B' into a GoodNet (N where they disagree), optionally STRIP-gated"

STRIP_FLAGS = ("threshold_method", "frr", "confidence", "copies", "blend", "alpha", "bank_size", "seed")
"""The STRIP options the combine form has flags for (the others keep :class:`StripOptions`' defaults)."""


def add_arguments(parser):
    from goodnet.defenses.strip import StripOptions

    parser.add_argument("model", metavar="BADNET", help="the BadNet B (.h5 or .keras)")
    parser.add_argument("--repaired", metavar="BPRIME", required=True, help="a repaired model B' (e.g. a pruned model)")
    parser.add_argument("--out", required=True, help="the output model file (.h5 or .keras)")
    parser.add_argument("--valid", help="clean validation file (needed by --strip; picks --scale auto)")
    strip = add_combine_options(parser)
    add_options(strip, StripOptions, only=STRIP_FLAGS)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


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
    if not args.out.endswith((".h5", ".keras")):
        raise CommandError(f"{args.out}: --out: expected a model file name ending in .h5 or .keras")
    prepare_out_file(args.out)
    if args.strip and not args.valid:
        raise CommandError("--strip: expected --valid CLEAN.h5 (the bank and the threshold come from it)")
    execution = execution_from_args(args)
    if not args.strip and (execution.precision != "float32" or int(execution.devices or 1) > 1
                           or execution.jit_compile):
        raise CommandError("--devices/--strategy/--precision/--xla: the combine form runs a model only with "
                           "--strip (the STRIP calibration); without it only --device applies")
    with execution.placement():
        return _combine(args, options)


def _combine(args, options):
    from goodnet.data import load_h5
    from goodnet.defenses.combine import build_gated_goodnet, build_goodnet
    from goodnet.models import save_model

    valid = load_h5(args.valid) if args.valid else None
    bad, repaired = _load_pair(args, valid)
    report = {"badnet": args.model, "repaired": args.repaired, "out": args.out, "scale": bad.scale,
              "repaired_scale": repaired.scale, "num_classes": bad.num_classes, "strip": bool(args.strip)}
    if args.strip:
        from goodnet.defenses.strip import STRIP

        _, execution_report = configure_execution(args, bad, valid)
        report.update(execution_report)
        strip = STRIP.from_options(options, progress=False if args.no_progress else None).fit(bad, valid.images)
        goodnet = build_gated_goodnet(bad, repaired, strip)
        report.update({"copies": options.copies, "blend": options.blend, "threshold": strip.threshold_,
                       "threshold_method": options.threshold_method, "target_frr": options.frr,
                       "calibration": strip.calibration_.describe(),
                       "clean_entropy_mean": strip.entropy_mean_, "clean_entropy_std": strip.entropy_std_})
    else:
        goodnet = build_goodnet(bad, repaired)
    save_model(goodnet, args.out, protect=[args.model, args.repaired] + ([args.valid] if args.valid else []))
    if args.json:
        print_json(report)
    else:
        kind = "STRIP-gated GoodNet" if args.strip else "GoodNet"
        print(f"{kind} written to {args.out} ({bad.num_classes} classes + 'poisoned' = {bad.num_classes})")
        if args.strip:
            print(f"STRIP threshold: {strip.threshold_:.6f} bits ({options.copies} copies, {options.blend} blend, "
                  f"{options.threshold_method}: {strip.calibration_.summary()})")
            print("\n".join(execution_lines(report)))
    return 0
