#!/usr/bin/env python3
"""Benchmark goodnet's STRIP against plain Keras inference and ART's STRIP, in one process.

Model: the real lab BadNet (``../shared/csaw/models/bd_net.h5``, raw pixels, 1283
classes) unless ``--model`` says otherwise. Data: the real 55x47 images in
``../shared/csaw/images`` (and their mirror images), repeated with a small
random jitter to reach the requested counts (inference cost does not depend on
the content; the detection figures here are not quality figures).

Prints:
1. throughput in perturbed images per second of goodnet's STRIP against plain
   ``model.predict`` on the same number of images (ratio must be >= 0.8);
2. wall time of fit + detection for goodnet's STRIP and ART's STRIP
   (``art.defences.transformer.poisoning.STRIP`` around a ``TensorFlowV2Classifier``)
   with the same model, data, N and blend (ART's: alpha 0.5), and the ratio
   (must be >= 5); if ART cannot run, a straightforward per-input loop instead,
   clearly labelled;
3. the early-stopping rule: share of copies used and how often its decisions
   differ from the full N.

Usage: python bench/bench_strip.py [--copies 100] [--fit 60] [--test 60] [--model M]
"""

import argparse
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("GOODNET_SHARED", REPO.parent / "shared" / "csaw"))


def real_images():
    from goodnet.data import load_image

    folder = SHARED / "images"
    names = sorted(name for name in os.listdir(folder) if name.endswith(".png"))
    images = np.stack([load_image(folder / name) for name in names]).astype(np.float32)
    clean = np.stack([images[i] for i, name in enumerate(names) if name.startswith(("cl_", "clean_", "ano_"))])
    triggered = np.stack([images[i] for i, name in enumerate(names) if name.startswith(("sun_", "sunglasses_"))])
    return clean, triggered


def repeat_with_jitter(images, count, seed):
    rng = np.random.default_rng(seed)
    pool = np.concatenate([images, images[:, :, ::-1]])
    chosen = pool[rng.integers(0, len(pool), count)]
    return np.clip(chosen + rng.normal(0, 2.0, chosen.shape), 0, 255).astype(np.float32)


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def bench_throughput(classifier, strip, images, copies):
    """Perturbed images per second vs plain model.predict on the same number of images."""
    count = len(images) * copies
    indices = strip.draw_indices(len(images), seed=1)
    strip.per_copy_entropies(images[:2], indices[:2])  # trace once
    _, strip_seconds = timed(lambda: strip.per_copy_entropies(images, indices))
    plain_inputs = np.concatenate([images] * copies)
    classifier.model.predict(plain_inputs[:64], verbose=0)
    results = {"perturbed_images": count, "strip_images_per_s": count / strip_seconds}
    for batch in (32, 1024):
        _, seconds = timed(lambda: classifier.model.predict(plain_inputs, batch_size=batch, verbose=0))
        results[f"predict_b{batch}_images_per_s"] = count / seconds
    return results


def run_art(classifier, fit_images, test_images, copies):
    import tensorflow as tf
    from art.defences.transformer.poisoning import STRIP as ArtSTRIP
    from art.estimators.classification import TensorFlowV2Classifier

    model = classifier.model
    wrapped = TensorFlowV2Classifier(model=model, nb_classes=int(model.outputs[0].shape[-1]),
                                     input_shape=classifier.input_shape, clip_values=(0.0, 255.0),
                                     loss_object=tf.keras.losses.SparseCategoricalCrossentropy())
    defended = ArtSTRIP(wrapped)(num_samples=copies, false_acceptance_rate=0.01)
    np.random.seed(0)
    note = ""
    start = time.perf_counter()
    try:
        defended.mitigate(fit_images)
    except ValueError as error:
        # ART's entropy is taken over the copies axis: scipy normalises each class column, and a class
        # whose softmax underflows to 0 in every copy gives 0/0 = NaN, so norm.fit fails after the
        # whole perturbation loop has run. Time the loop, then set a finite threshold to time predict.
        note = f" (ART's fit failed after its loop: {error}; threshold set by hand to time predict)"
        defended.validation_data = fit_images
        defended.entropy_threshold = 0.0
    fit_seconds = time.perf_counter() - start
    _, test_seconds = timed(lambda: defended.predict(test_images))
    return fit_seconds, test_seconds, note


