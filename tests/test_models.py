"""Tests for goodnet.models: the lab's model formats, scaling, saving."""

import csv
import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from goodnet.data import LabData, load_image
from goodnet.files import MANIFEST
from goodnet.models import Classifier, ModelError, build_deepid, load_model, save_model

BADNETS = {
    "bd_net": ("bd_net.h5", "raw"),
    "sunglasses": ("sunglasses_bd_weights.h5", "unit"),
    "anonymous_1": ("anonymous_1_bd_weights.h5", "unit"),
    "anonymous_2": ("anonymous_2_bd_weights.h5", "unit"),
    "multi_trigger_multi_target": ("multi_trigger_multi_target_bd_weights.h5", "unit"),
}


@pytest.fixture(scope="module")
def manifest(shared):
    with open(shared / "images" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = np.stack([load_image(shared / "images" / row["file"]) for row in rows])
    return rows, images


@pytest.mark.parametrize("name", sorted(BADNETS))
def test_loaders_reproduce_the_manifest(shared, manifest, name):
    rows, images = manifest
    file_name, scale = BADNETS[name]
    classifier = load_model(shared / "models" / file_name, scale=scale)
    scores = classifier.predict_proba(images)
    assert classifier.num_classes == 1283 and not classifier.flags_poisoned
    for row, score in zip(rows, scores):
        assert int(score.argmax()) == int(row[f"pred_{name}"]), row["file"]
        assert round(float(score.max()), 3) == pytest.approx(float(row[f"conf_{name}"]), abs=1e-3), row["file"]


def test_full_legacy_and_weights_only_files_agree(shared, manifest):
    _, images = manifest
    full = load_model(shared / "models" / "bd_net.h5", scale="raw")
    weights = load_model(shared / "models" / "bd_weights.h5", scale="raw")
    np.testing.assert_array_equal(full.predict_proba(images), weights.predict_proba(images))
    plain = keras.models.load_model(shared / "models" / "bd_net.h5", compile=False)
    np.testing.assert_allclose(full.predict_proba(images), plain.predict(images, verbose=0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["lab3_B_prime_X=2.h5", "sunglasses_prune_net.h5"])
def test_keras_2_4_functional_files_load(shared, name):
    classifier = load_model(shared / "models" / "peer_repaired" / name, scale="raw")
    assert [layer.name for layer in classifier.model.layers][-1] == "output"
    assert classifier.output_size == 1283


def test_deepid_matches_the_lab_architecture(shared):
    model = build_deepid()
    assert model.count_params() == 601_643
    with h5py.File(shared / "models" / "bd_net.h5", "r") as handle:
        lab = json.loads(handle.attrs["model_config"])["config"]["layers"]
    assert [layer.name for layer in model.layers] == [layer["config"]["name"] for layer in lab]
    assert build_deepid(10).output_shape == (None, 10)


def test_auto_scale_picks_the_more_accurate_scaling(shared, manifest):
    rows, images = manifest
    clean = [i for i, row in enumerate(rows) if row["content"] == "clean"]
    data = LabData(images[clean], np.array([int(rows[i]["identity"]) for i in clean]), "clean")
    lab3 = load_model(shared / "models" / "bd_weights.h5", scale="auto", clean=data)
    main = load_model(shared / "models" / "sunglasses_bd_weights.h5", scale="auto", clean=data)
    assert (lab3.scale, main.scale) == ("raw", "unit")
    assert "auto" in lab3.scale_report and "raw=1.000" in lab3.scale_report
    assert load_model(shared / "models" / "sunglasses_bd_weights.h5", scale="auto").scale == "raw"


@pytest.mark.parametrize("extension", [".h5", ".keras"])
def test_save_load_round_trip_keeps_outputs_and_scaling(shared, manifest, tmp_path, extension):
    _, images = manifest
    original = load_model(shared / "models" / "sunglasses_bd_weights.h5", scale="unit")
    path = save_model(original, tmp_path / f"copy{extension}")
    again = load_model(path)  # scale="auto" reads the stored scaling
    assert again.scale == "unit" and "stored" in again.scale_report
    np.testing.assert_array_equal(again.predict_proba(images), original.predict_proba(images))
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == [MANIFEST]  # no temporary left


def test_saved_h5_opens_in_plain_keras_without_goodnet(shared, tmp_path):
    classifier = load_model(shared / "models" / "bd_weights.h5", scale="raw")
    path = save_model(classifier, tmp_path / "model.h5")
    probe = tmp_path / "probe.png"
    keras.utils.save_img(probe, load_image(shared / "images" / "sun_0.png"), scale=False)
    script = (
        "import sys, numpy as np, keras\n"
        f"model = keras.models.load_model({str(path)!r})\n"
        f"image = np.asarray(keras.utils.load_img({str(probe)!r}), np.float32)[None]\n"
        "print(int(model.predict(image, verbose=0).argmax()), 'goodnet' in sys.modules)\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert output.stdout.split() == ["0", "False"]


def test_save_never_overwrites_the_input(shared, tmp_path):
    source = tmp_path / "bd.h5"
    source.write_bytes((shared / "models" / "bd_net.h5").read_bytes())
    classifier = load_model(source, scale="raw")
    before = source.read_bytes()
    with pytest.raises(ValueError, match="refusing to write over the input"):
        save_model(classifier, source)
    assert source.read_bytes() == before
    with pytest.raises(ModelError, match=r"\.h5 or \.keras"):
        save_model(classifier, tmp_path / "model.pkl")


def test_bad_model_files_get_one_line_errors(shared, tmp_path):
    text = tmp_path / "text.h5"
    text.write_text("hello")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((shared / "models" / "bd_net.h5").read_bytes()[:100_000])
    data_file = tmp_path / "data.h5"
    with h5py.File(data_file, "w") as handle:
        handle.create_dataset("data", data=np.zeros((1, 3, 55, 47)))
    small = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    wrong_input = tmp_path / "wrong_input.h5"
    small.save(wrong_input)
    partial = tmp_path / "partial_weights.h5"
    with h5py.File(shared / "models" / "bd_weights.h5", "r") as source, h5py.File(partial, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for layer in ("conv_1", "conv_2"):
            source.copy(layer, target)
    cases = [
        (tmp_path / "missing.h5", "model file not found"),
        (tmp_path, "is a directory"),
        (text, "not an HDF5 file"),
        (truncated, "truncated"),
        (data_file, "not a Keras model or Keras 2 weights file"),
        (wrong_input, "input: expected images of shape (55, 47, 3)"),
        (partial, "conv_3: layer missing"),
    ]
    for path, fragment in cases:
        with pytest.raises(ModelError) as caught:
            load_model(path, scale="raw")
        assert str(caught.value).startswith(str(path)), caught.value
        assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_classifier_checks_scale_and_classes():
    model = build_deepid(11)
    assert Classifier(model, "unit", num_classes=10).flags_poisoned
    assert not Classifier(model, "unit").flags_poisoned
    with pytest.raises(ValueError, match="scale"):
        Classifier(model, "half")
    with pytest.raises(ModelError, match="11 outputs cannot serve 5 classes"):
        Classifier(model, "raw", num_classes=5)
