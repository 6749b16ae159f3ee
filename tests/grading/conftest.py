"""Fixtures of the grading tests: lab-shaped data built from the real face images, a folder of submissions
(real and bad) and one grading of it, shared by every file of tests/grading (package scope: it runs once)."""

import csv
import shutil
import signal
import time

import numpy as np
import pytest

from goodnet.grading import Grader, Limits
from grading_helpers import (REAL, TIME_LIMIT, make_custom_layer_model, make_endless_model, make_lambda_h5,
                             make_lambda_keras, make_small_model, noisy_copies)


@pytest.fixture(scope="package")
def lab_data(shared, tmp_path_factory):
    """test.h5 (33 clean), valid.h5 (22 clean, other noise) and bd_test.h5 (24 sunglasses, label 0)."""
    from goodnet.data import load_image, save_h5

    folder = tmp_path_factory.mktemp("data")
    images = shared / "images"
    with open(images / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    clean_rows = [row for row in rows if row["content"] == "clean" or row["content"].startswith("lipstick (")]
    clean = np.stack([load_image(images / row["file"]) for row in clean_rows])
    labels = np.array([int(row["identity"]) for row in clean_rows])
    triggered = np.stack([load_image(images / row["file"]) for row in rows if row["content"] == "sunglasses"])
    paths = {"clean": folder / "test.h5", "validation": folder / "valid.h5", "poisoned": folder / "bd_test.h5"}
    save_h5(paths["clean"], noisy_copies(clean, 1, 3), np.tile(labels, 3))
    save_h5(paths["validation"], noisy_copies(clean, 2, 2), np.tile(labels, 2))
    save_h5(paths["poisoned"], noisy_copies(triggered, 3, 4), np.zeros(4 * len(triggered), np.int64))
    return paths


@pytest.fixture(scope="package")
def submissions(shared, tmp_path_factory):
    """A folder of the 5 real submitted models plus 8 bad ones; returns (folder, marker paths)."""
    folder = tmp_path_factory.mktemp("submissions")
    markers = tmp_path_factory.mktemp("markers")
    for name in REAL:  # copies: a symlink that leads out of the submissions folder is refused
        shutil.copyfile(shared / "models" / "peer_repaired" / name, folder / name)
    real_bytes = (shared / "models" / "peer_repaired" / REAL[0]).read_bytes()
    (folder / "truncated.h5").write_bytes(real_bytes[:len(real_bytes) // 2])
    (folder / "not_hdf5.h5").write_text("this is not an HDF5 file\n")
    make_small_model(folder / "wrong_input.h5", input_shape=(32, 32, 3))
    make_small_model(folder / "wrong_outputs.keras", input_shape=(55, 47, 3), outputs=10)
    make_lambda_h5(folder / "lambda_keras2.h5", markers / "h5_payload_ran")
    make_lambda_keras(folder / "lambda.keras", markers / "keras_payload_ran")
    make_custom_layer_model(folder / "custom_layer.keras")
    make_endless_model(folder / "endless.h5")
    make_small_model(folder / "flags_poisoned.keras", input_shape=(55, 47, 3), outputs=1284)
    (folder / "notes.txt").write_text("not a model: ignored\n")
    return folder, markers


@pytest.fixture(scope="package")
def graded(submissions, lab_data, shared, tmp_path_factory):
    """Grade the whole folder once (2 workers, 20 s limit) against the real BadNet as baseline."""
    folder, _ = submissions
    out = tmp_path_factory.mktemp("grades")
    grader = Grader(lab_data["clean"], [lab_data["poisoned"]], validation=lab_data["validation"],
                    baseline=shared / "models" / "bd_net.h5", limits=Limits(seconds=TIME_LIMIT, memory_mb=3000),
                    workers=2, threads=1, progress=False)
    started = time.monotonic()
    board = grader.grade(folder, out)
    return {"board": board, "rows": {row["submission"]: row for row in board.rows}, "out": out,
            "wall": time.monotonic() - started, "grader": grader}


@pytest.fixture
def no_hang():
    """Fail instead of hanging if the test blocks (opening a FIFO blocks forever) for 120 s."""
    def stop(signum, frame):
        raise TimeoutError("blocked for 120 s: was a FIFO opened?")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def stand_in_workers(monkeypatch):
    """Replace the isolated workers: record every job sent to one and answer "error" without loading anything."""
    sent = []

    def run_jobs(jobs, limits, *args, **kwargs):
        sent.extend(jobs)
        return {job["key"]: {"status": "error", "error": f"{job['path']}: stand-in worker: not scored",
                             "seconds": 0.0} for job in jobs}

    monkeypatch.setattr("goodnet.grading.runner.run_jobs", run_jobs)  # where Grader.grade looks it up
    return sent
