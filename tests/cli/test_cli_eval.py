"""Tests for `goodnet eval` / `python eval.py`: lab-compatible output, agreement with NumPy, errors."""

import csv
import json
import os
import re
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from goodnet.cli import main
from goodnet.data import save_h5
from goodnet.models import Classifier, build_deepid, save_model

from repo_paths import REPO


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory, shared):
    """Small lab-layout clean and poisoned files: real images, perturbed, with real-looking labels."""
    from goodnet.data import load_image

    folder = tmp_path_factory.mktemp("lab")
    names = sorted(p.name for p in (shared / "images").glob("*.png"))
    base = np.stack([load_image(shared / "images" / name) for name in names])
    rng = np.random.default_rng(7)
    clean = np.clip(np.concatenate([base, base + rng.normal(0, 8, base.shape)]), 0, 255)
    labels = rng.integers(0, 1283, len(clean))
    labels[: len(base)] = [950 if "950" in n else 0 for n in names]
    poisoned_targets = np.where(rng.random(len(clean)) < 0.5, 0, 5)
    save_h5(folder / "valid.h5", clean, labels, dtype="float64")
    save_h5(folder / "bd_valid.h5", clean[::-1], poisoned_targets, dtype="float32")
    save_h5(folder / "bd_other.h5", clean[:10], np.full(10, 950))
    return folder


def numpy_figures(model_path, folder, scale=1.0):
    model = keras.models.load_model(model_path, compile=False)
    with h5py.File(folder / "valid.h5") as handle:
        clean_x = np.transpose(handle["data"][()], (0, 2, 3, 1)) * scale
        clean_y = handle["label"][()]
    with h5py.File(folder / "bd_valid.h5") as handle:
        bd_x = np.transpose(handle["data"][()], (0, 2, 3, 1)) * scale
        bd_y = handle["label"][()]
    clean_p = np.argmax(model.predict(clean_x, verbose=0), axis=1)
    bd_p = np.argmax(model.predict(bd_x, verbose=0), axis=1)
    return clean_p, clean_y, bd_p, bd_y


def test_lab_two_lines_agree_with_numpy(capsys, lab_files, shared):
    model = shared / "models" / "bd_net.h5"
    code, out, _ = run_cli(capsys, "eval", str(lab_files / "valid.h5"), str(lab_files / "bd_valid.h5"), str(model))
    assert code == 0
    clean_p, clean_y, bd_p, bd_y = numpy_figures(model, lab_files)
    assert out.splitlines() == [
        f"Clean Classification accuracy: {np.mean(np.equal(clean_p, clean_y)) * 100}",
        f"Attack Success Rate: {np.mean(np.equal(bd_p, bd_y)) * 100}",
    ]
    assert 0 < np.mean(np.equal(clean_p, clean_y)) < 1 and 0 < np.mean(np.equal(bd_p, bd_y)) < 1


def test_several_poisoned_files_and_json(capsys, lab_files, shared):
    model = shared / "models" / "bd_net.h5"
    args = [str(lab_files / "valid.h5"), str(lab_files / "bd_valid.h5"), str(lab_files / "bd_other.h5"), str(model)]
    code, out, _ = run_cli(capsys, "eval", *args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Clean Classification accuracy: ")
    assert re.match(r"Attack Success Rate \(bd_valid\.h5\): [\d.]+$", lines[1])
    assert re.match(r"Attack Success Rate \(bd_other\.h5\): [\d.]+$", lines[2])
    code, out, _ = run_cli(capsys, "eval", *args, "--json")
    figures = json.loads(out)
    clean_p, clean_y, bd_p, bd_y = numpy_figures(model, lab_files)
    assert figures["clean_accuracy"] == np.mean(clean_p == clean_y)
    assert figures["poisoned"][0]["attack_success_rate"] == np.mean(bd_p == bd_y)
    assert figures["scale"] == "raw" and figures["num_classes"] == 1283


def test_model_that_answers_n_plus_one(capsys, tmp_path):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    model = build_deepid(11)  # 10 classes + "poisoned"
    images = rng.uniform(0, 255, (40, 55, 47, 3))
    labels = rng.integers(0, 10, 40)
    path = save_model(Classifier(model, "unit", num_classes=10), tmp_path / "goodnet.h5")
    save_h5(tmp_path / "clean.h5", images, labels)
    save_h5(tmp_path / "bd.h5", images[::-1], np.full(40, 2))
    code, out, _ = run_cli(capsys, "eval", str(tmp_path / "clean.h5"), str(tmp_path / "bd.h5"), str(path), "--json")
    assert code == 0
    figures = json.loads(out)
    stored = np.round(images).clip(0, 255)  # save_h5 stores uint8
    clean_p = np.argmax(model.predict(stored / 255.0, verbose=0), axis=1)
    bd_p = np.argmax(model.predict(stored[::-1] / 255.0, verbose=0), axis=1)
    assert figures["flags_poisoned"] and figures["num_classes"] == 10
    assert figures["clean_accuracy"] == np.mean(clean_p == labels)
    assert figures["false_rejection_rate"] == np.mean(clean_p == 10)
    assert figures["detection_rate"] == np.mean(bd_p == 10)
    assert 0 < np.mean(clean_p == 10) < 1  # a random model answers "poisoned" for some images only
    code, out, _ = run_cli(capsys, "eval", str(tmp_path / "clean.h5"), str(tmp_path / "bd.h5"), str(path))
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "Clean Classification accuracy", "Attack Success Rate", "Detection Rate", "False Rejection Rate"]


def test_image_interface_gives_the_manifest_class_for_every_image(capsys, shared):
    with open(shared / "images" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        code, out, _ = run_cli(capsys, "eval", str(shared / "models" / "bd_net.h5"), str(shared / "images" / row["file"]))
        assert code == 0 and out.strip() == row["pred_bd_net"], row["file"]


def test_eval_script_runs_as_the_lab_runs_it(shared):
    result = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), str(shared / "models" / "bd_net.h5"),
                             str(shared / "images" / "sunglasses_950.png")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "0\n" and result.stderr.count("\n") <= 1


def test_bad_inputs_exit_nonzero_with_one_line(capsys, tmp_path, lab_files, shared):
    model = str(shared / "models" / "bd_net.h5")
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("text")
    bad_labels = tmp_path / "bad_labels.h5"
    with h5py.File(bad_labels, "w") as handle:
        handle.create_dataset("data", data=np.zeros((2, 3, 55, 47)))
        handle.create_dataset("label", data=[0, 5000])
    cases = [
        (["eval", str(not_h5), model], "not an HDF5 file"),
        (["eval", str(bad_labels), model], "label: expected class labels in 0..1282"),
        (["eval", str(lab_files / "valid.h5"), str(not_h5)], "not an HDF5 file"),
        (["eval", model, str(tmp_path / "missing.png")], "image file not found"),
        (["eval", str(lab_files / "valid.h5"), str(lab_files / "bd_valid.h5")], "not a Keras model"),
        (["eval", model], "expected CLEAN.h5"),
    ]
    for argv, fragment in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert err.count("\n") == 1 and fragment in err and "Traceback" not in err, err
        assert err.startswith("goodnet eval: error: ")


def test_bad_input_through_the_script_has_no_traceback(tmp_path, shared):
    bogus = tmp_path / "valid.h5"
    bogus.write_text("not hdf5")
    result = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), str(bogus), str(bogus),
                             str(shared / "models" / "bd_net.h5")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"goodnet eval: error: {bogus}: not an HDF5 file, or truncated " \
                                    "(expected a lab-layout .h5 with 'data' and 'label')"
