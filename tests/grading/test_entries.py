"""Tests of goodnet.grading.entries and the refusals before any submission runs: which entries of a folder are
graded, every hostile entry a row that nothing reads, entries swapped after their check, and the static inspection
(no Keras) and Keras safe mode that refuse code-carrying files without running their code."""

import csv
import json
import os
import shutil

import pytest

from goodnet.grading import Grader, SubmissionRefused, config_problems, find_submissions, inspect_model_file
from grading_helpers import HIDDEN, INNER, JUNK, REAL, make_hostile_folder, make_lambda_h5, make_lambda_keras, sha256_of


# ---------------------------------------------------------------- static inspection, no Keras

def test_config_problems_finds_code_and_foreign_objects():
    clean = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Conv2D", "config": {"name": "conv_1"}, "module": "keras.layers"},
        {"class_name": "DTypePolicy", "module": "keras", "config": {"name": "float32"}}]}}
    assert config_problems(clean) == []
    keras2_lambda = {"class_name": "Model", "config": {"layers": [
        {"class_name": "Lambda", "config": {"name": "lam", "function": ["AAAA", None, None],
                                            "function_type": "lambda"}}]}}
    assert any("'lam'" in problem and "Lambda" in problem for problem in config_problems(keras2_lambda))
    hidden_function = {"config": {"activation": {"class_name": "__lambda__", "config": {"code": "AAAA"}}}}
    assert config_problems(hidden_function)
    foreign = {"class_name": "system", "module": "os", "config": {}}
    assert "module 'os'" in config_problems(foreign)[0]
    utility = {"class_name": "func_load", "module": "keras.src.utils.python_utils", "config": {}}
    assert config_problems(utility)
    custom = {"class_name": "Backdoor", "module": "keras.layers", "registered_name": "evil>Backdoor", "config": {}}
    assert "unknown custom object" in config_problems(custom)[0]


def test_real_submissions_pass_inspection(shared):
    for name in REAL:
        inspect_model_file(shared / "models" / "peer_repaired" / name)
    inspect_model_file(shared / "models" / "bd_net.h5")
    inspect_model_file(shared / "models" / "bd_weights.h5")  # weights only: no config to run


def test_inspection_refuses_lambda_files_without_running_them(submissions):
    folder, markers = submissions
    for name in ("lambda_keras2.h5", "lambda.keras", "custom_layer.keras"):
        with pytest.raises(SubmissionRefused, match="refused"):
            inspect_model_file(folder / name)
    assert not list(markers.iterdir())


# ---------------------------------------------------------------- Keras's own safe mode (second layer)

def test_keras_safe_mode_refuses_keras2_lambda_h5_and_its_code_never_runs(tmp_path):
    import keras

    from goodnet.models import ModelError, load_model

    marker = tmp_path / "payload_ran"
    path = make_lambda_h5(tmp_path / "lambda.h5", marker)
    with pytest.raises(ModelError, match="Lambda"):
        load_model(path, scale="raw")  # bypasses goodnet's inspection: Keras alone must refuse
    assert not marker.exists()
    # Control: the payload is live; without safe mode, loading runs it.
    keras.models.load_model(path, compile=False, safe_mode=False)
    assert marker.exists()


def test_keras_safe_mode_refuses_lambda_keras_file_and_its_code_never_runs(tmp_path):
    import keras

    from goodnet.models import ModelError, load_model

    marker = tmp_path / "payload_ran"
    path = make_lambda_keras(tmp_path / "lambda.keras", marker)
    with pytest.raises(ModelError, match="Lambda"):
        load_model(path, scale="raw")
    assert not marker.exists()
    keras.models.load_model(path, compile=False, safe_mode=False)
    assert marker.exists()


# ---------------------------------------------------------------- which entries are submissions

def test_find_submissions_skips_data_and_other_files(tmp_path):
    for name in ("b.h5", "a.keras", "c.hdf5", "readme.txt", ".hidden.h5", "test.h5"):
        (tmp_path / name).write_text("x")
    (tmp_path / "folder.h5").mkdir()
    found = [os.path.basename(path) for path in find_submissions(tmp_path, exclude=[tmp_path / "test.h5"])]
    assert found == ["a.keras", "b.h5", "c.hdf5"]
    with pytest.raises(ValueError, match="expected a folder"):
        find_submissions(tmp_path / "b.h5")


def test_find_submissions_lists_only_entries_that_will_be_read(tmp_path, monkeypatch):
    folder = tmp_path / "submissions"
    make_hostile_folder(folder, monkeypatch)
    found = [os.path.basename(path) for path in find_submissions(folder)]
    assert found == ["chain.h5", "good.h5", "locked.h5"]  # locked.h5: its open fails later, as an "error" row


# ---------------------------------------------------------------- hostile entries in the submissions folder

