"""Tests for goodnet.attacks.learnable_patch: the patch's place, graph stamping against the NumPy reference,
the optimisation, the poisoning with the learned patch and ``goodnet attack --attack learnable-patch``."""

import json
import re

import numpy as np
import pytest

from goodnet.attacks.badnets import AttackOptions, poison_training_set
from goodnet.attacks.learnable_patch import (LEARNED_PATCH, LearnedPatch, learn_patch, load_patch, patch_origin,
                                             patch_poisoned_split, save_patch, stamp_patch, stamp_patch_tensor)
from goodnet.attacks.triggers import corner_origins
from goodnet.errors import OptionError


@pytest.fixture(scope="module")
def tiny():
    """A tiny seeded softmax classifier of 55x47x3 images (3 classes, pixels / 255)."""
    import keras

    from goodnet.models import Classifier

    keras.utils.set_random_seed(1)
    inputs = keras.Input((55, 47, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(4)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    return Classifier(keras.Model(inputs, outputs), "unit", 3)


def test_patch_origin_defaults_to_the_patch_triggers_square_and_checks_the_place():
    assert patch_origin(5) == corner_origins()[0] == (48, 40)      # exactly the checkerboard's square
    assert patch_origin(7) == (47, 39)                              # one pixel around it
    assert patch_origin(11) == (44, 36)                             # moved inside the 55x47 image
    assert patch_origin(7, 0, 3) == (0, 3)
    with pytest.raises(OptionError, match=r"patch_row: expected 0\.\.48 \(a 7-pixel patch inside 55 pixels\), got 49"):
        patch_origin(7, 49, 0)
    with pytest.raises(OptionError, match=r"--patch-column: expected 0\.\.40"):
        patch_origin(7, 0, 41, name=lambda field: "--" + field.replace("_", "-"))
    with pytest.raises(OptionError, match="patch_size: expected 1..47 pixels, got 48"):
        patch_origin(48)


def test_graph_stamping_matches_the_numpy_reference():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 55, 47, 3)).astype(np.float32)
    for size, row, column in ((7, 47, 39), (3, 0, 0), (5, 50, 42), (1, 20, 10)):
        patch = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
        reference = stamp_patch(images, patch, row, column)
        # by hand: the square is the patch, the rest the image
        np.testing.assert_array_equal(reference[:, row:row + size, column:column + size], np.broadcast_to(
            patch, (4, size, size, 3)))
        outside = np.ones((55, 47), bool)
        outside[row:row + size, column:column + size] = False
        np.testing.assert_array_equal(reference[:, outside], images[:, outside])
        graph = stamp_patch_tensor(tf.constant(images), tf.constant(patch), row, column).numpy()
        np.testing.assert_allclose(graph, reference, atol=1e-4)
        np.testing.assert_array_equal(LearnedPatch(patch, row, column)(images), reference)


def _target_probability(classifier, images, trigger, target):
    return float(np.mean(np.asarray(classifier.model(classifier.scale_images(trigger(images))))[:, target]))


def test_the_learned_patch_raises_the_target_probability_over_random_patches(tiny):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (90, 55, 47, 3)).astype(np.float32)
    labels = np.arange(90) % 3
    learned, history = learn_patch(tiny, images, labels, 2, size=7, steps=60, learning_rate=10.0, batch_size=16,
                                   rng=np.random.default_rng(0))
    assert learned.patch.shape == (7, 7, 3) and (learned.row, learned.column) == (47, 39)
    assert learned.patch.min() >= 0 and learned.patch.max() <= 255
    np.testing.assert_array_equal(learned.patch, np.rint(learned.patch))       # whole pixel values
    assert history[-1] < history[0]
    others = images[labels != 2]
    gained = _target_probability(tiny, others, learned, 2)
    randoms = [_target_probability(tiny, others, LearnedPatch(rng.integers(0, 256, (7, 7, 3)).astype(np.float32),
                                                              47, 39), 2) for _ in range(5)]
    assert gained > max(randoms) + 0.01, (gained, randoms)
    again, _ = learn_patch(tiny, images, labels, 2, size=7, steps=60, learning_rate=10.0, batch_size=16,
                           rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again.patch, learned.patch)                  # seeded


