"""``goodnet attack``: train a BadNet (DeepID, lab layer names) on a benchmark folder.

    goodnet attack --data DIR --out MODEL.h5 [--attack dirty-label|clean-label|learnable-patch|ban]
                   [--triggers patch] [--targets 0] [--poison-rate R] [--epochs E] [--seed S]
                   [--pruning-aware [--prune-fraction F]] [--flip-rate 0.2]
                   [--flip-source S --flip-target T --targeted-flip-rate R] [--train-out TRAIN.h5]
                   [--pgd-epsilon 8 --pgd-step 1.5 --pgd-steps 100 --pgd-random-start --trigger-amplitude A]
                   [--patch-size 7 --patch-row R --patch-column C --patch-steps N --patch-learning-rate L]
                   [--noise-dim 16 --trigger-size 5 --generator-learning-rate L]

Writes MODEL.h5 (a lab-style legacy Keras file, pixels / 255), MODEL.json (the card) and the poisoned
training set it trained on with its ground truth (``MODEL_train_poisoned.h5`` unless ``--train-out``
names another file; see :class:`goodnet.data.PoisonTruth`).

``--attack clean-label`` (Turner et al. 2019) poisons ``--poison-rate`` of the target class's images (PGD on
a clean DeepID, then the trigger at ``--trigger-amplitude``, true labels kept); its ASR is measured on the
benchmark's ``bd_<split>_<trigger>.h5`` files (the full trigger). ``--attack learnable-patch`` learns the
trigger on a clean DeepID, so the command also writes, beside the model, the patch
(``MODEL_patch.npy``: uint8 pixels, (size, size, 3); its place is in the card's ``attack_settings``) and the
poisoned files made with it (``MODEL_bd_valid.h5``, ``MODEL_bd_test.h5``: the clean images of the
benchmark's valid and test not of the target, patched, labelled with the target), on which the card's ASR is
measured; ``--triggers`` is not used then (the benchmark's trigger is not taken).

``--attack ban`` (BaN, Salem et al. 2022; with several ``--targets``, c-BaN: the generator is conditioned on
the target) trains a trigger generator with the model (:mod:`goodnet.attacks.ban`), each batch getting
``--poison-rate`` x batch backdoored copies with fresh triggers at fresh corner places. It takes no
``--triggers`` and writes, beside the model, the generator (``MODEL_generator.npz``: weights and settings,
no code; :func:`goodnet.attacks.ban.load_generator`) and the poisoned files made with it, each image with its
own trigger and place, in whole pixels (``MODEL_bd_valid.h5``, ``MODEL_bd_test.h5``; c-BaN one per target:
``MODEL_bd_valid_target<T>.h5``), on which the card's ASR (per target) is measured. Its training set file is
the clean training set followed by one epoch's share of backdoored copies drawn with the trained generator,
with their ground truth (BaN draws its backdoored inputs afresh at each step).

The training flags, defaults and help come from
:class:`goodnet.attacks.badnets.AttackOptions`; ``--triggers`` defaults to
the benchmark's first trigger.
"""

from goodnet.cli import CommandError, prepare_out_file, print_json
from goodnet.cli.options import add_options, check_options, options_from_args

HELP = ("train a BadNet by dirty-label poisoning (also clean-label, learnable-patch, BaN / c-BaN, "
        "pruning-aware, label-flipping and targeted flipping attacks)")
TRAIN_SUFFIX = "_train_poisoned.h5"   # the default training set file: beside the model, <stem>_train_poisoned.h5
PATCH_SUFFIX = "_patch.npy"           # learnable-patch: the learned patch, beside the model
POISONED_SUFFIX = "_bd_{split}.h5"    # learnable-patch, BaN: the poisoned valid and test files made with it
TARGET_SUFFIX = "_bd_{split}_target{target}.h5"   # c-BaN: one poisoned file per split and target
GENERATOR_SUFFIX = "_generator.npz"   # BaN: the trained generator, beside the model


def training_set_path(model_path, train_out=None):
    """Where the poisoned training set goes: ``train_out``, else ``<model stem>_train_poisoned.h5`` beside it."""
    import os

    return train_out if train_out is not None else os.path.splitext(model_path)[0] + TRAIN_SUFFIX


def patch_paths(model_path):
    """The learnable-patch attack's files beside the model: ``{"patch": ..., "valid": ..., "test": ...}``."""
    import os

    stem = os.path.splitext(model_path)[0]
    return {"patch": stem + PATCH_SUFFIX, **{split: stem + POISONED_SUFFIX.format(split=split)
                                             for split in ("valid", "test")}}