def run_loop_reference(classifier, fit_images, test_images, bank, copies):
    """Straightforward STRIP: one input at a time, copies built in NumPy, plain Keras predict."""
    from goodnet.strip import entropy_reference, threshold_for

    rng = np.random.default_rng(0)

    def entropies(images):
        values = []
        for image in images:
            drawn = bank[rng.choice(len(bank), copies, replace=False)]
            scores = classifier.model.predict(0.5 * image + 0.5 * drawn, verbose=0, batch_size=copies)
            values.append(entropy_reference(scores).mean())
        return np.array(values)

    clean, fit_seconds = timed(lambda: entropies(fit_images))
    threshold = threshold_for(clean, 0.01, "normal")
    flagged, test_seconds = timed(lambda: entropies(test_images) < threshold)
    return fit_seconds, test_seconds, flagged


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "bd_net.h5"))
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--fit", type=int, default=60, help="clean inputs to fit the threshold on")
    parser.add_argument("--test", type=int, default=60, help="inputs to classify (half triggered)")
    parser.add_argument("--throughput-inputs", type=int, default=40)
    parser.add_argument("--skip-art", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from goodnet.models import load_model
    from goodnet.strip import STRIP

    classifier = load_model(args.model, scale="raw")
    clean, triggered = real_images()
    bank = repeat_with_jitter(clean, max(200, args.copies), seed=1)
    fit_images = repeat_with_jitter(clean, args.fit, seed=2)
    test_images = np.concatenate([repeat_with_jitter(clean, args.test // 2, seed=3),
                                  repeat_with_jitter(triggered, args.test - args.test // 2, seed=4)])
    print(f"model {args.model} ({classifier.num_classes} classes, scale {classifier.scale}); N = {args.copies} copies")

    strip = STRIP(classifier, copies=args.copies, blend="alpha", alpha=0.5, progress=False)
    strip.fit(fit_images[:10], bank=bank)  # warm-up and trace
    figures = bench_throughput(classifier, strip, test_images[:args.throughput_inputs], args.copies)
    print(f"[throughput] {figures['perturbed_images']} perturbed images: goodnet STRIP "
          f"{figures['strip_images_per_s']:.0f} img/s; keras model.predict batch 32: "
          f"{figures['predict_b32_images_per_s']:.0f} img/s (ratio {figures['strip_images_per_s'] / figures['predict_b32_images_per_s']:.2f}); "
          f"batch 1024: {figures['predict_b1024_images_per_s']:.0f} img/s "
          f"(ratio {figures['strip_images_per_s'] / figures['predict_b1024_images_per_s']:.2f})")

    def ours():
        fitted = STRIP(classifier, copies=args.copies, blend="alpha", alpha=0.5, progress=False).fit(fit_images, bank=bank)
        return fitted, fitted.predict_trojaned(test_images)

    (fitted, flagged), ours_seconds = timed(ours)
    print(f"[goodnet] fit on {args.fit} + detect on {args.test} inputs: {ours_seconds:.2f} s; "
          f"flagged {flagged[:args.test // 2].mean():.2f} of clean, {flagged[args.test // 2:].mean():.2f} of triggered")

    other = "ART STRIP"
    try:
        if args.skip_art:
            raise ImportError("--skip-art")
        fit_seconds, test_seconds, note = run_art(classifier, fit_images, test_images, args.copies)
        other += note
    except Exception as error:  # ART missing or failing: say so and use the loop reference
        other = "per-input loop (NOT ART: " + str(error).splitlines()[0][:120] + ")"
        fit_seconds, test_seconds, _ = run_loop_reference(classifier, fit_images, test_images, bank, args.copies)
    total = fit_seconds + test_seconds
    print(f"[{other}] fit {fit_seconds:.2f} s + detect {test_seconds:.2f} s = {total:.2f} s")
    print(f"[ratio] goodnet STRIP is {total / ours_seconds:.2f}x faster than {other.split(' (')[0]}")

    early = STRIP(classifier, copies=args.copies, blend="alpha", alpha=0.5, early_stop=True,
                  early_copies=max(1, args.copies // 5), progress=False)
    early.__dict__.update({key: value for key, value in fitted.__dict__.items() if key.endswith("_")})
    full_decisions, full_seconds = timed(lambda: fitted.predict_trojaned(test_images, seed=9))
    early_decisions, early_seconds = timed(lambda: early.predict_trojaned(test_images, seed=9))
    print(f"[early stop] first stage {early.early_copies} copies, z = {early.early_z}: mean copies used "
          f"{early.last_copies_used_.mean():.1f} of {args.copies}; decisions differing from full N: "
          f"{np.mean(full_decisions != early_decisions) * 100:.1f} % of {len(test_images)}; "
          f"time {early_seconds:.2f} s vs {full_seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