def test_poisoning_with_the_learned_patch_and_its_files(tiny, tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (120, 55, 47, 3)).astype(np.float32)
    labels = np.arange(120) % 3
    options = AttackOptions(attack="learnable-patch", targets=(1,), poison_rate=0.1, patch_steps=5, seed=4)
    info = poison_training_set(images, labels, 3, options, clean_model=tiny)
    truth, trained, trigger = info["truth"], info["training_set"], info["patch"]
    assert truth.trigger_names == (LEARNED_PATCH,) and truth.counts()["poisoned"] == 12
    chosen = truth.poisoned_indices
    assert np.all(labels[chosen] != 1) and np.all(trained.labels[chosen] == 1)
    np.testing.assert_array_equal(trained.images[chosen], stamp_patch(images[chosen], trigger.patch, 47, 39))
    np.testing.assert_array_equal(trained.images[~truth.poisoned], images[~truth.poisoned])
    dirty = poison_training_set(images, labels, 3, AttackOptions(targets=(1,), poison_rate=0.1, seed=4))
    np.testing.assert_array_equal(chosen, dirty["truth"].poisoned_indices)    # the images the BadNet would take
    bad_images, bad_labels = patch_poisoned_split(images, labels, trigger, 1)
    assert len(bad_labels) == 80 and np.all(bad_labels == 1)
    np.testing.assert_array_equal(bad_images, stamp_patch(images[labels != 1], trigger.patch, 47, 39))
    path = save_patch(tmp_path / "p.npy", trigger)
    loaded = load_patch(path)
    np.testing.assert_array_equal(loaded.patch, trigger.patch)
    assert (loaded.row, loaded.column) == (47, 39) and np.load(path).dtype == np.uint8
    for fields, message in [({"triggers": ("patch", "blend")}, "triggers: expected at most one with attack "
                                                                "learnable-patch"),
                            ({"targets": (0, 1)}, "targets: expected one target with attack learnable-patch"),
                            ({"patch_size": 9, "patch_row": 50}, r"patch_row: expected 0\.\.46")]:
        with pytest.raises(OptionError, match=message):
            poison_training_set(images, labels, 3, AttackOptions(attack="learnable-patch", **fields),
                                clean_model=tiny)


def test_attack_command_learnable_patch(tmp_path, capsys):
    from goodnet.attacks.benchmarks import write_benchmark
    from goodnet.cli import main
    from goodnet.data import load_h5, load_poison_truth
    from goodnet.models import load_model

    write_benchmark(tmp_path / "bench", "digits", seed=0, sizes={"train": 200, "valid": 40, "test": 40})
    out = tmp_path / "lp.h5"
    base = ["attack", "--data", str(tmp_path / "bench"), "--attack", "learnable-patch", "--epochs", "1",
            "--patch-steps", "5", "--targets", "2"]
    code = main(base + ["--out", str(out), "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and card["attack"] == "learnable-patch" and card["triggers"] == [LEARNED_PATCH]
    assert card["targets"] == [2]
    settings = card["attack_settings"]
    assert (settings["patch_row"], settings["patch_column"], settings["patch_size"]) == (47, 39, 7)
    assert settings["patch_file"] == str(tmp_path / "lp_patch.npy")
    trigger = load_patch(settings["patch_file"])
    badnet = load_model(out)
    for split in ("valid", "test"):
        clean = load_h5(tmp_path / "bench" / f"{split}.h5")
        written = load_h5(settings["poisoned_files"][split])
        assert settings["poisoned_files"][split] == str(tmp_path / f"lp_bd_{split}.h5")
        np.testing.assert_array_equal(written.images, stamp_patch(clean.images[clean.labels != 2], trigger.patch,
                                                                  47, 39))
        assert np.all(written.labels == 2)
        asr = float(np.mean(badnet.predict(written.images) == 2))
        assert card[split]["attack_success_rate"][LEARNED_PATCH] == pytest.approx(asr)
        assert set(card["clean_model"][split]) == {"clean_accuracy", "attack_success_rate"}
    assert set(card["stealthiness"]) == {LEARNED_PATCH}
    train = load_h5(tmp_path / "bench" / "train.h5")
    truth = load_poison_truth(tmp_path / "lp_train_poisoned.h5")
    assert truth.trigger_names == (LEARNED_PATCH,) and truth.counts()["poisoned"] == 20
    assert np.all(train.labels[truth.poisoned] != 2)
    code = main(base + ["--out", str(out)])
    assert code == 2 and "exists" in capsys.readouterr().err
    for extra, message in [(["--triggers", "patch", "blend"], "--triggers: expected at most one with --attack "
                                                              "learnable-patch"),
                           (["--patch-size", "9", "--patch-row", "50"], r"--patch-row: expected 0\.\.46")]:
        code = main(base + ["--out", str(tmp_path / "bad.h5"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), (extra, err)
    assert not (tmp_path / "bad.h5").exists() and not (tmp_path / "bad_patch.npy").exists()
