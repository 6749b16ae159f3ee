#!/usr/bin/env python3
"""Neural Cleanse's detection quality: built-in BadNets, clean models and the real lab BadNets.

Cases (each in its own process; results written to ``--json`` after every case,
so a long run keeps what it measured):

1. built-in BadNets, trained with ``goodnet synth`` and ``goodnet attack`` in
   ``--workdir`` (reused when there): ``digits-patch`` (target 0),
   ``faces-sunglasses`` (target 0), ``digits-pruning-aware`` (patch, target 0),
   ``faces-multi`` (eyebrows, lipstick, sunglasses -> 5, 1, 8). The BadNet's
   clean accuracy and ASR come from its card (valid split).
2. clean models, the same command with ``--poison-rate 0`` (no training image
   poisoned; the card's ASR is then that of an untargeted trigger):
   ``digits-clean-s0``, ``digits-clean-s1``, ``faces-clean-s0``.
3. the real lab BadNets of ``../shared/csaw/models`` (weights only, pixels /
   255): ``lab-sunglasses`` (target 0), ``lab-multi`` (5, 1, 8),
   ``lab-anonymous_1`` (0), ``lab-anonymous_2`` (unknown) and ``lab-bd_net``
   (raw pixels, 0), with the real clean faces of ``../shared/csaw/images``
   (manifest content "clean": 6 images) as the only clean data. 1283 classes:
   the default scan, about 5.5 min each on a 2-core machine.

Neural Cleanse sees only clean images: for the built-in cases the valid.h5
split (its default subset of at most 256 images). When it flags classes on a
built-in BadNet, the flagged reversed triggers are unlearned
(``unlearning(cleanse)``: the default fine-tuning recipe on valid.h5, its
hold-out rule) and the unlearned model's clean accuracy and ASR are measured
on test.h5 and every bd_test_*.h5; when it flags nothing, the known targets'
reversed triggers are unlearned instead, marked "oracle" (does the mitigation
work once the target is known?). ``--no-unlearn`` skips it. Models with at most
``--batched-below`` classes (default 152, the scan's default tail + reference)
get ``method="batched"`` (the full schedule on every class); others the default
scan. Reported per case: flagged classes, each known target's anomaly index,
its rank by norm (classes with a smaller norm) and suspicion rank
(``ranking()``), the verdict, the median and MAD, and the wall time.

``--quick``: small built-in data (digits 1500 training images, faces 40
identities x 20), 4 training epochs, at most 100 Neural Cleanse epochs per class and 10 unlearning epochs; the lab cases
are left out unless named with ``--cases``.

Usage: python bench/bench_neural_cleanse_quality.py [--quick] [--cases NAME ...] [--workdir DIR] [--json OUT]
"""

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("GOODNET_SHARED", REPO.parent / "shared" / "csaw"))

# name: (dataset, synth triggers, synth targets, attack triggers, attack targets, extra attack flags)
BUILTIN = {
    "digits-patch": ("digits", ["patch"], ["0"], ["patch"], ["0"], []),
    "faces-sunglasses": ("faces", ["sunglasses"], ["0"], ["sunglasses"], ["0"], []),
    "digits-pruning-aware": ("digits", ["patch"], ["0"], ["patch"], ["0"], ["--pruning-aware"]),
    "faces-multi": ("faces", ["eyebrows", "lipstick", "sunglasses"], ["5", "1", "8"],
                    ["eyebrows", "lipstick", "sunglasses"], ["5", "1", "8"], []),
    "digits-clean-s0": ("digits", ["patch"], ["0"], ["patch"], ["0"], ["--poison-rate", "0", "--seed", "0"]),
    "digits-clean-s1": ("digits", ["patch"], ["0"], ["patch"], ["0"], ["--poison-rate", "0", "--seed", "1"]),
    "faces-clean-s0": ("faces", ["sunglasses"], ["0"], ["sunglasses"], ["0"], ["--poison-rate", "0", "--seed", "0"]),
}
# name: (file, scale, known targets)
LAB = {
    "lab-sunglasses": ("sunglasses_bd_weights.h5", "unit", [0]),
    "lab-multi": ("multi_trigger_multi_target_bd_weights.h5", "unit", [5, 1, 8]),
    "lab-anonymous_1": ("anonymous_1_bd_weights.h5", "unit", [0]),
    "lab-anonymous_2": ("anonymous_2_bd_weights.h5", "unit", []),
    "lab-bd_net": ("bd_net.h5", "raw", [0]),
}
DEFAULT_CASES = list(BUILTIN) + ["lab-sunglasses", "lab-multi", "lab-anonymous_1", "lab-anonymous_2"]


