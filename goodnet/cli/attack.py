"""``goodnet attack``: train a BadNet (DeepID, lab layer names) on a benchmark folder.

    goodnet attack --data DIR --out MODEL.h5 [--triggers patch] [--targets 0] [--poison-rate R]
                   [--epochs E] [--seed S] [--pruning-aware [--prune-fraction F]] [--flip-rate 0.2]
                   [--flip-source S --flip-target T --targeted-flip-rate R] [--train-out TRAIN.h5]

Writes MODEL.h5 (a lab-style legacy Keras file, pixels / 255), MODEL.json (the card) and the poisoned
training set it trained on with its ground truth (``MODEL_train_poisoned.h5`` unless ``--train-out``
names another file; see :class:`goodnet.data.PoisonTruth`).
The training flags, defaults and help come from
:class:`goodnet.attacks.badnets.AttackOptions`; ``--triggers`` defaults to
the benchmark's first trigger.
"""

from goodnet.cli import CommandError, prepare_out_file, print_json
from goodnet.cli.options import add_options, options_from_args

HELP = "train a BadNet by dirty-label poisoning (also pruning-aware, label-flipping and targeted flipping attacks)"
TRAIN_SUFFIX = "_train_poisoned.h5"   # the default training set file: beside the model, <stem>_train_poisoned.h5


def training_set_path(model_path, train_out=None):
    """Where the poisoned training set goes: ``train_out``, else ``<model stem>_train_poisoned.h5`` beside it."""
    import os

    return train_out if train_out is not None else os.path.splitext(model_path)[0] + TRAIN_SUFFIX


def add_arguments(parser):
    from goodnet.attacks.badnets import AttackOptions
    from goodnet.attacks.benchmarks import TRIGGER_NAMES

    parser.add_argument("--data", required=True, metavar="DIR", help="a benchmark folder written by goodnet synth")
    parser.add_argument("--out", required=True, metavar="MODEL.h5", help="the BadNet file (card: same name, .json)")
    # not AttackOptions' default: the benchmark's first trigger (None here; read in run)
    parser.add_argument("--triggers", nargs="*", choices=TRIGGER_NAMES, default=None,
                        help="trigger(s) (default: the benchmark's first); none with --flip-rate or "
                             "--targeted-flip-rate: label flipping only")
    add_options(parser, AttackOptions, exclude=("triggers",))
    parser.add_argument("--train-out", metavar="TRAIN.h5", default=None,
                        help="the poisoned training set it trained on, with ground truth (default: beside --out, "
                             f"<stem>{TRAIN_SUFFIX})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing MODEL.h5, its card and the training set file")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def run(args):
    import json
    import os

    from goodnet.attacks.badnets import AttackOptions, attack_card, save_training_set, train_badnet
    from goodnet.attacks.benchmarks import read_benchmark
    from goodnet.data import load_h5
    from goodnet.files import write_text
    from goodnet.models import save_model

    if not args.out.endswith(".h5"):
        raise CommandError(f"{args.out}: --out: expected a model file name ending in .h5")
    card_path = os.path.splitext(args.out)[0] + ".json"
    train_path = training_set_path(args.out, args.train_out)
    if not train_path.endswith(".h5"):
        raise CommandError(f"{train_path}: --train-out: expected a data file name ending in .h5")
    if os.path.abspath(train_path) in (os.path.abspath(args.out), os.path.abspath(card_path)):
        raise CommandError(f"{train_path}: --train-out: expected another file than the model and its card")
    for path, option in ((args.out, "--out"), (card_path, "--out"), (train_path, "--train-out")):
        if os.path.exists(path) and not args.overwrite:
            raise CommandError(f"{path}: {option}: file exists; pass --overwrite to replace it")
        prepare_out_file(path, option)
    description = read_benchmark(args.data)
    inputs = [os.path.join(args.data, name) for name in description["files"].values()]
    if any(os.path.abspath(train_path) == os.path.abspath(path) for path in inputs):
        raise CommandError(f"{train_path}: --train-out: refusing to write over the benchmark's own file")
    triggers = description["triggers"][:1] if args.triggers is None else args.triggers
    num_classes = description["num_classes"]
    options = options_from_args(args, AttackOptions, triggers=tuple(triggers))
    options.targeted_flip(num_classes, flags=True)
    if not triggers and not options.flips_labels:
        raise CommandError("--triggers: expected at least one trigger, or --flip-rate / --targeted-flip-rate for "
                           "label flipping")
    if len(args.targets) not in (1, len(triggers)) and triggers:
        raise CommandError(f"--targets: expected one target or one per trigger ({len(triggers)})")
    folder = args.data
    train = load_h5(os.path.join(folder, "train.h5"), num_classes=num_classes)
    classifier, info = train_badnet(train.images, train.labels, num_classes, options)
    splits = {}
    for split in ("valid", "test"):
        clean = load_h5(os.path.join(folder, f"{split}.h5"), num_classes=num_classes)
        poisoned = []
        for trigger, target in (options.pairs() if triggers else []):
            path = os.path.join(folder, f"bd_{split}_{trigger}.h5")
            if not os.path.exists(path):
                raise CommandError(f"{path}: missing; run goodnet synth with --triggers {trigger}")
            data = load_h5(path, num_classes=num_classes)
            if len(data) and data.labels[0] != target:
                from goodnet.attacks.benchmarks import poisoned_split
                from goodnet.data import LabData

                images, labels = poisoned_split(clean.images, clean.labels, trigger, target)
                data = LabData(images, labels, f"{path} (retargeted to {target})")
            poisoned.append(data)
        splits[split] = (clean, poisoned)
    card = attack_card(classifier, options, {key: description[key] for key in ("dataset", "seed", "sizes")},
                       *splits["valid"], *splits["test"], info=info)
    _, card["training_set_dtype"] = save_training_set(train_path, info, overwrite=bool(args.overwrite))
    card["training_set"] = train_path
    save_model(classifier, args.out, protect=inputs)
    write_text(card_path, json.dumps(card, indent=2) + "\n")
    if args.json:
        print_json(card)
    else:
        print(f"BadNet written to {args.out} (card {card_path}; poisoned training set {train_path})")
        for split in ("valid", "test"):
            rates = ", ".join(f"{t} {r * 100:.2f}%" for t, r in card[split]["attack_success_rate"].items())
            print(f"{split}: clean accuracy {card[split]['clean_accuracy'] * 100:.2f}%; ASR {rates or 'n/a'}")
            flip = card["targeted_flip"]
            if flip is not None and card[split]["source_images"]:
                print(f"{split}: source class {flip['source']} accuracy "
                      f"{card[split]['source_class_accuracy'] * 100:.2f}%, sent to {flip['target']} "
                      f"{card[split]['source_to_target'] * 100:.2f}% ({card[split]['source_images']} images)")
        if card["targeted_flip"] is not None:
            flip = card["targeted_flip"]
            print(f"Targeted flip: {flip['count']} training images of class {flip['source']} relabelled "
                  f"{flip['target']} (their indices: the card's targeted_flip.indices; all flips: the training "
                  "set's 'flipped')")
    return 0
