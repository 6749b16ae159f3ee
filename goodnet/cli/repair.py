"""``goodnet repair``: repair a suspect model.

End-to-end form (the main job of goodnet)::

    goodnet repair MODEL --valid V [--poisoned-valid BV ...] [--test T --poisoned-test BT ...] --out DIR

runs pruning, fine-pruning, GoodNet and STRIP calibration on the clean
validation data, chooses the repaired model by a documented rule that uses
validation data only (see :mod:`goodnet.repair`), and writes
``DIR/repaired.h5``, every candidate in ``DIR/candidates/``, ``report.md``,
``report.json`` and PNG plots. Test files are read once, after the choice.

Combine form (selected by ``--repaired``; the same as ``goodnet combine``)::

    goodnet repair BADNET --repaired BPRIME --out G.h5 [--strip --valid V [--copies N ...]]

builds the GoodNet G (B's class where B and B' agree, N = "poisoned" where
they disagree), optionally gated by STRIP, and saves it as one model file:
this command hands its arguments to ``goodnet combine`` (:mod:`goodnet.cli.combine`).

The end-to-end form's flags, defaults and help come from
:class:`goodnet.repair.RepairOptions` (its ``recipe`` from
:class:`goodnet.defenses.fine_pruning.FineTuneRecipe`, its ``strip`` from
:class:`goodnet.defenses.strip.StripOptions`). ``--cleanse`` adds Neural Cleanse
(:class:`goodnet.defenses.neural_cleanse.CleanseOptions` defaults): its verdict in the
report, its outputs in ``DIR/neural_cleanse/`` and, when it flags classes, the
``nc_unlearned`` and ``nc_unlearned_strip`` candidates. ``--gate-detectors strip badexpert both``
gates candidates with BaDExpert and with STRIP-or-BaDExpert too (default: STRIP only); the BaDExpert
flags (:class:`goodnet.defenses.badexpert.BaDExpertOptions`, its seed the repair's) and the both gate's
(:class:`goodnet.defenses.either.EitherOptions`) serve both forms; ``--gate-detector`` is the combine
form's (one detector per model file).
"""

from goodnet.cli import (CommandError, add_combine_options, add_gate_options, add_model_options, configure_execution,
                         execution_from_args, execution_lines, load_inputs, prepare_out_dir, print_json, run_command)
from goodnet.cli.options import add_options, check_options, options_from_args

HELP = "repair a model end to end (pruning, fine-pruning, GoodNet, STRIP), or combine B and B' into a GoodNet"


STRIP_FLAGS = ("threshold_method", "frr", "confidence", "copies", "alpha", "bank_size")
"""STRIP options with a flag (both forms; ``--blend`` and ``--seed`` are added apart, ``--bank-size`` is the combine
form's)."""


def add_arguments(parser):
    from goodnet.defenses.strip import BLENDS, StripOptions
    from goodnet.repair import RepairOptions

    parser.add_argument("model", metavar="BADNET", help="the BadNet B (.h5 or .keras)")
    parser.add_argument("--repaired", metavar="BPRIME",
                        help="a repaired model B' (e.g. a pruned model): combine B and B' into the GoodNet "
                             "(as goodnet combine)")
    parser.add_argument("--out", required=True,
                        help="end-to-end: the output folder; combine form: the output model file (.h5 or .keras)")
    parser.add_argument("--valid", help="clean validation file (end-to-end: required; combine form: needed by "
                                        "--strip; picks --scale auto)")
    end = parser.add_argument_group("end-to-end form (without --repaired)")
    end.add_argument("--poisoned-valid", nargs="*", default=[], metavar="BV",
                     help="poisoned validation files: reported, and used by the choice rule")
    end.add_argument("--test", metavar="T", help="clean test file, evaluated once after the choice")
    end.add_argument("--poisoned-test", nargs="*", default=[], metavar="BT", help="poisoned test files (report only)")
    add_options(end, RepairOptions, only=("layer", "drops", "fineprune_drop", "holdout_fraction"))
    add_options(parser, RepairOptions.recipe, group="fine-tuning recipe (end-to-end form)")
    add_options(end, RepairOptions, only=("max_accuracy_drop", "max_frr", "tie_margin", "gate", "gate_detectors",
                                          "cleanse"))
    strip = add_combine_options(parser)
    add_options(strip, RepairOptions.strip, only=STRIP_FLAGS)
    strip.add_argument("--blend", choices=BLENDS, default=None,
                       help=f"superimposition (default: {StripOptions.blend} in the combine form, as in the paper; "
                            f"{RepairOptions.strip.blend} in the end-to-end form, since adding saturates face "
                            "images to white)")
    add_options(strip, RepairOptions, only=("seed",), exclude=("recipe", "strip", "nc", "badexpert", "either"))
    _add_gate_arguments(parser, strip)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _add_gate_arguments(parser, group):
    """The gate flags of the combine form, from :class:`RepairOptions`' BaDExpert and both-gate options; the
    end-to-end form reads the BaDExpert and both gates' flags too."""
    from goodnet.repair import RepairOptions

    add_gate_options(parser, group, RepairOptions.badexpert, RepairOptions.either,
                     "BaDExpert gate (--gate-detectors badexpert or both; combine form: --gate-detector)",
                     "both gate (--gate-detectors both; combine form: --gate-detector both)")
    for action in parser._actions:   # the end-to-end form seeds BaDExpert with --seed (RepairOptions.badexpert_options)
        if action.dest == "badexpert_seed":
            action.help = f"{action.help}; combine form only: the end-to-end form uses --seed"


