"""``goodnet inspect-data``: every output, the ground-truth figures, --write-clean and its refusals, one-line errors."""

import csv
import json
import os

import numpy as np
import pytest

from goodnet.cli import main
from square_task import coloured_squares


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A small DeepID (saved) and a poisoned training file with its ground truth (patch -> class 0), and without."""
    import keras

    from goodnet.data import PoisonTruth, save_h5
    from goodnet.models import Classifier, build_deepid, save_model

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("inspect")
    images, clean_labels = coloured_squares(40, (5, 5), seed=0)
    labels = clean_labels.copy()
    chosen = np.array([45, 50, 90, 95, 100, 130, 140, 150])          # from classes 1-3
    images[chosen, -10:, -10:, :] = 255.0
    labels[chosen] = 0
    truth = PoisonTruth.from_indices(clean_labels, chosen, np.zeros(len(chosen), np.int64), ("patch",))
    train = folder / "train_poisoned.h5"
    save_h5(train, images, labels, **truth.datasets())
    plain = folder / "train.h5"
    save_h5(plain, images, labels)
    model = save_model(Classifier(build_deepid(4), "unit"), folder / "model.h5")
    return {"folder": folder, "train": str(train), "plain": str(plain), "model": str(model), "poisoned": chosen,
            "labels": labels}


def _run(task, out, *extra, capsys=None):
    code = main(["inspect-data", "--model", task["model"], "--train", task["train"], "--out", str(out),
                 "--ac-min-class-size", "8", "--no-progress", *extra])
    return code


def test_every_output_and_the_figures_against_the_ground_truth(task, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(task, out, "--json", "--poison-rate", "0.15") == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("scores.csv", "flagged.json", "classes.csv", "classes.json", "report.md", "inspect.json"):
        assert (out / name).is_file(), name
    assert summary["features"] == {"layer": "activation_1", "dimensions": 160, "cache": None}
    assert set(summary["methods"]) == {"ac", "spectral", "isolation"}
    flagged = json.loads((out / "flagged.json").read_text())
    poisoned = np.zeros(160, bool)
    poisoned[task["poisoned"]] = True
    for method, entry in summary["methods"].items():
        mine = np.zeros(160, bool)
        mine[flagged[method]] = True
        hits = int((mine & poisoned).sum())
        detection = entry["detection"]
        assert detection["true_positives"] == hits and detection["flagged"] == mine.sum() == entry["flagged"]
        assert detection["recall"] == hits / 8
        if mine.any():
            assert detection["precision"] == hits / mine.sum()
    # spectral signatures: floor(1.5 x 0.15 x n) per class (48 in class 0, 40 - 2 or 3 in the others)
    counts = np.bincount(task["labels"])
    assert summary["methods"]["spectral"]["flagged"] == sum(int(np.floor(1.5 * 0.15 * n + 1e-9)) for n in counts)
    assert set(flagged["union"]) == set(flagged["ac"]) | set(flagged["spectral"]) | set(flagged["isolation"])
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 160 and [int(row["index"]) for row in rows] == list(range(160))
    assert {"label", "prediction", "poisoned", "ac_score", "ac_flagged", "ac_cluster", "spectral_score",
            "spectral_flagged", "isolation_score", "isolation_flagged"} <= set(rows[0])
    assert sum(int(row["poisoned"]) for row in rows) == 8
    assert [int(row["spectral_flagged"]) for row in rows] == [int(index in flagged["spectral"]) for index in range(160)]
    with open(out / "classes.csv", newline="") as handle:
        classes = list(csv.DictReader(handle))
    assert [int(row["class"]) for row in classes] == [0, 1, 2, 3] and classes[0]["poisoned"] == "8"
    for label in summary["plotted_classes"]:
        assert (out / f"class_{label}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| spectral signatures |" in report and "precision" in report
    assert json.loads((out / "inspect.json").read_text())["methods"]["ac"]["flagged"] == summary["methods"]["ac"][
        "flagged"]
    assert summary["truth"]["poisoned_classes"] == [0]


def test_write_clean_removes_the_flagged_rows_keeps_the_truth_and_refuses_to_overwrite(task, tmp_path, capsys):
    from goodnet.data import load_h5, load_poison_truth

    out, clean = tmp_path / "out", tmp_path / "clean.h5"
    assert _run(task, out, "--method", "spectral", "--write-clean", str(clean), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    removed = json.loads((out / "flagged.json").read_text())["spectral"]
    kept = np.setdiff1d(np.arange(160), removed)
    written = load_h5(clean)
    original = load_h5(task["train"])
    np.testing.assert_array_equal(written.images, original.images[kept])
    np.testing.assert_array_equal(written.labels, original.labels[kept])
    truth = load_poison_truth(clean)
    np.testing.assert_array_equal(truth.poisoned, np.isin(kept, task["poisoned"]))
    assert summary["clean"]["kept"] == len(kept) and summary["clean"]["poisoned_kept"] == int(truth.poisoned.sum())
    # a second run may not replace it without --overwrite; with it, and --transform, it may
    assert _run(task, tmp_path / "again", "--method", "spectral", "--write-clean", str(clean)) == 2
    assert "--write-clean: file exists; pass --overwrite" in capsys.readouterr().err
    assert _run(task, tmp_path / "again", "--method", "spectral", "--write-clean", str(clean), "--transform",
                "--overwrite") == 0
    transformed = load_h5(clean)
    assert transformed.images.shape == written.images.shape and not np.array_equal(transformed.images, written.images)


def test_a_file_without_ground_truth_gets_no_figures(task, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["inspect-data", "--model", task["model"], "--train", task["plain"], "--out", str(out), "--method",
                 "ac", "--json", "--no-plots", "--no-progress"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["ground_truth"] is False and "detection" not in summary["methods"]["ac"]
    assert not [name for name in os.listdir(out) if name.endswith(".png")]


@pytest.mark.parametrize("extra, message", [
    (["--method", "ac", "--clean-by", "isolation", "--write-clean", "c.h5"], "--clean-by isolation"),
    (["--poison-rate", "0"], "--poison-rate: expected a number in (0, 1]"),
    (["--transform"], "--transform"),
    (["--layer", "no_such_layer"], "layer: no layer named 'no_such_layer'"),
])
def test_bad_input_is_a_one_line_error(task, tmp_path, capsys, extra, message):
    assert _run(task, tmp_path / "out", *extra) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_bad_files_are_one_line_errors(task, tmp_path, capsys):
    assert main(["inspect-data", "--model", task["model"], "--train", str(tmp_path / "missing.h5"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "missing.h5: file not found" in capsys.readouterr().err
    assert main(["inspect-data", "--model", task["model"], "--train", task["train"], "--out", str(tmp_path / "o"),
                 "--write-clean", task["train"]]) == 2
    assert "refusing to write over the --train file" in capsys.readouterr().err
