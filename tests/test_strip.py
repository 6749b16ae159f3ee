"""goodnet.strip: the fast STRIP against a slow per-copy reference, thresholds, detection, and the CLI."""

import json
import statistics

import numpy as np
import pytest

from goodnet.strip import STRIP, entropy_reference, evaluate_strip, threshold_for
from strip_helpers import add_trigger, synthetic_faces, train_tiny_badnet


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


@pytest.mark.parametrize("blend", ["add", "alpha"])
def test_fast_entropies_match_slow_reference(tiny_badnet, tiny_data, blend):
    images, _ = tiny_data
    strip = STRIP(tiny_badnet, copies=12, blend=blend, alpha=0.4, bank_size=60, seed=3).fit(images[:150])
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
    big = STRIP(tiny_badnet, copies=10, bank_size=50).fit(images[:120])
    small = STRIP(tiny_badnet, copies=10, bank_size=50, memory_mb=1).fit(images[:120])
    assert small.chunk_inputs() < big.chunk_inputs()
    np.testing.assert_allclose(small.entropy(images[200:260]), big.entropy(images[200:260]), atol=1e-5)
    assert small.threshold_ == pytest.approx(big.threshold_, abs=1e-5)


def test_fit_holds_out_the_bank_and_sets_the_threshold(tiny_badnet, tiny_data):
    images, _ = tiny_data
    strip = STRIP(tiny_badnet, copies=10, bank_size=40, threshold_method="quantile", frr=0.05, seed=1).fit(images[:240])
    assert strip.bank_.shape == (40, 16, 16, 3)
    assert len(strip.clean_entropies_) == 200
    flat_bank = {image.tobytes() for image in strip.bank_}
    held = sum(image.tobytes() in flat_bank for image in images[:240])
    assert held == 40
    assert strip.threshold_ == pytest.approx(np.quantile(strip.clean_entropies_, 0.05))
    assert np.mean(strip.clean_entropies_ < strip.threshold_) == pytest.approx(0.05, abs=0.01)
    assert strip.entropy_mean_ == pytest.approx(np.mean(strip.clean_entropies_))


def test_threshold_methods_match_references():
    rng = np.random.default_rng(4)
    values = rng.normal(2.0, 0.5, 1000)
    z = statistics.NormalDist().inv_cdf(0.01)
    assert threshold_for(values, 0.01, "normal") == pytest.approx(values.mean() + z * values.std(ddof=1))
    assert z == pytest.approx(-2.3263478740, abs=1e-8)
    assert threshold_for(values, 0.01, "quantile") == pytest.approx(np.sort(values)[int(0.01 * 999)], abs=0.02)
    with pytest.raises(ValueError, match="threshold_method"):
        threshold_for(values, 0.01, "mean")


def test_strip_detects_the_tiny_trigger(tiny_badnet, tiny_data):
    images, _ = tiny_data
    strip = STRIP(tiny_badnet, copies=20, blend="alpha", bank_size=100, frr=0.05).fit(images[:300])
    result = evaluate_strip(strip, images[300:], [("patch", add_trigger(images[300:]))])
    poisoned = result["poisoned"][0]
    assert np.median(poisoned["entropies"]) < np.median(result["clean_entropies"])
    assert poisoned["detection_rate"] >= 0.8
    assert result["false_rejection_rate"] <= 0.15


def test_early_stopping_agrees_with_full_copies(tiny_badnet, tiny_data):
    images, _ = tiny_data
    options = dict(copies=30, blend="alpha", bank_size=100, frr=0.05)
    full = STRIP(tiny_badnet, **options).fit(images[:300])
    early = STRIP(tiny_badnet, early_stop=True, early_copies=10, **options).fit(images[:300])
    mixed = np.concatenate([images[300:400], add_trigger(images[400:500])])
    decided_full = full.predict_trojaned(mixed, seed=5)
    decided_early = early.predict_trojaned(mixed, seed=5)
    assert early.last_copies_used_.mean() < 30
    assert np.mean(decided_full != decided_early) <= 0.05


def test_bad_parameters_and_unfitted_use(tiny_badnet, tiny_data):
    images, _ = tiny_data
    with pytest.raises(ValueError, match="not fitted"):
        STRIP(tiny_badnet).predict_trojaned(images[:2])
    with pytest.raises(ValueError, match="blend"):
        STRIP(tiny_badnet, blend="max").fit(images)
    with pytest.raises(ValueError, match="frr"):
        STRIP(tiny_badnet, frr=1.5).fit(images)
    with pytest.raises(ValueError, match="bank"):
        STRIP(tiny_badnet, copies=50).fit(images[:60], bank=images[:10])
    with pytest.raises(ValueError, match="shape"):
        STRIP(tiny_badnet, copies=2).fit(np.zeros((10, 8, 8, 3)))


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
    code = main(["strip", "--model", str(model_path), "--valid", str(valid), "--test", str(test),
                 "--copies", "8", "--bank-size", "40", "--no-plot", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "False Rejection Rate" in text


def test_strip_cli_bad_input_is_one_line(tmp_path, make_lab_file, capsys):
    from goodnet.cli import main

    valid, test, _ = _lab_files(make_lab_file)
    code = main(["strip", "--model", str(tmp_path / "missing.h5"), "--valid", str(valid), "--test", str(test)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("goodnet strip: error:")
    code = main(["strip", "--model", str(valid), "--valid", str(valid), "--test", str(test), "--copies", "500"])
    assert code == 2