def real_clean_images():
    """The real clean faces (raw pixels, manifest content "clean") and their file names."""
    from goodnet.data import load_image

    folder = SHARED / "images"
    with open(folder / "manifest.csv", newline="") as handle:
        names = [row["file"] for row in csv.DictReader(handle) if row["content"] == "clean"]
    return np.stack([load_image(folder / name) for name in names]).astype(np.float32), names


def goodnet(*argv):
    command = [sys.executable, "-c", "import sys; from goodnet.cli import main; sys.exit(main())"] + [
        str(value) for value in argv]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"{' '.join(command[2:])} failed ({result.returncode})")
    return result.stdout


def build(name, args):
    """The built-in data folder and model of case ``name`` (built in ``args.workdir`` unless there): (model, card, valid)."""
    dataset, synth_triggers, synth_targets, triggers, targets, extra = BUILTIN[name]
    work = pathlib.Path(args.workdir)
    sizes = ({"digits": ["--train", "1500", "--valid", "300", "--test", "300"],
              "faces": ["--identities", "40", "--train", "20", "--valid", "6", "--test", "6"]} if args.quick else
             {"digits": ["--train", "3000", "--valid", "500", "--test", "500"],
              "faces": ["--identities", str(args.identities), "--train", "30", "--valid", "9", "--test", "10"]})
    data = work / f"{dataset}-{'-'.join(synth_triggers)}-{'-'.join(synth_targets)}"
    if not (data / "valid.h5").exists():
        goodnet("synth", "--dataset", dataset, "--out", data, "--triggers", *synth_triggers,
                "--targets", *synth_targets, *sizes[dataset])
    model = work / f"{name}.h5"
    if not model.exists():
        epochs = ["--epochs", str(args.train_epochs)] if args.train_epochs else []
        goodnet("attack", "--data", data, "--triggers", *triggers, "--targets", *targets, *extra, *epochs,
                "--out", model)
    card = json.loads(model.with_suffix(".json").read_text())
    return model, card, data / "valid.h5"


def measure(cleanse, targets):
    """The figures of a fitted NeuralCleanse for the known ``targets``."""
    ranking = [int(value) for value in cleanse.ranking()]
    rows = {int(value): row for row, value in enumerate(cleanse.classes_)}
    known = []
    for target in targets:
        row = rows[target]
        index = cleanse.anomaly_index_[row]
        known.append({"target": int(target), "norm": float(cleanse.norms_[row]),
                      "anomaly_index": None if not np.isfinite(index) else float(index),
                      "refined": bool(cleanse.refined_[row]),
                      "classes_with_smaller_norm": int(np.sum(cleanse.norms_ < cleanse.norms_[row])),
                      "suspicion_rank": ranking.index(int(target)), "flagged": int(target) in cleanse.flagged_,
                      "attack_success": float(cleanse.attack_success_[row])})
    flagged = [int(value) for value in cleanse.flagged_]
    return {"classes": int(len(cleanse.classes_)), "method": cleanse.method, "median": float(cleanse.median_),
            "mad": float(cleanse.mad_), "flagged": flagged,
            "flagged_index": [float(cleanse.anomaly_index_[rows[value]]) for value in flagged],
            "verdict": "backdoored" if flagged else "not flagged", "known": known, "suspects": ranking[:5],
            "class_epochs": int(cleanse.class_epochs_),
            **({"norms": [round(float(value), 2) for value in cleanse.norms_]} if len(cleanse.classes_) <= 20 else {})}


