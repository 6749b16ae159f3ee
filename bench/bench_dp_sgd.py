#!/usr/bin/env python3
"""DP-SGD (issue 20): the vectorised per-example gradients against the loop, and the privacy / backdoor trade-off.

Part 1, speed: one DP-SGD step's private gradient on a DeepID (10 classes)
for a batch of B examples: ``method="vectorized"`` (``tf.vectorized_map``,
chunks of 16 to 256 examples per compiled call) against ``method="loop"``
(one ``tf.GradientTape`` per example, the reference), the seconds per step
and their ratio, and the plain batch gradient (no per-example gradients, no
privacy) as the floor; the two methods' gradients are compared (same noise).

Part 2, quality: the built-in digits and faces benchmarks (generated in memory
as ``goodnet synth`` writes them), 10 % of the training images
poisoned with the ``patch`` trigger and relabelled 0 (dirty-label BadNet
poisoning as ``goodnet attack`` does, :func:`goodnet.attacks.badnets.poison`);
a DeepID trained on it without DP (the recipe of ``goodnet train``: the
BadNet) and with DP-SGD at target epsilon 1, 3 and 8 (delta 1e-5,
``target_epsilon`` picks the noise, tight conversion); printed: epsilon
reached (both conversions), noise multiplier, steps, clean test accuracy,
ASR on the poisoned test images, the share of those images' clean versions
already classified as the target (the part of the ASR that is no backdoor:
a model that answers 0 for everything has ASR 100 %) and seconds. ``OUT/results.json`` holds every
figure, ``OUT/dp_sgd_tradeoff_<dataset>.png`` the trade-off.

``--quick`` (about 10 minutes on 2 shared CPU cores): B = 32 for the speed
part; 1000 training images (faces: 10 identities x 100), B = 64, 10 epochs
for the quality part. The full run: B = 256; 3000 training images (digits:
README's setting; faces: 20 identities x 150), B = 256, 15 epochs (about an
hour on 2 CPU cores).

Usage:
    python bench/bench_dp_sgd.py --quick [--seed 0] [--out DIR] [--parts speed quality]
                                 [--batch-size B] [--epochs E] [--epsilons 1 3 8] [--datasets digits faces]
                                 [--optimizer adam|sgd] [--learning-rate R] [--clip-norm C]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = {   # faces: sizes per identity
    "quick": {"speed_batch": 32, "chunks": (16, 32), "speed_repeats": 3, "loop_repeats": 1,
              "data": {"digits": {"sizes": {"train": 1000, "valid": 200, "test": 500}, "identities": None},
                       "faces": {"sizes": {"train": 100, "valid": 20, "test": 50}, "identities": 10}},
              "batch_size": 64, "epochs": 10.0},
    "full": {"speed_batch": 256, "chunks": (16, 32, 64, 128, 256), "speed_repeats": 3, "loop_repeats": 1,
             "data": {"digits": {"sizes": {"train": 3000, "valid": 500, "test": 500}, "identities": None},
                      "faces": {"sizes": {"train": 150, "valid": 25, "test": 25}, "identities": 20}},
             "batch_size": 256, "epochs": 15.0},
}
EPSILONS = (1.0, 3.0, 8.0)
DELTA = 1e-5
POISON_RATE, TRIGGER, TARGET = 0.1, "patch", 0


def _time(function, repeats):
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def speed(setting, seed):
    """Seconds per private-gradient step: vectorised (per chunk size), loop, and the plain batch gradient."""
    import keras
    import tensorflow as tf

    from goodnet.defenses.dp_sgd import PrivateGradient
    from goodnet.models import build_deepid

    batch = setting["speed_batch"]
    keras.utils.set_random_seed(seed)
    model = build_deepid(10)
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(0, 1, (batch, 55, 47, 3)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    parameters = int(sum(np.prod(variable.shape) for variable in model.trainable_variables))

    @tf.function
    def plain(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    plain(inputs, labels)
    result = {"batch": batch, "parameters": parameters,
              "plain_seconds": _time(lambda: plain(inputs, labels), setting["speed_repeats"]), "vectorized": {}}
    for chunk in setting["chunks"]:
        if chunk > batch:
            continue
        private = PrivateGradient(model, 1.0, 1.1, batch, seed=seed, chunk_size=chunk)
        private(inputs[:chunk], labels[:chunk])     # trace
        result["vectorized"][chunk] = _time(lambda: private(inputs, labels), setting["speed_repeats"])
    loop = PrivateGradient(model, 1.0, 1.1, batch, seed=seed, method="loop")
    loop(inputs[:1], labels[:1])                    # trace
    result["loop_seconds"] = _time(lambda: loop(inputs, labels), setting["loop_repeats"])
    # The same noise draws (fresh generators, same seed): the two gradients agree up to float rounding.
    fast, _, _ = PrivateGradient(model, 1.0, 1.1, batch, seed=seed + 1)(inputs, labels)
    slow, _, _ = PrivateGradient(model, 1.0, 1.1, batch, seed=seed + 1, method="loop")(inputs, labels)
    fast = np.concatenate([np.ravel(g) for g in fast])
    slow = np.concatenate([np.ravel(g) for g in slow])
    result["max_abs_difference"] = float(np.max(np.abs(fast - slow)))
    result["max_abs_gradient"] = float(np.max(np.abs(slow)))
    return result


def report_speed(result):
    batch = result["batch"]
    print(f"\nPart 1: one DP-SGD step's private gradient, DeepID 10 classes ({result['parameters']:,} weights), "
          f"B = {batch}")
    print(f"  plain batch gradient (no per-example gradients): {result['plain_seconds']:.3f} s")
    best = min(result["vectorized"].values())
    for chunk, seconds in result["vectorized"].items():
        print(f"  vectorized, chunks of {chunk:3d}: {seconds:.3f} s/step ({seconds / batch * 1e3:.2f} ms/example, "
              f"x{seconds / result['plain_seconds']:.1f} the plain gradient)")
    print(f"  loop (one tape per example):  {result['loop_seconds']:.3f} s/step "
          f"({result['loop_seconds'] / batch * 1e3:.2f} ms/example)")
    print(f"  loop / best vectorized: x{result['loop_seconds'] / best:.1f}")
    print(f"  vectorized vs loop, same noise: max |difference| {result['max_abs_difference']:.2e} "
          f"(max |gradient| {result['max_abs_gradient']:.2e})")


def _figures(classifier, test, poisoned):
    """Clean accuracy; ASR; and the share of the poisoned images' clean versions (the test images not of the
    target class) the model already sends to the target: a model that answers the target for everything has
    ASR 100 % without any backdoor, so the trigger's own effect is ASR minus that share."""
    from goodnet.metrics import accuracy, attack_success_rate

    predictions = classifier.predict(test[0], progress=False)
    others = test[1] != TARGET
    return {"clean_accuracy": float(accuracy(predictions, test[1])),
            "attack_success_rate": float(attack_success_rate(classifier.predict(poisoned[0], progress=False),
                                                             poisoned[1])),
            "clean_to_target": float(np.mean(predictions[others] == TARGET))}


