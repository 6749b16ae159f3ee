"""Tests for goodnet.metrics against direct NumPy definitions."""

import numpy as np
import pytest

from goodnet.metrics import (accuracy, attack_success_rate, defense_effectiveness_rating, rejection_rate,
                             score_predictions)


def test_figures_against_numpy_definitions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    predictions = np.where(rng.random(500) < 0.8, labels, rng.integers(0, 11, 500))
    poisoned_predictions = rng.integers(0, 11, 300)
    targets = np.full(300, 3)
    figures = score_predictions(predictions, labels, [("bd", poisoned_predictions, targets)], 10, True)
    assert figures["clean_accuracy"] == np.sum(predictions == labels) / 500
    assert figures["false_rejection_rate"] == np.sum(predictions == 10) / 500
    assert figures["attack_success_rate"] == np.sum(poisoned_predictions == 3) / 300
    assert figures["detection_rate"] == np.sum(poisoned_predictions == 10) / 300


def test_the_poisoned_answer_counts_as_wrong_and_rates_pool_files():
    assert accuracy([10, 1, 2], [10 - 10, 1, 2]) == pytest.approx(2 / 3)
    figures = score_predictions(None, None, [("a", [10, 10, 1], [1, 1, 1]), ("b", [10], [2])], 10, True)
    assert [entry["detection_rate"] for entry in figures["poisoned"]] == [pytest.approx(2 / 3), 1.0]
    assert figures["detection_rate"] == pytest.approx(3 / 4)
    assert figures["attack_success_rate"] == pytest.approx(1 / 3)  # the first file's, as the lab prints it
    assert "clean_accuracy" not in figures and "false_rejection_rate" not in figures
    assert "detection_rate" not in score_predictions([1], [1], [("a", [1], [1])], 10, False)


def test_der_matches_backdoorbench():
    assert defense_effectiveness_rating(0.98, 1.0, 0.98, 1.0) == 0.5
    assert defense_effectiveness_rating(0.98, 1.0, 0.96, 0.0) == pytest.approx((1.0 - 0.02 + 1) / 2)
    assert defense_effectiveness_rating(0.90, 0.5, 0.95, 0.7) == 0.5  # no credit for gains, no blame for ASR rises


def test_bad_arguments():
    with pytest.raises(ValueError, match="expected 3 labels"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least one"):
        attack_success_rate([], [])
    with pytest.raises(ValueError, match="1-D"):
        rejection_rate([[1]], 10)


PEAK_PROBE = """
import resource, sys
import numpy as np
from goodnet.data import LabFile
from goodnet.metrics import evaluate_files
from goodnet.models import load_model

classifier = load_model(sys.argv[2], scale="raw")
classifier.predict(np.zeros((256, 55, 47, 3), np.float32), batch_size=256)  # warm up TensorFlow
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with LabFile(sys.argv[1]) as clean:
    figures = evaluate_files(classifier, clean, batch_size=256, progress=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, figures["clean_images"])
"""


def test_streaming_evaluation_keeps_peak_memory_bounded(tmp_path, shared, big_float64_file):
    import os
    import subprocess
    import sys

    count = 4000  # stored as float64: 248 MB; as float32 in memory it would be 124 MB
    path = big_float64_file(tmp_path / "big.h5", count, classes=1283)
    result = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path), str(shared / "models" / "bd_net.h5")],
                            capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    growth, images = map(int, result.stdout.split())
    float32_bytes = count * 55 * 47 * 3 * 4
    assert images == count
    assert growth < 0.6 * float32_bytes, (growth, float32_bytes)