def run_case(name, args):
    from goodnet.defenses.neural_cleanse import NeuralCleanse
    from goodnet.models import load_model

    settings = {"progress": False}
    if args.nc_epochs:
        settings["epochs"] = args.nc_epochs
    if args.steps_per_epoch:
        settings["steps_per_epoch"] = args.steps_per_epoch
    if name in BUILTIN:
        from goodnet.data import load_h5

        model, card, valid_path = build(name, args)
        classifier = load_model(model, scale="unit")
        clean = load_h5(valid_path, num_classes=classifier.num_classes)
        targets = [] if "--poison-rate" in BUILTIN[name][5] else card["targets"]
        result = {"case": name, "kind": "clean" if not targets else "badnet", "model_card": {
            "attack": card["attack"], "triggers": card["triggers"], "targets": card["targets"],
            "poison_rate": card["poison_rate"], "epochs": card["epochs"], "seed": card["seed"],
            "clean_accuracy": card["valid"]["clean_accuracy"],
            "attack_success_rate": card["valid"]["attack_success_rate"],
            "training_seconds": card.get("training_seconds")}, "clean_images": int(len(clean.labels))}
    else:
        file, scale, targets = LAB[name]
        classifier = load_model(SHARED / "models" / file, scale=scale)
        clean, names = real_clean_images()
        result = {"case": name, "kind": "lab", "model": file, "clean_images": names,
                  "known_targets": targets}
    if classifier.num_classes <= args.batched_below:
        settings["method"] = "batched"
    wall, cpu = time.perf_counter(), time.process_time()
    cleanse = NeuralCleanse(**settings).fit(classifier, clean)
    result.update(measure(cleanse, targets), wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)
    if name in BUILTIN and targets and not args.no_unlearn:
        # what a user gets (the flagged classes), or, when NC flags nothing, the known targets' reversed triggers
        # (an oracle: does unlearning work once the target is known?)
        chosen = cleanse.flagged_ if cleanse.backdoored_ else np.asarray(targets)
        result["unlearning"] = unlearn(classifier, cleanse, clean, valid_path.parent, args, chosen)
        result["unlearning"]["classes"] = [int(value) for value in chosen]
        result["unlearning"]["oracle"] = not cleanse.backdoored_
    return result


def unlearn(classifier, cleanse, clean, folder, args, classes):
    """Unlearn ``classes``' reversed triggers on the valid split; clean accuracy and ASR on the test files."""
    from goodnet.data import load_h5
    from goodnet.defenses.fine_pruning import FineTuneRecipe
    from goodnet.defenses.neural_cleanse import unlearning
    from goodnet.metrics import accuracy, attack_success_rate

    recipe = FineTuneRecipe(epochs=args.unlearn_epochs) if args.unlearn_epochs else FineTuneRecipe()
    started = time.perf_counter()
    fine = unlearning(cleanse, classes, recipe=recipe).fit(classifier, clean)
    test = load_h5(folder / "test.h5", num_classes=classifier.num_classes)
    entry = {"epochs": recipe.epochs, "best_epoch": fine.best_epoch_, "seconds": time.perf_counter() - started,
             "clean_accuracy_before": accuracy(classifier.predict(test.images), test.labels),
             "clean_accuracy_after": accuracy(fine.predict(test.images), test.labels), "asr_before": {},
             "asr_after": {}}
    for path in sorted(folder.glob("bd_test_*.h5")):
        data = load_h5(path, num_classes=classifier.num_classes)
        name = path.stem[len("bd_test_"):]
        entry["asr_before"][name] = attack_success_rate(classifier.predict(data.images), data.labels)
        entry["asr_after"][name] = attack_success_rate(fine.predict(data.images), data.labels)
    return entry


