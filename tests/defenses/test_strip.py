"""goodnet.defenses.strip: the fast STRIP against a slow per-copy reference, thresholds, detection, and the CLI."""

import json

import numpy as np
import pytest

from goodnet.calibration import frr_bounds
from goodnet.defenses.strip import STRIP, StripOptions, entropy_reference, evaluate_strip
from strip_helpers import add_trigger, synthetic_faces, tiny_network, train_tiny_badnet


@pytest.fixture(scope="module")
def tiny_badnet():
    return train_tiny_badnet()


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_faces(500, seed=7)


def _reference_entropies(classifier, images, bank, indices, blend, alpha):
    """Slow and obvious: per input, build its copies in NumPy, plain Keras predict, NumPy entropy."""
    result = []
    for image, rows in zip(images, indices):
        drawn = bank[rows]
        copies = np.clip(image + drawn, 0, 255) if blend == "add" else (1 - alpha) * image + alpha * drawn
        scores = np.asarray(classifier.model(copies.astype(np.float32) / np.float32(classifier.divisor), training=False))
        result.append(entropy_reference(scores))
    return np.array(result)


@pytest.mark.parametrize("blend, fast_alpha, path", [("add", True, "direct"), ("alpha", True, "linear"),
                                                     ("alpha", False, "direct")])
def test_fast_entropies_match_slow_reference(tiny_badnet, tiny_data, blend, fast_alpha, path):
    images, _ = tiny_data
    strip = STRIP(copies=12, blend=blend, alpha=0.4, bank_size=60, seed=3,
                  fast_alpha=fast_alpha).fit(tiny_badnet, images[:150])
    assert strip.path_ == path
    test = images[150:170]
    indices = strip.draw_indices(len(test), seed=11)
    assert indices.shape == (20, 12)
    assert all(len(set(row)) == 12 for row in indices), "copies of one input use different bank images"
    fast = strip.per_copy_entropies(test, indices)
    slow = _reference_entropies(tiny_badnet, test, strip.bank_, indices, blend, 0.4)
    np.testing.assert_allclose(fast, slow, atol=2e-4)
    np.testing.assert_allclose(strip.entropy(test, seed=11), slow.mean(axis=1), atol=2e-4)


def test_chunking_does_not_change_results(tiny_badnet, tiny_data):
    images, _ = tiny_data
    big = STRIP(copies=10, bank_size=50).fit(tiny_badnet, images[:120])
    small = STRIP(copies=10, bank_size=50, memory_mb=1).fit(tiny_badnet, images[:120])
    assert small.chunk_inputs() < big.chunk_inputs()
    np.testing.assert_allclose(small.entropy(images[200:260]), big.entropy(images[200:260]), atol=1e-5)
    assert small.threshold_ == pytest.approx(big.threshold_, abs=1e-5)


def test_fit_holds_out_the_bank_and_sets_the_threshold(tiny_badnet, tiny_data):
    images, _ = tiny_data
    strip = STRIP(copies=10, bank_size=40, threshold_method="quantile", frr=0.05, seed=1).fit(tiny_badnet, images[:240])
    assert strip.bank_.shape == (40, 16, 16, 3)
    assert len(strip.clean_entropies_) == 200
    flat_bank = {image.tobytes() for image in strip.bank_}
    held = sum(image.tobytes() in flat_bank for image in images[:240])
    assert held == 40
    assert strip.threshold_ == pytest.approx(np.quantile(strip.clean_entropies_, 0.05))
    assert np.mean(strip.clean_entropies_ < strip.threshold_) == pytest.approx(0.05, abs=0.01)
    assert strip.entropy_mean_ == pytest.approx(np.mean(strip.clean_entropies_))


