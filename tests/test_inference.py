"""Tests for goodnet.inference: devices, MirroredStrategy, precision, XLA, batching."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from goodnet.cli import main
from goodnet.inference import Execution, compiled_forward, precision_agreement, run_batches

TWO_DEVICES = """
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from goodnet.data import LabFile
from goodnet.inference import Execution
from goodnet.metrics import evaluate_files
from goodnet.models import load_model

results = {}
for devices in (1, 2):
    classifier = load_model(sys.argv[1], scale="raw").configure(Execution(device="cpu", devices=devices))
    with LabFile(sys.argv[2]) as clean, LabFile(sys.argv[3]) as poisoned:
        figures = evaluate_files(classifier, clean, [poisoned], batch_size=37, progress=False)
        scores = np.concatenate([classifier.predict_proba(images, batch_size=37) for images, _ in clean.batches(50)])
    results[devices] = (figures, scores, Execution(device="cpu", devices=devices).describe())
print(json.dumps({"same_figures": results[1][0] == results[2][0],
                  "same_scores": bool(np.array_equal(results[1][1], results[2][1])),
                  "described": results[2][2], "figures": results[2][0]}))
"""


@pytest.fixture(scope="module")
def real_images(shared):
    from goodnet.data import load_image

    images = np.stack([load_image(path) for path in sorted((shared / "images").glob("*.png"))])
    rng = np.random.default_rng(0)
    return np.clip(np.concatenate([images, images + rng.normal(0, 6, images.shape)]), 0, 255).astype(np.float32)


def test_two_logical_devices_give_identical_results(tmp_path, shared, real_images):
    from goodnet.data import save_h5

    save_h5(tmp_path / "clean.h5", real_images, np.arange(len(real_images)) % 1283)
    save_h5(tmp_path / "bd.h5", real_images[::-1], np.zeros(len(real_images), np.int64))
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(shared / "models" / "bd_net.h5"),
                             str(tmp_path / "clean.h5"), str(tmp_path / "bd.h5")],
                            capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["described"] == "MirroredStrategy over /device:CPU:0, /device:CPU:1"
    assert report["same_figures"] and report["same_scores"]
    assert report["figures"]["attack_success_rate"] > 0


def test_forward_agrees_with_plain_keras_and_xla(bd_net, real_images):
    reference = bd_net.model.predict(real_images, verbose=0)
    plain = run_batches(compiled_forward(bd_net.model, 1.0), real_images, batch_size=7)
    np.testing.assert_allclose(plain, reference, atol=1e-6)
    placed = run_batches(compiled_forward(bd_net.model, 1.0, Execution(device="cpu")), real_images)
    np.testing.assert_array_equal(placed.argmax(axis=1), reference.argmax(axis=1))
    xla = run_batches(compiled_forward(bd_net.model, 1.0, Execution(jit_compile=True)), real_images)
    np.testing.assert_allclose(xla, reference, atol=1e-5)


def test_mixed_precision_effect_is_measured(bd_net, real_images):
    report = precision_agreement(bd_net.model, 1.0, real_images, "mixed_bfloat16")
    reduced = run_batches(compiled_forward(bd_net.model, 1.0, Execution(precision="mixed_bfloat16")), real_images)
    full = bd_net.predict_proba(real_images)
    assert report["images"] == len(real_images)
    assert report["top1_agreement"] == np.mean(reduced.argmax(axis=1) == full.argmax(axis=1))
    assert report["max_abs_score_difference"] == pytest.approx(np.max(np.abs(reduced - full)))
    assert 0 < report["max_abs_score_difference"] < 0.5  # bfloat16 really changes the scores, a little


def test_execution_errors():
    with pytest.raises(ValueError, match="device: expected one of auto, cpu, gpu"):
        Execution(device="tpu")
    with pytest.raises(ValueError, match="precision"):
        Execution(precision="int8")
    with pytest.raises(ValueError, match="devices: 64 asked for, TensorFlow sees 1 logical CPU"):
        Execution(device="cpu", devices=64).device_names()
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        with pytest.raises(ValueError, match="sees no GPU"):
            Execution(device="gpu").device_names()


def test_cli_execution_options(capsys, tmp_path, shared, real_images):
    from goodnet.data import save_h5

    save_h5(tmp_path / "clean.h5", real_images, np.arange(len(real_images)) % 1283)
    model = str(shared / "models" / "bd_net.h5")
    code = main(["eval", str(tmp_path / "clean.h5"), model, "--device", "cpu", "--precision", "mixed_bfloat16",
                 "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert code == 0 and figures["execution"] == "/device:CPU:0 (mixed_bfloat16)"
    assert figures["precision_report"]["images"] == len(real_images)
    code = main(["eval", str(tmp_path / "clean.h5"), model, "--devices", "3"])
    assert code == 2 and "devices: 3 asked for" in capsys.readouterr().err
    code = main(["eval", str(tmp_path / "clean.h5"), model, "--strategy", "mirrored", "--precision",
                 "mixed_float16"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[-1].startswith("Precision mixed_float16: top-1 agreement with float32 on")


TWO_DEVICES_DEFENSES = """
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from goodnet.data import LabData, LabFile
from goodnet.inference import Execution
from goodnet.models import Classifier, build_deepid
from goodnet.defenses.pruning import PruningDefense
from goodnet.defenses.strip import STRIP

