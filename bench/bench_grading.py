"""Benchmark ``goodnet grade``: forkserver isolation (TensorFlow preloaded once) against spawn
(a fresh interpreter, and a TensorFlow import, per submission), in the same process.

Both modes grade the same real submitted models on the same small data, without
the cache; each submission still runs in its own process. Prints wall time of
the whole run, mean per-submission process time, and the ratios, and checks
that both modes give identical figures.

Usage: python bench/bench_grading.py [--shared ../shared/csaw] [--workers 2] [--copies 1]
"""

import argparse
import csv
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent


def build_data(shared, folder):
    from goodnet.data import load_image, save_h5

    images = shared / "images"
    with open(images / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    clean_rows = [row for row in rows if row["content"] == "clean" or row["content"].startswith("lipstick (")]
    clean = np.stack([load_image(images / row["file"]) for row in clean_rows])
    labels = np.array([int(row["identity"]) for row in clean_rows])
    triggered = np.stack([load_image(images / row["file"]) for row in rows if row["content"] == "sunglasses"])
    rng = np.random.default_rng(0)
    paths = {name: folder / f"{name}.h5" for name in ("test", "valid", "bd_test")}
    save_h5(paths["test"], np.clip(np.tile(clean, (3, 1, 1, 1)) + rng.integers(-3, 4, (33,) + clean.shape[1:]), 0, 255),
            np.tile(labels, 3))
    save_h5(paths["valid"], np.clip(np.tile(clean, (2, 1, 1, 1)) + rng.integers(-3, 4, (22,) + clean.shape[1:]), 0, 255),
            np.tile(labels, 2))
    save_h5(paths["bd_test"], np.tile(triggered, (4, 1, 1, 1)), np.zeros(4 * len(triggered), np.int64))
    return paths


def main():
    from goodnet.grading import Grader, Limits
    from goodnet.grading.runner import GradeOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get("GOODNET_SHARED", REPO.parent / "shared" / "csaw"))
    parser.add_argument("--workers", type=int, default=GradeOptions.workers)
    parser.add_argument("--copies", type=int, default=1, help="grade each real model this many times (as copies)")
    args = parser.parse_args()
    shared = pathlib.Path(args.shared)
    models = sorted((shared / "models" / "peer_repaired").glob("*.h5"))
    with tempfile.TemporaryDirectory() as temporary:
        temporary = pathlib.Path(temporary)
        data = build_data(shared, temporary)
        submissions = temporary / "submissions"
        submissions.mkdir()
        for copy in range(args.copies):
            for model in models:
                target = submissions / f"{model.stem}_{copy}.h5"
                target.write_bytes(model.read_bytes() + b"\0" * copy)  # distinct hashes, same model
        figures = {}
        for isolation in ("spawn", "forkserver"):
            grader = Grader(data["test"], [data["bd_test"]], validation=data["valid"], limits=Limits(seconds=300),
                            workers=args.workers, isolation=isolation, use_cache=False, progress=False)
            started = time.perf_counter()
            board = grader.grade(submissions, temporary / f"out_{isolation}")
            wall = time.perf_counter() - started
            per_model = [row["seconds"] for row in board.rows]
            assert all(row["status"] == "ok" for row in board.rows), [row["error"] for row in board.rows]
            figures[isolation] = {"wall": wall, "mean": float(np.mean(per_model)),
                                  "scores": {row["submission"]: row["score"] for row in board.rows}}
            print(f"{isolation:>10}: {len(per_model)} submissions, {args.workers} workers: wall {wall:6.2f} s, "
                  f"per-submission process {np.mean(per_model):5.2f} s (min {min(per_model):.2f}, "
                  f"max {max(per_model):.2f})")
    same = figures["spawn"]["scores"] == figures["forkserver"]["scores"]
    print(f"identical scores in both modes: {same}")
    print(f"speed-up forkserver vs spawn: wall x{figures['spawn']['wall'] / figures['forkserver']['wall']:.2f}, "
          f"per submission x{figures['spawn']['mean'] / figures['forkserver']['mean']:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
