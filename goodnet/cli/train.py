"""``goodnet train``: train a DeepID (the attack kit's recipe) on any lab-layout training file, alone or as a
training-time defense (bagging, Deep Partition Aggregation).

    goodnet train --data TRAIN.h5 --valid VALID.h5 --out MODEL.h5 [--poisoned-valid BD.h5 ...]
                  [--defense none|bagging|dpa|dp-sgd] [--models K | --partitions K] [--sample-fraction F]
                  [--no-bootstrap] [--partition-hash sha256|pixel-sum] [--no-match-steps]
                  [--clip-norm C] [--noise-multiplier S | --target-epsilon EPS] [--delta D]
                  [--conversion tight|classic] [--optimizer adam|sgd]
                  [--num-classes N] [--epochs E] [--batch-size B] [--learning-rate R] [--seed S]
                  [--json] [--overwrite] [--no-progress]

Trains :func:`goodnet.training.train_deepid` on TRAIN.h5 (a cleaned set, or
the poisoned training set ``goodnet attack`` wrote, whose ground truth the
card then summarises), and writes MODEL.h5 (a lab-style legacy Keras file,
pixels / 255) and MODEL.json (the card: data paths, options, training images
and seconds, clean accuracy on VALID and the attack success rate on each
--poisoned-valid file). The recipe's flags, defaults and help come from
:class:`goodnet.training.TrainOptions`.

``--defense bagging`` (:class:`goodnet.defenses.bagging.Bagging`) trains K
models on bootstrap samples and saves them as one model averaging their
softmax; ``--defense dpa``
(:class:`goodnet.defenses.partition_aggregation.PartitionAggregation`) trains
one model per hash partition and saves them as one voting model, and writes
the certified-accuracy curve on VALID (``MODEL_certified_accuracy.csv`` and
``.png`` beside the model; also in the card). Their flags come from
:class:`~goodnet.defenses.bagging.BaggingOptions` and
:class:`~goodnet.defenses.partition_aggregation.PartitionOptions`; every
member uses the recipe's flags (member k: ``--seed`` + k), for ``--epochs``
divided by its share of the data (bagging: the sample fraction, dpa: 1/K)
unless ``--no-match-steps``.

``--defense dp-sgd`` (:class:`goodnet.defenses.dp_sgd.DPSGD`) trains one
DeepID with differentially private SGD: Poisson batches of expected size
--batch-size, per-example gradients clipped to --clip-norm, Gaussian noise
of --noise-multiplier (or the smallest one meeting --target-epsilon), and
prints the privacy budget epsilon at --delta after every epoch (on stderr);
the card holds epsilon under both conversions and the per-epoch history. Its
flags come from :class:`~goodnet.defenses.dp_sgd.DPSGDOptions`; --epochs,
--batch-size, --learning-rate and --seed are the recipe's flags, and when
one is not given each defense takes its own default (DP-SGD's are the
privacy setting's: ``goodnet privacy-budget`` with the same flags prints the
budget of the same run). A defense is one entry of :data:`DEFENSES`.
"""

import dataclasses

from goodnet.cli import CommandError, prepare_out_file, print_json
from goodnet.cli.options import add_options, check_options, options_from_args, positive_integer

HELP = ("train a DeepID (the attack's recipe) on a lab-layout training file, e.g. a cleaned training set; "
        "or a bagged or partition-aggregated (DPA) ensemble of them")
CURVE_SUFFIX = "_certified_accuracy"   # DPA: MODEL_certified_accuracy.csv / .png beside the model


def _bagging():
    from goodnet.defenses.bagging import Bagging, BaggingOptions

    return Bagging, BaggingOptions


def _dpa():
    from goodnet.defenses.partition_aggregation import PartitionAggregation, PartitionOptions

    return PartitionAggregation, PartitionOptions


def _dp_sgd():
    from goodnet.defenses.dp_sgd import DPSGD, DPSGDOptions

    return DPSGD, DPSGDOptions


# --defense NAME -> None (one model) or a function returning (the Defense class, its option dataclass): an
# ensemble is built with Defense.from_options(options, recipe=..., progress=...), DP-SGD (its own trainer) with
# Defense.from_options(options, progress=...); each is fitted on the training set.
DEFENSES = {"none": None, "bagging": _bagging, "dpa": _dpa, "dp-sgd": _dp_sgd}
TRAINERS = ("dp-sgd",)   # defenses that train the model themselves: the recipe's flags are their own fields


