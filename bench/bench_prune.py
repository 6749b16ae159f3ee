#!/usr/bin/env python3
"""Benchmark the pruning sweep against one plain forward pass and the straightforward method.

Generates lab-sized data (default 11,547 clean + 11,547 poisoned 55x47x3
images) from the real lab images in ../shared/csaw/images: the clean faces
with random brightness, contrast, shifts and noise, and the same images with
the lab's sunglasses trigger (the pixels where ``sunglasses_950.png`` differs
from ``clean_950.png``) pasted in, labelled 0 (the target). Then, in one
process, on the real lab BadNet (``bd_net.h5``):

1. one plain forward pass of the unpruned model over all images, twice over:
   with Keras's own ``model.predict`` (what the lab's eval.py and the public
   solutions run) and with goodnet's compiled forward pass (faster; the
   stricter yardstick);
2. goodnet's sweep (``PruningDefense``, method auto) over all channels;
3. the straightforward method: zero the channel's kernel and bias, re-run
   the whole model on both sets, at every step, again with goodnet's compiled
   forward pass (all steps by default; ``--straightforward-steps K`` runs the
   first K steps and extrapolates the per-step time, saying so) and with
   ``model.predict`` (``--keras-steps K`` steps, default 3, extrapolated the
   same way: every step is one whole pass, so the per-step time is constant);

checks that the sweep and both straightforward runs give identical predictions
at every step they share, and prints times and ratios against both yardsticks.

Usage:
    python bench/bench_prune.py [--shared ../shared/csaw] [--images 11547] [--straightforward-steps K] [--keras-steps K]
"""

import argparse
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent


