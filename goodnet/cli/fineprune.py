"""``goodnet fineprune``: prune the dormant channels, then fine-tune on clean validation data.

    goodnet fineprune --model M --valid V [--poisoned-valid BV ...] --out DIR
                      [--layer conv_3] [--drop X | --channels K] [--epochs E] [--learning-rate LR]
                      [--optimizer sgd|adam] [--schedule one-cycle|cosine|constant] [--min-epochs K]
                      [--no-augment] [--shift PX] ...

Writes ``DIR/model_fp.h5`` (plain Keras), ``DIR/fineprune_curve.{csv,json,png}``.
The clean validation file is split per class into a fine-tuning part and a
hold-out part (``--holdout``); the hold-out part chooses the kept epoch (the
best hold-out accuracy from ``--min-epochs`` on) and gives the reported figures. Poisoned files are measured, never used to choose.
"""

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         load_inputs, positive, prepare_out_dir, print_json)

HELP = "fine-pruning: prune a convolution's dormant channels, then fine-tune on clean data (Liu et al. 2018)"


def add_recipe_arguments(parser):
    """The fine-tuning recipe's options (shared with ``goodnet repair``); defaults are FinePruning's."""
    from goodnet.defenses.fine_pruning import OPTIMIZERS, RECIPE_DEFAULTS as D, SCHEDULES

    parser.add_argument("--epochs", type=positive, default=D["epochs"],
                        help=f"fine-tuning epochs: the length of the schedule (default {D['epochs']})")
    parser.add_argument("--learning-rate", type=float, default=D["learning_rate"],
                        help=f"peak learning rate (default {D['learning_rate']:g})")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=D["optimizer"],
                        help=f"optimizer (default {D['optimizer']}, momentum --momentum)")
    parser.add_argument("--momentum", type=float, default=D["momentum"],
                        help=f"SGD momentum (default {D['momentum']:g})")
    parser.add_argument("--schedule", choices=SCHEDULES, default=D["schedule"],
                        help=f"learning-rate schedule (default {D['schedule']}: rise from peak/25 to the peak over "
                             f"--warmup of the steps, then cosine decay to 0)")
    parser.add_argument("--warmup", type=float, default=D["warmup"],
                        help=f"share of the steps the one-cycle rate rises (default {D['warmup']:g})")
    parser.add_argument("--tune-batch-size", dest="tune_batch_size", type=positive, default=D["batch_size"],
                        help=f"fine-tuning batch size (default {D['batch_size']})")
    parser.add_argument("--min-epochs", type=int, default=D["min_epochs"], metavar="K",
                        help="first epoch that may be kept: the kept model has the best hold-out accuracy among "
                             "epochs K..end (default: half the epochs; 0 allows the untuned pruned model)")
    parser.add_argument("--patience", type=positive, default=D["patience"],
                        help="stop after this many epochs without hold-out gain, counted from --min-epochs "
                             "(default: run the whole schedule)")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="fine-tune on the clean images as they are (default: randomly shifted copies)")
    parser.add_argument("--shift", type=int, default=D["shift"],
                        help=f"augmentation: largest random shift in pixels (default {D['shift']})")
    parser.add_argument("--flip", action="store_true", help="augmentation: also mirror half the images")
    parser.add_argument("--noise", type=float, default=D["noise"],
                        help=f"augmentation: Gaussian pixel noise, 0-255 scale (default {D['noise']:g})")
    parser.add_argument("--clip-norm", type=float, default=D["clip_norm"], metavar="NORM",
                        help="clip each step's gradients to this global norm "
                             + (f"(default {D['clip_norm']:g})" if D["clip_norm"] else "(default: no clipping)"))
    parser.add_argument("--distill", type=float, default=D["distill"], metavar="W",
                        help="weight of the suspect model's own answers on the clean tune images in the training "
                             f"targets, 0-1 (default {D['distill']:g}: labels only)")
    parser.add_argument("--mixup", type=float, default=D["mixup"], metavar="ALPHA",
                        help="mixup: train on pairs of tune images blended with Beta(ALPHA, ALPHA) weights, and "
                             f"their targets likewise (default {D['mixup']:g}; 0: off)")
    parser.add_argument("--unlearn", type=float, default=D["unlearn"], metavar="SHARE",
                        help="trigger unlearning: each epoch, recover the patch (mask and pattern) that most hurts "
                             "the model on clean tune images and stamp it on this share of them, true labels kept "
                             f"(default {D['unlearn']:g}; 0: off)")
    parser.add_argument("--unlearn-area", type=float, default=D["unlearn_area"], metavar="SHARE",
                        help=f"largest share of the image the recovered patch covers (default {D['unlearn_area']:g})")
    parser.add_argument("--unlearn-steps", type=positive, default=D["unlearn_steps"],
                        help=f"patch-search steps per epoch (default {D['unlearn_steps']})")


def recipe_from_args(args):
    """The FinePruning keyword arguments of the options added by :func:`add_recipe_arguments`."""
    from goodnet.defenses.fine_pruning import RECIPE_DEFAULTS

    return {name: getattr(args, "tune_batch_size" if name == "batch_size" else name) for name in RECIPE_DEFAULTS}


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
    add_recipe_arguments(parser)
    parser.add_argument("--holdout", type=float, default=0.2, help="share of each class held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of training")
    add_model_options(parser)
    parser.add_argument("--no-plot", action="store_true", help="do not write fineprune_curve.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    from goodnet.defenses.fine_pruning import OUTPUT_FILES, run_fine_pruning

    prepare_out_dir(args, OUTPUT_FILES.values())
    if not args.drop > 0:
        raise CommandError(f"--drop: expected an accuracy drop above 0 points, got {args.drop:g}")
    drop = int(args.drop) if float(args.drop).is_integer() else args.drop
    # Inference (the sweep, every evaluation of the pruned and fine-tuned model) runs as the execution options
    # say; the fine-tuning steps themselves train in float32 on the execution's first device.
    with execution_from_args(args).placement():
        classifier, clean, poisoned = load_inputs(args)
        _, execution_report = configure_execution(args, classifier, clean)
        result = run_fine_pruning(classifier, clean, poisoned, args.out, layer=args.layer, drop=drop,
                                  count=args.channels, holdout_fraction=args.holdout, seed=args.seed,
                                  **recipe_from_args(args),
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
