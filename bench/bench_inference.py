#!/usr/bin/env python3
"""Images per second for goodnet's inference paths, on the CPU and on the GPU when one is present.

Measures, on the real lab BadNet (``bd_net.h5``) and lab-like images made
from the real faces in ../shared/csaw/images (see bench_prune.lab_like_data):

- plain ``keras.Model.predict`` (the straightforward reference) and goodnet's
  compiled path (float32; then mixed_bfloat16, mixed_float16 and XLA, each
  with its top-1 agreement with float32);
- the compiled path split over every visible device with MirroredStrategy
  (when TensorFlow sees more than one device of the kind in use);
- the pruning sweep (all 60 channels of conv_3, clean + poisoned images):
  images per second = images x (steps + 1) / time;
- STRIP: perturbed images per second (N copies per input).

The hardware is named in the output. ``--json`` prints one JSON object.

Usage:
    python bench/bench_inference.py [--images 11547] [--device auto|cpu|gpu] [--strip-inputs 200] [--json]
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def hardware(device):
    """A description of the CPU and the devices TensorFlow sees."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append(details.get("device_name", gpu.name))
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "gpus": gpus, "device": device,
            "tensorflow": tf.__version__, "python": platform.python_version()}


def rate(count, function, repeats=2):
    """Best images-per-second of ``repeats`` timed runs of ``function`` (after one warm-up on a slice)."""
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return count / best, best


def main():
    from bench_prune import lab_like_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "csaw"))
    parser.add_argument("--images", type=int, default=11547, help="clean images (as many poisoned)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--strip-inputs", type=int, default=200, help="inputs for the STRIP measurement")
    parser.add_argument("--copies", type=int, default=100, help="STRIP copies per input")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from goodnet.inference import Execution, compiled_forward, precision_agreement, run_batches
    from goodnet.models import load_model
    from goodnet.defenses.pruning import PruningDefense
    from goodnet.defenses.strip import STRIP

    shared = pathlib.Path(args.shared)
    clean, labels, poisoned, targets = lab_like_data(shared, args.images)
    images = np.concatenate([clean, poisoned])
    execution = Execution(device=args.device)
    badnet = load_model(shared / "models" / "bd_net.h5", scale="raw").configure(execution)
    results = {"hardware": hardware(args.device), "images": int(len(images)), "execution": execution.describe()}

    def plain():
        return badnet.model.predict(images, batch_size=args.batch_size, verbose=0)

    def goodnet_path(function):
        return lambda: run_batches(function, images, args.batch_size, False)

    plain(), badnet.predict(images[:args.batch_size])
    results["keras_predict"], _ = rate(len(images), plain)
    results["goodnet_float32"], _ = rate(len(images), goodnet_path(badnet.forward()))
    variants = {"mixed_bfloat16": Execution(args.device, precision="mixed_bfloat16"),
                "mixed_float16": Execution(args.device, precision="mixed_float16"),
                "xla": Execution(args.device, jit_compile=True)}
    names = execution.device_names_all()
    if len(names) > 1:
        variants[f"mirrored_{len(names)}"] = Execution(args.device, devices=len(names))
    for name, variant in variants.items():
        function = compiled_forward(badnet.model, badnet.divisor, variant)
        run_batches(function, images[:args.batch_size], args.batch_size, False)
        results[f"goodnet_{name}"], _ = rate(len(images), goodnet_path(function))
    sample = clean[:2048]
    for precision in ("mixed_bfloat16", "mixed_float16"):
        results[f"agreement_{precision}"] = precision_agreement(badnet.model, 1.0, sample, precision)["top1_agreement"]

    from goodnet.data import LabData

    defense = PruningDefense("conv_3", progress=False)
    valid, bad_valid = LabData(clean, labels, "clean"), LabData(poisoned, targets, "poisoned")
    start = time.perf_counter()
    defense.fit(badnet, valid, [bad_valid])
    sweep_seconds = time.perf_counter() - start
    steps = len(defense.ranking_) + 1
    results["pruning_sweep_seconds"] = sweep_seconds
    results["pruning_sweep"] = len(images) * steps / sweep_seconds

    strip = STRIP(copies=args.copies, blend="alpha", progress=False).fit(badnet, clean[:max(2 * args.copies, 400)])
    probe = np.concatenate([clean[-args.strip_inputs // 2:], poisoned[-args.strip_inputs // 2:]])
    strip.entropy(probe[:4])
    results["strip_copies"], _ = rate(len(probe) * args.copies, lambda: strip.entropy(probe), repeats=1)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    hw = results["hardware"]
    print(f"hardware: {hw['cpu']} ({hw['cpu_cores']} cores); GPUs: {', '.join(hw['gpus']) or 'none'}; "
          f"TensorFlow {hw['tensorflow']}; running on {results['execution']}")
    print(f"data: {args.images} clean + {args.images} poisoned lab-like images; model bd_net.h5")
    base = results["keras_predict"]
    print(f"{'path':<34} {'images/s':>10} {'vs keras predict':>17}")
    for key in [key for key in results if key == "keras_predict" or key.startswith("goodnet_")]:
        print(f"{key:<34} {results[key]:>10.0f} {results[key] / base:>16.2f}x")
    for precision in ("mixed_bfloat16", "mixed_float16"):
        print(f"top-1 agreement of {precision} with float32 on 2048 clean images: "
              f"{results[f'agreement_{precision}'] * 100:.2f}%")
    print(f"{'pruning sweep (61 models x images)':<34} {results['pruning_sweep']:>10.0f} "
          f"{results['pruning_sweep'] / base:>16.2f}x   ({results['pruning_sweep_seconds']:.2f} s)")
    print(f"{f'STRIP perturbed images (N={args.copies})':<34} {results['strip_copies']:>10.0f} "
          f"{results['strip_copies'] / base:>16.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
