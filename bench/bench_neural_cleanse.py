#!/usr/bin/env python3
"""Benchmark goodnet's Neural Cleanse on the real lab BadNet: batched against the per-class loop, and the full scan.

Model: the real lab BadNet (``../shared/csaw/models/bd_net.h5``, raw pixels, 1283
classes, target 0) unless ``--model`` says otherwise. Clean data: the real clean
55x47 faces of ``../shared/csaw/images`` whose manifest content is "clean"
(``cl_0..4``, ``clean_950``: 6 images, 6 identities, all classified correctly by
bd_net); ``--clean-set identity`` adds the ``ano_*`` faces that bd_net classifies
as their identity (11 images). Every epoch then optimises on all of them.

Prints (one JSON object per part, then a summary), each part in its own process
so that its peak memory (maximum resident set size) is its own:

1. ``ratio``: the batched method against the per-class loop (``method="loop"``)
   on the same ``--classes`` classes (default the first 32), the full schedule,
   the same batches and starts: wall time and CPU time of each, the ratio (the
   issue asks >= 20), and their agreement (same epochs per class, largest mask
   and trigger difference, same flagged set);
2. ``ceiling``: what batching can gain on this machine at all: one compiled
   forward and backward pass of the model (the gradient with respect to its
   input, as every Neural Cleanse step needs) on B images against one on
   K x B images (B the clean images per step, K the batched method's classes
   per call on the ratio part), per image; the batched method's ratio cannot
   exceed it, since both methods do the same network passes;
3. ``scan``: the default method over every class (1283), its wall time (goal
   under 10 minutes on this 2-core machine), CPU time, peak memory, epochs
   optimised in all, its stages, the flagged classes, and class 0's (the
   target's) norm, anomaly index and rank.

``--quick``: 8 classes and at most 60 epochs for the ratio; the scan over the
first 128 classes with tail and reference 12. ``--compare-full`` also runs the
full schedule on every class of the scan ("batched") and compares the flagged
sets, medians and MADs (on all 1283 classes that takes about half an hour here).

Usage: python bench/bench_neural_cleanse.py [--quick] [--classes 32] [--model M] [--clean-set clean|identity] [--skip PART]
"""

import argparse
import csv
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("GOODNET_SHARED", REPO.parent / "shared" / "csaw"))


