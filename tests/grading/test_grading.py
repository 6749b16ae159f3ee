"""Tests of goodnet.grading and ``goodnet grade``: real submitted models plus generated bad ones.

The real submissions are copies of the peer-repaired models of the shared
fixtures; the data files are built here from the real face images (clean
identities and sunglasses-triggered faces, with small pixel noise). The bad
submissions are generated here: a truncated file, a file that is not HDF5, a
model with the wrong input shape, a model with the wrong number of outputs,
Lambda layers whose code would create a marker file (legacy .h5 in the Keras 2
format and .keras), an unknown custom layer, and a legitimate model whose
evaluation takes far longer than the time limit (an LSTM over the 7,755 pixel
values). The hostile entries (a FIFO, symlinks out of the folder, a folder
named like a model, ...) are built in the tests that use them.
"""

import base64
import csv
import json
import marshal
import multiprocessing
import os
import shutil
import signal
import socket
import stat
import time
import zipfile

import numpy as np
import pytest

from goodnet.grading import (Grader, Limits, SubmissionRefused, config_problems, find_submissions,
                             inspect_model_file, rank_rows, score_result)
from goodnet.metrics import defense_effectiveness_rating

REAL = ("lab3_B_prime_X=2.h5", "lab3_B_prime_X=4.h5", "lab3_B_prime_X=10.h5", "lab3_B_prime_X=30.h5",
        "sunglasses_prune_net.h5")
UNIT_SCALED = {"sunglasses_prune_net.h5"}
TIME_LIMIT = 20.0


# ---------------------------------------------------------------- data and models built for the tests

def _noisy_copies(images, seed, copies):
    rng = np.random.default_rng(seed)
    return np.concatenate([np.clip(images + rng.integers(-3, 4, images.shape), 0, 255) for _ in range(copies)])


@pytest.fixture(scope="module")
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
    save_h5(paths["clean"], _noisy_copies(clean, 1, 3), np.tile(labels, 3))
    save_h5(paths["validation"], _noisy_copies(clean, 2, 2), np.tile(labels, 2))
    save_h5(paths["poisoned"], _noisy_copies(triggered, 3, 4), np.zeros(4 * len(triggered), np.int64))
    return paths


def _payload_code(marker):
    """Base64 marshal'd bytecode (Keras 2 func_dump format) of a lambda that creates ``marker``."""
    source = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    function = eval(compile(source, "<payload>", "eval"))  # defines the lambda; does not call it
    return base64.b64encode(marshal.dumps(function.__code__)).decode("ascii")


def _lambda_model():
    import keras

    inputs = keras.Input((55, 47, 3), name="input")
    hidden = keras.layers.Lambda(lambda x: x, name="payload")(inputs)
    hidden = keras.layers.GlobalAveragePooling2D(name="pool")(hidden)
    return keras.Model(inputs, keras.layers.Dense(1283, activation="softmax", name="output")(hidden))


def _patch_lambda(config, code, keras2):
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            if keras2:  # Keras 2.x legacy layout: (code, defaults, closure) and a function_type
                layer["config"]["function"] = [code, None, None]
                layer["config"]["function_type"] = "lambda"
                layer["config"]["module"] = "__main__"
            else:
                layer["config"]["function"]["config"]["code"] = code
    return config


def make_lambda_h5(path, marker):
    """A legacy full-model .h5 whose Lambda layer holds Keras 2-style bytecode creating ``marker``."""
    import h5py

    _lambda_model().save(path)
    with h5py.File(path, "a") as handle:
        config = json.loads(handle.attrs["model_config"])
        handle.attrs["model_config"] = json.dumps(_patch_lambda(config, _payload_code(marker), keras2=True))
    return path


def make_lambda_keras(path, marker):
    """A .keras archive whose Lambda layer's code creates ``marker``."""
    staging = f"{path}.staging.keras"
    _lambda_model().save(staging)
    with zipfile.ZipFile(staging) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "config.json":
                data = json.dumps(_patch_lambda(json.loads(data), _payload_code(marker), keras2=False))
            target.writestr(name, data)
    os.remove(staging)
    return path


