#!/usr/bin/env python3
"""Measure the built-in benchmark's quality bars at the default sizes (issue 3).

For each configuration, in one process: generate the default benchmark in
memory (``goodnet.attacks.benchmarks.generate``, the data ``goodnet synth`` writes),
train the BadNet with the default ``AttackOptions`` (as ``goodnet attack``
does), and report the card's figures; then run the lab's pruning sweep
(``goodnet.defenses.pruning.PruningDefense`` on the clean and poisoned validation
files) and report how many points of validation accuracy pruning has cost
when the attack success rate first falls below 80 %.

Bars (issue 3): clean test accuracy >= 95 % (digits) / >= 90 % (faces),
ASR >= 99 %; the pruning-aware BadNet keeps ASR >= 80 % until pruning has
cost at least 5 points of validation accuracy. The plain BadNet's sweep is
printed too, for contrast.

Usage:
    python bench/bench_attacks.py [--configs digits faces faces-pruning-aware digits-pruning-aware]
                                  [--seed 0] [--json OUT.json]
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {
    "digits": {"dataset": "digits", "trigger": "patch", "pruning_aware": False, "bar": 0.95},
    "faces": {"dataset": "faces", "trigger": "sunglasses", "pruning_aware": False, "bar": 0.90},
    "digits-pruning-aware": {"dataset": "digits", "trigger": "patch", "pruning_aware": True, "bar": 0.95},
    "faces-pruning-aware": {"dataset": "faces", "trigger": "sunglasses", "pruning_aware": True, "bar": 0.90},
}


def drop_when_attack_breaks(curve, threshold=0.8):
    """Points of validation accuracy lost at the first pruning step where ASR < ``threshold`` (None: never)."""
    accuracy = np.asarray(curve.clean_accuracy)
    attack = np.asarray(curve.attack_success)[:, 0]
    broken = np.flatnonzero(attack < threshold)
    if not broken.size:
        return None, None
    step = int(broken[0])
    return float((accuracy[0] - accuracy[step]) * 100.0), step


def measure(name, config, seed):
    from goodnet.attacks.badnets import AttackOptions, attack_card, train_badnet
    from goodnet.attacks.benchmarks import DEFAULT_SIZES, generate, poisoned_split
    from goodnet.data import LabData
    from goodnet.defenses.pruning import PruningDefense

    started = time.perf_counter()
    splits = {split: generate(config["dataset"], split, seed) for split in ("train", "valid", "test")}
    generated = time.perf_counter() - started
    num_classes = int(splits["train"][1].max()) + 1
    options = AttackOptions(triggers=(config["trigger"],), targets=(0,), seed=seed,
                            pruning_aware=config["pruning_aware"])
    badnet, info = train_badnet(*splits["train"], num_classes, options)
    data = {}
    for split in ("valid", "test"):
        images, labels = splits[split]
        bad_images, bad_labels = poisoned_split(images, labels, config["trigger"], 0)
        data[split] = (LabData(images, labels, f"{split}.h5"),
                       LabData(bad_images, bad_labels, f"bd_{split}_{config['trigger']}.h5"))
    card = attack_card(badnet, options, {"dataset": config["dataset"], "seed": seed,
                                         "sizes": DEFAULT_SIZES[config["dataset"]]},
                       data["valid"][0], [data["valid"][1]], data["test"][0], [data["test"][1]], info)
    defense = PruningDefense("conv_3", progress=False).fit(badnet, data["valid"][0], [data["valid"][1]])
    drop, step = drop_when_attack_breaks(defense.curve_)
    curve = defense.curve_
    result = {"config": name, "train_images": len(splits["train"][1]), "classes": num_classes,
              "generate_seconds": round(generated, 1), "training_seconds": round(info["training_seconds"], 1),
              "valid_clean_accuracy": card["valid"]["clean_accuracy"],
              "valid_attack_success_rate": card["valid"]["attack_success_rate"][config["trigger"]],
              "test_clean_accuracy": card["test"]["clean_accuracy"],
              "test_attack_success_rate": card["test"]["attack_success_rate"][config["trigger"]],
              "stealthiness": card["stealthiness"][config["trigger"]],
              "decoy_channels": len(info["decoy_channels"]),
              "prune_accuracy_drop_when_asr_below_80": drop, "prune_step_when_asr_below_80": step,
              "prune_curve": [(int(s), round(float(a), 4), round(float(r), 4)) for s, a, r in
                              zip(curve.steps, curve.clean_accuracy, curve.attack_success[:, 0])]}
    bars = {"clean_accuracy": result["test_clean_accuracy"] >= config["bar"],
            "attack_success_rate": result["test_attack_success_rate"] >= 0.99}
    if config["pruning_aware"]:
        bars["pruning_costs_5_points_first"] = drop is None or drop >= 5.0
    result["bars"] = bars
    return result


def report(result):
    lines = [f"== {result['config']}: {result['train_images']} training images, {result['classes']} classes; "
             f"generated in {result['generate_seconds']} s, trained in {result['training_seconds']} s",
             f"   valid: clean {result['valid_clean_accuracy'] * 100:.2f} %, ASR {result['valid_attack_success_rate'] * 100:.2f} %",
             f"   test:  clean {result['test_clean_accuracy'] * 100:.2f} %, ASR {result['test_attack_success_rate'] * 100:.2f} %",
             "   stealthiness: " + ", ".join(f"{k} {v:.3f}" for k, v in result["stealthiness"].items())]
    drop = result["prune_accuracy_drop_when_asr_below_80"]
    lines.append("   pruning sweep (valid): ASR " + ("never falls below 80 %" if drop is None else
                 f"first below 80 % after {result['prune_step_when_asr_below_80']} channels, when accuracy "
                 f"has dropped {drop:.2f} points"))
    lines.append("   curve (channels, clean, ASR): " + " ".join(
        f"{s}:{a * 100:.1f}/{r * 100:.1f}" for s, a, r in result["prune_curve"][20::4]))
    lines.append("   bars: " + ", ".join(f"{key} {'PASS' if ok else 'FAIL'}" for key, ok in result["bars"].items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["digits", "faces",
                                                                                  "faces-pruning-aware"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    print(f"CPU cores visible: {os.cpu_count()}; load average at start: {os.getloadavg()[0]:.2f}")
    results = []
    for name in args.configs:
        results.append(measure(name, CONFIGS[name], args.seed))
        print(report(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0 if all(all(result["bars"].values()) for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
