"""Tests for goodnet.attacks.clean_label: PGD (graph against the loop reference, the budget), the reduced trigger,
the label-consistent poisoning, its options and ``goodnet attack --attack clean-label``."""

import json
import re

import numpy as np
import pytest

from goodnet.attacks.badnets import AttackOptions, poison_training_set
from goodnet.attacks.clean_label import clean_label_poison, cross_entropy, pgd_linf, reduced_trigger
from goodnet.attacks.triggers import apply_trigger
from goodnet.errors import OptionError


@pytest.fixture(scope="module")
def tiny():
    """A tiny seeded softmax classifier of 55x47x3 images (3 classes, pixels / 255)."""
    import keras

    from goodnet.models import Classifier

    keras.utils.set_random_seed(0)
    inputs = keras.Input((55, 47, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(4)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    return Classifier(keras.Model(inputs, outputs), "unit", 3)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (8, 55, 47, 3)).astype(np.float32), np.arange(8) % 3


def _loss(classifier, images, labels):
    scores = classifier.model(classifier.scale_images(images), training=False)
    return np.asarray(cross_entropy(scores, labels, False))


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_graph_matches_the_loop_reference(tiny, images, random_start):
    x, y = images
    graph = pgd_linf(tiny, x, y, 8.0, 1.5, 6, random_start, np.random.default_rng(1), batch_size=3)   # 3 chunks
    loop = pgd_linf(tiny, x, y, 8.0, 1.5, 6, random_start, np.random.default_rng(1), method="loop")
    np.testing.assert_allclose(graph, loop, atol=1e-4)
    assert np.abs(graph - x).max() > 1.0      # it moved


def test_pgd_respects_the_budget_and_the_pixel_range_and_raises_the_loss(tiny, images):
    x, y = images
    assert x.min() == 0 and x.max() == 255     # pixels at both ends: the [0, 255] clip matters
    for random_start in (False, True):
        hard = pgd_linf(tiny, x, y, 8.0, 3.0, 10, random_start, np.random.default_rng(2))
        assert np.abs(hard - x).max() <= 8.0 + 1e-4
        assert hard.min() >= 0.0 and hard.max() <= 255.0
        assert np.all(_loss(tiny, hard, y) > _loss(tiny, x, y))
    np.testing.assert_array_equal(pgd_linf(tiny, x, y, 8.0, 1.5, 0), x)                # no step: the start
    np.testing.assert_array_equal(pgd_linf(tiny, x, y, 0.0, 1.5, 5), x)                # no budget
    with pytest.raises(OptionError, match="rng: expected a NumPy Generator"):
        pgd_linf(tiny, x, y, 8.0, 1.5, 2, random_start=True)
    with pytest.raises(OptionError, match="method: expected one of graph, loop"):
        pgd_linf(tiny, x, y, method="fast")


def test_reduced_trigger_is_the_blend_of_the_image_and_its_triggered_copy(images):
    x = images[0]
    np.testing.assert_array_equal(reduced_trigger("corners", x, 1.0), apply_trigger("corners", x))
    expected = x + 0.25 * (apply_trigger("corners", x) - x)       # by hand: only the corner squares change
    np.testing.assert_allclose(reduced_trigger("corners", x, 0.25), expected, atol=1e-4)
    changed = np.any(reduced_trigger("corners", x, 0.25) != x, axis=(0, 3))
    assert changed[2:7, 2:7].any() and not changed[20:30, 20:30].any()
    for amplitude in (0.0, 1.5):
        with pytest.raises(OptionError, match=r"trigger_amplitude: expected a number in \(0, 1\]"):
            reduced_trigger("corners", x, amplitude)


def test_clean_label_poison_keeps_the_labels_and_poisons_the_target_class_only(tiny):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (60, 55, 47, 3)).astype(np.float32)
    y = np.arange(60) % 3                                        # 20 images per class
    options = AttackOptions(attack="clean-label", pgd_steps=4, trigger_amplitude=0.5)
    poisoned, labels, chosen, triggers, report = clean_label_poison(x, y, [("corners", 2)], 0.25, tiny, options,
                                                                    np.random.default_rng(7))
    assert len(chosen) == 5 and np.all(y[chosen] == 2) and np.all(triggers == 0)
    np.testing.assert_array_equal(labels, y)
    untouched = np.setdiff1d(np.arange(60), chosen)
    np.testing.assert_array_equal(poisoned[untouched], x[untouched])
    # the reference: the same draws, the loop PGD, then the reduced trigger
    again = np.random.default_rng(7)
    expected_chosen = np.sort(again.choice(np.flatnonzero(y == 2), size=5, replace=False))
    np.testing.assert_array_equal(chosen, expected_chosen)
    hard = pgd_linf(tiny, x[chosen], y[chosen], 8.0, 1.5, 4, method="loop")
    np.testing.assert_allclose(poisoned[chosen], reduced_trigger("corners", hard, 0.5), atol=1e-4)
    entry = report["corners"]
    assert entry["images"] == 5 and entry["of_target_class"] == 20
    assert entry["perturbation"]["linf"] <= 8.0 + 1e-4 and entry["training_poison"]["linf"] > 8.0
    assert entry["training_poison"]["psnr"] < entry["perturbation"]["psnr"]