def ban_paths(model_path, targets):
    """BaN's files beside the model: ``{"generator": ..., "valid": [...], "test": [...]}`` (a poisoned file per
    target, in order: ``<stem>_bd_<split>.h5`` for one target, ``<stem>_bd_<split>_target<T>.h5`` for c-BaN)."""
    import os

    stem = os.path.splitext(model_path)[0]
    paths = {"generator": stem + GENERATOR_SUFFIX}
    for split in ("valid", "test"):
        paths[split] = ([stem + POISONED_SUFFIX.format(split=split)] if len(targets) == 1 else
                        [stem + TARGET_SUFFIX.format(split=split, target=target) for target in targets])
    return paths


def add_arguments(parser):
    from goodnet.attacks.badnets import AttackOptions
    from goodnet.attacks.benchmarks import TRIGGER_NAMES

    parser.add_argument("--data", required=True, metavar="DIR", help="a benchmark folder written by goodnet synth")
    parser.add_argument("--out", required=True, metavar="MODEL.h5", help="the BadNet file (card: same name, .json)")
    # not AttackOptions' default: the benchmark's first trigger (None here; read in run)
    parser.add_argument("--triggers", nargs="*", choices=TRIGGER_NAMES, default=None,
                        help="trigger(s) (default: the benchmark's first; none with --attack learnable-patch or "
                             "ban); "
                             "none with --flip-rate or --targeted-flip-rate: label flipping only")
    add_options(parser, AttackOptions, exclude=("triggers",))
    parser.add_argument("--train-out", metavar="TRAIN.h5", default=None,
                        help="the poisoned training set it trained on, with ground truth (default: beside --out, "
                             f"<stem>{TRAIN_SUFFIX})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing MODEL.h5, its card, the training set file (and the "
                             "learnable-patch attack's patch, the ban attack's generator, and their poisoned "
                             "files)")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def _poisoned_splits(folder, options, num_classes, splits):
    """Per split, the benchmark's poisoned file of each (trigger, target), retargeted when its target differs."""
    import os

    from goodnet.attacks.benchmarks import poisoned_split
    from goodnet.data import LabData, load_h5

    poisoned = {}
    for split, clean in splits.items():
        poisoned[split] = []
        for trigger, target in (options.pairs() if options.triggers else []):
            path = os.path.join(folder, f"bd_{split}_{trigger}.h5")
            if not os.path.exists(path):
                raise CommandError(f"{path}: missing; run goodnet synth with --triggers {trigger}")
            data = load_h5(path, num_classes=num_classes)
            if len(data) and data.labels[0] != target:
                images, labels = poisoned_split(clean.images, clean.labels, trigger, target)
                data = LabData(images, labels, f"{path} (retargeted to {target})")
            poisoned[split].append(data)
    return poisoned