def test_defaults_are_written_once(monkeypatch):
    """STRIP, RepairOptions and both CLIs take the target FRR, method and confidence from StripOptions' fields
    (the calibration ones from goodnet.calibration.CalibrationOptions)."""
    import argparse
    import dataclasses
    import inspect

    import goodnet.cli.repair
    import goodnet.cli.strip
    from goodnet.calibration import CalibrationOptions
    from goodnet.repair import RepairOptions

    defaults = StripOptions()
    expected = {"frr": defaults.frr, "confidence": defaults.confidence, "threshold_method": defaults.threshold_method}
    assert defaults.threshold_method == "certified" and defaults.frr == 0.01
    signature = inspect.signature(STRIP).parameters
    assert {name: signature[name].default for name in expected} == expected
    assert {name: signature[name].default for name in dataclasses.asdict(defaults)} == dataclasses.asdict(defaults)
    options = RepairOptions()
    options = getattr(options, "strip", options)
    assert {name: getattr(options, name) for name in expected} == expected

    def parsed(module, argv):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return parser.parse_args(argv)

    fields = CalibrationOptions.__dataclass_fields__   # StripOptions shares these field objects
    monkeypatch.setattr(fields["frr"], "default", 0.037)
    monkeypatch.setattr(fields["confidence"], "default", 0.83)
    monkeypatch.setattr(fields["threshold_method"], "default", "quantile")
    args = parsed(goodnet.cli.strip, ["--model", "m.h5", "--valid", "v.h5"])
    assert (args.frr, args.confidence, args.threshold_method) == (0.037, 0.83, "quantile")
    monkeypatch.undo()
    monkeypatch.setattr(RepairOptions, "strip", dataclasses.replace(RepairOptions.strip, frr=0.041, confidence=0.87,
                                                                    threshold_method="normal"))
    for argv in (["b.h5", "--valid", "v.h5", "--out", "dir"], ["b.h5", "--repaired", "p.h5", "--out", "g.h5"]):
        args = parsed(goodnet.cli.repair, argv)   # one default for both forms of repair (RepairOptions.strip)
        assert (args.frr, args.confidence, args.threshold_method) == (0.041, 0.87, "normal")