def test_poison_training_set_clean_label_ground_truth_and_refused_combinations(tiny):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (90, 55, 47, 3)).astype(np.float32)
    y = np.arange(90) % 3
    options = AttackOptions(attack="clean-label", triggers=("corners", "patch"), targets=(1, 2), poison_rate=0.5,
                            pgd_steps=2)
    info = poison_training_set(x, y, 3, options, clean_model=tiny)
    truth, trained = info["truth"], info["training_set"]
    assert info["clean_model"] is tiny and truth.trigger_names == ("corners", "patch")
    assert truth.counts()["per_trigger"] == {"corners": 15, "patch": 15} and not truth.flipped.any()
    np.testing.assert_array_equal(trained.labels, y)                # clean-label: every label kept
    for index, target in enumerate((1, 2)):
        assert np.all(y[truth.trigger == index] == target)
    np.testing.assert_array_equal(trained.images[~truth.poisoned], x[~truth.poisoned])
    assert np.all(np.any(trained.images[truth.poisoned] != x[truth.poisoned], axis=(1, 2, 3)))
    refused = [({"pruning_aware": True}, "pruning_aware: expected none with attack clean-label"),
               ({"flip_rate": 0.1}, "flip_rate: expected none"),
               ({"targeted_flip_rate": 0.2, "flip_source": 1, "flip_target": 2}, "targeted_flip_rate: expected none"),
               ({"triggers": ()}, "triggers: expected at least one trigger with attack clean-label")]
    for fields, message in refused:
        with pytest.raises(OptionError, match=message):
            poison_training_set(x, y, 3, AttackOptions(attack="clean-label", **fields), clean_model=tiny)


def test_attack_command_clean_label(tmp_path, capsys):
    from goodnet.attacks.benchmarks import write_benchmark
    from goodnet.cli import main
    from goodnet.data import load_h5, load_poison_truth

    write_benchmark(tmp_path / "bench", "digits", seed=0, sizes={"train": 200, "valid": 40, "test": 40},
                    triggers=("corners",))
    clean = load_h5(tmp_path / "bench" / "train.h5")
    out = tmp_path / "cl.h5"
    base = ["attack", "--data", str(tmp_path / "bench"), "--attack", "clean-label", "--epochs", "1"]
    code = main(base + ["--out", str(out), "--poison-rate", "0.5", "--pgd-steps", "3", "--trigger-amplitude", "0.5",
                        "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and card["attack"] == "clean-label" and card["triggers"] == ["corners"] and card["targets"] == [0]
    settings = card["attack_settings"]
    assert settings["poison_rate_of"] == "target class" and settings["trigger_amplitude"] == 0.5
    assert settings["pgd"] == {"norm": "linf", "pixels": "0-255", "epsilon": 8.0, "step": 1.5, "steps": 3,
                               "random_start": False}
    targets = int(np.sum(clean.labels == 0))
    poison = card["training_poison"]["corners"]
    assert poison["images"] == round(0.5 * targets) == card["poisoned_training_images"]
    assert set(poison["training_poison"]) == {"psnr", "ssim", "l2", "linf"} and poison["perturbation"]["linf"] <= 8.0
    for split in ("valid", "test"):
        assert 0 <= card[split]["attack_success_rate"]["corners"] <= 1
        assert set(card["clean_model"][split]) == {"clean_accuracy", "attack_success_rate"}
    assert set(card["stealthiness"]) == {"corners"}
    truth, written = load_poison_truth(tmp_path / "cl_train_poisoned.h5"), load_h5(tmp_path / "cl_train_poisoned.h5")
    assert truth.trigger_names == ("corners",) and truth.counts()["poisoned"] == poison["images"]
    assert np.all(clean.labels[truth.poisoned] == 0)
    np.testing.assert_array_equal(written.labels, clean.labels)
    np.testing.assert_array_equal(written.images[~truth.poisoned], clean.images[~truth.poisoned])
    for extra, message in [(["--pruning-aware"], "--pruning-aware: expected none with --attack clean-label"),
                           (["--flip-rate", "0.1"], "--flip-rate: expected none with --attack clean-label"),
                           (["--trigger-amplitude", "0"], r"--trigger-amplitude: expected a number in \(0, 1\]"),
                           (["--triggers"], "--triggers: expected at least one trigger with --attack clean-label"),
                           (["--triggers", "patch"], "bd_valid_patch.h5: missing; run goodnet synth")]:
        code = main(base + ["--out", str(tmp_path / "bad.h5"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (extra, err)
        assert re.search(message, err), (extra, err)
    assert not (tmp_path / "bad.h5").exists()
