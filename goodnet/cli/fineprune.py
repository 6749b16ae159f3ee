"""``goodnet fineprune``: prune the dormant channels, then fine-tune on clean validation data.

    goodnet fineprune --model M --valid V [--poisoned-valid BV ...] --out DIR
                      [--layer conv_3] [--drop X | --channels K] [--epochs E] [--learning-rate LR]
                      [--optimizer sgd|adam] [--schedule one-cycle|cosine|constant] [--min-epochs K]
                      [--no-augment] [--shift PX] ...

Writes ``DIR/model_fp.h5`` (plain Keras), ``DIR/fineprune_curve.{csv,json,png}``.
The clean validation file is split per class into a fine-tuning part and a
hold-out part (``--holdout``); the hold-out part chooses the kept epoch (the
best hold-out accuracy from ``--min-epochs`` on) and gives the reported figures.
Poisoned files are measured, never used to choose.
The recipe's flags, defaults and help come from
:class:`goodnet.defenses.fine_pruning.FineTuneRecipe`, the others from
:class:`goodnet.defenses.fine_pruning.FinePruneOptions`.
"""

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         load_inputs, prepare_out_dir, print_json)
from goodnet.cli.options import add_options, options_from_args

HELP = "fine-pruning: prune a convolution's dormant channels, then fine-tune on clean data (Liu et al. 2018)"


def add_arguments(parser):
    from goodnet.defenses.fine_pruning import FinePruneOptions

    parser.add_argument("--model", required=True, metavar="M", help="the suspect model (.h5 or .keras)")
    parser.add_argument("--valid", required=True, metavar="V", help="clean validation data (lab .h5 layout)")
    parser.add_argument("--poisoned-valid", nargs="*", default=[], metavar="BV",
                        help="poisoned validation files, measured per epoch for the report only")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_options(parser, FinePruneOptions, only=("layer",))
    how = parser.add_mutually_exclusive_group()
    add_options(how, FinePruneOptions, only=("drop",))
    how.add_argument("--channels", type=int, default=None, metavar="K", help="prune exactly K channels instead")
    add_options(parser, FinePruneOptions, exclude=("layer", "drop"))   # the recipe, --holdout, --seed
    add_model_options(parser)
    parser.add_argument("--no-plot", action="store_true", help="do not write fineprune_curve.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _whole(value):
    return int(value) if float(value).is_integer() else value


def run(args):
    from goodnet.defenses.fine_pruning import FinePruneOptions, run_fine_pruning
    from goodnet.reports import FINEPRUNE_FILES, input_paths, write_fineprune_outputs

    prepare_out_dir(args, FINEPRUNE_FILES.values())
    if not args.drop > 0:
        raise CommandError(f"--drop: expected an accuracy drop above 0 points, got {args.drop:g}")
    options = options_from_args(args, FinePruneOptions, drop=_whole(args.drop))
    # Inference (the sweep, every evaluation of the pruned and fine-tuned model) runs as the execution options
    # say; the fine-tuning steps themselves train in float32 on the execution's first device.
    with execution_from_args(args).placement():
        classifier, clean, poisoned = load_inputs(args)
        _, execution_report = configure_execution(args, classifier, clean)
        result = run_fine_pruning(classifier, clean, poisoned, options, count=args.channels)
        protect = input_paths(clean, *poisoned, protect=[args.model, args.valid, *args.poisoned_valid])
        write_fineprune_outputs(result, args.out, protect=protect, plot=not args.no_plot)
    summary = result["summary"]
    summary.update(execution_report)
    if args.json:
        print_json(summary)
        return 0
    print(f"{summary['model']}: pruned {len(summary['channels_pruned'])} channels of {summary['layer']}, "
          f"fine-tuned on {summary['fine_tuning_images']} images, best epoch {summary['best_epoch']} "
          f"of {summary['epochs_run']}")
    print(f"{'epoch':>5} {'hold-out acc':>12}" + "".join(f" {'ASR ' + key[4:]:>16}" for key in summary["curve"][0]
                                                         if key.startswith("asr:")))
    for row in summary["curve"]:
        print(f"{row['epoch']:>5} {row['holdout_accuracy'] * 100:>11.3f}%"
              + "".join(f" {row[key] * 100:>15.3f}%" for key in row if key.startswith("asr:")))
    print(f"hold-out accuracy: unpruned {summary['baseline_holdout_accuracy'] * 100:.3f}%, "
          f"fine-pruned {summary['holdout_accuracy'] * 100:.3f}%")
    print(f"saved {summary['files']['model']}")
    print("\n".join(execution_lines(summary)))
    return 0