def add_arguments(parser):
    from goodnet.training import TrainOptions

    parser.add_argument("--data", required=True, metavar="TRAIN.h5", help="the lab-layout training file")
    parser.add_argument("--valid", required=True, metavar="VALID.h5", help="clean validation file: clean accuracy")
    parser.add_argument("--poisoned-valid", nargs="+", action="extend", default=[], metavar="FILE",
                        help="poisoned validation file(s) (labels = the attack's targets): attack success rate of each")
    parser.add_argument("--out", required=True, metavar="MODEL.h5", help="the model file (card: same name, .json)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the model (default: the largest label of the data files + 1)")
    add_options(parser, TrainOptions, unset=True)   # a flag not given: each defense's own default
    parser.add_argument("--defense", choices=tuple(DEFENSES), default="none",
                        help="none: one model; bagging: K models on bootstrap samples, softmax averaged; dpa: Deep "
                             "Partition Aggregation, K models on hash partitions, majority vote with certificates; "
                             "dp-sgd: differentially private SGD with a privacy budget (default none)")
    _, dp_options = _dp_sgd()
    dp_defaults = dp_options()
    shared = ", ".join(f"--{name.replace('_', '-')} {getattr(dp_defaults, name):g}" for name in _recipe_names()
                       if name in {field.name for field in dataclasses.fields(dp_options)})
    group = parser.add_argument_group("training-time defenses (--defense " + " / ".join(
        name for name, entry in DEFENSES.items() if entry is not None) + ")",
        f"dp-sgd takes the recipe's flags for its own settings; when not given, its defaults: {shared}")
    seen = set(_recipe_names())
    for entry in DEFENSES.values():
        if entry is not None:   # a field two defenses share (models) gets one flag
            _, option_class = entry()
            add_options(group, option_class, exclude=tuple(seen))
            seen.update(field.name for field in dataclasses.fields(option_class))
    group.add_argument("--partitions", type=positive_integer, default=None, metavar="K",
                       help="dpa: the number of partitions, one model each (the same as --models)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing MODEL.h5, its card and (dpa) its certified-accuracy files")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _recipe_names():
    from goodnet.training import TrainOptions

    return tuple(field.name for field in dataclasses.fields(TrainOptions))


def curve_paths(model_path):
    """DPA's certified-accuracy files beside the model: ``<stem>_certified_accuracy.csv`` and ``.png``."""
    import os

    stem = os.path.splitext(model_path)[0] + CURVE_SUFFIX
    return stem + ".csv", stem + ".png"


def _check_outputs(args, inputs):
    """The model and card paths, checked before any work: an .h5 name, no input, no file in the way."""
    import os

    if not args.out.endswith(".h5"):
        raise CommandError(f"{args.out}: --out: expected a model file name ending in .h5")
    card_path = os.path.splitext(args.out)[0] + ".json"
    for path in (args.out, card_path) + (curve_paths(args.out) if args.defense == "dpa" else ()):
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


def defense_options(args):
    """The option dataclass of ``--defense`` built from the flags (None for ``none``), checked."""
    entry = DEFENSES[args.defense]
    if args.partitions is not None and args.defense != "dpa":
        raise CommandError(f"--partitions: DPA's number of partitions, expected with --defense dpa "
                           f"(got --defense {args.defense}; bagging's member count is --models)")
    if entry is None:
        return None
    _, option_class = entry()
    overrides = {"models": args.partitions} if args.partitions is not None else {}
    return check_options(options_from_args(args, option_class, **overrides))


def _print_epoch(line):
    import sys

    print(f"dp-sgd {line}", file=sys.stderr, flush=True)


def train_defense(args, options, defended, train, num_classes, valid=None):
    """Fit ``--defense`` on the training set; returns (the fitted defense, or None for ``none``; the
    Classifier to save)."""
    from goodnet.training import epoch_progress, train_deepid

    if defended is None:
        callbacks = [] if args.no_progress else [epoch_progress(options.epochs, description="train")]
        return None, train_deepid(train.images, train.labels, num_classes, options, callbacks=callbacks)
    defense_class, _ = DEFENSES[args.defense]()
    if args.defense in TRAINERS:
        defense = defense_class.from_options(defended, progress=False if args.no_progress else _print_epoch)
        defense.fit(train.images, train.labels, num_classes, valid=valid)
        return defense, defense.model_
    defense = defense_class.from_options(defended, recipe=options, progress=False if args.no_progress else None)
    defense.fit(train.images, train.labels, num_classes)
    return defense, defense.ensemble_