def _generate(dataset, split, seed, data):
    from goodnet.attacks.benchmarks import generate

    if data["identities"] is None:
        return generate(dataset, split, seed, data["sizes"][split])
    return generate(dataset, split, seed, data["sizes"][split], data["identities"])


def quality(setting, dataset, seed, epsilons, progress, dp_options):
    """The BadNet's training set: without DP and with DP-SGD at each target epsilon; clean accuracy and ASR."""
    from goodnet.attacks.badnets import poison
    from goodnet.attacks.benchmarks import poisoned_split
    from goodnet.defenses.dp_sgd import DPSGD
    from goodnet.training import TrainOptions, train_deepid

    data = setting["data"][dataset]
    splits = {split: _generate(dataset, split, seed, data) for split in ("train", "valid", "test")}
    classes = int(max(labels.max() for _, labels in splits.values())) + 1
    train_images, train_labels, poisoned_indices, _ = poison(*splits["train"], [(TRIGGER, TARGET)], POISON_RATE,
                                                             np.random.default_rng(seed))
    test = splits["test"]
    bad_test = poisoned_split(*test, TRIGGER, TARGET)
    result = {"dataset": dataset, "classes": classes, "train_images": len(train_labels), "poisoned_images": len(poisoned_indices),
              "test_images": len(test[1]), "poisoned_test_images": len(bad_test[1]), "delta": DELTA,
              "batch_size": setting["batch_size"], "epochs": setting["epochs"], "dp_options": dp_options, "runs": []}
    print(f"\nPart 2: {dataset} ({classes} classes), {len(train_labels)} training images ({len(poisoned_indices)} poisoned with "
          f"{TRIGGER} -> {TARGET}), test {len(test[1])} clean / {len(bad_test[1])} poisoned", flush=True)
    started = time.perf_counter()
    options = TrainOptions(seed=seed)
    baseline = train_deepid(train_images, train_labels, classes, options)
    result["baseline"] = {**_figures(baseline, test, bad_test), "seconds": time.perf_counter() - started,
                          "options": {"epochs": options.epochs, "batch_size": options.batch_size,
                                      "learning_rate": options.learning_rate}}
    print(f"  no DP ({options.epochs} epochs, batch {options.batch_size}): clean "
          f"{result['baseline']['clean_accuracy'] * 100:.1f}%, ASR {result['baseline']['attack_success_rate'] * 100:.1f}%"
          f", {result['baseline']['seconds']:.0f} s", flush=True)
    for epsilon in epsilons:
        started = time.perf_counter()
        report = (lambda line, epsilon=epsilon: print(f"    [eps {epsilon:g}] {line}", flush=True)) if progress \
            else False
        defense = DPSGD(target_epsilon=float(epsilon), delta=DELTA, batch_size=setting["batch_size"],
                        epochs=setting["epochs"], seed=seed, progress=report, **dp_options)
        defense.fit(train_images, train_labels, classes, valid=splits["valid"])
        run = {"target_epsilon": float(epsilon), "epsilon": defense.epsilon_["tight"].epsilon,
               "epsilon_classic": defense.epsilon_["classic"].epsilon, "noise_multiplier": defense.noise_multiplier_,
               "steps": defense.steps_, "mean_batch_size": float(defense.batch_sizes_.mean()),
               **_figures(defense.model_, test, bad_test), "seconds": time.perf_counter() - started,
               "history": [record.to_dict() for record in defense.history_]}
        result["runs"].append(run)
        print(f"  DP-SGD target eps {epsilon:g}: eps {run['epsilon']:.3f} (tight) / {run['epsilon_classic']:.3f} "
              f"(classic), noise {run['noise_multiplier']:.3f}, {run['steps']} steps: clean "
              f"{run['clean_accuracy'] * 100:.1f}%, ASR {run['attack_success_rate'] * 100:.1f}%, "
              f"{run['seconds']:.0f} s", flush=True)
    return result


