#!/usr/bin/env python3
"""STRIP and BaDExpert on the real lab images with the real BadNets (issue 22), as far as 6 clean images allow.

``../shared/csaw/images`` holds 6 clean faces and 13 triggered ones (sunglasses, lipstick, eyebrows), and there is
no labelled validation set of the 1283 classes. A threshold at FRR 1 % cannot be certified from 6 clean images:
:func:`goodnet.calibration.calibration_size_needed` is printed. So this bench measures how far each detector's
scores separate the triggered images from the clean ones, with no threshold.

Leave-one-out, for each real BadNet and each clean image i:

- **STRIP** (``goodnet detect``'s blend and threshold rule; 5 copies, the other 5 clean images as the bank)
  scores clean image i and every triggered image;
- **BaDExpert**: the backdoor expert B is extracted from the other 5 clean images by BaDExpert's own rule
  (:func:`goodnet.defenses.badexpert.extract_expert`: taught labels (y + 1) mod 1283, Adam ladder, stopped when
  their accuracy falls to 2 / 1283, i.e. 0). The taught score (:func:`goodnet.defenses.badexpert.combine_reference`)
  is computed for clean image i and every triggered image. M' is not trained: the taught score does not read it.

Reported per BadNet and detector:

- AUROC: the share of (triggered image, held-out clean image i) pairs, both scored by fit i, where the triggered
  image scores lower (more suspicious). 1.0 means every triggered image is below every held-out clean image;
  0.5 is chance;
- the triggered images that score below all 6 held-out clean images, taking each triggered image's median over
  the 6 fits.

The triggered images of a BadNet are those it sends to one of its targets (from the fixtures' README: bd_net,
sunglasses and anonymous_1 -> 0; multi-trigger -> 5, 1, 8; anonymous_2's trigger is unknown, and it sends every
triggered lab image to 4).

Measured run time on 2 CPU cores: 89 s (five BadNets x 6 leave-one-out fits), 90 s with ``--expert-layers all``.

Usage:
    python bench/bench_detect_lab.py [--shared ../shared] [--expert-layers dense|all] [--json OUT]
"""

import argparse
import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BADNETS = {"bd_net": ("bd_net.h5", "raw", (0,)),
           "sunglasses": ("sunglasses_bd_weights.h5", "unit", (0,)),
           "anonymous_1": ("anonymous_1_bd_weights.h5", "unit", (0,)),
           "anonymous_2": ("anonymous_2_bd_weights.h5", "unit", (4,)),
           "multi_trigger_multi_target": ("multi_trigger_multi_target_bd_weights.h5", "unit", (5, 1, 8))}
COPIES = 5


def lab_images(shared):
    import numpy as np

    from goodnet.data import load_image

    folder = os.path.join(shared, "csaw", "images")
    with open(os.path.join(folder, "manifest.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = np.stack([load_image(os.path.join(folder, row["file"])) for row in rows])
    return rows, images


def leave_one_out(classifier, clean, clean_labels, triggered, expert_layers):
    """{"strip": (clean scores (6,), triggered scores (6, T)), "badexpert": (...)}: fit i leaves clean image i out."""
    import numpy as np

    from goodnet.defenses.badexpert import BaDExpertOptions, combine_reference, extract_expert
    from goodnet.defenses.strip import STRIP

    defaults = BaDExpertOptions()
    target = min(1.0, 2.0 / classifier.num_classes)
    out = {"strip": ([], []), "badexpert": ([], [])}
    for left in range(len(clean)):
        others = np.delete(np.arange(len(clean)), left)
        strip = STRIP(copies=COPIES, progress=False).fit(classifier, clean[others], bank=clean[others])
        out["strip"][0].append(strip.entropy(clean[left:left + 1], seed=strip.seed + 2)[0])
        out["strip"][1].append(strip.entropy(triggered, seed=strip.seed + 2))
        expert, ladder = extract_expert(classifier.model, classifier.scale_images(clean[others]),
                                        clean_labels[others], classifier.num_classes, defaults.expert_rates, target,
                                        batch_size=len(others), layers=expert_layers)
        expert = classifier.with_model(expert)

        def taught(images):
            model_outputs = classifier.predict_proba(images)
            expert_outputs = expert.predict_proba(images)
            return combine_reference(model_outputs, expert_outputs, expert_outputs, "taught")[0]

        out["badexpert"][0].append(taught(clean[left:left + 1])[0])
        out["badexpert"][1].append(taught(triggered))
        print(f"    fit {left}: expert ladder {ladder}", flush=True)
    return {name: (np.asarray(cleans, np.float64), np.stack(trigs)) for name, (cleans, trigs) in out.items()}


def separation(clean_scores, triggered_scores):
    import numpy as np

    pairs = triggered_scores < clean_scores[:, None]          # (fits, triggered): fit i's pair with clean i
    ties = triggered_scores == clean_scores[:, None]
    median = np.median(triggered_scores, axis=0)
    return {"auroc": float(np.mean(pairs) + 0.5 * np.mean(ties)),
            "below_every_clean": int(np.sum(median < clean_scores.min())), "triggered": int(len(median)),
            "clean_scores": [float(v) for v in clean_scores], "triggered_median": [float(v) for v in median]}


def main():
    from goodnet.defenses.badexpert import EXPERT_LAYERS, BaDExpertOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get("GOODNET_SHARED", os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared")))
    parser.add_argument("--expert-layers", default=BaDExpertOptions().expert_layers, choices=EXPERT_LAYERS,
                        help="the layers the backdoor expert fine-tunes (default: BaDExpert's)")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args()
    import numpy as np

    from goodnet.calibration import calibration_size_needed
    from goodnet.inference import quiet_tensorflow
    from goodnet.models import load_model

    quiet_tensorflow()
    rows, images = lab_images(args.shared)
    content = np.array([row["content"] for row in rows])
    clean_mask = content == "clean"
    clean, clean_labels = images[clean_mask], np.array([int(row["identity"]) for row, keep in zip(rows, clean_mask)
                                                         if keep])
    print(f"{clean_mask.sum()} clean and {(~clean_mask).sum()} triggered lab images; certifying FRR 1 % needs "
          f"{calibration_size_needed(0.01)} clean images, FRR 5 % {calibration_size_needed(0.05)}", flush=True)
    results, table = {}, ["| BadNet | triggered images sent to the target | STRIP AUROC (below every clean) "
                          "| BaDExpert AUROC (below every clean) |", "|---|---|---:|---:|"]
    started = time.perf_counter()
    for name, (file_name, scale, targets) in BADNETS.items():
        classifier = load_model(os.path.join(args.shared, "csaw", "models", file_name), scale=scale)
        answers = classifier.predict(images)
        triggered = ~clean_mask & np.isin(answers, targets)
        files = [row["file"] for row, keep in zip(rows, triggered) if keep]
        print(f"{name}: {len(files)} triggered images sent to {targets}: {' '.join(files)}", flush=True)
        scores = leave_one_out(classifier, clean, clean_labels, images[triggered], args.expert_layers)
        results[name] = {"triggered": files, **{detector: separation(*pair) for detector, pair in scores.items()}}
        cells = [f"{results[name][d]['auroc']:.2f} ({results[name][d]['below_every_clean']} of {len(files)})"
                 for d in ("strip", "badexpert")]
        table.append(f"| {name} | {len(files)} | {' | '.join(cells)} |")
        print(table[-1], flush=True)
    print(f"\nLeave-one-out over the 6 clean lab images (expert layers: {args.expert_layers}; "
          f"{time.perf_counter() - started:.0f} s in all)")
    print("\n".join(table))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