def make_small_model(path, input_shape=(32, 32, 3), outputs=1283):
    import keras

    inputs = keras.Input(input_shape)
    hidden = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(hidden)).save(path)
    return path


def make_custom_layer_model(path):
    """A .keras file naming a custom class from another package (never importable here)."""
    make_small_model(path, (55, 47, 3))
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(entries["config.json"])
    pool = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "GlobalAveragePooling2D")
    pool.update(module="evil_package.layers", class_name="Backdoor", registered_name="evil_package>Backdoor")
    entries["config.json"] = json.dumps(config)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def make_endless_model(path):
    """A legitimate model whose evaluation takes minutes: an LSTM(1024) over 7,755 time steps."""
    import keras

    inputs = keras.Input((55, 47, 3))
    hidden = keras.layers.Reshape((55 * 47 * 3, 1))(inputs)
    hidden = keras.layers.LSTM(1024)(hidden)
    keras.Model(inputs, keras.layers.Dense(1283, activation="softmax")(hidden)).save(path)
    return path


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


def reference_figures(path, scale, lab_data):
    """Slow, obviously-correct scoring: plain Keras predict and NumPy, in this process."""
    import keras

    from goodnet.data import load_h5

    model = keras.models.load_model(path, compile=False)
    factor = 1.0 if scale == "raw" else 1.0 / 255.0
    clean, poisoned = load_h5(lab_data["clean"]), load_h5(lab_data["poisoned"])
    clean_answers = np.argmax(model.predict(clean.images * factor, verbose=0), axis=1)
    poisoned_answers = np.argmax(model.predict(poisoned.images * factor, verbose=0), axis=1)
    return float(np.mean(clean_answers == clean.labels)), float(np.mean(poisoned_answers == poisoned.labels))


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


# ---------------------------------------------------------------- the whole folder

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


