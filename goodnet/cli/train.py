"""``goodnet train``: train a DeepID (the attack kit's recipe) on any lab-layout training file.

    goodnet train --data TRAIN.h5 --valid VALID.h5 --out MODEL.h5 [--poisoned-valid BD.h5 ...]
                  [--num-classes N] [--epochs E] [--batch-size B] [--learning-rate R] [--seed S]
                  [--json] [--overwrite] [--no-progress]

Trains :func:`goodnet.training.train_deepid` on TRAIN.h5 (a cleaned set, or
the poisoned training set ``goodnet attack`` wrote, whose ground truth the
card then summarises), and writes MODEL.h5 (a lab-style legacy Keras file,
pixels / 255, the lab's layer names) and MODEL.json (the card: data paths,
options, training images and seconds, clean accuracy on VALID and the attack
success rate on each --poisoned-valid file). The recipe's flags, defaults and
help come from :class:`goodnet.training.TrainOptions`.
"""

from goodnet.cli import CommandError, prepare_out_file, print_json
from goodnet.cli.options import add_options, check_options, options_from_args

HELP = "train a DeepID (the attack's recipe) on a lab-layout training file, e.g. a cleaned training set"


def add_arguments(parser):
    from goodnet.training import TrainOptions

    parser.add_argument("--data", required=True, metavar="TRAIN.h5", help="the lab-layout training file")
    parser.add_argument("--valid", required=True, metavar="VALID.h5", help="clean validation file: clean accuracy")
    parser.add_argument("--poisoned-valid", nargs="+", action="extend", default=[], metavar="FILE",
                        help="poisoned validation file(s) (labels = the attack's targets): attack success rate of each")
    parser.add_argument("--out", required=True, metavar="MODEL.h5", help="the model file (card: same name, .json)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the model (default: the largest label of the data files + 1)")
    add_options(parser, TrainOptions)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing MODEL.h5 and its card")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _check_outputs(args, inputs):
    """The model and card paths, checked before any work: an .h5 name, no input, no file in the way."""
    import os

    if not args.out.endswith(".h5"):
        raise CommandError(f"{args.out}: --out: expected a model file name ending in .h5")
    card_path = os.path.splitext(args.out)[0] + ".json"
    for path in (args.out, card_path):
        if any(os.path.abspath(path) == os.path.abspath(source) for source in inputs):
            raise CommandError(f"{path}: --out: refusing to write over the input file")
        if os.path.exists(path) and not args.overwrite:
            raise CommandError(f"{path}: --out: file exists; pass --overwrite to replace it")
        prepare_out_file(path)
    return card_path


def _num_classes(args, datasets):
    """``--num-classes``, else the largest label of every data file + 1; each file's labels checked against it."""
    if args.num_classes is not None:
        if args.num_classes < 2:
            raise CommandError(f"--num-classes: expected an integer >= 2, got {args.num_classes}")
        num_classes = args.num_classes
    else:
        num_classes = max(int(data.labels.max()) for data in datasets) + 1
        if num_classes < 2:
            raise CommandError(f"{datasets[0].path}: label: every label is 0; a classifier needs at least two "
                               "classes (pass --num-classes)")
    for data in datasets:
        data.check_classes(num_classes)
    return num_classes


def training_card(args, options, train, num_classes, truth, seconds, figures, poisoned):
    """The JSON card of a model trained by ``goodnet train``."""
    import dataclasses

    from goodnet.reports import dataset_names
    from goodnet.training import RECIPE

    return {"architecture": "DeepID (CSAW-HackML-2020 lab layout)", "recipe": RECIPE,
            "data": {"train": args.data, "valid": args.valid, "poisoned_valid": list(args.poisoned_valid)},
            "num_classes": num_classes, "scale": "unit", "options": dataclasses.asdict(options),
            "training_images": len(train), "training_seconds": round(seconds, 2),
            "ground_truth": None if truth is None else {key: value for key, value in truth.counts().items()
                                                         if key != "images"},
            "valid": {"clean_accuracy": figures["clean_accuracy"], "clean_images": figures["clean_images"],
                      "attack_success_rate": {name: entry["attack_success_rate"] for name, entry in
                                              zip(dataset_names(poisoned), figures.get("poisoned", []))}}}


def run(args):
    import os
    import time

    from goodnet.data import load_h5, load_poison_truth
    from goodnet.metrics import evaluate
    from goodnet.models import save_model
    from goodnet.reports import json_text
    from goodnet.files import write_text
    from goodnet.training import TrainOptions, epoch_progress, train_deepid

    options = check_options(options_from_args(args, TrainOptions))
    inputs = [args.data, args.valid, *args.poisoned_valid]
    card_path = _check_outputs(args, inputs)
    train = load_h5(args.data)
    truth = load_poison_truth(args.data)
    valid = load_h5(args.valid)
    poisoned = [load_h5(path) for path in args.poisoned_valid]
    num_classes = _num_classes(args, [train, valid, *poisoned])
    callbacks = [] if args.no_progress else [epoch_progress(options.epochs, description="train")]
    start = time.perf_counter()
    classifier = train_deepid(train.images, train.labels, num_classes, options, callbacks=callbacks)
    seconds = time.perf_counter() - start
    figures = evaluate(classifier, valid, poisoned, progress=False if args.no_progress else None)
    card = training_card(args, options, train, num_classes, truth, seconds, figures, poisoned)
    save_model(classifier, args.out, protect=inputs)
    write_text(card_path, json_text(card), protect=inputs)
    if args.json:
        print_json(card)
    else:
        print(f"Model written to {args.out} (card {card_path})")
        print(f"Trained on {card['training_images']} images ({num_classes} classes) in {seconds:.1f} s")
        if truth is not None:
            print(f"Ground truth of {args.data}: {card['ground_truth']['poisoned']} poisoned, "
                  f"{card['ground_truth']['flipped']} flipped labels")
        print(f"Clean accuracy on {os.path.basename(args.valid)}: {figures['clean_accuracy'] * 100:.2f}%")
        for name, rate in card["valid"]["attack_success_rate"].items():
            print(f"Attack success rate on {name}: {rate * 100:.2f}%")
    return 0
