#!/usr/bin/env python3
"""BaDExpert's backdoor expert along its fine-tuning (issue 22): how fast each recipe forgets the clean task, how
much of the backdoor it keeps, and the taught score's FAR at every checkpoint.

BaDExpert needs a stopping point where the expert B has forgotten the clean task but kept the backdoor. This
bench shows, per BadNet and per fine-tuning recipe, whether such a point exists. For each BadNet (the built-in
faces BadNets of bench/bench_detect.py: ``blend``, ``multi``, and ``blend-planted``, the blend with poison rate 0.3
and 20 epochs), in one process: train the BadNet, split the clean valid set as BaDExpert does (its
``calibration_fraction`` and seed), then fine-tune a copy of the BadNet on the taught labels (y + 1) mod C of the
fine-tuning part with each recipe. Every ``--every`` steps it records:

- ``acc``: B's clean accuracy on the fine-tuning part (true labels): what BaDExpert's early stop watches;
- ``kept``: the share of the poisoned test inputs the BadNet sends to the target that B also sends there;
- ``B->t``: the share of clean test inputs B sends to the (first) target. If it is high, B has collapsed
  onto the target and ``kept`` means nothing;
- the taught score log(B[y^+1] / B[y^]) (:func:`goodnet.defenses.badexpert.combine_reference`): its threshold
  certified at FRR 1 % on the calibration part (:func:`goodnet.calibration.calibrate`), the FRR on the clean test
  split, and the FAR over all poisoned test inputs, over the successful ones, and per trigger.

Recipes, each fine-tuned by BaDExpert's own :func:`goodnet.defenses.badexpert.fine_tuned`: Adam at 1e-4
(BaDExpert's first rung), 3e-5 and 1e-5; Adam 1e-4 on the Dense layers only (BaDExpert's
``expert_layers="dense"``: DeepID's ``fc_1``, ``fc_2``, ``output``) or on the Conv2D layers only; SGD 1e-2 with
momentum 0.9.

Per recipe, the summary gives two rows. The first is the checkpoint BaDExpert's rule would keep: the first where
``acc`` <= 2 / C. The second is the lowest FAR at any checkpoint. That row is chosen on the test split, so it is an
oracle bound on what any stopping rule could reach with the recipe, not a method. Nothing else looks at the test
split.

Sizes: ``--quick``: the ``blend`` and ``multi`` BadNets, the three Adam-1e-4 recipes and SGD, 500 steps;
default: all three BadNets, all six recipes, 500 steps (3e-5: 1200, 1e-5: 2000).

Measured run time on 2 CPU cores: the default, 1017 s (three BadNets, six recipes, ``--every 25``; other benches
shared the cores for part of it).

Usage:
    python bench/bench_badexpert_trace.py [--quick] [--only blend multi] [--every 25] [--seed 0] [--json OUT]
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_detect import FRR, IDENTITIES, SIZES, TARGET, VARIANTS, percent, splits  # noqa: E402

BADNETS = ("blend", "multi", "blend-planted")
PLANTED = {"poison_rate": 0.3, "epochs": 20}           # blend-planted: the blend, planted harder
RECIPES = {"adam-1e-4": {"optimizer": "adam", "rate": 1e-4, "steps": 500},
           "adam-1e-4-dense": {"optimizer": "adam", "rate": 1e-4, "steps": 500, "layers": "dense"},
           "adam-1e-4-conv": {"optimizer": "adam", "rate": 1e-4, "steps": 500, "only": "Conv2D"},
           "sgd-1e-2": {"optimizer": "sgd", "rate": 1e-2, "steps": 500},
           "adam-3e-5": {"optimizer": "adam", "rate": 3e-5, "steps": 1200},
           "adam-1e-5": {"optimizer": "adam", "rate": 1e-5, "steps": 2000}}
QUICK_RECIPES = ("adam-1e-4", "adam-1e-4-dense", "adam-1e-4-conv", "sgd-1e-2")


def badnet_and_data(name, setting, seed):
    """The trained faces BadNet ``name`` and its data: scaled valid/test images, the poisoned test set."""
    import numpy as np

    from goodnet.attacks.badnets import AttackOptions, train_badnet
    from goodnet.attacks.benchmarks import poisoned_split

    data = splits("faces", setting, seed)
    triggers, targets, pruning_aware = VARIANTS.get(name, (("blend",) if name == "blend-planted" else (name,),
                                                           (TARGET,), False))
    options = AttackOptions(triggers=triggers, targets=targets, pruning_aware=pruning_aware, seed=seed)
    if setting["epochs"] is not None:
        options = dataclasses.replace(options, epochs=setting["epochs"])
    if name == "blend-planted":
        options = dataclasses.replace(options, **PLANTED)
    badnet, _ = train_badnet(*data["train"], IDENTITIES, options)
    poisoned = {trigger: poisoned_split(*data["test"], trigger, target) for trigger, target in options.pairs()}
    bad_x = np.concatenate([images for images, _ in poisoned.values()])
    bad_y = np.concatenate([labels for _, labels in poisoned.values()])
    source = np.repeat(list(poisoned), [len(labels) for _, labels in poisoned.values()])
    return badnet, data, bad_x, bad_y, source, options.pairs()[0][1]


def trace(model, tune_x, tune_y, recipe, every, evaluate, seed):
    """Fine-tune a copy of ``model`` on the taught labels of ``tune_y`` with ``recipe``; ``evaluate(B, step)`` every
    ``every`` steps (and at step 0). Returns the list of what ``evaluate`` returned."""
    import keras

    from goodnet.defenses.badexpert import BaDExpertOptions, fine_tuned, taught_labels

    if recipe.get("only"):          # not a BaDExpert option: only the layers of this Keras class are trained
        frozen = keras.models.clone_model(model)     # fine_tuned's copy keeps these trainable flags
        frozen.set_weights(model.get_weights())
        for layer in frozen.layers:
            layer.trainable = isinstance(layer, getattr(keras.layers, recipe["only"]))
        model = frozen
    optimizer = (keras.optimizers.Adam(recipe["rate"]) if recipe["optimizer"] == "adam"
                 else keras.optimizers.SGD(recipe["rate"], momentum=0.9))
    rows, total = [], int(recipe["steps"])

    class Trace(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = 0

        def on_train_begin(self, logs=None):
            rows.append(evaluate(self.model, 0))

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps % every == 0:
                rows.append(evaluate(self.model, self.steps))
            if self.steps >= total:
                self.model.stop_training = True

    batch = BaDExpertOptions().tune_batch
    epochs = math.ceil(total / math.ceil(len(tune_y) / batch))
    fine_tuned(model, tune_x, taught_labels(tune_y, IDENTITIES), optimizer, epochs, batch, seed, [Trace()],
               recipe.get("layers", "all"))
    return rows


def measure(name, setting, recipes, every, seed):
    import numpy as np

    from goodnet.calibration import calibrate
    from goodnet.defenses.badexpert import BaDExpertOptions, combine_reference
    from goodnet.defenses.fine_pruning import split_holdout

    started = time.perf_counter()
    badnet, data, bad_x, bad_y, source, target = badnet_and_data(name, setting, seed)
    valid_x, valid_y = data["valid"]
    test_x, test_y = data["test"]
    defaults = BaDExpertOptions()
    tune, hold = split_holdout(np.asarray(valid_y), defaults.calibration_fraction, defaults.seed)
    scaled = {part: badnet.scale_images(images) for part, images in
              (("tune", valid_x[tune]), ("hold", valid_x[hold]), ("test", test_x), ("bad", bad_x))}
    original = {part: badnet.model.predict(images, batch_size=512, verbose=0) for part, images in scaled.items()}
    success = original["bad"].argmax(axis=1) == bad_y
    row = {"badnet": name, "clean_accuracy": float(np.mean(original["test"].argmax(axis=1) == test_y)),
           "attack_success": float(np.mean(success)), "tune": len(tune), "calibration": len(hold),
           "poisoned": len(bad_x), "target_accuracy": min(1.0, 2.0 / IDENTITIES), "recipes": {}}
    print(f"{name}: clean accuracy {row['clean_accuracy'] * 100:.1f} %, ASR {row['attack_success'] * 100:.1f} % "
          f"({time.perf_counter() - started:.0f} s)", flush=True)

    def taught(part, expert_outputs):
        # the taught score reads only M and B; M' is not trained here, so B stands in for it
        return combine_reference(original[part], expert_outputs, expert_outputs, "taught")[0]

    def evaluate(expert, step):
        outputs = {part: expert.predict(images, batch_size=512, verbose=0) for part, images in scaled.items()
                   if part != "tune"}
        threshold = calibrate(taught("hold", outputs["hold"]), FRR, "certified").threshold
        flagged = taught("bad", outputs["bad"]) < threshold
        point = {"step": step,
                 "accuracy": float(np.mean(expert.predict(scaled["tune"], batch_size=512, verbose=0).argmax(axis=1)
                                           == valid_y[tune])),
                 "kept": float(np.mean(outputs["bad"][success].argmax(axis=1) == bad_y[success])),
                 "clean_to_target": float(np.mean(outputs["test"].argmax(axis=1) == target)),
                 "threshold": float(threshold),
                 "test_frr": float(np.mean(taught("test", outputs["test"]) < threshold)),
                 "far": 1.0 - float(np.mean(flagged)),
                 "far_successful": 1.0 - float(np.mean(flagged[success])) if success.any() else None}
        if len(set(source)) > 1:
            point["far_per_trigger"] = {trigger: 1.0 - float(np.mean(flagged[source == trigger]))
                                        for trigger in sorted(set(source))}
        return point

    for recipe_name in recipes:
        recipe = RECIPES[recipe_name]
        started = time.perf_counter()
        points = trace(badnet.model, scaled["tune"], valid_y[tune], recipe, every, evaluate, seed)
        seconds = time.perf_counter() - started
        stop = next((point for point in points if point["accuracy"] <= row["target_accuracy"]), None)
        best = min(points[1:], key=lambda point: point["far"])
        row["recipes"][recipe_name] = {"recipe": dict(recipe), "seconds": seconds, "points": points,
                                       "rule_stop": stop, "oracle_best": best}
        for point in points:
            print(f"  {recipe_name:15s} {point_line(point)}", flush=True)
        print(f"  {recipe_name}: {seconds:.0f} s", flush=True)
    return row


def point_line(point):
    def percent5(value):
        return percent(value, 5)

    line = (f"step {point['step']:4d} acc {percent5(point['accuracy'])} kept {percent5(point['kept'])} "
            f"B->t {percent5(point['clean_to_target'])} FRR {percent5(point['test_frr'])} FAR {percent5(point['far'])} "
            f"succ. {percent5(point['far_successful'])}")
    if "far_per_trigger" in point:
        line += " " + " ".join(f"{trigger} {percent5(value)}" for trigger, value in point["far_per_trigger"].items())
    return line


def summary(rows):
    out = ["| BadNet (clean / ASR %) | recipe | BaDExpert's stop: step, acc / kept / B->t / FAR / FAR succ. % "
           "| lowest FAR at any checkpoint (oracle): step, acc / kept / FAR % |", "|---|---|---|---|"]
    for row in rows:
        for recipe_name, entry in row["recipes"].items():
            stop, best = entry["rule_stop"], entry["oracle_best"]
            rule = "not reached" if stop is None else (
                f"{stop['step']}: {percent(stop['accuracy'])} / {percent(stop['kept'])} / "
                f"{percent(stop['clean_to_target'])} / {percent(stop['far'])} / {percent(stop['far_successful'])}")
            out.append(f"| {row['badnet']} ({percent(row['clean_accuracy'])} / {percent(row['attack_success'])}) | "
                       f"{recipe_name} | {rule} | {best['step']}: {percent(best['accuracy'])} / "
                       f"{percent(best['kept'])} / {percent(best['far'])} |")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two BadNets, four recipes (see the docstring)")
    parser.add_argument("--only", nargs="+", default=None, choices=BADNETS, help="BadNets to run")
    parser.add_argument("--recipes", nargs="+", default=None, choices=tuple(RECIPES), help="recipes to run")
    parser.add_argument("--every", type=int, default=25, help="steps between two checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    setting = SIZES["quick"]
    badnets = args.only or (BADNETS[:2] if args.quick else BADNETS)
    recipes = args.recipes or (QUICK_RECIPES if args.quick else tuple(RECIPES))
    started = time.perf_counter()
    rows = [measure(name, setting, recipes, args.every, args.seed) for name in badnets]
    print(f"\nThe backdoor expert along its fine-tuning (faces, {IDENTITIES} identities, bench_detect's quick "
          f"sizes, seed {args.seed}, FRR {FRR * 100:g} %; {time.perf_counter() - started:.0f} s in all)")
    print("\n".join(summary(rows)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