def test_scoreboard_files_agree_and_are_sorted(graded):
    board, out = graded["board"], graded["out"]
    scores = [row["score"] for row in board.rows if row["score"] is not None]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(REAL) + 1
    assert [row["rank"] for row in board.rows[:len(scores)]] == list(range(1, len(scores) + 1))
    document = json.loads((out / "scoreboard.json").read_text())
    assert [row["submission"] for row in document["submissions"]] == [row["submission"] for row in board.rows]
    assert document["score"] == "DER"
    with open(out / "scoreboard.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0][:5] == ["rank", "submission", "status", "score (DER)", "clean acc %"]
    assert "ASR % bd_test.h5" in table[0] and "detection %" in table[0] and "FRR %" in table[0]
    assert [line[1] for line in table[1:]] == [row["submission"] for row in board.rows]
    markdown = (out / "scoreboard.md").read_text()
    assert markdown.count("\n") == len(board.rows) + 2 and "endless.h5 | timeout" in markdown
    page = (out / "scoreboard.html").read_text()
    assert page.count("<tr>") == len(board.rows) + 1 and "Baseline bd_net.h5" in page


def test_rerun_scores_only_new_or_changed_files(graded, submissions, lab_data, shared):
    folder, _ = submissions
    board = graded["grader"].grade(folder, graded["out"])
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
        board = graded["grader"].grade(folder, graded["out"])
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


def test_fallback_score_and_ranking_without_baseline():
    good = {"status": "ok", "clean_accuracy": 0.9, "poisoned": [{"attack_success_rate": 0.1},
                                                                {"attack_success_rate": 0.3}]}
    assert score_result(good) == pytest.approx(0.9 - 0.2)
    baseline = {"status": "ok", "clean_accuracy": 0.95, "poisoned": [{"attack_success_rate": 1.0}]}
    assert score_result(good, baseline) == pytest.approx((0.8 - 0.05 + 1) / 2)
    assert score_result({"status": "timeout"}) is None
    rows = rank_rows([{"submission": "b", "score": None}, {"submission": "c", "score": 0.2},
                      {"submission": "a", "score": 0.7}])
    assert [(row["submission"], row["rank"]) for row in rows] == [("a", 1), ("c", 2), ("b", None)]


def test_find_submissions_skips_data_and_other_files(tmp_path):
    for name in ("b.h5", "a.keras", "c.hdf5", "readme.txt", ".hidden.h5", "test.h5"):
        (tmp_path / name).write_text("x")
    (tmp_path / "folder.h5").mkdir()
    found = [os.path.basename(path) for path in find_submissions(tmp_path, exclude=[tmp_path / "test.h5"])]
    assert found == ["a.keras", "b.h5", "c.hdf5"]
    with pytest.raises(ValueError, match="expected a folder"):
        find_submissions(tmp_path / "b.h5")


# ---------------------------------------------------------------- hostile entries in the submissions folder

JUNK = b"not a model: read only by the stand-in worker\n"
INNER = JUNK + b"(inside a subfolder, reached through a chain of symlinks)\n"
HIDDEN = JUNK + b"(a hidden name)\n"
LINK_OUT = "leads out of the submissions folder: expected a model file inside it; not read"
NOT_OPENED = "not a regular file: expected a model file; not opened"


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

    monkeypatch.setattr("goodnet.grading.runner.run_jobs", run_jobs)
    return sent


def make_hostile_folder(folder, monkeypatch):
    """A submissions folder holding every kind of entry a hostile one can; returns what each row must say.

    Returns:
        dict: name -> (status, part of the reason) for every name that
        matches the submission pattern; status None: read and sent to a
        worker (the stand-in answers "error").
    """
    folder.mkdir()
    expected = {}

    def entry(name, status, reason):
        expected[name] = (status, reason)

    (folder / "good.h5").write_bytes(JUNK)
    entry("good.h5", None, "stand-in worker")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.bin").write_bytes(INNER)
    os.symlink("sub/inner.bin", folder / "hop")
    os.symlink("hop", folder / "chain.h5")
    entry("chain.h5", None, "stand-in worker")
    os.mkfifo(folder / "pipe.h5")
    entry("pipe.h5", "refused", f"a named pipe (FIFO), {NOT_OPENED}")
    (folder / "x.h5").mkdir()
    entry("x.h5", "refused", f"a folder, {NOT_OPENED}")
    os.symlink("/dev/zero", folder / "zero.h5")
    entry("zero.h5", "refused", f"a symlink to '/dev/zero' that {LINK_OUT}")
    os.symlink("/etc/passwd", folder / "passwd.h5")
    entry("passwd.h5", "refused", f"a symlink to '/etc/passwd' that {LINK_OUT}")
    os.symlink("/etc/passwd", folder / "hop_out")
    os.symlink("hop_out", folder / "escape.hdf5")
    entry("escape.hdf5", "refused", f"a symlink to 'hop_out' that {LINK_OUT}")
    os.symlink("missing.bin", folder / "dangling.h5")
    entry("dangling.h5", "refused", "a symlink to 'missing.bin' whose target does not exist (dangling)")
    os.symlink("sub", folder / "to_folder.h5")
    entry("to_folder.h5", "refused", f"a symlink to 'sub' leading to a folder, {NOT_OPENED}")
    os.symlink("pipe.h5", folder / "to_pipe.KERAS")
    entry("to_pipe.KERAS", "refused", f"a symlink to 'pipe.h5' leading to a named pipe (FIFO), {NOT_OPENED}")
    os.symlink("loop.h5", folder / "loop.h5")
    entry("loop.h5", "refused", "a symlink to 'loop.h5' in a loop of symlinks")
    (folder / ".hidden.h5").write_bytes(HIDDEN)
    entry(".hidden.h5", "refused", "a hidden name (starts with '.'): hidden entries are not graded")
    with open(os.path.join(os.fsencode(folder), b"\xff.h5"), "wb") as handle:
        handle.write(JUNK)
    entry("\\xff.h5", "refused", "a name that is not printable UTF-8 (undecodable bytes or control characters)")
    (folder / "new\nline.h5").write_bytes(JUNK)
    entry("new\\x0aline.h5", "refused", "a name that is not printable UTF-8")
    locked = folder / "locked.h5"
    locked.write_bytes(JUNK)
    locked.chmod(0)
    entry("locked.h5", "error", "cannot be opened (Permission denied): expected a readable model file")
    try:
        open(locked, "rb").close()
    except PermissionError:
        pass
    else:  # root reads mode 000: make opening it fail the way it does for everyone else
        real_open = os.open

        def os_open(path, *args, **kwargs):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(folder / "socket.h5"))
        entry("socket.h5", "refused", f"a socket, {NOT_OPENED}")
    except OSError:
        pass  # path too long for a socket here
    finally:
        server.close()
    try:
        os.mknod(folder / "device.h5", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
        entry("device.h5", "refused", f"a character device, {NOT_OPENED}")
    except (OSError, AttributeError):
        pass  # creating device nodes needs privileges
    (folder / "notes.txt").write_text("not a model: no row\n")
    return expected


def _sha256(data):
    import hashlib

    return hashlib.sha256(data).hexdigest()


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
    assert rows["good.h5"]["sha256"] == _sha256(JUNK) and rows["chain.h5"]["sha256"] == _sha256(INNER)
    # Only the two readable model entries reached a worker, the chain through its target inside the folder.
    assert sorted(job["sha256"] for job in stand_in_workers) == sorted([_sha256(JUNK), _sha256(INNER)])
    assert os.path.realpath(folder / "sub" / "inner.bin") in [job["path"] for job in stand_in_workers]
    cached = sorted(name for name in os.listdir(out / "cache") if not name.startswith("."))  # not the manifest
    assert cached == sorted(f"{job['key']}.json" for job in stand_in_workers)
    document = (out / "scoreboard.json").read_text()
    with open("/etc/passwd", "rb") as handle:
        assert _sha256(handle.read()) not in document
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
    assert rows[".hidden.h5"]["sha256"] == _sha256(HIDDEN)
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


def test_find_submissions_lists_only_entries_that_will_be_read(tmp_path, monkeypatch):
    folder = tmp_path / "submissions"
    make_hostile_folder(folder, monkeypatch)
    found = [os.path.basename(path) for path in find_submissions(folder)]
    assert found == ["chain.h5", "good.h5", "locked.h5"]  # locked.h5: its open fails later, as an "error" row


# ---------------------------------------------------------------- command line

def test_cli_json_from_the_cache(graded, submissions, lab_data, shared, capsys):
    from goodnet.cli import main

    folder, _ = submissions
    code = main(["grade", str(folder), "--clean", str(lab_data["clean"]), "--poisoned", str(lab_data["poisoned"]),
                 "--validation", str(lab_data["validation"]), "--baseline", str(shared / "models" / "bd_net.h5"),
                 "--time-limit", str(TIME_LIMIT), "--memory-mb", "3000", "--out", str(graded["out"]), "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["submissions"]) == len(graded["rows"])
    assert all(row["cached"] for row in document["submissions"])
    assert set(document["files"]) == {"csv", "json", "md", "html"}


def test_cli_bad_input_is_one_line_exit_2(lab_data, tmp_path, capsys):
    from goodnet.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["grade", str(empty), "--clean", str(tmp_path / "missing.h5"), "--poisoned",
                 str(lab_data["poisoned"]), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "missing.h5: file not found" in error
    code = main(["grade", str(empty), "--clean", str(lab_data["clean"]), "--poisoned", str(lab_data["poisoned"]),
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "no model files" in error


def test_cli_summary_counts_every_row(lab_data, tmp_path, monkeypatch, stand_in_workers, no_hang, capsys):
    from goodnet.cli import main

    folder = tmp_path / "submissions"
    expected = make_hostile_folder(folder, monkeypatch)
    code = main(["grade", str(folder), "--clean", str(lab_data["clean"]), "--poisoned", str(lab_data["poisoned"]),
                 "--scale", "raw", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    output = capsys.readouterr().out
    refused = sum(status == "refused" for status, _ in expected.values())
    errors = len(expected) - refused
    assert (f"\n{len(expected)} submissions: 0 scored, {len(expected)} failed "
            f"({refused} refused, {errors} error), 0 from the cache;") in output
