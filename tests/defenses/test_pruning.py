"""Tests for goodnet.defenses.pruning (and its sweep engine), the pruning-curve plot and ``goodnet prune``.

The references here are deliberately plain: zero the weights of a Keras
clone and run the whole model (``model(x, training=False)``), NumPy means
for the ranking.
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from goodnet.data import LabData, load_image
from goodnet.models import ModelError, load_model
from goodnet.defenses._sweep import plan_sweep
from goodnet.defenses.pruning import PruningDefense, predict_pruned, select_steps
from goodnet.surgery import zeroed_channels

FACES = ["cl_0.png", "cl_1.png", "cl_2.png", "cl_3.png", "cl_4.png", "clean_950.png"]
IDENTITIES = np.array([43, 328, 196, 1268, 748, 950])


def lab_like(shared, count, seed):
    """Perturbed real faces and the same images with the sunglasses trigger pasted in (target 0)."""
    bases = np.stack([load_image(shared / "images" / name) for name in FACES])
    clean_face = load_image(shared / "images" / "clean_950.png")
    trigger = load_image(shared / "images" / "sunglasses_950.png")
    mask = np.any(trigger != clean_face, axis=2)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(FACES), count)
    contrast = rng.uniform(0.5, 1.5, (count, 1, 1, 1))
    noise = rng.normal(0, 25, (count,) + bases.shape[1:])
    images = np.clip((bases[which] - 128) * contrast + 128 + noise, 0, 255).round().astype(np.float32)
    poisoned = images.copy()
    poisoned[:, mask] = trigger[mask]
    return LabData(images, IDENTITIES[which], "valid.h5"), LabData(poisoned, np.zeros(count, np.int64), "bd_valid.h5")


@pytest.fixture(scope="module")
def lab_data(shared):
    return lab_like(shared, 250, seed=7)


def whole_model_predictions(model, layer_name, channels, images, divisor=1.0):
    """Reference: a clone with ``channels`` zeroed (kernel and bias), the whole model run on ``images``."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    layer = clone.get_layer(layer_name)
    kernel, bias = layer.get_weights()
    kernel[..., list(channels)] = 0
    bias[list(channels)] = 0
    layer.set_weights([kernel, bias])
    outputs = [np.asarray(clone(images[start:start + 512] / divisor, training=False))
               for start in range(0, len(images), 512)]
    return np.concatenate(outputs).argmax(axis=1)


def reference_ranking(model, measure, images):
    import keras

    activations = np.asarray(keras.Model(model.inputs, model.get_layer(measure).output)(images, training=False))
    means = activations.astype(np.float64).mean(axis=(0, 1, 2))
    return means, np.argsort(means, kind="stable")


@pytest.fixture(scope="module")
def fitted(bd_net, lab_data):
    clean, poisoned = lab_data
    return PruningDefense("conv_3", progress=False).fit(bd_net, clean, [poisoned])


def test_lab_plan_measures_at_pool_3_and_uses_the_incremental_method(bd_net, fitted):
    plan = plan_sweep(bd_net.model, "conv_3")
    assert plan.measure.name == "pool_3" and plan.shortcut and plan.deepid is not None
    assert fitted.method_ == "incremental"
    assert fitted.clean_predictions_.shape == (61, 250)


def test_ranking_equals_numpy_means_of_pool_3(bd_net, lab_data, fitted):
    means, ranking = reference_ranking(bd_net.model, "pool_3", lab_data[0].images)
    np.testing.assert_allclose(fitted.mean_activations_, means, rtol=1e-5, atol=1e-6)
    assert np.array_equal(fitted.ranking_, ranking)


def test_every_step_equals_the_whole_model_with_zeroed_weights(bd_net, lab_data, fitted):
    """The exactness test: the fast sweep's predictions at all 61 steps equal the straightforward method's."""
    clean, poisoned = lab_data
    images = np.concatenate([clean.images, poisoned.images])
    fast = np.concatenate([fitted.clean_predictions_, fitted.poisoned_predictions_[0]], axis=1)
    changed = 0
    for step in range(61):
        expected = whole_model_predictions(bd_net.model, "conv_3", fitted.ranking_[:step], images)
        assert np.array_equal(fast[step], expected), f"step {step}: {np.sum(fast[step] != expected)} differ"
        changed += int(np.sum(expected != fast[0]))
    assert changed > 1000  # the sweep really moves predictions (the test can fail)
    curve = fitted.curve_
    assert curve.clean_accuracy[0] > 0.6 and curve.clean_accuracy[-1] < 0.5
    np.testing.assert_allclose(curve.clean_accuracy, np.mean(fast[:, :250] == clean.labels, axis=1))
    np.testing.assert_allclose(curve.attack_success[:, 0], np.mean(fast[:, 250:] == 0, axis=1))