def run(args):
    import json
    import os

    from goodnet.attacks.badnets import AttackOptions, attack_card, save_training_set, train_badnet
    from goodnet.attacks.benchmarks import read_benchmark
    from goodnet.data import LabData, load_h5, save_h5
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
    learnable = args.attack == "learnable-patch"
    ban = args.attack == "ban"
    extra = patch_paths(args.out) if learnable else ban_paths(args.out, args.targets) if ban else {}
    extra_files = [path for value in extra.values() for path in ([value] if isinstance(value, str) else value)]
    if any(os.path.abspath(train_path) == os.path.abspath(path) for path in extra_files):
        raise CommandError(f"{train_path}: --train-out: expected another file than the "
                           f"{'generator' if ban else 'learned patch'}'s files")
    outputs = [(args.out, "--out"), (card_path, "--out"), (train_path, "--train-out")]
    outputs += [(path, "--out") for path in extra_files]
    for path, option in outputs:
        if os.path.exists(path) and not args.overwrite:
            raise CommandError(f"{path}: {option}: file exists; pass --overwrite to replace it")
        prepare_out_file(path, option)
    description = read_benchmark(args.data)
    inputs = [os.path.join(args.data, name) for name in description["files"].values()]
    for path, option in outputs[2:]:
        if any(os.path.abspath(path) == os.path.abspath(given) for given in inputs):
            raise CommandError(f"{path}: {option}: refusing to write over the benchmark's own file")
    if args.triggers is None:
        triggers = () if learnable or ban else description["triggers"][:1]
    else:
        triggers = args.triggers
    num_classes = description["num_classes"]
    options = check_options(options_from_args(args, AttackOptions, triggers=tuple(triggers)))
    options.check_attack(flags=True)
    options.targeted_flip(num_classes, flags=True)
    if not triggers and not options.flips_labels and not learnable and not ban:
        raise CommandError("--triggers: expected at least one trigger, or --flip-rate / --targeted-flip-rate for "
                           "label flipping")
    if len(args.targets) not in (1, len(triggers)) and triggers:
        raise CommandError(f"--targets: expected one target or one per trigger ({len(triggers)})")
    bad = [target for target in options.targets if not 0 <= target < num_classes]
    if bad:
        raise CommandError(f"--targets: expected classes in 0..{num_classes - 1}, got {bad[0]}")
    folder = args.data
    splits = {split: load_h5(os.path.join(folder, f"{split}.h5"), num_classes=num_classes)
              for split in ("valid", "test")}
    # before training, so that a missing file fails fast (learnable-patch, ban: made after training, below)
    poisoned = ({split: [] for split in splits} if learnable or ban else
                _poisoned_splits(folder, options, num_classes, splits))
    train = load_h5(os.path.join(folder, "train.h5"), num_classes=num_classes)
    classifier, info = train_badnet(train.images, train.labels, num_classes, options)
    if learnable:
        from goodnet.attacks.learnable_patch import patch_poisoned_split, save_patch

        target = options.targets[0]
        for split, clean in splits.items():
            images, labels = patch_poisoned_split(clean.images, clean.labels, info["patch"], target)
            poisoned[split] = [LabData(images, labels, extra[split])]
    if ban:
        from goodnet.attacks.badnets import ban_poisoned_split

        for split, clean in splits.items():
            poisoned[split] = [LabData(images, labels, path) for (images, labels), path in
                               zip(ban_poisoned_split(info["generator"], options, split, clean), extra[split])]
    card = attack_card(classifier, options, {key: description[key] for key in ("dataset", "seed", "sizes")},
                       splits["valid"], poisoned["valid"], splits["test"], poisoned["test"], info=info)
    if learnable:
        save_patch(extra["patch"], info["patch"], overwrite=bool(args.overwrite) or None)
        for split in ("valid", "test"):
            data = poisoned[split][0]
            save_h5(extra[split], data.images, data.labels, overwrite=bool(args.overwrite) or None)
        card["attack_settings"].update(patch_file=extra["patch"], poisoned_files={split: extra[split]
                                                                                 for split in ("valid", "test")})
    if ban:
        from goodnet.attacks.ban import save_generator

        save_generator(extra["generator"], info["generator"], options.ban_options(),
                       overwrite=bool(args.overwrite) or None)
        for split in ("valid", "test"):
            for data in poisoned[split]:   # whole pixels (ban_poisoned_split): uint8 is lossless
                save_h5(data.path, data.images, data.labels, overwrite=bool(args.overwrite) or None)
        card["attack_settings"].update(
            generator_file=extra["generator"],
            poisoned_files={split: dict(zip(options.trigger_names, extra[split])) for split in ("valid", "test")})
    _, card["training_set_dtype"] = save_training_set(train_path, info, overwrite=bool(args.overwrite))
    card["training_set"] = train_path
    save_model(classifier, args.out, protect=inputs)
    write_text(card_path, json.dumps(card, indent=2) + "\n")
    if args.json:
        print_json(card)
    else:
        print(f"BadNet written to {args.out} (card {card_path}; poisoned training set {train_path})")
        if learnable:
            print(f"learned patch {extra['patch']}; poisoned files {extra['valid']}, {extra['test']}")
        if ban:
            print(f"generator {extra['generator']}; poisoned files {', '.join(extra['valid'] + extra['test'])}")
        for split in ("valid", "test"):
            rates = ", ".join(f"{t} {r * 100:.2f}%" for t, r in card[split]["attack_success_rate"].items())
            print(f"{split}: clean accuracy {card[split]['clean_accuracy'] * 100:.2f}%; ASR {rates or 'n/a'}")
            flip = card["targeted_flip"]
            if flip is not None and card[split]["source_images"]:
                print(f"{split}: source class {flip['source']} accuracy "
                      f"{card[split]['source_class_accuracy'] * 100:.2f}%, sent to {flip['target']} "
                      f"{card[split]['source_to_target'] * 100:.2f}% ({card[split]['source_images']} images)")
            baseline = card.get("clean_model", {}).get(split)
            if baseline is not None:
                rates = ", ".join(f"{t} {r * 100:.2f}%" for t, r in baseline["attack_success_rate"].items())
                print(f"{split}: the clean model it attacked: clean accuracy {baseline['clean_accuracy'] * 100:.2f}%; "
                      f"ASR {rates or 'n/a'}")
        if card["targeted_flip"] is not None:
            flip = card["targeted_flip"]
            print(f"Targeted flip: {flip['count']} training images of class {flip['source']} relabelled "
                  f"{flip['target']} (their indices: the card's targeted_flip.indices; all flips: the training "
                  "set's 'flipped')")
    return 0
