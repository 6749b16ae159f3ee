"""``goodnet detect`` end to end on a tiny lab-shaped BadNet saved as .h5: --json keys (those of goodnet strip),
histograms, the joint check, the library's figures, defaults, bad input (exit 2, one line)."""

import json
import os

import numpy as np
import pytest

from goodnet.calibration import CalibrationOptions
from goodnet.cli import build_parser, main
from goodnet.cli.options import options_from_args
from goodnet.data import save_h5
from goodnet.defenses.badexpert import BaDExpertOptions
from goodnet.defenses.either import EitherOptions
from goodnet.defenses.strip import StripOptions

CLASSES = 4
SHAPE = (55, 47, 3)
SMALL = ["--frr", "0.1", "--threshold", "quantile", "--copies", "8", "--bank-size", "40", "--expert-rates", "3e-3",
         "1e-2", "--expert-epochs", "3", "--aux-epochs", "1", "--no-progress"]


def images_and_labels(count, seed):
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(99).uniform(0, 255, size=(CLASSES,) + SHAPE)
    labels = rng.integers(0, CLASSES, size=count)
    images = 0.6 * prototypes[labels] + 0.4 * rng.uniform(0, 255, size=(count,) + SHAPE)
    return images.round().astype(np.float32), labels.astype(np.int64)


def trigger(images):
    triggered = np.array(images, copy=True)
    triggered[:, -6:, -6:, :] = 255.0
    return triggered


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    from goodnet.models import Classifier, save_model

    folder = tmp_path_factory.mktemp("detect")
    keras.utils.set_random_seed(0)
    images, labels = images_and_labels(2000, seed=1)
    images[:200], labels[:200] = trigger(images[:200]), 0
    inputs = keras.Input(shape=SHAPE, name="input")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_1")(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc_1")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="output")(x)
    model = keras.Model(inputs, outputs, name="tiny_badnet")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images / np.float32(255), labels, epochs=4, batch_size=64, verbose=0)
    save_model(Classifier(model, scale="unit"), folder / "badnet.h5")
    valid_x, valid_y = images_and_labels(300, seed=2)
    test_x, test_y = images_and_labels(200, seed=3)
    victims = test_y != 0
    return {"model": str(folder / "badnet.h5"), "valid": save_h5(folder / "valid.h5", valid_x, valid_y),
            "test": save_h5(folder / "test.h5", test_x, test_y),
            "bd": save_h5(folder / "bd_test.h5", trigger(test_x[victims]), np.zeros(victims.sum()))}


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_defaults_are_the_option_groups():
    args = build_parser().parse_args(["detect", "--model", "m.h5", "--valid", "v.h5"])
    assert args.method == "both"
    assert options_from_args(args, CalibrationOptions) == CalibrationOptions()
    assert options_from_args(args, StripOptions) == StripOptions()
    assert options_from_args(args, BaDExpertOptions) == BaDExpertOptions()
    assert options_from_args(args, EitherOptions) == EitherOptions()
    args = build_parser().parse_args(["detect", "--model", "m.h5", "--valid", "v.h5", "--badexpert-seed", "3",
                                      "--seed", "5", "--combination", "triangle", "--expert-rates", "0.1", "0.2"])
    assert options_from_args(args, BaDExpertOptions) == BaDExpertOptions(seed=3, combination="triangle",
                                                                         expert_rates=(0.1, 0.2))
    assert options_from_args(args, StripOptions).seed == 5


def test_both_json_keys_histograms_and_joint_check(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = run(capsys, "detect", "--model", files["model"], "--valid", files["valid"], "--test",
                          files["test"], "--poisoned-test", files["bd"], "--method", "both", "--out", out, "--json",
                          *SMALL)
    assert code == 0, err
    report = json.loads(text)
    assert set(report["detectors"]) == {"strip", "badexpert"}
    assert report["shares"] == {"strip": pytest.approx(0.05), "badexpert": pytest.approx(0.05)}
    for entry in report["detectors"].values():
        assert entry["target_frr"] == pytest.approx(0.05) and 0 <= entry["false_rejection_rate"] <= 1
    check = report["joint_check"]
    assert check["n"] == 200 and check["false_rejection_rate"] == pytest.approx(report["false_rejection_rate"])
    assert report["false_rejection_rate"] >= max(entry["false_rejection_rate"] for entry in report["detectors"].values())
    assert report["false_rejection_rate"] <= 0.2
    (poisoned,) = report["poisoned"]
    assert set(poisoned) >= {"file", "false_acceptance_rate", "detection_rate"}     # goodnet strip's keys
    assert poisoned["false_acceptance_rate"] == pytest.approx(1 - poisoned["detection_rate"])
    assert poisoned["false_acceptance_rate"] <= min(value["false_acceptance_rate"]
                                                    for value in poisoned["detectors"].values())
    assert poisoned["false_acceptance_rate"] < 1.0   # detection quality: tests/defenses/test_badexpert.py
    for path in report["plots"].values():
        assert os.path.getsize(path) > 1000
    assert sorted(name for name in os.listdir(out) if not name.startswith(".")) == ["detect_badexpert.png",
                                                                                 "detect_strip.png"]
    assert 0 <= report["detectors"]["badexpert"]["expert_accuracy"] <= 0.5


def test_badexpert_alone_text_matches_the_library(files, capsys):
    from goodnet.data import LabFile, load_h5
    from goodnet.defenses.badexpert import BaDExpert
    from goodnet.models import load_model

    code, text, err = run(capsys, "detect", "--model", files["model"], "--valid", files["valid"], "--test",
                          files["test"], "--poisoned-test", files["bd"], "--method", "badexpert", "--no-plot",
                          "--json", *SMALL)
    assert code == 0, err
    report = json.loads(text)
    valid = load_h5(files["valid"])
    classifier = load_model(files["model"], clean=valid)
    options = BaDExpertOptions(frr=0.1, threshold_method="quantile", expert_rates=(3e-3, 1e-2), expert_epochs=3,
                               aux_epochs=1)
    detector = BaDExpert.from_options(options).fit(classifier, valid)
    with LabFile(files["bd"]) as bd:
        far = 1 - float(np.mean(detector.predict_trojaned(bd)))
    assert report["detectors"]["badexpert"]["threshold"] == pytest.approx(detector.threshold_, rel=1e-5)
    assert report["poisoned"][0]["false_acceptance_rate"] == pytest.approx(far)
    assert "plots" not in report and "joint_check" not in report
    code, text, err = run(capsys, "detect", "--model", files["model"], "--valid", files["valid"], "--poisoned-test",
                          files["bd"], "--method", "strip", "--no-plot", *SMALL)
    assert code == 0, err
    assert "False Acceptance Rate (bd_test.h5): " in text and "STRIP: threshold" in text


@pytest.mark.parametrize("change, message", [
    (["--frr", "1.5"], "--frr: expected a number in (0, 1)"),
    (["--calibration-fraction", "0"], "--calibration-fraction"),
    (["--method", "nope"], "invalid choice"),
    (["--model", "missing.h5"], "missing.h5"),
])
def test_bad_input_is_one_line_exit_2(files, capsys, change, message):
    argv = ["detect", "--model", files["model"], "--valid", files["valid"], "--no-plot", *SMALL]
    for flag, value in zip(change[::2], change[1::2]):
        argv.extend([flag, value])
    if change[0] == "--method":
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
    else:
        code, _, err = run(capsys, *argv)
        assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
