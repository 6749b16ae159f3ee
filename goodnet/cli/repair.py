"""``goodnet repair``: repair a suspect model.

End-to-end form (the main job of goodnet)::

    goodnet repair MODEL --valid V [--poisoned-valid BV ...] [--test T --poisoned-test BT ...] --out DIR

runs pruning, fine-pruning, GoodNet and STRIP calibration on the clean
validation data, chooses the repaired model by a documented rule that uses
validation data only (see :mod:`goodnet.repair`), and writes
``DIR/repaired.h5``, every candidate in ``DIR/candidates/``, ``report.md``,
``report.json`` and PNG plots. Test files are read once, after the choice.

Combine form (selected by ``--repaired``)::

    goodnet repair BADNET --repaired BPRIME --out G.h5 [--strip --valid V [--copies N ...]]

builds the GoodNet G (B's class where B and B' agree, N = "poisoned" where
they disagree), optionally gated by STRIP (also N where the input's STRIP
entropy under B is below the threshold learned on --valid), and saves it as one
model file.
"""

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         positive, prepare_out_dir, prepare_out_file, print_json)
from goodnet.cli.fineprune import add_recipe_arguments, recipe_from_args

HELP = "repair a model end to end (pruning, fine-pruning, GoodNet, STRIP), or combine B and B' into a GoodNet"


def add_arguments(parser):
    from goodnet.repair import GATES, RepairOptions
    from goodnet.calibration import THRESHOLD_METHODS

    parser.add_argument("model", metavar="BADNET", help="the BadNet B (.h5 or .keras)")
    parser.add_argument("--repaired", metavar="BPRIME",
                        help="a repaired model B' (e.g. a pruned model): combine B and B' into the GoodNet")
    parser.add_argument("--out", required=True,
                        help="end-to-end: the output folder; combine form: the output model file (.h5 or .keras)")
    parser.add_argument("--valid", help="clean validation file (end-to-end: required; combine form: needed by "
                                        "--strip; picks --scale auto)")
    end = parser.add_argument_group("end-to-end form (without --repaired)")
    end.add_argument("--poisoned-valid", nargs="*", default=[], metavar="BV",
                     help="poisoned validation files: reported, and used by the choice rule")
    end.add_argument("--test", metavar="T", help="clean test file, evaluated once after the choice")
    end.add_argument("--poisoned-test", nargs="*", default=[], metavar="BT", help="poisoned test files (report only)")
    end.add_argument("--layer", default="conv_3", help="convolution to prune (default conv_3)")
    end.add_argument("--drops", nargs="+", type=float, default=[2, 4, 10], metavar="X",
                     help="pruned candidates at X points of accuracy lost (default 2 4 10)")
    end.add_argument("--fineprune-drop", type=float, default=4.0, metavar="X",
                     help="fine-pruning prunes up to X points of accuracy lost, then fine-tunes (default 4)")
    end.add_argument("--holdout", type=float, default=0.2, help="share of each class held out (default 0.2)")
    add_recipe_arguments(parser.add_argument_group("fine-tuning recipe (end-to-end form)"))
    end.add_argument("--max-accuracy-drop", type=float, default=3.0,
                     help="eligible candidates lose at most this many points of hold-out accuracy (default 3)")
    end.add_argument("--max-frr", type=float, default=0.02,
                     help="eligible N+1 candidates reject at most this share of clean hold-out images (default 0.02)")
    end.add_argument("--tie-margin", type=float, default=2.0, metavar="POINTS",
                     help="eligible candidates within this many points of the best clean accuracy minus ASR are "
                          "near-ties, won by the lowest ASR (default 2)")
    end.add_argument("--gate", choices=GATES, default=RepairOptions.gate,
                     help="which candidates may be chosen: STRIP-gated ones (default; the others are reported) "
                          "or any")
    parser.add_argument("--repaired-scale", choices=("raw", "unit", "auto"), default="auto",
                        help="input scaling of B' (default: stored in the file, else chosen on --valid, else B's)")
    strip = parser.add_argument_group("STRIP gate (--strip)")
    strip.add_argument("--strip", action="store_true", help="also answer N for inputs STRIP flags as trojaned")
    strip.add_argument("--copies", type=positive, default=100, help="perturbed copies per input (default 100)")
    strip.add_argument("--frr", type=float, default=RepairOptions.frr,
                       help=f"target false rejection rate of STRIP (default {RepairOptions.frr:g}, both forms)")
    strip.add_argument("--confidence", type=float, default=RepairOptions.confidence,
                       help="probability that the certified threshold's FRR is at most --frr; level of the "
                            f"reported FRR bounds (default {RepairOptions.confidence:g})")
    strip.add_argument("--blend", choices=("add", "alpha"), default=None,
                       help="superimposition (default: add in the combine form, as in the paper; alpha in the "
                            "end-to-end form, since adding saturates face images to white)")
    strip.add_argument("--alpha", type=float, default=0.5, help="bank weight for --blend alpha")
    strip.add_argument("--threshold", choices=THRESHOLD_METHODS, default=RepairOptions.threshold_method,
                       help="threshold: certified (its FRR is at most --frr with probability --confidence), "
                            "normal fit (the paper) or empirical quantile "
                            f"(default {RepairOptions.threshold_method}, both forms)")
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
    if args.repaired is None:
        return run_end_to_end(args)
    return run_combine(args)