def lab_like_data(shared, count, seed=0):
    """(clean images, labels, poisoned images, targets): deterministic lab-layout images from the real faces."""
    from goodnet.data import load_image

    images = shared / "images"
    faces = ["cl_0.png", "cl_1.png", "cl_2.png", "cl_3.png", "cl_4.png", "clean_950.png"]
    labels = np.array([43, 328, 196, 1268, 748, 950], np.int64)   # their identities (manifest.csv)
    bases = np.stack([load_image(images / name) for name in faces]).astype(np.float32)
    clean_face, trigger = load_image(images / "clean_950.png"), load_image(images / "sunglasses_950.png")
    mask = np.any(trigger != clean_face, axis=2)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(faces), count)
    shifted = np.empty((count,) + bases.shape[1:], np.float32)
    shifts = rng.integers(-2, 3, size=(count, 2))
    for index in range(count):
        shifted[index] = np.roll(bases[which[index]], tuple(shifts[index]), axis=(0, 1))
    contrast = rng.uniform(0.6, 1.4, (count, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-30, 30, (count, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(0, 12, shifted.shape).astype(np.float32)
    clean = np.clip((shifted - 128) * contrast + 128 + brightness + noise, 0, 255).round().astype(np.float32)
    poisoned = clean.copy()
    poisoned[:, mask] = trigger[mask]
    return clean, labels[which], poisoned, np.zeros(count, np.int64)


def timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def cpu_timed(function):
    """(wall seconds, process CPU seconds, value): CPU time is less sensitive to other load on the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def keras_predict(model, divisor, images, batch_size):
    """Class scores from Keras's own ``model.predict`` (the lab's eval.py way)."""
    return model.predict(images / divisor if divisor != 1 else images, batch_size=batch_size, verbose=0)


def straightforward(classifier, layer_name, ranking, images, steps, batch_size, use_keras=False):
    """Zero each channel's kernel and bias in turn and re-run the whole model (steps + 1 passes).

    ``use_keras``: run each pass with ``model.predict`` instead of goodnet's compiled forward pass.
    Returns (seconds, predictions): the time of the passes only, after the
    clone's function has been traced on one batch.
    """
    import keras

    from goodnet.inference import compiled_forward, run_batches

    model = keras.models.clone_model(classifier.model)
    model.set_weights(classifier.model.get_weights())
    layer = model.get_layer(layer_name)
    if use_keras:
        def forward_all():
            return keras_predict(model, classifier.divisor, images, batch_size)
    else:
        forward = compiled_forward(model, classifier.divisor)

        def forward_all():
            return run_batches(forward, images, batch_size, False)
    kernel, bias = np.array(layer.kernel), np.array(layer.bias)
    warm_batch = images[:batch_size]
    if use_keras:
        keras_predict(model, classifier.divisor, warm_batch, batch_size)
    else:
        run_batches(forward, warm_batch, batch_size, False)
    started = time.perf_counter()
    predictions = []
    for step in range(steps + 1):
        if step:
            kernel[..., ranking[step - 1]] = 0.0
            bias[ranking[step - 1]] = 0.0
            layer.kernel.assign(kernel)
            layer.bias.assign(bias)
        predictions.append(forward_all().argmax(axis=1))
    return time.perf_counter() - started, np.stack(predictions)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=pathlib.Path, default=REPO.parent / "shared" / "csaw")
    parser.add_argument("--images", type=int, default=11547, help="clean images (as many poisoned)")
    parser.add_argument("--layer", default="conv_3")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--straightforward-steps", type=int, default=None,
                        help="run only this many straightforward steps and extrapolate (default: all)")
    parser.add_argument("--keras-steps", type=int, default=3,
                        help="straightforward steps run with model.predict, extrapolated (default 3; 0: skip)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    from goodnet.data import LabData
    from goodnet.inference import run_batches
    from goodnet.models import load_model
    from goodnet.defenses.pruning import PruningDefense

    classifier = load_model(args.shared / "models" / "bd_net.h5", scale="raw")
    clean, labels, poisoned, targets = lab_like_data(args.shared, args.images)
    images = np.concatenate([clean, poisoned])
    print(f"data: {len(clean)} clean + {len(poisoned)} poisoned generated images, model bd_net.h5, "
          f"layer {args.layer}, {os.cpu_count()} CPU cores")

    forward = classifier.forward()
    run_batches(forward, images[:2 * args.batch_size], args.batch_size, False)          # trace + warm up
    keras_predict(classifier.model, classifier.divisor, images[:2 * args.batch_size], args.batch_size)
    warm = PruningDefense(args.layer, progress=False)
    warm.fit(classifier, LabData(clean[:256], labels[:256]), [LabData(poisoned[:256], targets[:256])])  # trace the sweep's functions
    load_before = os.getloadavg()
    plain_time, plain_cpu, _ = cpu_timed(lambda: run_batches(forward, images, args.batch_size, False))
    defense = PruningDefense(args.layer, batch_size=args.batch_size, progress=False)
    sweep_time, sweep_cpu, _ = cpu_timed(lambda: defense.fit(classifier, LabData(clean, labels),
                                                             [LabData(poisoned, targets)]))
    plain_again, plain_cpu_again, _ = cpu_timed(lambda: run_batches(forward, images, args.batch_size, False))
    keras_times = [timed(lambda: keras_predict(classifier.model, classifier.divisor, images, args.batch_size))[0]
                   for _ in range(2)]
    plain = min(plain_time, plain_again)
    plain_cpu = min(plain_cpu, plain_cpu_again)
    keras_plain = min(keras_times)
    load_after = os.getloadavg()
    channels = len(defense.ranking_)
    steps = channels if args.straightforward_steps is None else min(channels, args.straightforward_steps)
    slow_time, slow = straightforward(classifier, args.layer, defense.ranking_, images, steps, args.batch_size)
    fast = np.concatenate([defense.clean_predictions_, defense.poisoned_predictions_[0]], axis=1)[:steps + 1]
    identical = np.array_equal(fast, slow)
    slow_full = slow_time / (steps + 1) * (channels + 1)
    keras_steps = min(channels, args.keras_steps)
    if keras_steps > 0:
        keras_slow_time, keras_slow = straightforward(classifier, args.layer, defense.ranking_, images, keras_steps,
                                                      args.batch_size, use_keras=True)
        identical = identical and np.array_equal(fast[:keras_steps + 1], keras_slow)
        keras_slow_full = keras_slow_time / (keras_steps + 1) * (channels + 1)
    curve = defense.curve_
    print(f"load average (1 min) before/after the timed passes: {load_before[0]:.2f} / {load_after[0]:.2f} "
          "(other processes share the cores; CPU seconds below are this process's)")
    print(f"method: {defense.method_} ({defense.method_reason_}); image-steps certified by goodnet's own "
          f"evaluation: {defense.certified_rows_}, re-run through the Keras tail: "
          f"{defense.recomputed_rows_}, of {(channels + 1) * len(images)}")
    print(f"unpruned: clean accuracy {curve.clean_accuracy[0] * 100:.3f} %, ASR {curve.attack_success[0, 0] * 100:.3f} %;"
          f" selected steps {defense.selected_}")
    print(f"plain forward pass, unpruned model, {len(images)} images, Keras model.predict: {keras_plain:.2f} s "
          f"(two runs: {keras_times[0]:.2f} s, {keras_times[1]:.2f} s)")
    print(f"plain forward pass, unpruned model, {len(images)} images, goodnet compiled: {plain:.2f} s "
          f"(two runs: {plain_time:.2f} s, {plain_again:.2f} s)")
    print(f"goodnet sweep, {channels} channels + baseline: {sweep_time:.2f} s = {sweep_time / keras_plain:.2f} x "
          f"one model.predict pass (bar: <= 2 x), {sweep_time / plain:.2f} x one goodnet compiled pass")
    print(f"CPU seconds: plain pass {plain_cpu:.2f}, sweep {sweep_cpu:.2f} = {sweep_cpu / plain_cpu:.2f} x")
    if steps == channels:
        print(f"straightforward method, all {channels + 1} passes: {slow_time:.2f} s = {slow_time / plain:.1f} x one pass")
    else:
        print(f"straightforward method, EXTRAPOLATED from {steps + 1} of {channels + 1} passes "
              f"({slow_time:.2f} s measured): {slow_full:.2f} s = {slow_full / plain:.1f} x one pass")
    print(f"speed-up over the straightforward method with goodnet's compiled pass: {slow_full / sweep_time:.1f} x")
    if keras_steps > 0:
        print(f"straightforward method with model.predict, EXTRAPOLATED from {keras_steps + 1} of {channels + 1} "
              f"passes ({keras_slow_time:.2f} s measured): {keras_slow_full:.2f} s")
        print(f"speed-up over the straightforward method with model.predict: {keras_slow_full / sweep_time:.1f} x "
              "(bar: >= 30 x)")
    print(f"identical predictions at all {steps + 1} compared steps: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