def test_strip_flags_come_from_strip_options():
    """goodnet strip's STRIP flags: the spellings, defaults and choices of before, generated from StripOptions."""
    import argparse

    import goodnet.cli.strip

    parser = argparse.ArgumentParser()
    goodnet.cli.strip.add_arguments(parser)
    actions = {action.option_strings[0]: action for action in parser._actions if action.option_strings}
    expected = {"--frr": 0.01, "--confidence": 0.95, "--copies": 100, "--blend": "add", "--alpha": 0.5,
                "--threshold": "certified", "--draws": "random", "--bank-size": None, "--seed": 0,
                "--memory-mb": 1024, "--early-stop": False, "--early-copies": 10, "--strip-precision": "float32"}
    assert {flag: actions[flag].default for flag in expected} == expected
    assert actions["--blend"].choices == ("add", "alpha") and actions["--draws"].choices == ("random", "fixed")
    assert actions["--threshold"].choices == ("certified", "normal", "quantile")
    assert actions["--strip-precision"].choices == ("float32", "bfloat16")
    assert actions["--strip-precision"].dest == "strip_precision"
    args = parser.parse_args(["--model", "m", "--valid", "v", "--copies", "7", "--strip-precision", "bfloat16"])
    assert (args.copies, args.strip_precision) == (7, "bfloat16")
    for flag in ("--copies", "--bank-size", "--memory-mb", "--early-copies"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--model", "m", "--valid", "v", flag, "0"])


def test_strip_detects_the_tiny_trigger(tiny_badnet, tiny_data):
    images, _ = tiny_data
    strip = STRIP(copies=20, blend="alpha", bank_size=100, frr=0.05).fit(tiny_badnet, images[:300])
    result = evaluate_strip(strip, images[300:], [("patch", add_trigger(images[300:]))])
    poisoned = result["poisoned"][0]
    assert np.median(poisoned["entropies"]) < np.median(result["clean_entropies"])
    assert poisoned["detection_rate"] >= 0.8
    assert result["false_rejection_rate"] <= 0.15


def test_early_stopping_agrees_with_full_copies(tiny_badnet, tiny_data):
    images, _ = tiny_data
    options = dict(copies=30, blend="alpha", bank_size=100, frr=0.05)
    full = STRIP(**options).fit(tiny_badnet, images[:300])
    early = STRIP(early_stop=True, early_copies=10, **options).fit(tiny_badnet, images[:300])
    mixed = np.concatenate([images[300:400], add_trigger(images[400:500])])
    decided_full = full.predict_trojaned(mixed, seed=5)
    decided_early = early.predict_trojaned(mixed, seed=5)
    assert early.last_copies_used_.mean() < 30
    assert np.mean(decided_full != decided_early) <= 0.05


def _sequential_reference(per_copy, threshold, stage, z, early_stop):
    """The staged stopping rule on precomputed per-copy entropies, one input at a time in plain Python."""
    total = per_copy.shape[1]
    flagged, used = [], []
    for row in per_copy.astype(np.float64):
        for count in list(range(max(2, stage), total, max(2, stage))) + [total]:
            seen = row[:count]
            if count == total:
                flagged.append(seen.mean() < threshold)
                break
            if seen.sum() >= total * threshold:
                flagged.append(False)
                break
            error = seen.std(ddof=1) * np.sqrt((total - count) / (total * count))
            if early_stop and abs(seen.mean() - threshold) > z * error:
                flagged.append(seen.mean() < threshold)
                break
        used.append(count)
    return np.array(flagged), np.array(used)


@pytest.mark.parametrize("early_stop", [False, True])
def test_staged_stopping_matches_a_plain_reference(tiny_badnet, tiny_data, early_stop):
    images, _ = tiny_data
    strip = STRIP(copies=30, blend="alpha", bank_size=100, frr=0.05, early_stop=early_stop,
                  early_copies=5, early_z=2.0).fit(tiny_badnet, images[:300])
    mixed = np.concatenate([images[300:380], add_trigger(images[380:460])])
    flagged = strip.predict_trojaned(mixed, seed=5)
    per_copy = strip.per_copy_entropies(mixed, strip.draw_indices(len(mixed), seed=5))
    expected_flags, expected_used = _sequential_reference(per_copy, strip.threshold_, 5, 2.0, early_stop)
    np.testing.assert_array_equal(flagged, expected_flags)
    np.testing.assert_array_equal(strip.last_copies_used_, expected_used)
    assert strip.last_copies_used_.min() < 30
    if not early_stop:  # the exact rule: the very decisions of all N copies
        np.testing.assert_array_equal(flagged, strip.entropy(mixed, seed=5) < strip.threshold_)
        assert (strip.last_copies_used_[flagged] == 30).all()


def test_linear_path_on_the_lab_badnet_matches_a_per_copy_keras_reference(bd_net, shared):
    from goodnet.data import load_image

    folder = shared / "images"
    clean = np.stack([load_image(folder / f"cl_{index}.png") for index in range(5)]).astype(np.float32)
    sunglasses = np.stack([load_image(folder / f"sun_{index}.png") for index in range(2)]).astype(np.float32)
    rng = np.random.default_rng(0)
    bank = np.clip(np.concatenate([clean, clean[:, :, ::-1]]) + rng.normal(0, 4, (10, 55, 47, 3)), 0, 255)
    options = dict(copies=6, blend="alpha", alpha=0.5, progress=False)
    linear = STRIP(**options).fit(bd_net, clean[:3], bank=bank)
    direct = STRIP(fast_alpha=False, **options).fit(bd_net, clean[:3], bank=bank)
    assert (linear.path_, direct.path_) == ("linear", "direct")
    inputs = np.concatenate([clean[3:], sunglasses])
    indices = linear.draw_indices(len(inputs), seed=2)
    reference = _reference_entropies(bd_net, inputs, linear.bank_.astype(np.float32), indices, "alpha", 0.5)
    np.testing.assert_allclose(direct.per_copy_entropies(inputs, indices), reference, atol=1e-5)
    np.testing.assert_allclose(linear.per_copy_entropies(inputs, indices), reference, atol=1e-4)
    assert linear.threshold_ == pytest.approx(direct.threshold_, abs=1e-4)


def test_bfloat16_copy_is_close_and_keeps_the_output_layer_in_float32(tiny_badnet, tiny_data):
    from goodnet.inference import with_precision   # STRIP's bfloat16 copy of the network

    images, _ = tiny_data
    copy = with_precision(tiny_badnet.model, "bfloat16")
    assert copy.layers[-1].compute_dtype == "float32" and copy.get_layer("conv_1").compute_dtype == "bfloat16"
    scaled = images[:50] / np.float32(255)
    np.testing.assert_allclose(np.asarray(copy(scaled)), np.asarray(tiny_badnet.model(scaled)), atol=0.05)
    options = dict(copies=10, blend="alpha", bank_size=100, frr=0.05)
    exact = STRIP(**options).fit(tiny_badnet, images[:300])
    rounded = STRIP(precision="bfloat16", **options).fit(tiny_badnet, images[:300])
    assert rounded.path_ == "direct"
    np.testing.assert_allclose(rounded.entropy(images[300:340]), exact.entropy(images[300:340]), atol=0.05)
    assert tiny_badnet.model.get_layer("conv_1").compute_dtype == "float32", "the original model is untouched"


def test_linear_path_needs_a_convolution_on_the_input(tiny_data):
    import keras

    from goodnet.models import Classifier

    inputs = keras.Input((16, 16, 3))
    hidden = keras.layers.Rescaling(1.0, name="rescale")(inputs)
    hidden = keras.layers.Conv2D(4, 3, activation="relu", name="conv_1")(hidden)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(hidden))
    classifier = Classifier(keras.Model(inputs, outputs), scale="unit")
    images, _ = tiny_data
    strip = STRIP(copies=5, blend="alpha", bank_size=20).fit(classifier, images[:40])
    assert strip.path_ == "direct"