def _check_end_to_end(args):
    import os

    if not args.valid:
        raise CommandError("--valid: expected a clean validation file (goodnet repair MODEL --valid V --out DIR)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CommandError(f"{args.out}: --out: expected a folder for the end-to-end form, found a file")
    prepare_out_dir(args)
    if args.poisoned_test and not args.test:
        raise CommandError("--poisoned-test: expected --test CLEAN_TEST.h5 as well")
    _check_strip_rates(args)
    if not 0.0 < args.holdout < 1.0:
        raise CommandError(f"--holdout: expected a share in (0, 1), got {args.holdout}")
    for value in list(args.drops) + [args.fineprune_drop]:
        if not value > 0:
            raise CommandError(f"--drops/--fineprune-drop: expected accuracy drops above 0 points, got {value:g}")


def _check_strip_rates(args):
    """One-line errors unless --frr and --confidence are in (0, 1) (both forms)."""
    if not 0.0 < args.frr < 1.0:
        raise CommandError(f"--frr: expected a rate in (0, 1), got {args.frr}")
    if not 0.0 < args.confidence < 1.0:
        raise CommandError(f"--confidence: expected a probability in (0, 1), got {args.confidence}")


def _whole(value):
    return int(value) if float(value).is_integer() else float(value)


def summary_figures(figures):
    """The four headline figures of one candidate (a model that never answers N has detection and FRR 0)."""
    return {"clean_accuracy": figures.get("clean_accuracy"),
            "attack_success_rate": figures.get("mean_attack_success_rate"),
            "detection_rate": figures.get("detection_rate", 0.0),
            "false_rejection_rate": figures.get("false_rejection_rate", 0.0),
            "poisoned": figures.get("poisoned", [])}


def run_end_to_end(args):
    _check_end_to_end(args)
    args.poisoned_valid = list(args.poisoned_valid)
    with execution_from_args(args).placement():
        return _end_to_end(args)


def _end_to_end(args):
    from goodnet.cli import load_inputs
    from goodnet.data import load_h5
    from goodnet.repair import RepairOptions, report_markdown, repair

    classifier, clean, poisoned = load_inputs(args)
    # Every model the repair evaluates (pruned, fine-pruned, STRIP on B) inherits this execution.
    _, execution_report = configure_execution(args, classifier, clean)
    test = load_h5(args.test, num_classes=classifier.num_classes) if args.test else None
    poisoned_test = [load_h5(path, num_classes=classifier.num_classes) for path in args.poisoned_test]
    options = RepairOptions(layer=args.layer, drops=tuple(_whole(d) for d in args.drops),
                            fineprune_drop=_whole(args.fineprune_drop), holdout_fraction=args.holdout,
                            **recipe_from_args(args),
                            copies=args.copies, blend=args.blend or "alpha", alpha=args.alpha,
                            threshold_method=args.threshold, frr=args.frr, confidence=args.confidence,
                            max_accuracy_drop=args.max_accuracy_drop, max_frr=args.max_frr,
                            tie_margin=args.tie_margin, gate=args.gate, seed=args.seed)
    inputs = [args.model, args.valid, *args.poisoned_valid] + ([args.test] if args.test else []) + args.poisoned_test
    report = repair(classifier, clean, poisoned, args.out, options, test=test, poisoned_test=poisoned_test,
                    protect=inputs, progress=False if args.no_progress else None)
    if args.json:
        payload = {"chosen": report["chosen"], "chosen_model": report["files"].get("chosen"),
                   "choice_rule": report["choice_rule"], "report": report["files"]["report_md"],
                   "validation": summary_figures(report["validation"][report["chosen"]]),
                   "badnet_validation": summary_figures(report["validation"]["badnet"])}
        if "test" in report:
            payload.update(summary_figures(report["test"][report["chosen"]]))
            payload["badnet"] = summary_figures(report["test"]["badnet"])
        payload.update(execution_report)
        print_json(payload)
    else:
        print(report_markdown(report))
        print("\n".join(execution_lines(execution_report)))
    return 0


def run_combine(args):
    args.blend = args.blend or "add"
    if not args.out.endswith((".h5", ".keras")):
        raise CommandError(f"{args.out}: --out: expected a model file name ending in .h5 or .keras")
    prepare_out_file(args.out)
    if args.strip and not args.valid:
        raise CommandError("--strip: expected --valid CLEAN.h5 (the bank and the threshold come from it)")
    _check_strip_rates(args)
    execution = execution_from_args(args)
    if not args.strip and (execution.precision != "float32" or int(execution.devices or 1) > 1
                           or execution.jit_compile):
        raise CommandError("--devices/--strategy/--precision/--xla: the combine form runs a model only with "
                           "--strip (the STRIP calibration); without it only --device applies")
    with execution.placement():
        return _combine(args)


def _combine(args):
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
        strip = STRIP(copies=args.copies, blend=args.blend, alpha=args.alpha, draws="fixed",
                      threshold_method=args.threshold, frr=args.frr, confidence=args.confidence,
                      bank_size=args.bank_size, seed=args.seed,
                      progress=False if args.no_progress else None).fit(bad, valid.images)
        goodnet = build_gated_goodnet(bad, repaired, strip)
        report.update({"copies": args.copies, "blend": args.blend, "threshold": strip.threshold_,
                       "threshold_method": args.threshold, "target_frr": args.frr,
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
            print(f"STRIP threshold: {strip.threshold_:.6f} bits ({args.copies} copies, {args.blend} blend, "
                  f"{args.threshold}: {strip.calibration_.summary()})")
            print("\n".join(execution_lines(report)))
    return 0
