#!/usr/bin/env python3
"""Training-time defenses against label flipping: none, bagging and DPA on the built-in benchmarks (issue 20).

For each data set (the built-in ``digits`` and ``faces`` benchmarks, generated
in memory as ``goodnet synth`` writes them) and each attack (none; random label
flipping at 10 / 20 / 40 %; targeted flipping of a share of one source class
to a target class), the attack kit flips the training labels
(:func:`goodnet.attacks.badnets.poison_training_set`, as ``goodnet attack``
does), then three models are trained on the flipped set with the recipe of
``goodnet train``:

- ``none``: one DeepID (:func:`goodnet.training.train_deepid`);
- ``bagging``: :class:`goodnet.defenses.bagging.Bagging` (K models on bootstrap
  samples of half the set, softmax averaged);
- ``dpa``: :class:`goodnet.defenses.partition_aggregation.PartitionAggregation`
  (K models on hash partitions, majority vote).

Printed per run: clean test accuracy, for targeted flipping the source
class's test accuracy and the share of it sent to the target, the training
seconds and their ratio to ``none``'s, and for DPA its certified accuracy on
the test set at radius 1, 2, 4 and its median certified radius (the
certificate counts flipped training labels: a flipped label stays in its
image's partition). Every figure goes to ``OUT/results.json``, and DPA's
certified-accuracy curves to ``OUT/dpa_certified_<dataset>.png``.

The ensembles use their defaults but K: each member trains for ``epochs /
share`` epochs on its share of the set (bagging: half, DPA: 1/K), about the
steps of the single model, so they cost about K times its training time.

``--quick`` (about 15 minutes on 2 shared CPU cores): smaller sets (digits
1000 training images, 16 epochs; faces 10 identities x 30), K = 3; the full
run (a few hours on that CPU) uses the default benchmark sizes (digits 5000;
faces 200 identities x 30), K = 10 and the default recipe (8 epochs).

Usage:
    python bench/bench_training_defenses.py --quick [--datasets digits faces] [--seed 0] [--out DIR]
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = {
    "quick": {"sizes": {"digits": {"train": 1000, "valid": 200, "test": 500},
                        "faces": {"train": 30, "valid": 5, "test": 10}},
              "identities": 10, "models": 3, "epochs": 16, "flip_rates": (0.1, 0.2, 0.4), "targeted_rates": (0.5,)},
    "full": {"sizes": {"digits": {"train": 5000, "valid": 1000, "test": 1000},
                       "faces": {"train": 30, "valid": 9, "test": 10}},
             "identities": 200, "models": 10, "epochs": 8, "flip_rates": (0.1, 0.2, 0.4), "targeted_rates": (0.5,)},
}
# the targeted flip: (source, target) per data set
TARGETED = {"digits": (3, 8), "faces": (0, 1)}
RADII = (1, 2, 4)


def attacks(setting, dataset):
    """(name, AttackOptions fields) of every attack of the run: none, random flips, targeted flips."""
    source, target = TARGETED[dataset]
    found = [("clean", {})]
    found += [(f"random {rate:.0%}", {"flip_rate": rate}) for rate in setting["flip_rates"]]
    found += [(f"targeted {rate:.0%} {source}->{target}", {"flip_source": source, "flip_target": target,
                                                           "targeted_flip_rate": rate})
              for rate in setting["targeted_rates"]]
    return found


def certified_at(curve, radius):
    """Certified accuracy at ``radius`` (0 beyond the curve's last radius)."""
    rows = {row["radius"]: row["certified_accuracy"] for row in curve["rows"]}
    return rows.get(radius, 0.0)


def measure(dataset, setting, seed, progress):
    from goodnet.attacks.badnets import AttackOptions, poison_training_set, source_class_figures
    from goodnet.attacks.benchmarks import generate
    from goodnet.data import LabData
    from goodnet.defenses.bagging import Bagging
    from goodnet.defenses.partition_aggregation import PartitionAggregation
    from goodnet.training import TrainOptions, train_deepid

    identities = setting["identities"]
    sizes = setting["sizes"][dataset]
    train_x, train_y = generate(dataset, "train", seed, sizes["train"], identities)
    test = LabData(*generate(dataset, "test", seed, sizes["test"], identities), path=f"{dataset} test")
    num_classes = 10 if dataset == "digits" else identities
    recipe = TrainOptions(epochs=setting["epochs"], seed=seed)
    results = []
    for name, fields in attacks(setting, dataset):
        attack = AttackOptions(triggers=(), seed=seed, **fields)
        info = poison_training_set(train_x, train_y, num_classes, attack)
        trained = info["training_set"]
        targeted = attack.targeted_flip(num_classes)
        row = {"dataset": dataset, "attack": name, "training_images": len(trained),
               "flipped": int(len(info["flipped_indices"])), "defenses": {}}
        for defense in ("none", "bagging", "dpa"):
            start = time.perf_counter()
            if defense == "none":
                classifier, fitted = train_deepid(trained.images, trained.labels, num_classes, recipe), None
            else:
                cls = Bagging if defense == "bagging" else PartitionAggregation
                fitted = cls(models=setting["models"], recipe=recipe, progress=progress)
                fitted.fit(trained.images, trained.labels, num_classes)
                classifier = fitted.ensemble_
            seconds = time.perf_counter() - start
            entry = {"seconds": round(seconds, 2),
                     "clean_accuracy": float(np.mean(classifier.predict(test.images) == test.labels))}
            if targeted is not None:
                entry.update(source_class_figures(classifier, test, *targeted[:2]))
            if defense == "dpa":
                curve = fitted.certified_accuracy(test.images, test.labels)
                entry["certified"] = curve
                entry["median_certified_radius"] = curve["median_certified_radius"]
                for radius in RADII:
                    entry[f"certified_r{radius}"] = certified_at(curve, radius)
                entry["partition_sizes"] = fitted.summary()["partition_sizes"]
            entry["member_epochs"] = recipe.epochs if fitted is None else fitted.member_epochs_
            row["defenses"][defense] = entry
            print(f"  {dataset:6s} {name:22s} {defense:8s} acc {entry['clean_accuracy'] * 100:5.1f}%  "
                  f"{seconds:6.1f} s", flush=True)
        base = row["defenses"]["none"]["seconds"]
        for entry in row["defenses"].values():
            entry["time_vs_none"] = round(entry["seconds"] / base, 2)
        results.append(row)
    return {"dataset": dataset, "num_classes": num_classes, "sizes": sizes,
            "identities": identities if dataset == "faces" else None, "recipe": dataclasses.asdict(recipe),
            "models": setting["models"], "runs": results}


def _pct(value):
    return "  n/a" if value is None else f"{value * 100:5.1f}"


def report(summary):
    """The printed tables: accuracy and time per attack and defense; targeted flips; DPA's certificates."""
    epochs = {name: entry["member_epochs"] for name, entry in summary["runs"][0]["defenses"].items()}
    print(f"\n== {summary['dataset']} ({summary['num_classes']} classes, {summary['runs'][0]['training_images']} "
          f"training images, K = {summary['models']}; epochs per model: none {epochs['none']}, bagging "
          f"{epochs['bagging']}, dpa {epochs['dpa']}) ==")
    print(f"{'attack':24s} {'flipped':>7s} | {'clean test accuracy %':^23s} | {'training s (x none)':^34s}")
    print(f"{'':24s} {'':7s} | {'none':>7s}{'bagging':>8s}{'dpa':>8s} | {'none':>8s}{'bagging':>13s}{'dpa':>13s}")
    for run in summary["runs"]:
        d = run["defenses"]
        print(f"{run['attack']:24s} {run['flipped']:7d} | {_pct(d['none']['clean_accuracy']):>7s}"
              f"{_pct(d['bagging']['clean_accuracy']):>8s}{_pct(d['dpa']['clean_accuracy']):>8s} | "
              f"{d['none']['seconds']:8.1f}{d['bagging']['seconds']:7.1f} (x{d['bagging']['time_vs_none']:.1f})"
              f"{d['dpa']['seconds']:7.1f} (x{d['dpa']['time_vs_none']:.1f})")
    targeted = [run for run in summary["runs"] if "source_class_accuracy" in run["defenses"]["none"]]
    if targeted:
        print(f"\n{'targeted flip':24s} | {'source-class accuracy %':^23s} | {'source sent to target %':^23s}")
        for run in targeted:
            d = run["defenses"]
            print(f"{run['attack']:24s} | " + "".join(f"{_pct(d[k]['source_class_accuracy']):>8s}"
                                                     for k in ("none", "bagging", "dpa")) +
                  " | " + "".join(f"{_pct(d[k]['source_to_target']):>8s}" for k in ("none", "bagging", "dpa")))
    print(f"\n{'DPA certificate':24s} | " + "".join(f"{'r>=' + str(r):>8s}" for r in RADII) + "  median radius")
    for run in summary["runs"]:
        d = run["defenses"]["dpa"]
        median = d["median_certified_radius"]
        print(f"{run['attack']:24s} | " + "".join(f"{_pct(d[f'certified_r{r}']):>8s}" for r in RADII) +
              f"  {'n/a' if median is None else median}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sets, K = 3 (about 15 minutes on 2 CPU cores)")
    parser.add_argument("--datasets", nargs="+", choices=("digits", "faces"), default=("digits", "faces"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results folder (default runs/bench_training_defenses[_quick])")
    parser.add_argument("--progress", action="store_true", help="a bar over each ensemble's members")
    args = parser.parse_args(argv)

    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    from goodnet.files import prepare_output_dir
    from goodnet.plots import plot_certified_accuracy
    from goodnet.reports import write_json

    name = "quick" if args.quick else "full"
    out = args.out or os.path.join("runs", "bench_training_defenses" + ("_quick" if args.quick else ""))
    prepare_output_dir(out, "--out", names=["results.json"] + [f"dpa_certified_{d}.png" for d in args.datasets],
                       overwrite=None)
    setting = SETTINGS[name]
    print(f"bench_training_defenses ({name}): datasets {', '.join(args.datasets)}, seed {args.seed}", flush=True)
    started = time.perf_counter()
    summaries = []
    for dataset in args.datasets:
        summary = measure(dataset, setting, args.seed, True if args.progress else False)
        summaries.append(summary)
        report(summary)
        plot_certified_accuracy({run["attack"]: run["defenses"]["dpa"]["certified"] for run in summary["runs"]},
                                os.path.join(out, f"dpa_certified_{dataset}.png"),
                                title=f"DPA certified accuracy, {dataset} (K = {summary['models']}, test set)")
        write_json(os.path.join(out, "results.json"), {"setting": name, "seed": args.seed, "results": summaries})
    print(f"\ntotal {time.perf_counter() - started:.0f} s; figures in {out}/results.json, curves in "
          f"{out}/dpa_certified_<dataset>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