def run(args):
    if args.repaired is None:
        return run_end_to_end(args)
    return run_command("combine", args)


def _check_end_to_end(args):
    import os

    if hasattr(args, "gate_detector"):
        raise CommandError(f"--gate-detector {args.gate_detector}: expected --repaired (the combine form); the "
                           "end-to-end form takes --gate-detectors")
    from goodnet.repair import RepairOptions

    if args.badexpert_seed != RepairOptions.badexpert.seed:
        raise CommandError(f"--badexpert-seed {args.badexpert_seed}: expected --repaired (the combine form); the "
                           "end-to-end form seeds BaDExpert with --seed")
    if not args.valid:
        raise CommandError("--valid: expected a clean validation file (goodnet repair MODEL --valid V --out DIR)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CommandError(f"{args.out}: --out: expected a folder for the end-to-end form, found a file")
    prepare_out_dir(args)
    if args.poisoned_test and not args.test:
        raise CommandError("--poisoned-test: expected --test CLEAN_TEST.h5 as well")
    check_options(repair_options(args))   # every option against its rule, before any work


def repair_options(args):
    """The :class:`goodnet.repair.RepairOptions` the parsed flags describe."""
    from goodnet.repair import RepairOptions

    # --bank-size is the combine form's: the end-to-end STRIP keeps its default bank.
    strip = options_from_args(args, RepairOptions.strip, blend=args.blend or RepairOptions.strip.blend,
                              bank_size=RepairOptions.strip.bank_size)
    # Neural Cleanse keeps its defaults: its fields share names (--epochs, --learning-rate) with the recipe's flags.
    return options_from_args(args, RepairOptions, drops=tuple(_whole(d) for d in args.drops),
                             fineprune_drop=_whole(args.fineprune_drop), strip=strip, nc=RepairOptions.nc)


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
    from goodnet.data import load_h5
    from goodnet.repair import Candidate, report_markdown, repair

    classifier, clean, poisoned = load_inputs(args)
    # Every model the repair evaluates (pruned, fine-pruned, STRIP on B) inherits this execution.
    _, execution_report = configure_execution(args, classifier, clean)
    test = load_h5(args.test, num_classes=classifier.num_classes) if args.test else None
    poisoned_test = [load_h5(path, num_classes=classifier.num_classes) for path in args.poisoned_test]
    options = repair_options(args)
    inputs = [args.model, args.valid, *args.poisoned_valid] + ([args.test] if args.test else []) + args.poisoned_test
    report = repair(classifier, clean, poisoned, args.out, options, test=test, poisoned_test=poisoned_test,
                    protect=inputs, progress=False if args.no_progress else None)
    if args.json:
        payload = {"chosen": report["chosen"], "chosen_model": report["files"].get("chosen"),
                   "choice_rule": report["choice_rule"], "report": report["files"]["report_md"],
                   "validation": summary_figures(report["validation"][report["chosen"]]),
                   "badnet_validation": summary_figures(report["validation"]["badnet"]),
                   "chosen_gate": Candidate(**next(entry for entry in report["candidates"]
                                                   if entry["name"] == report["chosen"])).detector,
                   "gates_holdout_frr": {name: entry["holdout_frr"] for name, entry in report["gates"].items()}}
        if "test" in report:
            payload.update(summary_figures(report["test"][report["chosen"]]))
            payload["badnet"] = summary_figures(report["test"]["badnet"])
        payload.update(execution_report)
        print_json(payload)
    else:
        print(report_markdown(report))
        print("\n".join(execution_lines(execution_report)))
    return 0