def real_clean_images(clean_set="clean"):
    """The real clean faces (raw pixels) and their file names, from the manifest."""
    from goodnet.data import load_image

    folder = SHARED / "images"
    with open(folder / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if clean_set == "clean":
        names = [row["file"] for row in rows if row["content"] == "clean"]
    else:
        names = [row["file"] for row in rows if row["identity"] and row["pred_bd_net"] == row["identity"]]
    return np.stack([load_image(folder / name) for name in names]).astype(np.float32), names


def peak_memory_mb():
    """The process's maximum resident set size so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def part_ratio(args):
    from goodnet.defenses.neural_cleanse import NeuralCleanse
    from goodnet.models import load_model

    classifier = load_model(args.model, scale=args.scale)
    images, names = real_clean_images(args.clean_set)
    classes = list(range(args.classes))
    settings = dict(classes=classes, progress=False, **({"epochs": args.epochs} if args.epochs else {}))
    # Warm both paths up (tracing) on one class for two epochs, outside the timings.
    NeuralCleanse(method="batched", classes=[0], epochs=2, progress=False).fit(classifier, images)
    NeuralCleanse(method="loop", classes=[0], epochs=2, progress=False).fit(classifier, images)
    batched, batched_wall, batched_cpu = timed(lambda: NeuralCleanse(method="batched", **settings).fit(
        classifier, images))
    loop, loop_wall, loop_cpu = timed(lambda: NeuralCleanse(method="loop", **settings).fit(classifier, images))
    return {"part": "ratio", "model": str(args.model), "clean_images": names, "classes": len(classes),
            "slots": batched.slots_, "epochs_cap": batched.epochs, "class_epochs": int(batched.class_epochs_),
            "batched_wall_s": batched_wall, "loop_wall_s": loop_wall, "ratio_wall": loop_wall / batched_wall,
            "batched_cpu_s": batched_cpu, "loop_cpu_s": loop_cpu, "ratio_cpu": loop_cpu / batched_cpu,
            "same_epochs": bool(np.array_equal(batched.epochs_, loop.epochs_)),
            "max_mask_difference": float(np.max(np.abs(batched.masks_ - loop.masks_))),
            "max_trigger_difference": float(np.max(np.abs(batched.masks_ * batched.patterns_
                                                          - loop.masks_ * loop.patterns_))),
            "max_norm_relative_difference": float(np.max(np.abs(batched.norms_ - loop.norms_) / loop.norms_)),
            "median_norm_relative_difference": float(np.median(np.abs(batched.norms_ - loop.norms_) / loop.norms_)),
            "classes_with_the_same_epochs": int(np.sum(batched.epochs_ == loop.epochs_)),
            "norms_batched": batched.norms_.round(2).tolist(), "norms_loop": loop.norms_.round(2).tolist(),
            "same_flagged": bool(np.array_equal(batched.flagged_, loop.flagged_)),
            "flagged": batched.flagged_.tolist(), "peak_memory_mb": peak_memory_mb()}


def part_ceiling(args):
    import tensorflow as tf

    from goodnet.defenses.neural_cleanse import NeuralCleanse, scorer, slots_for_budget
    from goodnet.models import load_model

    classifier = load_model(args.model, scale=args.scale)
    images, _ = real_clean_images(args.clean_set)
    batch = min(NeuralCleanse().batch_size, len(images))
    slots = min(slots_for_budget(classifier.model, batch, NeuralCleanse().memory_mb, args.classes), args.classes)
    logits, from_logits = scorer(classifier.model)

    def per_image_seconds(count, repeats):
        inputs = tf.Variable(np.resize(images, (count,) + images.shape[1:]) / np.float32(classifier.divisor))
        targets = tf.zeros(count, tf.int64)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                scores = logits(inputs)
                if from_logits:
                    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, scores)
                else:
                    loss = -tf.math.log(tf.clip_by_value(scores[:, 0], 1e-7, 1.0))
                loss = tf.reduce_mean(loss)
            return tape.gradient(loss, inputs)

        step()   # trace
        wall = time.perf_counter()
        for _ in range(repeats):
            step()
        return (time.perf_counter() - wall) / repeats / count

    small = per_image_seconds(batch, args.ceiling_repeats * 8)
    large = per_image_seconds(batch * slots, args.ceiling_repeats)
    return {"part": "ceiling", "images_per_step": batch, "slots": slots,
            "per_image_ms_at_B": small * 1e3, "per_image_ms_at_KxB": large * 1e3, "ceiling": small / large,
            "threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}


def part_scan(args):
    from goodnet.defenses.neural_cleanse import NeuralCleanse
    from goodnet.models import load_model

    classifier = load_model(args.model, scale=args.scale)
    images, names = real_clean_images(args.clean_set)
    settings = {"progress": False}
    if args.scan_classes:
        settings["classes"] = list(range(args.scan_classes))
    if args.tail:
        settings.update(tail=args.tail, reference=args.tail)
    cleanse, wall, cpu = timed(lambda: NeuralCleanse(**settings).fit(classifier, images))
    peak = peak_memory_mb()
    target = int(np.flatnonzero(cleanse.classes_ == 0)[0])
    rank = int(np.flatnonzero(cleanse.ranking() == 0)[0])
    by_norm = int(np.sum(cleanse.norms_ < cleanse.norms_[target]))
    result = {"part": "scan", "model": str(args.model), "clean_images": names, "classes": int(len(cleanse.classes_)),
            "wall_s": wall, "cpu_s": cpu, "peak_memory_mb": peak, "slots": cleanse.slots_,
            "class_epochs": int(cleanse.class_epochs_), "stages": cleanse.stages_,
            "median": cleanse.median_, "mad": cleanse.mad_, "flagged": cleanse.flagged_.tolist(),
            "flagged_index": [float(cleanse.anomaly_index_[np.flatnonzero(cleanse.classes_ == target)[0]])
                              for target in cleanse.flagged_],
            "target_0": {"norm": float(cleanse.norms_[target]), "anomaly_index": float(cleanse.anomaly_index_[target]),
                         "refined": bool(cleanse.refined_[target]), "suspicion_rank": rank,
                         "classes_with_smaller_norm": by_norm,
                         "attack_success": float(cleanse.attack_success_[target])},
            "suspects": [int(value) for value in cleanse.ranking()[:10]]}
    if args.compare_full:
        # The full schedule on every class of the scan ("batched"): what the scan's flagged set should equal.
        full, full_wall, _ = timed(lambda: NeuralCleanse(method="batched", **{key: value for key, value in
                                                                           settings.items() if key == "classes"},
                                                         progress=False).fit(classifier, images))
        refined = cleanse.refined_
        result["full"] = {"wall_s": full_wall, "class_epochs": int(full.class_epochs_), "median": full.median_,
                          "mad": full.mad_, "flagged": full.flagged_.tolist(),
                          "same_flagged": sorted(full.flagged_.tolist()) == sorted(cleanse.flagged_.tolist()),
                          "full_index_of_scan_flagged": [float(full.anomaly_index_[np.flatnonzero(
                              full.classes_ == value)[0]]) for value in cleanse.flagged_],
                          "full_flagged_refined_by_scan": int(np.isin(full.flagged_,
                                                                      cleanse.classes_[refined]).sum()),
                          "target_0_index": float(full.anomaly_index_[target]),
                          "classes_with_smaller_norm_than_0": int(np.sum(full.norms_ < full.norms_[target]))}
    return result


PARTS = ("ratio", "ceiling", "scan")


def run_part(name, argv):
    """Run one part in a fresh process; return its JSON result."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--part", name] + argv
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"part {name} failed ({result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "bd_net.h5"))
    parser.add_argument("--scale", default="raw", choices=("raw", "unit"))
    parser.add_argument("--clean-set", default="clean", choices=("clean", "identity"))
    parser.add_argument("--classes", type=int, default=None, help="classes of the batched-vs-loop part (32)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap of the ratio part (default: goodnet's)")
    parser.add_argument("--scan-classes", type=int, default=None, help="classes of the scan (default every class)")
    parser.add_argument("--tail", type=int, default=None, help="the scan's tail and reference (default goodnet's)")
    parser.add_argument("--quick", action="store_true", help="8 classes / 60 epochs; a 128-class scan")
    parser.add_argument("--compare-full", action="store_true",
                        help="also run the full schedule on every class of the scan and compare (1283 classes: "
                             "about 32 min here)")
    parser.add_argument("--ceiling-repeats", type=int, default=20,
                        help="timed K x B passes of the ceiling part (8x as many B passes)")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--skip", choices=PARTS, action="append", default=[], help="leave a part out")
    args = parser.parse_args()
    if args.quick:
        args.classes = args.classes or 8
        args.epochs = args.epochs or 60
        args.scan_classes = args.scan_classes or 128
        args.tail = args.tail or 12
    args.classes = args.classes or 32
    if args.part:
        from goodnet.inference import quiet_tensorflow

        quiet_tensorflow()
        result = {"ratio": part_ratio, "ceiling": part_ceiling, "scan": part_scan}[args.part](args)
        print(json.dumps(result))
        return
    argv = ["--model", args.model, "--scale", args.scale, "--clean-set", args.clean_set, "--classes", str(args.classes)]
    for flag, value in (("--epochs", args.epochs), ("--scan-classes", args.scan_classes), ("--tail", args.tail)):
        if value:
            argv += [flag, str(value)]
    if args.compare_full:
        argv.append("--compare-full")
    results = {}
    argv += ["--ceiling-repeats", str(args.ceiling_repeats)]
    for name in PARTS:
        if name in args.skip:
            continue
        results[name] = run_part(name, argv)
        print(json.dumps(results[name], indent=2), flush=True)
    if "ratio" in results:
        ratio = results["ratio"]
        print(f"batched vs loop on {ratio['classes']} classes: {ratio['batched_wall_s']:.1f} s vs "
              f"{ratio['loop_wall_s']:.1f} s wall (x{ratio['ratio_wall']:.2f}), CPU x{ratio['ratio_cpu']:.2f}; "
              f"same epochs {ratio['same_epochs']}, largest mask difference {ratio['max_mask_difference']:.2e}, "
              f"norms differ by {ratio['median_norm_relative_difference'] * 100:.2f} % (median), "
              f"{ratio['max_norm_relative_difference'] * 100:.2f} % (largest)")
    if "ceiling" in results:
        ceiling = results["ceiling"]
        print(f"network passes per image: {ceiling['per_image_ms_at_B']:.3f} ms at {ceiling['images_per_step']} "
              f"images, {ceiling['per_image_ms_at_KxB']:.3f} ms at {ceiling['slots']} x {ceiling['images_per_step']}: "
              f"batching gains at most x{ceiling['ceiling']:.2f} here")
    if "scan" in results:
        scan = results["scan"]
        target = scan["target_0"]
        print(f"scan of {scan['classes']} classes: {scan['wall_s']:.1f} s wall ({scan['wall_s'] / 60:.2f} min), "
              f"{scan['cpu_s']:.1f} s CPU, peak memory {scan['peak_memory_mb']:.0f} MiB, {scan['class_epochs']} "
              f"class-epochs; flagged {scan['flagged']}; class 0: norm {target['norm']:.1f}, index "
              f"{target['anomaly_index']:.2f}, suspicion rank {target['suspicion_rank']}")
        if "full" in scan:
            full = scan["full"]
            print(f"full schedule on every class: {full['wall_s']:.1f} s, median {full['median']:.2f} (scan "
                  f"{scan['median']:.2f}), MAD {full['mad']:.2f} (scan {scan['mad']:.2f}), flagged {full['flagged']}; "
                  f"same flagged set: {full['same_flagged']}")


if __name__ == "__main__":
    main()
