#!/usr/bin/env python3
"""Do dynamic backdoors evade STRIP and Neural Cleanse? The seed's claim (Salem et al. 2022), measured.

One benchmark (digits or faces, built in), one BadNet per attack, all target 0:

- ``patch``: dirty-label BadNets with the fixed checkerboard (the static baseline);
- ``random``: Random Backdoor (dirty-label, a random black-and-white pattern at
  a random place per image);
- ``adaptive``: the checkerboard in the colour that contrasts with the image;
- ``ban``: BaN (a generator trained with the model; a fresh trigger per input).

Per BadNet: clean accuracy and ASR on the test split (each test image gets its
own trigger for ``random`` and ``ban``), and a clean model's accuracy
(the same recipe, no poison) as the reference. Then:

- STRIP (``copies`` 100, certified threshold at FRR 1 %), with the paper's
  additive blend and with the alpha blend (``goodnet repair``'s), fitted on
  the valid split: FRR on clean test images and FAR (poisoned test inputs it
  lets through);
- Neural Cleanse (``method="batched"``, every class fully optimised), on the
  valid split's images: the verdict, the flagged classes, the target's
  anomaly index and its rank by norm (0 = smallest).

Nothing is chosen on the test split. ``--quick``: 2000 training images, 10
epochs, Neural Cleanse 120 epochs per class; the full setting: 5000 training
images (faces: 20 identities x 150), 12 epochs, 300 Neural Cleanse epochs.

Usage: python bench/bench_dynamic_attacks.py [--quick] [--dataset digits|faces] [--attacks patch random ban]
       [--json OUT]
"""

import argparse
import json
import sys
import time

import numpy as np

ATTACKS = ("patch", "random", "adaptive", "ban")
BLENDS = ("add", "alpha")
TARGET = 0


def data(dataset, quick):
    from goodnet.attacks.benchmarks import generate

    if dataset == "digits":
        sizes = {"train": 2000 if quick else 5000, "valid": 500, "test": 500}
        splits = {split: generate("digits", split, size=size)[:2] for split, size in sizes.items()}
        return splits, 10
    per = {"train": 100 if quick else 150, "valid": 25, "test": 25}
    splits = {split: generate("faces", split, size=size, identities=20)[:2] for split, size in per.items()}
    return splits, 20


def train(attack, splits, classes, epochs):
    """(classifier, poisoned test images, seconds) for one attack; ``none``: the clean model."""
    from goodnet.attacks.badnets import AttackOptions, train_badnet
    from goodnet.attacks.ban import BaNOptions, ban_poisoned_split, train_ban
    from goodnet.attacks.benchmarks import poisoned_split

    images, labels = splits["train"]
    test_images, test_labels = splits["test"]
    start = time.perf_counter()
    if attack == "ban":
        options = BaNOptions(targets=(TARGET,), epochs=epochs)
        classifier, info = train_ban(images, labels, classes, options)
        poisoned, _ = ban_poisoned_split(test_images, test_labels, info["generator"], options, TARGET, seed=1)
    elif attack == "none":
        classifier, _ = train_badnet(images, labels, classes, AttackOptions(triggers=(), poison_rate=0.0,
                                                                             epochs=epochs))
        poisoned = None
    else:
        classifier, _ = train_badnet(images, labels, classes, AttackOptions(triggers=(attack,), targets=(TARGET,),
                                                                             epochs=epochs))
        poisoned, _ = poisoned_split(test_images, test_labels, attack, TARGET)
    return classifier, poisoned, time.perf_counter() - start


def defend(classifier, poisoned, splits, nc_epochs):
    from goodnet.defenses.neural_cleanse import NeuralCleanse
    from goodnet.defenses.strip import STRIP, evaluate_strip

    valid_images, _ = splits["valid"]
    test_images, _ = splits["test"]
    row = {}
    start = time.perf_counter()
    for blend in BLENDS:
        strip = STRIP(copies=100, frr=0.01, blend=blend).fit(classifier, valid_images)
        figures = evaluate_strip(strip, test_images, [("poisoned", poisoned)])
        row[f"strip_{blend}_frr"] = figures["false_rejection_rate"]
        row[f"strip_{blend}_far"] = figures["poisoned"][0]["false_acceptance_rate"]
    row["strip_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    cleanse = NeuralCleanse(method="batched", epochs=nc_epochs).fit(classifier, valid_images)
    position = int(np.flatnonzero(cleanse.classes_ == TARGET)[0])
    index = float(cleanse.anomaly_index_[position])
    return {**row, "nc_verdict": "backdoored" if cleanse.backdoored_ else "clean",
            "nc_flagged": [int(c) for c in cleanse.flagged_], "nc_target_index": index,
            "nc_target_norm_rank": int(np.sum(cleanse.norms_ < cleanse.norms_[position])),
            "nc_seconds": time.perf_counter() - start}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and fewer epochs (minutes, not an hour)")
    parser.add_argument("--dataset", choices=("digits", "faces"), default="digits")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=ATTACKS)
    parser.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    args = parser.parse_args(argv)
    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    epochs, nc_epochs = (10, 120) if args.quick else (12, 300)
    splits, classes = data(args.dataset, args.quick)
    test_images, test_labels = splits["test"]
    clean_model, _, clean_seconds = train("none", splits, classes, epochs)
    clean_accuracy = float(np.mean(clean_model.predict(test_images) == test_labels))
    print(f"{args.dataset}: {len(splits['train'][1])} training images, {epochs} epochs; clean model "
          f"{clean_accuracy * 100:.1f} % ({clean_seconds:.0f} s)", flush=True)
    rows = []
    print("| attack | clean acc % (clean model) | ASR % | STRIP add FRR / FAR % | STRIP alpha FRR / FAR % "
          "| NC verdict | NC flagged | target's anomaly index | target's norm rank | train / STRIP / NC s |")
    print("|---|---:|---:|---:|---:|---|---|---:|---:|---|")
    for attack in args.attacks:
        classifier, poisoned, seconds = train(attack, splits, classes, epochs)
        row = {"attack": attack, "dataset": args.dataset, "clean_accuracy": float(np.mean(
            classifier.predict(test_images) == test_labels)), "clean_model_accuracy": clean_accuracy,
            "asr": float(np.mean(classifier.predict(poisoned) == TARGET)), "train_seconds": seconds}
        row.update(defend(classifier, poisoned, splits, nc_epochs))
        rows.append(row)
        print(f"| {attack} | {row['clean_accuracy'] * 100:.1f} ({clean_accuracy * 100:.1f}) | {row['asr'] * 100:.1f} "
              f"| {row['strip_add_frr'] * 100:.1f} / {row['strip_add_far'] * 100:.1f} "
              f"| {row['strip_alpha_frr'] * 100:.1f} / {row['strip_alpha_far'] * 100:.1f} | {row['nc_verdict']} "
              f"| {row['nc_flagged']} | {row['nc_target_index']:.2f} | {row['nc_target_norm_rank']} "
              f"| {seconds:.0f} / {row['strip_seconds']:.0f} / {row['nc_seconds']:.0f} |", flush=True)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