def table(results):
    lines = [f"{'case':<22} {'acc%':>6} {'ASR%':>13} {'method':>7} {'cls':>5} {'verdict':>11} "
             f"{'flagged (index)':<34} known target: index / smaller norms / suspicion rank"]
    for result in results:
        card = result.get("model_card")
        accuracy = f"{card['clean_accuracy'] * 100:6.1f}" if card else "     -"
        asr = ("/".join(f"{value * 100:.0f}" for value in card["attack_success_rate"].values())
               if card else "-")
        flagged = ", ".join(f"{value} ({index:.2f})" for value, index in
                            zip(result["flagged"][:5], result["flagged_index"][:5]))
        if len(result["flagged"]) > 5:
            flagged += f", +{len(result['flagged']) - 5}"
        known = "; ".join(f"{entry['target']}: {entry['anomaly_index']:.2f} / {entry['classes_with_smaller_norm']} / "
                          f"{entry['suspicion_rank']}" if entry["anomaly_index"] is not None else
                          f"{entry['target']}: - / {entry['classes_with_smaller_norm']} / {entry['suspicion_rank']}"
                          for entry in result["known"]) or "-"
        lines.append(f"{result['case']:<22} {accuracy} {asr:>13} {result['method']:>7} {result['classes']:>5} "
                     f"{result['verdict']:>11} {flagged or '-':<34} {known}   [{result['wall_s']:.0f} s]")
    unlearned = [result for result in results if "unlearning" in result]
    if unlearned:
        lines += ["", f"{'unlearning (test split)':<24} {'acc% before':>11} {'acc% after':>10}  ASR% before -> after"]
        for result in unlearned:
            entry = result["unlearning"]
            rates = ", ".join(f"{name} {entry['asr_before'][name] * 100:.1f} -> {entry['asr_after'][name] * 100:.1f}"
                              for name in entry["asr_before"])
            case = result["case"] + (" (oracle)" if entry["oracle"] else "")
            lines.append(f"{case:<24} {entry['clean_accuracy_before'] * 100:11.1f} "
                         f"{entry['clean_accuracy_after'] * 100:10.1f}  {rates}   [{entry['seconds']:.0f} s]")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(BUILTIN) + list(LAB), default=None,
                        help="cases to run (default: every built-in case and the four lab BadNets besides bd_net)")
    parser.add_argument("--workdir", default=None, help="where the built-in data and models go (default a temp dir)")
    parser.add_argument("--identities", type=int, default=100, help="faces identities (default 100)")
    parser.add_argument("--train-epochs", type=int, default=None, help="BadNet training epochs (default goodnet's)")
    parser.add_argument("--nc-epochs", type=int, default=None, help="Neural Cleanse epochs per class (default 300)")
    parser.add_argument("--batched-below", type=int, default=152,
                        help="models with at most this many classes get the full schedule on every class")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="Neural Cleanse steps per epoch")
    parser.add_argument("--no-unlearn", action="store_true", help="skip unlearning the flagged built-in cases")
    parser.add_argument("--unlearn-epochs", type=int, default=None, help="unlearning epochs (default the recipe's)")
    parser.add_argument("--quick", action="store_true", help="small built-in data, 100 NC epochs, no lab cases")
    parser.add_argument("--json", default=None, help="write the results (a JSON list) here after every case")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.train_epochs = args.train_epochs or 4
        args.nc_epochs = args.nc_epochs or 100
        args.unlearn_epochs = args.unlearn_epochs or 10
    if args.case:
        from goodnet.inference import quiet_tensorflow

        quiet_tensorflow()
        print(json.dumps(run_case(args.case, args)))
        return
    cases = args.cases or ([name for name in DEFAULT_CASES if name in BUILTIN] if args.quick else DEFAULT_CASES)
    workdir = args.workdir or tempfile.mkdtemp(prefix="goodnet-nc-quality-")
    argv = ["--workdir", workdir, "--identities", str(args.identities), "--batched-below", str(args.batched_below)]
    for flag, value in (("--train-epochs", args.train_epochs), ("--nc-epochs", args.nc_epochs),
                        ("--steps-per-epoch", args.steps_per_epoch), ("--unlearn-epochs", args.unlearn_epochs)):
        if value:
            argv += [flag, str(value)]
    for flag, value in (("--quick", args.quick), ("--no-unlearn", args.no_unlearn)):
        if value:
            argv.append(flag)
    results = []
    for name in cases:
        command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--case", name] + argv
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr)
            print(f"{name}: failed ({done.returncode})", flush=True)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
