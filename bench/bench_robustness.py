#!/usr/bin/env python3
"""Trigger robustness of the built-in triggers (issue 21): how much of each BadNet survives blur, rotation,
brightness, JPEG and noise.

For each trigger (default patch, blend, sunglasses), in one process: generate the digits benchmark in memory
(:func:`goodnet.attacks.benchmarks.generate`, the data ``goodnet synth`` writes), train a BadNet on it with
target 0 (:func:`goodnet.attacks.badnets.train_badnet`, ``AttackOptions`` as ``goodnet attack`` does, the
epochs below), build the test split's poisoned file (:func:`goodnet.attacks.benchmarks.poisoned_split`) and run
:func:`goodnet.robustness.measure_robustness` with the default ``RobustnessOptions`` (what ``goodnet robustness``
runs), the clean test split giving clean accuracy under each transform. Prints each trigger's table and a
summary: per trigger the untransformed ASR, each transform's survival and the robustness score.

Sizes: ``--quick``: 2000 training images, 300 test images, 12 epochs (1000 images and 4 epochs gave BadNets of
19-23 % clean test accuracy that answer the target for most inputs: their "robustness" measured only that;
2000 and 12 give 86 % for patch, about a minute of training per trigger on 2 CPU cores); default: the
benchmark's default sizes (5000 / 1000) and the attack's default epochs.

Measured run times on 2 shared CPU cores: ``--quick`` 194 s, the full sizes 450 s (three triggers).

Usage:
    python bench/bench_robustness.py [--quick] [--triggers patch blend sunglasses] [--seed 0] [--out DIR]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = {"quick": {"train": 2000, "test": 300, "epochs": 12}, "full": {"train": None, "test": None, "epochs": None}}


def measure(trigger, setting, seed, splits):
    import dataclasses

    from goodnet.attacks.badnets import AttackOptions, train_badnet
    from goodnet.attacks.benchmarks import poisoned_split
    from goodnet.data import LabData
    from goodnet.robustness import RobustnessOptions, measure_robustness

    (train_x, train_y), (test_x, test_y) = splits
    options = AttackOptions(triggers=(trigger,), targets=(0,), seed=seed)
    if setting["epochs"] is not None:
        options = dataclasses.replace(options, epochs=setting["epochs"])
    badnet, info = train_badnet(train_x, train_y, 10, options)
    bad_x, bad_y = poisoned_split(test_x, test_y, trigger, 0)
    started = time.perf_counter()
    result = measure_robustness(badnet, [LabData(bad_x, bad_y, f"bd_test_{trigger}.h5")], 0,
                                LabData(test_x, test_y, "test.h5"), RobustnessOptions(), progress=False)
    result["model"] = f"BadNet ({trigger}, digits, {len(train_y)} training images, {options.epochs} epochs)"
    result["training_seconds"] = info["training_seconds"]
    result["measure_seconds"] = time.perf_counter() - started
    return result


def summary_lines(results):
    transforms = [entry["transform"] for entry in results[0][1]["transforms"]]
    header = ["trigger", "ASR %", "clean acc %"] + transforms + ["score"]
    rows = []
    for trigger, result in results:
        entry = result["poisoned"][0]
        rows.append([trigger, f"{entry['attack_success_rate'] * 100:.1f}",
                     f"{result['clean']['clean_accuracy'] * 100:.1f}"]
                    + [("n/a" if t["survival"][0] is None else f"{t['survival'][0]:.3f}")
                       for t in result["transforms"]]
                    + ["n/a" if entry["robustness_score"] is None else f"{entry['robustness_score']:.3f}"])
    widths = [max(len(line[column]) for line in [header] + rows) for column in range(len(header))]
    return ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header] + rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2000 training images, 300 test images, 12 epochs")
    parser.add_argument("--triggers", nargs="+", default=["patch", "blend", "sunglasses"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write each trigger's robustness files under DIR/<trigger>")
    args = parser.parse_args()

    from goodnet.attacks.benchmarks import generate
    from goodnet.inference import quiet_tensorflow
    from goodnet.files import write_text
    from goodnet.robustness import text_lines, write_outputs

    quiet_tensorflow()
    setting = SETTINGS["quick" if args.quick else "full"]
    started = time.perf_counter()
    splits = (generate("digits", "train", args.seed, setting["train"]),
              generate("digits", "test", args.seed, setting["test"]))
    results = []
    for trigger in args.triggers:
        result = measure(trigger, setting, args.seed, splits)
        results.append((trigger, result))
        print("\n".join(text_lines(result)))
        print(f"(training {result['training_seconds']:.0f} s, robustness {result['measure_seconds']:.0f} s for "
              f"{result['images_predicted']} predictions)\n", flush=True)
        if args.out:
            write_outputs(result, os.path.join(args.out, trigger))
    print("Summary: untransformed ASR and clean test accuracy, survival per transform, robustness score")
    print("\n".join(summary_lines(results)))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        write_text(os.path.join(args.out, "summary.json"),
                   json.dumps({trigger: result for trigger, result in results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