def test_every_hostile_entry_is_a_row_and_nothing_refused_is_read(lab_data, tmp_path, monkeypatch,
                                                                   stand_in_workers, no_hang):
    folder = tmp_path / "submissions"
    expected = make_hostile_folder(folder, monkeypatch)
    shutil.copyfile(lab_data["clean"], folder / "test.h5")  # the grader's own clean data, in the folder
    expected["test.h5"] = ("refused", "the clean test file given to the grader, not a submission")
    out = tmp_path / "out"
    grader = Grader(folder / "test.h5", [lab_data["poisoned"]], scale="raw", progress=False)
    board = grader.grade(folder, out)
    rows = {row["submission"]: row for row in board.rows}
    assert sorted(rows) == sorted(expected) and len(board.rows) == len(expected)
    for name, (status, reason) in expected.items():
        row = rows[name]
        assert row["status"] == (status or "error"), (name, row)
        assert reason in row["error"] and "\n" not in row["error"], (name, row["error"])
        assert row["score"] is None and row["rank"] is None and row["cached"] is False
        assert row["path"] == os.path.join(str(folder), name), row["path"]
        if status is not None:
            assert row["sha256"] is None, (name, row)
    assert rows["good.h5"]["sha256"] == sha256_of(JUNK) and rows["chain.h5"]["sha256"] == sha256_of(INNER)
    # Only the two readable model entries reached a worker, the chain through its target inside the folder.
    assert sorted(job["sha256"] for job in stand_in_workers) == sorted([sha256_of(JUNK), sha256_of(INNER)])
    assert os.path.realpath(folder / "sub" / "inner.bin") in [job["path"] for job in stand_in_workers]
    cached = sorted(name for name in os.listdir(out / "cache") if not name.startswith("."))  # not the manifest
    assert cached == sorted(f"{job['key']}.json" for job in stand_in_workers)
    document = (out / "scoreboard.json").read_text()
    with open("/etc/passwd", "rb") as handle:
        assert sha256_of(handle.read()) not in document
    assert len(json.loads(document)["submissions"]) == len(expected)
    with open(out / "scoreboard.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) == len(expected) + 1
    assert (out / "scoreboard.md").read_text().count("\n") == len(expected) + 2
    assert (out / "scoreboard.html").read_text().count("<tr>") == len(expected) + 1


def test_listed_paths_get_the_same_checks(lab_data, tmp_path, monkeypatch, stand_in_workers, no_hang):
    folder = tmp_path / "submissions"
    expected = make_hostile_folder(folder, monkeypatch)
    names = ["pipe.h5", "x.h5", "zero.h5", "passwd.h5", "escape.hdf5", "dangling.h5", "loop.h5", "locked.h5",
             "chain.h5", "good.h5"]
    board = Grader(lab_data["clean"], [lab_data["poisoned"]], scale="raw", progress=False).grade(
        [folder / name for name in names] + [folder / ".hidden.h5", lab_data["clean"]], tmp_path / "out")
    rows = {row["submission"]: row for row in board.rows}
    assert len(board.rows) == len(names) + 2
    for name in names:
        status, reason = expected[name]
        assert rows[name]["status"] == (status or "error") and reason.replace(
            "the submissions folder", "its folder") in rows[name]["error"], (name, rows[name])
    # A listed path is taken as named: a hidden name is graded; the grader's own data file is not.
    assert rows[".hidden.h5"]["sha256"] == sha256_of(HIDDEN)
    assert rows["test.h5"]["status"] == "refused" and "the clean test file" in rows["test.h5"]["error"]
    assert len(stand_in_workers) == 3


def test_entries_swapped_after_the_check_are_not_read(lab_data, tmp_path, monkeypatch, stand_in_workers, no_hang):
    import goodnet.grading.runner

    folder, elsewhere = tmp_path / "submissions", tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    for name in ("becomes_fifo.h5", "becomes_link.h5", "replaced.h5", "kept.h5"):
        (folder / name).write_bytes(JUNK)
    (folder / "sub" / "inner.bin").write_bytes(INNER)
    os.symlink("sub/inner.bin", folder / "chain.h5")
    (elsewhere / "inner.bin").write_bytes(b"a secret outside the submissions folder\n")
    (tmp_path / "other.h5").write_bytes(JUNK + b"another file\n")
    checked = goodnet.grading.runner.submission_entries

    def check_then_swap(*args, **kwargs):
        entries = checked(*args, **kwargs)
        (folder / "becomes_fifo.h5").unlink()
        os.mkfifo(folder / "becomes_fifo.h5")
        (folder / "becomes_link.h5").unlink()
        os.symlink("/etc/passwd", folder / "becomes_link.h5")
        os.replace(tmp_path / "other.h5", folder / "replaced.h5")
        (folder / "sub").rename(folder / "sub_before")  # the chain's folder now leads outside
        os.symlink(elsewhere, folder / "sub")
        return entries

    monkeypatch.setattr(goodnet.grading.runner, "submission_entries", check_then_swap)
    board = Grader(lab_data["clean"], [lab_data["poisoned"]], scale="raw", progress=False).grade(folder,
                                                                                                tmp_path / "out")
    rows = {row["submission"]: row for row in board.rows}
    assert rows["becomes_fifo.h5"]["status"] == "refused"
    assert "changed after it was checked (now a named pipe (FIFO)" in rows["becomes_fifo.h5"]["error"]
    assert rows["becomes_link.h5"]["status"] == "refused"
    assert "became a symlink after it was checked" in rows["becomes_link.h5"]["error"]
    for name in ("replaced.h5", "chain.h5"):
        assert rows[name]["status"] == "refused", rows[name]
        assert "changed after it was checked (now another file)" in rows[name]["error"]
        assert rows[name]["sha256"] is None
    assert [os.path.basename(job["path"]) for job in stand_in_workers] == ["kept.h5"]