def test_bad_parameters_and_unfitted_use(tiny_badnet, tiny_data):
    images, _ = tiny_data
    with pytest.raises(ValueError, match="not fitted"):
        STRIP().predict_trojaned(images[:2])
    with pytest.raises(ValueError, match="blend"):
        STRIP(blend="max").fit(tiny_badnet, images)
    with pytest.raises(ValueError, match="frr"):
        STRIP(frr=1.5).fit(tiny_badnet, images)
    with pytest.raises(ValueError, match="precision"):
        STRIP(precision="int8").fit(tiny_badnet, images)
    with pytest.raises(ValueError, match="early_copies"):
        STRIP(early_copies=0).fit(tiny_badnet, images)
    with pytest.raises(ValueError, match="bank"):
        STRIP(copies=50).fit(tiny_badnet, images[:60], bank=images[:10])
    with pytest.raises(ValueError, match="shape"):
        STRIP(copies=2).fit(tiny_badnet, np.zeros((10, 8, 8, 3)))


def _lab_files(make_lab_file, count=160):
    """Small lab-layout files of real-shaped random faces (55x47) with a patch trigger."""
    rng = np.random.default_rng(8)
    images = rng.uniform(0, 255, (count, 55, 47, 3)).astype(np.float32)
    labels = rng.integers(0, 5, count)
    triggered = images[:40].copy()
    triggered[:, -6:, -6:] = 255
    return (make_lab_file("valid.h5", images[:120], labels[:120]),
            make_lab_file("test.h5", images[120:], labels[120:]),
            make_lab_file("bd_test.h5", triggered, np.zeros(40, np.int64)))