def report_quality(result):
    print(f"\n{result['dataset']}: DP-SGD {result['dp_options'] or 'defaults'}, expected batch {result['batch_size']}, "
          f"{result['epochs']:g} epochs, delta {result['delta']:g}")
    print(f"\n{'training':28s} {'epsilon':>8s} {'noise':>7s} {'clean %':>8s} {'ASR %':>7s} {'clean->target %':>16s} "
          f"{'seconds':>8s}")
    base = result["baseline"]
    print(f"{'no DP (the BadNet)':28s} {'inf':>8s} {'-':>7s} {base['clean_accuracy'] * 100:8.1f} "
          f"{base['attack_success_rate'] * 100:7.1f} {base['clean_to_target'] * 100:16.1f} {base['seconds']:8.0f}")
    for run in result["runs"]:
        print(f"{'DP-SGD, target eps ' + format(run['target_epsilon'], 'g'):28s} {run['epsilon']:8.3f} "
              f"{run['noise_multiplier']:7.3f} {run['clean_accuracy'] * 100:8.1f} "
              f"{run['attack_success_rate'] * 100:7.1f} {run['clean_to_target'] * 100:16.1f} {run['seconds']:8.0f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings (about 5 minutes)")
    parser.add_argument("--parts", nargs="+", choices=("speed", "quality"), default=("speed", "quality"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilons", nargs="+", type=float, default=EPSILONS, help="target epsilons")
    parser.add_argument("--batch-size", type=int, default=None, help="DP-SGD's expected batch (quality part)")
    parser.add_argument("--epochs", type=float, default=None, help="DP-SGD's epochs (quality part)")
    parser.add_argument("--datasets", nargs="+", choices=("digits", "faces"), default=("digits", "faces"))
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default=None, help="DP-SGD's (default: its own)")
    parser.add_argument("--learning-rate", type=float, default=None, help="DP-SGD's (default: its own)")
    parser.add_argument("--clip-norm", type=float, default=None, help="DP-SGD's (default: its own)")
    parser.add_argument("--out", default=None, help="results folder (default runs/bench_dp_sgd[_quick])")
    parser.add_argument("--progress", action="store_true", help="print each DP-SGD epoch")
    args = parser.parse_args(argv)

    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    from goodnet.files import prepare_output_dir
    from goodnet.plots import plot_privacy_tradeoff
    from goodnet.reports import write_json

    name = "quick" if args.quick else "full"
    setting = dict(SETTINGS[name])
    if args.batch_size is not None:
        setting["batch_size"] = args.batch_size
    if args.epochs is not None:
        setting["epochs"] = args.epochs
    out = args.out or os.path.join("runs", "bench_dp_sgd" + ("_quick" if args.quick else ""))
    prepare_output_dir(out, "--out", names=["results.json"] + [f"dp_sgd_tradeoff_{dataset}.png"
                                                                for dataset in ("digits", "faces")], overwrite=None)
    print(f"bench_dp_sgd ({name}): parts {', '.join(args.parts)}, seed {args.seed}", flush=True)
    started = time.perf_counter()
    results = {"setting": name, "seed": args.seed}
    if "speed" in args.parts:
        results["speed"] = speed(setting, args.seed)
        report_speed(results["speed"])
        write_json(os.path.join(out, "results.json"), results)
    dp_options = {name: getattr(args, name) for name in ("optimizer", "learning_rate", "clip_norm")
                  if getattr(args, name) is not None}
    if "quality" in args.parts:
        results["quality"] = {}
        for dataset in args.datasets:
            result = results["quality"][dataset] = quality(setting, dataset, args.seed, args.epsilons,
                                                           args.progress, dp_options)
            write_json(os.path.join(out, "results.json"), results)
            png = plot_privacy_tradeoff(result["runs"], result["baseline"],
                                        os.path.join(out, f"dp_sgd_tradeoff_{dataset}.png"),
                                        title=f"DP-SGD on a patch BadNet's training set ({dataset}, "
                                              f"{result['train_images']} images, delta {DELTA:g})")
            print(f"trade-off plot: {png}")
        for result in results["quality"].values():
            report_quality(result)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; figures in {out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