@pytest.mark.parametrize("method, guard", [("masked-tail", None), ("incremental", 1e12)])
def test_other_methods_and_guard_band_give_the_same_predictions(bd_net, lab_data, fitted, method, guard):
    clean, poisoned = lab_data
    kwargs = {} if guard is None else {"guard": guard}
    other = PruningDefense("conv_3", method=method, progress=False, **kwargs).fit(bd_net, clean, [poisoned])
    assert np.array_equal(other.clean_predictions_, fitted.clean_predictions_)
    assert np.array_equal(other.poisoned_predictions_[0], fitted.poisoned_predictions_[0])
    assert other.recomputed_rows_ > fitted.recomputed_rows_


def test_select_steps_both_policies():
    accuracy = np.array([0.99, 0.985, 0.97, 0.975, 0.95, 0.80])
    assert select_steps(accuracy, (2, 4, 10)) == {2: 2, 4: 4, 10: 5}
    assert select_steps(accuracy, (2, 4, 10), "last-within") == {2: 1, 4: 3, 10: 4}
    assert select_steps(accuracy, (50,)) == {50: None}
    assert select_steps(accuracy, (50,), "last-within") == {50: 5}
    assert select_steps([0.5, 0.48], (2,)) == {2: 1}  # exactly 2 points counts
    with pytest.raises(ValueError, match="policy"):
        select_steps(accuracy, (2,), "best")


def test_pruned_classifier_zeroes_exactly_the_first_channels(bd_net, fitted):
    step = fitted.selected_[2]
    assert step is not None
    pruned = fitted.pruned_classifier(step)
    assert np.array_equal(zeroed_channels(pruned.model, "conv_3"), np.sort(fitted.ranking_[:step]))
    assert [layer.name for layer in pruned.model.layers] == [layer.name for layer in bd_net.model.layers]
    assert zeroed_channels(bd_net.model, "conv_3").size == 0  # the input model is untouched


def test_peer_repaired_models_match_goodnets_evaluation(shared, bd_net, lab_data):
    """A public solution's model_X files (zeroed conv_3 channels): goodnet's masked evaluation equals theirs.

    (That the files are nested prunings which prune_model reproduces is tests/test_surgery.py's.)"""
    images = np.concatenate([lab_data[0].images[:120], lab_data[1].images[:120]])
    channel_sets, whole = [], []
    for drop in (2, 4, 10, 30):
        peer = load_model(shared / "models" / "peer_repaired" / f"lab3_B_prime_X={drop}.h5", scale="raw")
        channel_sets.append(zeroed_channels(peer.model, "conv_3"))
        whole.append(peer.predict(images))
    fast = predict_pruned(bd_net, "conv_3", channel_sets, images, progress=False)
    assert np.array_equal(fast, np.stack(whole))
    assert any(np.any(row != whole[0]) for row in whole[1:])


def tiny_model(activation="relu", skip=False, seed=3):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 10, 3))
    conv = keras.layers.Conv2D(8, 3, activation=activation, name="conv")(inputs)
    pool = keras.layers.MaxPooling2D(2, name="pool")(conv)
    flat = keras.layers.Flatten(name="flat")(pool)
    if skip:
        flat = keras.layers.Concatenate(name="skip")([flat, keras.layers.Flatten()(inputs)])
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(flat)
    outputs = keras.layers.Dense(5, activation="softmax", name="out")(hidden)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("activation, skip, method", [("relu", False, "masked-tail"),
                                                       ("sigmoid", False, "full"),
                                                       ("relu", True, "full")])
def test_any_network_is_exact_or_falls_back(activation, skip, method):
    from goodnet.models import Classifier

    model = tiny_model(activation, skip)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (60, 12, 10, 3)).astype(np.float32)
    labels = Classifier(model, "unit").predict(images)
    data = LabData(images, labels, "tiny.h5")
    defense = PruningDefense("conv", progress=False).fit(Classifier(model, "unit"), data, [data])
    assert defense.method_ == method and (method != "full" or defense.method_reason_)
    for step in (0, 3, 8):
        expected = whole_model_predictions(model, "conv", defense.ranking_[:step], images, divisor=255.0)
        assert np.array_equal(defense.clean_predictions_[step], expected)
    assert defense.curve_.clean_accuracy[0] == 1.0


def test_bad_layers_give_one_line_errors(bd_net, lab_data):
    with pytest.raises(ModelError, match="no layer named 'conv_9'.*conv_3"):
        PruningDefense("conv_9").fit(bd_net, *lab_data[:1])
    with pytest.raises(ModelError, match="'pool_3' is a MaxPooling2D, expected a convolution"):
        PruningDefense("pool_3").fit(bd_net, *lab_data[:1])
    with pytest.raises(ValueError, match="method"):
        PruningDefense(method="fast").fit(bd_net, *lab_data[:1])


