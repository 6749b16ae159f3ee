#!/usr/bin/env python3
"""Run-time detectors on the built-in BadNets (issue 22): FAR at FRR 1 % for STRIP, BaDExpert and both, and
their throughput against ``model.predict``.

For each BadNet (digits: patch, blend; faces: sunglasses, blend, the pruning-aware sunglasses BadNet, all target
0; and faces ``multi``: eyebrows, lipstick, sunglasses -> 5, 1, 8, the lab's multi-trigger BadNet, whose FAR is
over the three poisoned sets together and per trigger), in one process: generate the
benchmark in memory (:func:`goodnet.attacks.benchmarks.generate`), train the BadNet
(:func:`goodnet.attacks.badnets.train_badnet`), build the test split's poisoned set
(:func:`goodnet.attacks.benchmarks.poisoned_split`), then fit on the clean valid split only:

- STRIP (``goodnet detect``'s defaults: 100 copies, additive blend, certified threshold at FRR 1 %);
- BaDExpert (defaults, FRR 1 %): the expert's learning rate and clean accuracy are printed;
- both (:class:`goodnet.defenses.either.EitherDetector`, FRR 1 % shared half and half); its joint FRR is
  checked on the clean test split.

Reported per BadNet: clean accuracy and ASR of the BadNet, each detector's FRR on the clean test split and FAR
(poisoned test inputs not flagged; "FAR succ.": among those the BadNet sends to the target, the authors'
protocol, which matters where the trigger is hardly planted), and throughput (inputs per second, second of two
timed runs over the test images, after a warm-up) of ``model.predict``
(:meth:`goodnet.models.Classifier.predict_proba`), STRIP, BaDExpert and both. Nothing is chosen on the test split.

Sizes: ``--quick``: digits 2000 training / 1000 valid / 500 test images, faces 20 identities x 100 / 50 / 25,
10 epochs; default: digits 5000 / 1000 / 1000, faces 20 x 150 / 50 / 50, the attack's default epochs.

Measured run time on 2 shared CPU cores: ``--quick`` 773 s (six BadNets, early-stopped experts, rectangle score;
811 s with the previous five-epoch experts), 1259 s with the taught score while a test run shared the cores for
the first two BadNets, 846 s with the Dense-layer expert (the defaults; ``--expert-layers dense``, another bench
sharing the cores at first); the full sizes not run yet.

Usage:
    python bench/bench_detect.py [--quick] [--only digits:patch faces:blend] [--seed 0] [--json OUT]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BADNETS = (("digits", "patch"), ("digits", "blend"), ("faces", "sunglasses"), ("faces", "blend"),
           ("faces", "pruning-aware"), ("faces", "multi"))
# BadNet names that are not one trigger: (triggers, targets, pruning-aware)
VARIANTS = {"pruning-aware": (("sunglasses",), (0,), True),
            "multi": (("eyebrows", "lipstick", "sunglasses"), (5, 1, 8), False)}   # the lab's multi-trigger BadNet
SIZES = {"quick": {"digits": {"train": 2000, "valid": 1000, "test": 500},
                   "faces": {"train": 100, "valid": 50, "test": 25}, "epochs": 10},
         "full": {"digits": {"train": 5000, "valid": 1000, "test": 1000},
                  "faces": {"train": 150, "valid": 50, "test": 50}, "epochs": None}}
IDENTITIES = 20
TARGET = 0
FRR = 0.01


def splits(dataset, setting, seed):
    from goodnet.attacks.benchmarks import generate

    sizes = setting[dataset]
    extra = {"identities": IDENTITIES} if dataset == "faces" else {}
    return {split: generate(dataset, split, seed=seed, size=size, **extra)[:2] for split, size in sizes.items()}


def throughput(function, images, repeats=2):
    """Inputs per second of ``function(images)``: after one warm-up call, the last of ``repeats`` timed calls."""
    function(images[:8])
    rate = None
    for _ in range(repeats):
        start = time.perf_counter()
        function(images)
        rate = len(images) / (time.perf_counter() - start)
    return rate


def measure(dataset, trigger, setting, seed, expert_layers=None):
    import dataclasses

    import numpy as np

    from goodnet.attacks.badnets import AttackOptions, train_badnet
    from goodnet.attacks.benchmarks import poisoned_split
    from goodnet.data import LabData
    from goodnet.defenses.badexpert import BaDExpert, BaDExpertOptions
    from goodnet.defenses.either import EitherDetector
    from goodnet.defenses.strip import STRIP

    data = splits(dataset, setting, seed)
    classes = IDENTITIES if dataset == "faces" else 10
    triggers, targets, pruning_aware = VARIANTS.get(trigger, ((trigger,), (TARGET,), False))
    options = AttackOptions(triggers=triggers, targets=targets, pruning_aware=pruning_aware, seed=seed)
    if setting["epochs"] is not None:
        options = dataclasses.replace(options, epochs=setting["epochs"])
    badnet, info = train_badnet(*data["train"], classes, options)
    valid = LabData(*data["valid"], path="valid.h5")
    test = LabData(*data["test"], path="test.h5")
    poisoned = {name: poisoned_split(*data["test"], name, target) for name, target in options.pairs()}
    bad_x = np.concatenate([images for images, _ in poisoned.values()])
    bad_y = np.concatenate([labels for _, labels in poisoned.values()])
    source = np.repeat(list(poisoned), [len(labels) for _, labels in poisoned.values()])   # each row's trigger
    success = badnet.predict(bad_x) == bad_y        # the poisoned inputs the BadNet sends to the target
    row = {"dataset": dataset, "trigger": trigger, "training_seconds": info["training_seconds"],
           "clean_accuracy": float(np.mean(badnet.predict(test.images) == test.labels)),
           "attack_success": float(np.mean(success)), "valid": len(valid), "test": len(test), "poisoned": len(bad_x)}
    if len(poisoned) > 1:
        row["attack_success_per_trigger"] = {name: float(np.mean(success[source == name])) for name in poisoned}
    started = time.perf_counter()
    strip = STRIP(frr=FRR, progress=False).fit(badnet, valid.images)
    row["strip_fit_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    expert_options = BaDExpertOptions(frr=FRR, **({} if expert_layers is None else {"expert_layers": expert_layers}))
    expert = BaDExpert.from_options(expert_options).fit(badnet, valid)
    row["badexpert_fit_seconds"] = time.perf_counter() - started
    row.update({"expert_rate": expert.expert_rate_, "expert_accuracy": expert.expert_accuracy_,
                "expert_steps": expert.expert_steps_,
                "expert_calibration_accuracy": expert.expert_calibration_accuracy_,
                "auxiliary_accuracy": expert.auxiliary_accuracy_,
                "expert_backdoor": float(np.mean(expert.expert_.predict(bad_x) == bad_y)),
                "badexpert_calibration": expert.calibration_.summary()})
    started = time.perf_counter()
    gate = EitherDetector(frr=FRR, badexpert=expert_options, progress=False).fit(badnet, valid, check=test)
    row["both_fit_seconds"] = time.perf_counter() - started
    row["both_check"] = gate.check_
    detectors = {"strip": lambda images: strip.predict_trojaned(images),
                 "badexpert": expert.predict_trojaned, "both": gate.predict_trojaned}
    for name, detect in detectors.items():
        row[f"{name}_frr"] = float(np.mean(detect(test.images)))
        flagged = detect(bad_x)
        row[f"{name}_far"] = 1.0 - float(np.mean(flagged))
        row[f"{name}_far_successful"] = 1.0 - float(np.mean(flagged[success])) if success.any() else None
        if len(poisoned) > 1:
            row[f"{name}_far_per_trigger"] = {trigger_name: 1.0 - float(np.mean(flagged[source == trigger_name]))
                                              for trigger_name in poisoned}
    row["predict_per_second"] = throughput(badnet.predict_proba, test.images)
    for name, detect in detectors.items():
        row[f"{name}_per_second"] = throughput(detect, test.images)
    return row


def percent(value, width=0):
    """``value`` (a share) in percent with one decimal, right-aligned in ``width``; "-" for None."""
    return "-" if value is None else f"{value * 100:{width}.1f}"


def lines(rows):
    out = ["| BadNet | clean acc % | ASR % | STRIP FRR / FAR / FAR succ. % | BaDExpert FRR / FAR / FAR succ. % "
           "| both FRR / FAR / FAR succ. % | expert rate (clean acc %) | predict / STRIP / BaDExpert / both inputs/s |",
           "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        pairs = [" / ".join(percent(row[f"{name}_{key}"]) for key in ("frr", "far", "far_successful"))
                 for name in ("strip", "badexpert", "both")]
        speeds = " / ".join(f"{row[f'{name}_per_second']:.0f}" for name in ("predict", "strip", "badexpert", "both"))
        out.append(f"| {row['dataset']} {row['trigger']} | {row['clean_accuracy'] * 100:.1f} | "
                   f"{row['attack_success'] * 100:.1f} | {' | '.join(pairs)} | {row['expert_rate']:g} "
                   f"({row['expert_accuracy'] * 100:.1f}) | {speeds} |")
    return out


def main():
    from goodnet.defenses.badexpert import EXPERT_LAYERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (see the docstring)")
    parser.add_argument("--only", nargs="+", default=None, metavar="DATASET:TRIGGER",
                        help="BadNets to run (default: " + " ".join(f"{d}:{t}" for d, t in BADNETS) + ")")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expert-layers", default=None, choices=EXPERT_LAYERS,
                        help="BaDExpert's expert_layers (default: BaDExpert's default)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    setting = SIZES["quick" if args.quick else "full"]
    chosen = BADNETS if args.only is None else [tuple(entry.split(":", 1)) for entry in args.only]
    rows = []
    started = time.perf_counter()
    for dataset, trigger in chosen:
        row = measure(dataset, trigger, setting, args.seed, args.expert_layers)
        rows.append(row)
        print(json.dumps({key: value for key, value in row.items()}, default=str), flush=True)
        print("\n".join(lines([row])[2:]), flush=True)
    print(f"\nFAR at FRR {FRR * 100:g} % ({'quick' if args.quick else 'full'} sizes, seed {args.seed}; "
          f"{time.perf_counter() - started:.0f} s in all)")
    print("\n".join(lines(rows)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
