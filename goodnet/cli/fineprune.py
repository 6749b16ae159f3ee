"""``goodnet fineprune``: prune the dormant channels, then fine-tune on clean validation data.

    goodnet fineprune --model M --valid V [--poisoned-valid BV ...] --out DIR
                      [--layer conv_3] [--drop X | --channels K] [--epochs 10] [--learning-rate 1e-4]

Writes ``DIR/model_fp.h5`` (plain Keras), ``DIR/fineprune_curve.{csv,json,png}``.
The clean validation file is split per class into a fine-tuning part and a
hold-out part (``--holdout``); the hold-out part decides early stopping and
gives the reported figures. Poisoned files are measured, never used to choose.
"""

import os

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         positive, print_json)
from goodnet.cli.prune import load_inputs

HELP = "fine-pruning: prune a convolution's dormant channels, then fine-tune on clean data (Liu et al. 2018)"


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="M", help="the suspect model (.h5 or .keras)")
    parser.add_argument("--valid", required=True, metavar="V", help="clean validation data (lab .h5 layout)")
    parser.add_argument("--poisoned-valid", nargs="*", default=[], metavar="BV",
                        help="poisoned validation files, measured per epoch for the report only")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--layer", default="conv_3", help="convolution to prune (default conv_3)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--drop", type=float, default=4.0, metavar="X",
                     help="prune up to the first step at least X points below the unpruned accuracy (default 4)")
    how.add_argument("--channels", type=int, default=None, metavar="K", help="prune exactly K channels instead")
    parser.add_argument("--epochs", type=positive, default=10, help="maximum fine-tuning epochs (default 10)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of each class held out (default 0.2)")
    parser.add_argument("--patience", type=positive, default=3, help="epochs without hold-out gain before stopping")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of training")
    add_model_options(parser)
    parser.add_argument("--no-plot", action="store_true", help="do not write fineprune_curve.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    from goodnet.finepruning import run_fine_pruning

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CommandError(f"{args.out}: --out: expected a folder, found a file")
    if not args.drop > 0:
        raise CommandError(f"--drop: expected an accuracy drop above 0 points, got {args.drop:g}")
    drop = int(args.drop) if float(args.drop).is_integer() else args.drop
    # Inference (the sweep, every evaluation of the pruned and fine-tuned model) runs as the execution options
    # say; the fine-tuning steps themselves train in float32 on the execution's first device.
    with execution_from_args(args).placement():
        classifier, clean, poisoned = load_inputs(args)
        _, execution_report = configure_execution(args, classifier, clean)
        result = run_fine_pruning(classifier, clean, poisoned, args.out, layer=args.layer, drop=drop,
                                  count=args.channels, epochs=args.epochs, learning_rate=args.learning_rate,
                                  holdout_fraction=args.holdout, patience=args.patience, seed=args.seed,
                                  protect=[args.model, args.valid, *args.poisoned_valid], plot=not args.no_plot)
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