def run_cli(argv, capsys):
    from goodnet.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_models_curve_and_plot(shared, lab_data, make_lab_file, tmp_path, capsys, fitted):
    clean, poisoned = lab_data
    valid = make_lab_file("valid.h5", clean.images, clean.labels)
    bd_valid = make_lab_file("bd_valid.h5", poisoned.images, poisoned.labels)
    out = tmp_path / "out"
    model = shared / "models" / "bd_net.h5"
    code, stdout, stderr = run_cli(["prune", "--model", str(model), "--valid", str(valid), "--poisoned-valid",
                                    str(bd_valid), "--out", str(out), "--scale", "raw", "--no-progress", "--json"],
                                   capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["ranking"] == fitted.ranking_.tolist()
    assert summary["selected"] == {str(drop): step for drop, step in fitted.selected_.items()}
    for drop in ("2", "4", "10"):
        assert (out / f"model_X={drop}.h5").is_file()
    assert (out / "prune_curve.png").stat().st_size > 5000
    with open(out / "prune_curve.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 61 and rows[0]["channel"] == "-1"
    np.testing.assert_allclose([float(row["clean_accuracy"]) for row in rows], fitted.curve_.clean_accuracy)
    assert json.loads((out / "prune_curve.json").read_text())["curve"][5] == summary["curve"][5]

    # plain Keras, no goodnet import, opens the saved model and it is the pruned network
    step = fitted.selected_[4]
    script = ("import sys, numpy, keras; m = keras.models.load_model(sys.argv[1], compile=False); "
              "k = m.get_layer('conv_3').get_weights(); "
              "print(sorted(int(c) for c in range(60) if not k[0][..., c].any() and k[1][c] == 0)); "
              "print('goodnet' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script, str(out / "model_X=4.h5")], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == str(sorted(fitted.ranking_[:step].tolist())) and lines[-1] == "False", result.stderr[-500:]

    code, stdout, _ = run_cli(["prune", "--model", str(model), "--valid", str(valid), "--out", str(tmp_path / "t"),
                               "--scale", "raw", "--no-progress", "--no-plot", "--policy", "last-within",
                               "--drops", "4"], capsys)
    assert code == 0 and "step" in stdout and "model_X=4" in stdout
    assert (tmp_path / "t" / "model_X=4.h5").is_file() and not (tmp_path / "t" / "prune_curve.png").exists()


def test_cli_errors_are_one_line(shared, make_lab_file, lab_data, tmp_path, capsys):
    valid = make_lab_file("valid.h5", lab_data[0].images[:20], lab_data[0].labels[:20])
    model = str(shared / "models" / "bd_net.h5")
    code, _, stderr = run_cli(["prune", "--model", model, "--valid", str(valid), "--out", str(tmp_path / "o"),
                               "--layer", "fc_1", "--scale", "raw"], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "goodnet prune: error:" in stderr and "fc_1" in stderr
    code, _, stderr = run_cli(["prune", "--model", model, "--valid", str(valid), "--out", str(tmp_path / "o"),
                               "--drops", "0"], capsys)
    assert code == 2 and "--drops" in stderr
    code, _, stderr = run_cli(["prune", "--model", model, "--valid", str(tmp_path / "missing.h5"),
                               "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_incremental_certifies_and_re_runs_the_rest_through_keras(bd_net, lab_data, fitted):
    """Both paths of the incremental method: goodnet's own certified evaluation and the Keras fallback."""
    assert fitted.certified_rows_ > 20 * max(fitted.recomputed_rows_, 1)
    clean, poisoned = lab_data
    mixed = PruningDefense("conv_3", guard=2e5, progress=False).fit(bd_net, clean, [poisoned])
    assert mixed.certified_rows_ > 1000 and mixed.recomputed_rows_ > 1000
    assert np.array_equal(mixed.clean_predictions_, fitted.clean_predictions_)
    assert np.array_equal(mixed.poisoned_predictions_[0], fitted.poisoned_predictions_[0])


def test_dense_phase_starts_where_updating_every_image_is_cheaper():
    from goodnet.defenses._sweep import _dense_phase_start

    assert _dense_phase_start(np.array([0, 0, 1, 100, 100]), 100) == 3
    assert _dense_phase_start(np.zeros(5, int), 100) == 5
    assert _dense_phase_start(np.full(5, 100), 100) == 0
    # brute force over every split point
    counts = np.array([0, 3, 40, 90, 10, 95, 100])
    costs = [1.5 * counts[:split].sum() + 100 * (len(counts) - split) for split in range(len(counts) + 1)]
    assert _dense_phase_start(counts, 100) == int(np.argmin(costs))


def test_incremental_stays_exact_when_the_running_sums_shrink():
    """A random DeepID on raw pixels: the last steps leave logits far smaller than the unpruned sums'
    float32 rounding error (every image gets the same class once all channels are pruned). The
    incremental method must still agree with the whole model at every step."""
    import keras

    from goodnet.models import Classifier, build_deepid

    keras.utils.set_random_seed(0)
    model = build_deepid(num_classes=50)
    images = np.random.default_rng(0).uniform(0, 255, (120, 55, 47, 3)).astype(np.float32)
    classifier = Classifier(model, "raw")
    data = LabData(images, classifier.predict(images), "random.h5")
    defense = PruningDefense("conv_3", progress=False).fit(classifier, data, [])
    assert defense.method_ == "incremental"
    for step in range(len(defense.ranking_) + 1):
        expected = whole_model_predictions(model, "conv_3", defense.ranking_[:step], images)
        assert np.array_equal(defense.clean_predictions_[step], expected), f"step {step}"
    assert len(np.unique(defense.clean_predictions_[-1])) == 1
