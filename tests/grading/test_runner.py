"""Tests of goodnet.grading.runner: the whole folder of real and bad submissions graded in isolated processes
(reasons, the time and memory limits, figures equal to plain Keras's, the cache)."""

import multiprocessing
import shutil

import numpy as np
import pytest

from goodnet.grading import Grader, Limits
from goodnet.metrics import defense_effectiveness_rating
from grading_helpers import REAL, TIME_LIMIT, UNIT_SCALED, reference_figures


def test_bad_submissions_are_reported_with_their_reason(graded, submissions):
    rows = graded["rows"]
    _, markers = submissions
    expected = {
        "truncated.h5": ("error", "not an HDF5 file"),
        "not_hdf5.h5": ("error", "not an HDF5 file"),
        "wrong_input.h5": ("error", "input: expected images of shape (55, 47, 3)"),
        "wrong_outputs.keras": ("error", "10 outputs cannot serve 1283 classes"),
        "lambda_keras2.h5": ("refused", "Lambda layers carry Python code"),
        "lambda.keras": ("refused", "Lambda layers carry Python code"),
        "custom_layer.keras": ("refused", "evil_package"),
        "endless.h5": ("timeout", "time limit"),
    }
    for name, (status, reason) in expected.items():
        assert rows[name]["status"] == status, (name, rows[name])
        assert reason in rows[name]["error"], (name, rows[name]["error"])
        assert rows[name]["score"] is None and rows[name]["rank"] is None
    assert not list(markers.iterdir()), "a Lambda payload ran"
    assert "notes.txt" not in rows
    assert multiprocessing.active_children() == [] or all(
        child.name.startswith("ForkServer") for child in multiprocessing.active_children())


def test_endless_submission_is_stopped_at_its_limit_while_the_others_finish(graded):
    rows = graded["rows"]
    assert TIME_LIMIT <= rows["endless.h5"]["seconds"] < TIME_LIMIT + 5
    for name in REAL:
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["seconds"] < TIME_LIMIT


def test_real_submissions_score_like_plain_keras(graded, lab_data, shared):
    rows = graded["rows"]
    for name in REAL:
        row = rows[name]
        scale = "unit" if name in UNIT_SCALED else "raw"
        assert row["scale"] == scale, row["scale_report"]
        accuracy, asr = reference_figures(shared / "models" / "peer_repaired" / name, scale, lab_data)
        assert row["clean_accuracy"] == pytest.approx(accuracy)
        assert row["poisoned"][0]["attack_success_rate"] == pytest.approx(asr)
        assert row["detection_rate"] is None and row["false_rejection_rate"] is None  # N outputs: no flagging
    baseline_accuracy, baseline_asr = reference_figures(shared / "models" / "bd_net.h5", "raw", lab_data)
    board = graded["board"]
    assert board.baseline["clean_accuracy"] == pytest.approx(baseline_accuracy)
    for name in REAL:
        row = rows[name]
        assert row["score"] == pytest.approx(defense_effectiveness_rating(
            baseline_accuracy, baseline_asr, row["clean_accuracy"], row["mean_asr"]))


def test_model_with_a_poisoned_output_gets_detection_rate_and_frr(graded, submissions, lab_data):
    import keras

    from goodnet.data import load_h5

    folder, _ = submissions
    row = graded["rows"]["flags_poisoned.keras"]
    assert row["status"] == "ok" and row["flags_poisoned"] is True
    model = keras.models.load_model(folder / "flags_poisoned.keras", compile=False)
    clean, poisoned = load_h5(lab_data["clean"]), load_h5(lab_data["poisoned"])
    factor = 1.0 if row["scale"] == "raw" else 1.0 / 255.0
    clean_answers = np.argmax(model.predict(clean.images * factor, verbose=0), axis=1)
    poisoned_answers = np.argmax(model.predict(poisoned.images * factor, verbose=0), axis=1)
    assert row["false_rejection_rate"] == pytest.approx(np.mean(clean_answers == 1283))
    assert row["detection_rate"] == pytest.approx(np.mean(poisoned_answers == 1283))
    assert row["clean_accuracy"] == pytest.approx(np.mean(clean_answers == clean.labels))


def test_rerun_scores_only_new_or_changed_files(graded, submissions, lab_data, shared, tmp_path):
    folder, _ = submissions
    out = tmp_path / "grades"
    shutil.copytree(graded["out"], out)  # the first grading's cache; its scoreboard files stay for the other tests
    board = graded["grader"].grade(folder, out)
    assert all(row["cached"] for row in board.rows)
    assert {row["submission"]: row["score"] for row in board.rows} == {
        name: row["score"] for name, row in graded["rows"].items()}
    # A changed copy of a real model (same weights, one more attribute) is a new file: only it is scored.
    import h5py

    changed = folder / "changed_copy.h5"
    changed.write_bytes((shared / "models" / "peer_repaired" / REAL[0]).read_bytes())
    with h5py.File(changed, "a") as handle:
        handle.attrs["note"] = "resubmitted"
    try:
        board = graded["grader"].grade(folder, out)
    finally:
        changed.unlink()
    fresh = [row["submission"] for row in board.rows if not row["cached"]]
    assert fresh == ["changed_copy.h5"]
    rows = {row["submission"]: row for row in board.rows}
    assert rows["changed_copy.h5"]["score"] == pytest.approx(rows[REAL[0]]["score"])


def test_memory_limit_stops_a_submission(lab_data, shared, tmp_path):
    grader = Grader(lab_data["clean"], [lab_data["poisoned"]], scale="raw", limits=Limits(seconds=60, memory_mb=40),
                    workers=1, threads=1, use_cache=False, progress=False)
    board = grader.grade([shared / "models" / "peer_repaired" / REAL[0]], tmp_path)
    row = board.rows[0]
    assert row["status"] == "memory" and "40 MiB" in row["error"]
