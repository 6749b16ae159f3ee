"""``goodnet repair``: write a repaired model file.

Form available now (combine mode, selected by ``--repaired``)::

    goodnet repair BADNET --repaired BPRIME --out G.h5 [--strip --valid V [--copies N ...]]

builds the GoodNet G (B's class where B and B' agree, N = "poisoned" where
they disagree), optionally gated by STRIP (also N where the input's STRIP
entropy under B is below the threshold learned on --valid), and saves it as one
model file. The end-to-end form (``goodnet repair MODEL --valid V --out DIR``,
without --repaired) is reserved for a later version.
"""

from goodnet.cli import CommandError, add_model_options, positive, print_json

HELP = "build a repaired model: the GoodNet from a BadNet and a repair (optionally STRIP-gated)"


def add_arguments(parser):
    parser.add_argument("model", metavar="BADNET", help="the BadNet B (.h5 or .keras)")
    parser.add_argument("--repaired", metavar="BPRIME",
                        help="a repaired model B' (e.g. a pruned model): combine B and B' into the GoodNet")
    parser.add_argument("--out", required=True, help="the output model file (.h5, or .keras)")
    parser.add_argument("--valid", help="clean validation file (needed by --strip; picks --scale auto)")
    parser.add_argument("--repaired-scale", choices=("raw", "unit", "auto"), default="auto",
                        help="input scaling of B' (default: stored in the file, else chosen on --valid, else B's)")
    strip = parser.add_argument_group("STRIP gate (--strip)")
    strip.add_argument("--strip", action="store_true", help="also answer N for inputs STRIP flags as trojaned")
    strip.add_argument("--copies", type=positive, default=100, help="perturbed copies per input (default 100)")
    strip.add_argument("--frr", type=float, default=0.01, help="target false rejection rate (default 0.01)")
    strip.add_argument("--blend", choices=("add", "alpha"), default="add", help="superimposition (default add)")
    strip.add_argument("--alpha", type=float, default=0.5, help="bank weight for --blend alpha")
    strip.add_argument("--threshold", choices=("normal", "quantile"), default="normal",
                       help="threshold: normal fit (the paper) or empirical quantile")
    strip.add_argument("--bank-size", type=positive, default=None,
                       help="clean images of --valid held out as the bank (default: half, at most 1000)")
    strip.add_argument("--seed", type=int, default=0, help="seed of the bank and its draws")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


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
    from goodnet.data import load_h5
    from goodnet.goodnet import build_gated_goodnet, build_goodnet
    from goodnet.models import save_model

    if args.repaired is None:
        raise CommandError("only the combine form is available: goodnet repair BADNET --repaired BPRIME --out G.h5")
    if not args.out.endswith((".h5", ".keras")):
        raise CommandError(f"{args.out}: --out: expected a model file name ending in .h5 or .keras")
    if args.strip and not args.valid:
        raise CommandError("--strip: expected --valid CLEAN.h5 (the bank and the threshold come from it)")
    if not 0.0 < args.frr < 1.0:
        raise CommandError(f"--frr: expected a rate in (0, 1), got {args.frr}")
    valid = load_h5(args.valid) if args.valid else None
    bad, repaired = _load_pair(args, valid)
    report = {"badnet": args.model, "repaired": args.repaired, "out": args.out, "scale": bad.scale,
              "repaired_scale": repaired.scale, "num_classes": bad.num_classes, "strip": bool(args.strip)}
    if args.strip:
        from goodnet.strip import STRIP

        strip = STRIP(bad, copies=args.copies, blend=args.blend, alpha=args.alpha, draws="fixed",
                      threshold_method=args.threshold, frr=args.frr, bank_size=args.bank_size, seed=args.seed,
                      progress=False if args.no_progress else None).fit(valid.images)
        goodnet = build_gated_goodnet(bad, repaired, strip)
        report.update({"copies": args.copies, "blend": args.blend, "threshold": strip.threshold_,
                       "threshold_method": args.threshold, "target_frr": args.frr,
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
            print(f"STRIP threshold: {strip.threshold_:.6f} bits ({args.copies} copies, {args.blend} blend)")
    return 0