def test_strip_cli_reports_frr_far_json_and_plot(tmp_path, make_lab_file, capsys):
    import keras

    from goodnet.cli import main
    from goodnet.models import Classifier, build_deepid, save_model

    keras.utils.set_random_seed(0)
    model_path = save_model(Classifier(build_deepid(5), "unit"), tmp_path / "bd.h5")
    valid, test, bd_test = _lab_files(make_lab_file)
    plot = tmp_path / "hist.png"
    code = main(["strip", "--model", str(model_path), "--valid", str(valid), "--test", str(test),
                 "--poisoned-test", str(bd_test), "--copies", "8", "--bank-size", "40", "--frr", "0.05",
                 "--plot", str(plot), "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["false_rejection_rate"] <= 1.0
    assert report["poisoned"][0]["file"] == str(bd_test)
    far = report["poisoned"][0]["false_acceptance_rate"]
    assert far == pytest.approx(1 - report["poisoned"][0]["detection_rate"])
    assert report["copies"] == 8 and report["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The calibration: 80 clean validation entropies (120 less the bank of 40), certified at 5 %, with its bounds.
    calibration = report["calibration"]
    assert report["threshold_method"] == calibration["method"] == "certified"
    assert calibration["n"] == 80 and calibration["confidence"] == 0.95 and calibration["target_frr"] == 0.05
    assert calibration["certified"] and calibration["warning"] is None and calibration["n_needed"] == 59
    upper, interval = frr_bounds(calibration["rejected"], 80, 0.95)
    assert calibration["frr_upper_bound"] == pytest.approx(upper) and upper <= 0.05
    assert calibration["frr_interval"] == pytest.approx(list(interval))
    assert calibration["frr_interval"][0] <= report["valid_false_rejection_rate"] <= calibration["frr_interval"][1]
    code = main(["strip", "--model", str(model_path), "--valid", str(valid), "--test", str(test),
                 "--copies", "8", "--bank-size", "40", "--no-plot", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "False Rejection Rate" in text
    assert "Calibration: 0 of 80 clean calibration inputs below the threshold; FRR 95 % interval" in text
    # At the default 1 % target, 80 entropies are too few: the report says so and how many would do.
    assert "Warning: STRIP calibration: 80 clean entropies cannot certify FRR <= 1 %" in text and "299" in text
    code = main(["strip", "--model", str(model_path), "--valid", str(valid), "--confidence", "1.5", "--no-plot"])
    assert code == 2 and "--confidence" in capsys.readouterr().err


def test_strip_cli_bad_input_is_one_line(tmp_path, make_lab_file, capsys):
    from goodnet.cli import main

    valid, test, _ = _lab_files(make_lab_file)
    code = main(["strip", "--model", str(tmp_path / "missing.h5"), "--valid", str(valid), "--test", str(test)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("goodnet strip: error:")
    code = main(["strip", "--model", str(valid), "--valid", str(valid), "--test", str(test), "--copies", "500"])
    assert code == 2


STRIP_PEAK_PROBE = """
import resource, sys
import numpy as np
import keras
sys.path.insert(0, sys.argv[2])
from strip_helpers import tiny_network
from goodnet.data import LabFile
from goodnet.models import Classifier
from goodnet.defenses.strip import STRIP

keras.utils.set_random_seed(0)
classifier = Classifier(tiny_network(4, shape=(55, 47, 3)), "unit")
valid = np.random.default_rng(1).uniform(0, 255, (120, 55, 47, 3)).astype(np.float32)
strip = STRIP(copies=2, bank_size=60, memory_mb=16, progress=False).fit(classifier, valid)
strip.entropy(valid[:300])  # warm up TensorFlow
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with LabFile(sys.argv[1]) as lab:
    entropies = strip.entropy(lab, seed=5)
    flagged = strip.predict_trojaned(lab, seed=5)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, len(entropies), len(flagged), strip.stream_batch())
"""


def test_streamed_strip_keeps_peak_memory_bounded(tmp_path, big_float64_file):
    """STRIP on an open lab file reads it batch by batch: the peak grows far less than the file's float32 size."""
    import os
    import pathlib
    import subprocess
    import sys

    count = 4000  # stored as float64: 248 MB; as float32 in memory it would be 124 MB
    path = big_float64_file(tmp_path / "big.h5", count, classes=4)
    helpers = str(pathlib.Path(__file__).resolve().parent.parent)  # tests/, where strip_helpers lives
    result = subprocess.run([sys.executable, "-c", STRIP_PEAK_PROBE, str(path), helpers],
                            capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    growth, entropies, flagged, batch = map(int, result.stdout.split()[-4:])
    float32_bytes = count * 55 * 47 * 3 * 4
    assert entropies == flagged == count and batch < count
    assert growth < 0.6 * float32_bytes, (growth, float32_bytes)


@pytest.mark.parametrize("blend, draws", [("add", "random"), ("alpha", "random"), ("add", "fixed")])
def test_streamed_file_gives_exactly_the_in_memory_results(tmp_path, make_lab_file, monkeypatch, blend, draws):
    """Entropies, decisions and copies used from a file read in small batches equal those of the array in memory."""
    import keras

    import goodnet.defenses._strip_kernels
    from goodnet.data import LabFile
    from goodnet.models import Classifier

    keras.utils.set_random_seed(0)
    classifier = Classifier(tiny_network(4, shape=(55, 47, 3)), "unit")
    rng = np.random.default_rng(3)
    valid = rng.uniform(0, 255, (80, 55, 47, 3)).astype(np.float32)
    test = rng.integers(0, 256, (45, 55, 47, 3)).astype(np.float32)
    path = make_lab_file("test.h5", test, np.zeros(len(test), np.int64), dtype="float64")
    monkeypatch.setattr(goodnet.defenses._strip_kernels, "STREAM_IMAGES", 8)   # many small batches, one of them short
    strip = STRIP(copies=6, blend=blend, draws=draws, bank_size=40, memory_mb=2, early_stop=True,
                  early_copies=2, progress=False).fit(classifier, valid)
    assert strip.stream_batch() < len(test) and len(test) % strip.stream_batch()
    in_memory = strip.entropy(test, seed=9)
    in_memory_flags = strip.predict_trojaned(test, seed=9)
    in_memory_used = strip.last_copies_used_.copy()
    with LabFile(path) as lab:
        streamed = strip.entropy(lab, seed=9)
        streamed_flags = strip.predict_trojaned(lab, seed=9)
    np.testing.assert_array_equal(streamed, in_memory)
    np.testing.assert_array_equal(streamed_flags, in_memory_flags)
    np.testing.assert_array_equal(strip.last_copies_used_, in_memory_used)
    assert len(np.unique(in_memory)) > 1
    with pytest.raises(TypeError, match="images: expected images in memory"), LabFile(path) as lab:
        STRIP(copies=6, bank_size=40).fit(classifier, lab)


def test_precision_effect_compares_with_a_float32_twin(tiny_badnet, tiny_data):
    images, _ = tiny_data
    options = dict(copies=10, blend="alpha", bank_size=100, frr=0.05)
    exact = STRIP(**options).fit(tiny_badnet, images[:300])
    rounded = STRIP(precision="bfloat16", **options).fit(tiny_badnet, images[:300])
    effect = rounded.precision_effect(images[300:340], seed=5)
    reference = exact.entropy(images[300:340], seed=5)
    expected = np.max(np.abs(rounded.entropy(images[300:340], seed=5) - reference))
    assert effect["strip_precision"] == "bfloat16" and effect["images"] == 40
    assert effect["max_entropy_difference"] == pytest.approx(expected, abs=1e-4) and expected > 0
    assert 0.0 <= effect["decision_agreement"] <= 1.0
    same = exact.precision_effect(images[300:340], seed=5)
    assert same["max_entropy_difference"] == 0.0 and same["decision_agreement"] == 1.0
