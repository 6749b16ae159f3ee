"""Every command that runs a model takes the execution options and uses them; bad values are one-line errors."""

import json

import numpy as np
import pytest

from goodnet.cli import main


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A small random DeepID BadNet (saved) and lab files labelled with its own answers."""
    import keras

    from goodnet.data import save_h5
    from goodnet.models import Classifier, build_deepid, save_model

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("execution")
    classifier = Classifier(build_deepid(3), "raw")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (90, 55, 47, 3)).astype(np.float32)
    labels = classifier.predict(images)
    submissions = folder / "submissions"
    submissions.mkdir()
    paths = {"model": str(save_model(classifier, submissions / "bad.h5")), "folder": folder,
             "submissions": str(submissions)}
    for name, part, targets in (("valid", slice(0, 60), None), ("test", slice(60, 90), None),
                                ("bd", slice(60, 90), np.zeros(30, np.int64))):
        path = folder / f"{name}.h5"
        save_h5(path, images[part], labels[part] if targets is None else targets)
        paths[name] = str(path)
    return paths


def _command(name, task, out):
    """The arguments of a quick run of command ``name``."""
    if name == "prune":
        return ["prune", "--model", task["model"], "--valid", task["valid"], "--poisoned-valid", task["bd"],
                "--out", str(out), "--no-plot", "--no-progress"]
    if name == "strip":
        return ["strip", "--model", task["model"], "--valid", task["valid"], "--test", task["test"],
                "--poisoned-test", task["bd"], "--copies", "4", "--bank-size", "20", "--no-plot", "--no-progress"]
    if name == "fineprune":
        return ["fineprune", "--model", task["model"], "--valid", task["valid"], "--poisoned-valid", task["bd"],
                "--out", str(out), "--epochs", "1", "--holdout", "0.3", "--no-plot"]
    if name == "repair":
        return ["repair", task["model"], "--valid", task["valid"], "--poisoned-valid", task["bd"], "--out", str(out),
                "--epochs", "1", "--holdout", "0.3", "--copies", "4", "--no-progress"]
    return ["grade", task["submissions"], "--clean", task["test"], "--poisoned", task["bd"], "--out", str(out),
            "--num-classes", "3", "--workers", "1", "--no-progress"]


COMMANDS = ("prune", "strip", "fineprune", "repair", "grade")


@pytest.mark.parametrize("name", COMMANDS)
def test_device_cpu_is_accepted_and_reported(task, tmp_path, capsys, name):
    code = main(_command(name, task, tmp_path / "out") + ["--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    where = report["submissions"][0]["execution"] if name == "grade" else report["execution"]
    assert where == "/device:CPU:0"
    assert "precision_report" not in report


@pytest.mark.parametrize("name", ["prune", "strip", "grade"])
def test_mixed_precision_is_measured_and_reported(task, tmp_path, capsys, name):
    code = main(_command(name, task, tmp_path / "out") + ["--device", "cpu", "--precision", "mixed_bfloat16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Precision mixed_bfloat16: top-1 agreement with float32" in captured.out
    code = main(_command(name, task, tmp_path / "out2") + ["--precision", "mixed_bfloat16", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    precision = report["submissions"][0]["precision_report"] if name == "grade" else report["precision_report"]
    assert precision["precision"] == "mixed_bfloat16"
    assert precision["images"] == (30 if name == "grade" else 60)   # the clean test file, or --valid
    assert 0.0 <= precision["top1_agreement"] <= 1.0 and precision["max_abs_score_difference"] > 0


def _one_line_error(capsys, run):
    try:
        code = run()
    except SystemExit as exit_:   # argparse
        code = exit_.code
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1, error
    assert "Traceback" not in error[0]
    return error[0]


@pytest.mark.parametrize("name", COMMANDS)
def test_bad_execution_values_are_one_line_errors(task, tmp_path, capsys, name):
    arguments = _command(name, task, tmp_path / "out")
    line = _one_line_error(capsys, lambda: main(arguments + ["--device", "tpu"]))
    assert line.startswith(f"goodnet {name}: error: argument --device: invalid choice: 'tpu'")
    line = _one_line_error(capsys, lambda: main(arguments + ["--devices", "0"]))
    assert "--devices: expected a positive integer" in line
    line = _one_line_error(capsys, lambda: main(arguments + ["--precision", "int8"]))
    assert "--precision: invalid choice" in line
    line = _one_line_error(capsys, lambda: main(arguments + ["--devices", "2", "--xla"]))
    assert "XLA (--xla) runs on one device" in line
    line = _one_line_error(capsys, lambda: main(arguments + ["--device", "cpu", "--devices", "3"]))
    assert line.startswith(f"goodnet {name}: error: devices: 3 asked for, TensorFlow sees 1 logical CPU")


def test_precision_options_that_cannot_apply_are_refused(task, tmp_path, capsys):
    strip = _command("strip", task, tmp_path / "out")
    line = _one_line_error(capsys, lambda: main(strip + ["--strip-precision", "bfloat16", "--precision",
                                                         "mixed_float16"]))
    assert "two ways to reduce precision; choose one" in line
    combine = ["repair", task["model"], "--repaired", task["model"], "--out", str(tmp_path / "g.h5")]
    line = _one_line_error(capsys, lambda: main(combine + ["--precision", "mixed_bfloat16"]))
    assert "the combine form runs a model only with --strip" in line
    assert main(combine + ["--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strip"] is False


def test_strip_reduced_precision_is_measured_against_float32(task, tmp_path, capsys):
    code = main(_command("strip", task, tmp_path / "out") + ["--strip-precision", "bfloat16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "STRIP in bfloat16 against float32 on 60 clean validation inputs" in captured.out
    code = main(_command("strip", task, tmp_path / "out2") + ["--precision", "mixed_bfloat16", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    effect = report["strip_precision_report"]
    assert effect["strip_precision"] == "mixed_bfloat16" and effect["images"] == 60
    assert 0.0 <= effect["decision_agreement"] <= 1.0 and effect["max_entropy_difference"] > 0
