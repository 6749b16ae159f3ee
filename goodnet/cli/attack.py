"""``goodnet attack``: train a BadNet (DeepID, lab layer names) on a benchmark folder.

    goodnet attack --data DIR --out MODEL.h5 [--triggers patch] [--targets 0] [--poison-rate 0.1]
                   [--epochs 8] [--seed 0] [--pruning-aware [--prune-fraction 0.5]] [--flip-rate 0.2]

Writes MODEL.h5 (a lab-style legacy Keras file, pixels / 255) and MODEL.json (the card).
"""

from goodnet.cli import CommandError, positive, prepare_out_file, print_json

HELP = "train a BadNet by dirty-label poisoning (also pruning-aware and label-flipping attacks)"


def add_arguments(parser):
    from goodnet.attacks.triggers import TRIGGERS

    parser.add_argument("--data", required=True, metavar="DIR", help="a benchmark folder written by goodnet synth")
    parser.add_argument("--out", required=True, metavar="MODEL.h5", help="the BadNet file (card: same name, .json)")
    parser.add_argument("--triggers", nargs="*", choices=sorted(TRIGGERS), default=None,
                        help="trigger(s) (default: the benchmark's first); none with --flip-rate: label flipping only")
    parser.add_argument("--targets", nargs="+", type=int, default=[0], help="target per trigger (default 0)")
    parser.add_argument("--poison-rate", type=float, default=0.1, help="share of training images per trigger")
    parser.add_argument("--epochs", type=positive, default=8, help="training epochs (default 8)")
    parser.add_argument("--batch-size", type=positive, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="initial Adam rate, cosine-decayed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pruning-aware", action="store_true",
                        help="pruning-aware attack: train clean, prune dormant conv_3 channels, retrain poisoned, "
                             "restore them (Liu et al. 2018)")
    parser.add_argument("--prune-fraction", type=float, default=0.5, help="share of conv_3 channels pruned (0.5)")
    parser.add_argument("--flip-rate", type=float, default=0.0, help="label-flipping attack: share of labels flipped")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing MODEL.h5 and its card")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def run(args):
    import json
    import os

    from goodnet.attacks.badnets import AttackOptions, attack_card, train_badnet
    from goodnet.attacks.benchmarks import read_benchmark
    from goodnet.data import load_h5
    from goodnet.files import write_text
    from goodnet.models import save_model

    if not args.out.endswith(".h5"):
        raise CommandError(f"{args.out}: --out: expected a model file name ending in .h5")
    card_path = os.path.splitext(args.out)[0] + ".json"
    for path in (args.out, card_path):
        if os.path.exists(path) and not args.overwrite:
            raise CommandError(f"{path}: --out: file exists; pass --overwrite to replace it")
        prepare_out_file(path)
    description = read_benchmark(args.data)
    triggers = description["triggers"][:1] if args.triggers is None else args.triggers
    if not triggers and not args.flip_rate:
        raise CommandError("--triggers: expected at least one trigger, or --flip-rate for label flipping")
    if len(args.targets) not in (1, len(triggers)) and triggers:
        raise CommandError(f"--targets: expected one target or one per trigger ({len(triggers)})")
    num_classes = description["num_classes"]
    folder = args.data
    train = load_h5(os.path.join(folder, "train.h5"), num_classes=num_classes)
    options = AttackOptions(tuple(triggers), tuple(args.targets), args.poison_rate, args.epochs, args.batch_size,
                            args.learning_rate, args.seed, args.pruning_aware, args.prune_fraction,
                            flip_rate=args.flip_rate)
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
    save_model(classifier, args.out, protect=[os.path.join(folder, name) for name in description["files"].values()])
    write_text(card_path, json.dumps(card, indent=2) + "\n")
    if args.json:
        print_json(card)
    else:
        print(f"BadNet written to {args.out} (card {card_path})")
        for split in ("valid", "test"):
            rates = ", ".join(f"{t} {r * 100:.2f}%" for t, r in card[split]["attack_success_rate"].items())
            print(f"{split}: clean accuracy {card[split]['clean_accuracy'] * 100:.2f}%; ASR {rates or 'n/a'}")
    return 0