def defense_card(args, options, defended, defense, seconds, train):
    """The card's defense part: the defense, its options, its members' images and training seconds."""
    if defense is None:
        return {"defense": "none", "defense_options": None, "members": 1, "member_images": [len(train)],
                "member_epochs": options.epochs, "member_training_seconds": [round(seconds, 2)]}
    summary = defense.summary()
    if args.defense in TRAINERS:
        keys = ("noise_multiplier", "steps", "sampling_probability", "delta", "epsilon", "mean_batch_size",
                "history", "warnings")
        return {"defense": args.defense, "defense_options": dataclasses.asdict(defended), "members": 1,
                "member_images": [len(train)], "member_epochs": defended.epochs,
                "member_training_seconds": [round(seconds, 2)], "privacy": {key: summary[key] for key in keys}}
    card = {"defense": args.defense, "defense_options": dataclasses.asdict(defended),
            "members": summary["members"], "member_images": summary["member_images"],
            "member_epochs": summary["member_epochs"],
            "member_training_seconds": [round(value, 2) for value in summary["member_seconds"]]}
    if "partition_sizes" in summary:
        card["partition_sizes"] = summary["partition_sizes"]
    if "distinct_images" in summary:
        card["member_distinct_images"] = summary["distinct_images"]
    return card


def training_card(args, options, train, num_classes, truth, seconds, figures, poisoned):
    """The JSON card of a model trained by ``goodnet train``."""
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
    import sys
    import time

    from goodnet.data import load_h5, load_poison_truth
    from goodnet.metrics import evaluate
    from goodnet.models import save_model
    from goodnet.reports import json_text, write_csv
    from goodnet.files import write_text
    from goodnet.training import TrainOptions

    options = check_options(options_from_args(args, TrainOptions))
    defended = defense_options(args)
    inputs = [args.data, args.valid, *args.poisoned_valid]
    card_path = _check_outputs(args, inputs)
    train = load_h5(args.data)
    truth = load_poison_truth(args.data)
    valid = load_h5(args.valid)
    poisoned = [load_h5(path) for path in args.poisoned_valid]
    num_classes = _num_classes(args, [train, valid, *poisoned])
    start = time.perf_counter()
    defense, classifier = train_defense(args, options, defended, train, num_classes, valid)
    seconds = time.perf_counter() - start
    figures = evaluate(classifier, valid, poisoned, progress=False if args.no_progress else None)
    card = training_card(args, options, train, num_classes, truth, seconds, figures, poisoned)
    card.update(defense_card(args, options, defended, defense, seconds, train))
    if args.defense in TRAINERS:   # its own trainer: the recipe's options are not what trained the model
        card["recipe"], card["options"] = defense.RECIPE, None
    curve = None
    if args.defense == "dpa":
        from goodnet.plots import plot_certified_accuracy

        curve = defense.certified_accuracy(valid.images, valid.labels)
        csv_path, png_path = curve_paths(args.out)
        card["valid"]["certified_accuracy"] = curve
        card["certified_accuracy_files"] = {"csv": csv_path, "png": png_path}
    save_model(classifier, args.out, protect=inputs)
    write_text(card_path, json_text(card), protect=inputs)
    if curve is not None:
        write_csv(csv_path, curve["rows"], columns=("radius", "certified_accuracy", "certified"), protect=inputs)
        plot_certified_accuracy({os.path.basename(args.valid): curve}, png_path,
                                title=f"DPA certified accuracy ({card['members']} partitions)")
    if args.json:
        print_json(card)
    else:
        print(f"Model written to {args.out} (card {card_path})")
        members = "" if defense is None else f" as {args.defense} of {card['members']} models"
        print(f"Trained on {card['training_images']} images ({num_classes} classes){members} in {seconds:.1f} s")
        if truth is not None:
            print(f"Ground truth of {args.data}: {card['ground_truth']['poisoned']} poisoned, "
                  f"{card['ground_truth']['flipped']} flipped labels")
        print(f"Clean accuracy on {os.path.basename(args.valid)}: {figures['clean_accuracy'] * 100:.2f}%")
        for name, rate in card["valid"]["attack_success_rate"].items():
            print(f"Attack success rate on {name}: {rate * 100:.2f}%")
        if "privacy" in card:
            privacy = card["privacy"]
            print(f"Privacy budget: epsilon {privacy['epsilon']['tight']['epsilon']:.3f} (tight, dp-accounting's "
                  f"conversion), {privacy['epsilon']['classic']['epsilon']:.3f} (classic RDP conversion) at delta "
                  f"{privacy['delta']:g}; noise multiplier {privacy['noise_multiplier']:.4g}, "
                  f"{privacy['steps']} steps of expected batch {defended.batch_size}")
            for warning in privacy["warnings"]:
                print(f"warning: {warning}", file=sys.stderr)
        if curve is not None:
            median = curve["median_certified_radius"]
            steps = ", ".join(f"r={row['radius']} {row['certified_accuracy'] * 100:.1f}%"
                              for row in curve["rows"][:6])
            print(f"Certified accuracy on {os.path.basename(args.valid)}: {steps}"
                  f"{' ...' if len(curve['rows']) > 6 else ''}; median certified radius "
                  f"{'n/a' if median is None else median} ({csv_path}, {png_path})")
    return 0
