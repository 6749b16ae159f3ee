#!/usr/bin/env python3
"""Measure the model-dependent attacks (issue 21): clean-label and learnable-patch, against a clean model.

In one process: generate a built-in benchmark in memory (``goodnet.attacks.benchmarks.generate``, the data
``goodnet synth`` writes), train the clean DeepID once with the attack recipe
(``goodnet.attacks.badnets.train_clean_model``; the clean baseline, also the model both attacks attack), then

- clean-label (``AttackOptions(attack="clean-label")``, trigger ``--trigger``, default ``corners``): one BadNet
  per poison rate (of the target class) and training-trigger amplitude;
- learnable-patch: one BadNet per poison rate (of the training set), the patch learned on the clean model;
- dirty-label with the same trigger at ``--dirty-rate`` (a reference row).

Each row reports the card's figures on the test split (valid too in the JSON): clean accuracy, its drop from
the clean model in points, ASR (clean-label: the full trigger on the non-target test images; learnable-patch:
the learned patch), the clean model's ASR with the same trigger (what the trigger does without a backdoor),
the number of poisoned training images, the training poison's stealthiness (clean-label: PGD + reduced
trigger against the clean image, PSNR dB and L-infinity) and the seconds.

Done-when (issue 21): ASR >= 90 % with clean accuracy within 2 points of the clean model; a row passes when
both hold on the test split.

Measured run times (2 shared CPU cores): ``--quick`` (1000 training images, one setting per attack) about
1.5 minutes; the default grid (3000 training images: 6 clean-label, 4 learnable-patch, 1 dirty-label row)
about 10 minutes, each row 35-70 s.

Usage:
    python bench/bench_attacks_clean_label.py [--quick] [--dataset digits] [--train 3000] [--rates 0.05 0.1 0.2]
        [--amplitudes 0.25 1.0] [--patch-rates 0.01 0.03 0.05 0.1] [--trigger corners] [--seed 0] [--json OUT]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGET = 0


def _splits(args):
    from goodnet.attacks.benchmarks import generate

    sizes = {"train": args.train, "valid": args.valid, "test": args.test}
    if args.dataset == "faces":   # sizes are per identity
        sizes = {split: max(1, size // args.identities) for split, size in sizes.items()}
    return {split: generate(args.dataset, split, args.seed, sizes[split], args.identities)
            for split in ("train", "valid", "test")}, sizes


def _row(name, options, classifier, info, data, clean_accuracy, seconds):
    from goodnet.attacks.badnets import attack_card
    from goodnet.attacks.benchmarks import poisoned_split
    from goodnet.attacks.learnable_patch import patch_poisoned_split
    from goodnet.data import LabData

    clean, poisoned = {}, {}
    for split, (images, labels) in data.items():
        if split == "train":
            continue
        clean[split] = LabData(images, labels, f"{split}.h5")
        if options.attack == "learnable-patch":
            bad = patch_poisoned_split(images, labels, info["patch"], TARGET)
        else:
            bad = poisoned_split(images, labels, options.triggers[0], TARGET)
        poisoned[split] = [LabData(*bad, f"bd_{split}")]
    card = attack_card(classifier, options, {}, clean["valid"], poisoned["valid"], clean["test"], poisoned["test"],
                       info)
    trigger = options.trigger_names[0]
    row = {"name": name, "attack": options.attack, "poison_rate": options.poison_rate,
           "trigger_amplitude": options.trigger_amplitude if options.attack == "clean-label" else None,
           "poisoned_training_images": card["poisoned_training_images"], "seconds": round(seconds, 1)}
    for split in ("valid", "test"):
        row[split] = {"clean_accuracy": card[split]["clean_accuracy"],
                      "asr": card[split]["attack_success_rate"][trigger],
                      "clean_model_asr": card["clean_model"][split]["attack_success_rate"][trigger]
                      if "clean_model" in card else None}
    row["accuracy_drop_points"] = round((clean_accuracy - row["test"]["clean_accuracy"]) * 100, 2)
    if "training_poison" in card:
        entry = card["training_poison"][trigger]
        row["training_poison"] = {key: entry[key] for key in ("training_poison", "perturbation",
                                                              "clean_model_accuracy_before",
                                                              "clean_model_accuracy_after_pgd") if key in entry}
    row["test_trigger_stealthiness"] = card["stealthiness"][trigger]
    row["pass"] = row["test"]["asr"] >= 0.9 and row["accuracy_drop_points"] <= 2.0
    return row


def report(row):
    test = row["test"]
    poison = row.get("training_poison", {}).get("training_poison")
    stealth = f", poison PSNR {poison['psnr']:.1f} dB linf {poison['linf']:.1f}" if poison else ""
    base = "n/a" if test["clean_model_asr"] is None else f"{test['clean_model_asr'] * 100:.1f} %"
    return (f"{row['name']:<34} poisoned {row['poisoned_training_images']:>4}: clean {test['clean_accuracy'] * 100:.2f} % "
            f"(drop {row['accuracy_drop_points']:+.2f}), ASR {test['asr'] * 100:.2f} % (clean model {base})"
            f"{stealth}; {row['seconds']} s  {'PASS' if row['pass'] else 'FAIL'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000 training images, one setting per attack")
    parser.add_argument("--dataset", choices=("digits", "faces"), default="digits")
    parser.add_argument("--identities", type=int, default=20, help="faces: identities (sizes are then per identity)")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--valid", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--rates", type=float, nargs="*", default=[0.05, 0.1, 0.2],
                        help="clean-label poison rates (of the target class)")
    parser.add_argument("--amplitudes", type=float, nargs="*", default=[0.25, 1.0],
                        help="clean-label training-trigger amplitudes")
    parser.add_argument("--patch-rates", type=float, nargs="*", default=[0.01, 0.03, 0.05, 0.1],
                        help="learnable-patch poison rates (of the training set)")
    parser.add_argument("--dirty-rate", type=float, default=0.1, help="the dirty-label reference row's rate (0: none)")
    parser.add_argument("--trigger", default="corners")
    parser.add_argument("--pgd-epsilon", type=float, default=None, help="default: AttackOptions'")
    parser.add_argument("--pgd-steps", type=int, default=None, help="default: AttackOptions'")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.train, args.valid, args.test = 1000, 300, 300
        args.rates, args.amplitudes, args.patch_rates = [0.2], [1.0], [0.05]

    from goodnet.attacks.badnets import AttackOptions, train_badnet, train_clean_model
    from goodnet.inference import quiet_tensorflow
    from goodnet.metrics import evaluate
    from goodnet.data import LabData

    quiet_tensorflow()
    print(f"CPU cores visible: {os.cpu_count()}; load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    data, sizes = _splits(args)
    num_classes = int(data["train"][1].max()) + 1
    common = {"seed": args.seed, "targets": (TARGET,)}
    for field in ("pgd_epsilon", "pgd_steps", "epochs"):
        if getattr(args, field) is not None:
            common[field] = getattr(args, field)
    started = time.perf_counter()
    clean_model = train_clean_model(*data["train"], num_classes, AttackOptions(**common))
    clean_seconds = time.perf_counter() - started
    clean_accuracy = evaluate(clean_model, LabData(*data["test"], "test"))["clean_accuracy"]
    print(f"== {args.dataset}: {len(data['train'][1])} training images, {num_classes} classes, target {TARGET}; "
          f"clean model: test accuracy {clean_accuracy * 100:.2f} % ({clean_seconds:.1f} s)", flush=True)
    runs = [(f"clean-label {args.trigger} {rate:.0%} a={amplitude}",
             AttackOptions(attack="clean-label", triggers=(args.trigger,), poison_rate=rate,
                           trigger_amplitude=amplitude, **common))
            for amplitude in args.amplitudes for rate in args.rates]
    runs += [(f"learnable-patch {rate:.0%}", AttackOptions(attack="learnable-patch", triggers=(), poison_rate=rate,
                                                          **common)) for rate in args.patch_rates]
    if args.dirty_rate:
        runs.append((f"dirty-label {args.trigger} {args.dirty_rate:.0%}",
                     AttackOptions(triggers=(args.trigger,), poison_rate=args.dirty_rate, **common)))
    rows = []
    for name, options in runs:
        started = time.perf_counter()
        classifier, info = train_badnet(*data["train"], num_classes, options, clean_model=clean_model)
        rows.append(_row(name, options, classifier, info, data, clean_accuracy, time.perf_counter() - started))
        print(report(rows[-1]), flush=True)
    summary = {"dataset": args.dataset, "sizes": sizes, "seed": args.seed, "target": TARGET,
               "clean_model": {"test_clean_accuracy": clean_accuracy, "seconds": round(clean_seconds, 1)},
               "rows": rows}
    for attack in ("clean-label", "learnable-patch"):
        tried = [row for row in rows if row["attack"] == attack]
        passed = [row["name"] for row in tried if row["pass"]]
        verdict = "not run" if not tried else f"PASS ({', '.join(passed)})" if passed else "FAIL (no setting)"
        print(f"done-when {attack}: {verdict}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