keras.utils.set_random_seed(0)
model = build_deepid(5)
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (75, 55, 47, 3)).astype(np.float32)
labels = Classifier(model, "raw").predict(images)      # the unpruned model is right on every clean image
clean, poisoned = LabData(images[:50], labels[:50], "clean.h5"), LabData(images[50:], np.zeros(25, np.int64), "bd.h5")
report = {}
for devices in (1, 2):
    classifier = Classifier(model, "raw").configure(Execution(device="cpu", devices=devices))
    for method in ("incremental", "full"):
        sweep = PruningDefense(method=method, batch_size=9, progress=False).fit(classifier, clean, [poisoned])
        report[f"prune-{method}-{devices}"] = {"clean": sweep.clean_predictions_.tolist(),
                                               "poisoned": sweep.poisoned_predictions_[0].tolist(),
                                               "curve": sweep.summary()["curve"],
                                               "execution": sweep.execution_.describe()}
    for blend in ("add", "alpha"):
        strip = STRIP(copies=5, blend=blend, bank_size=20, memory_mb=1, early_copies=2,
                      progress=False).fit(classifier, images[:45])
        with LabFile(sys.argv[1]) as lab:
            streamed = strip.entropy(lab, seed=4).tolist()
        report[f"strip-{blend}-{devices}"] = {"threshold": strip.threshold_, "clean": strip.clean_entropies_.tolist(),
                                              "test": strip.entropy(images[45:], seed=3).tolist(),
                                              "flagged": strip.predict_trojaned(images[45:], seed=3).tolist(),
                                              "used": strip.last_copies_used_.tolist(), "streamed": streamed,
                                              "chunk": strip.chunk_inputs(),
                                              "replicas": strip._kernel.replicas}
print(json.dumps(report))
"""


def test_two_logical_devices_give_identical_sweeps_and_strip_entropies(tmp_path):
    """--devices 2: the pruning sweep (predictions, curve) and STRIP (entropies, threshold, decisions) equal one device's."""
    from goodnet.data import save_h5

    rng = np.random.default_rng(1)
    save_h5(tmp_path / "test.h5", rng.uniform(0, 255, (23, 55, 47, 3)), np.zeros(23, np.int64), dtype="float32")
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES_DEFENSES, str(tmp_path / "test.h5")],
                            capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for method in ("incremental", "full"):
        one, two = report[f"prune-{method}-1"], report[f"prune-{method}-2"]
        assert one["execution"] == "/device:CPU:0"
        assert two["execution"] == "MirroredStrategy over /device:CPU:0, /device:CPU:1"
        assert one["clean"] == two["clean"] and one["poisoned"] == two["poisoned"] and one["curve"] == two["curve"]
    accuracy = [row["clean_accuracy"] for row in report["prune-full-2"]["curve"]]
    assert accuracy[0] == 1.0 and min(accuracy) < 0.9   # the sweep really changes predictions
    for blend in ("add", "alpha"):
        one, two = report[f"strip-{blend}-1"], report[f"strip-{blend}-2"]
        assert one.pop("replicas") == 1 and two.pop("replicas") == 2
        assert one["chunk"] < 20            # several network calls, the last one short
        assert one == two
        assert len(set(one["test"])) > 1
