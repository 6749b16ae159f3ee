"""Tests for goodnet.training: the DeepID recipe (seeded, saved and reloaded, learns a tiny task), its options
(the attack's restate them) and its progress callback."""

import dataclasses

import numpy as np
import pytest

from goodnet.errors import DataError, OptionError
from goodnet.training import (TrainOptions, epoch_progress, own_seed_stream, recipe_field, seed_everything,
                              train_deepid)
from square_task import coloured_squares


def weights(classifier):
    return [np.array(value) for value in classifier.model.get_weights()]


@pytest.fixture(scope="module")
def squares():
    train = coloured_squares(30, (10, 10), seed=0, classes=3)
    valid = coloured_squares(10, (10, 10), seed=1, classes=3)
    return train, valid


@pytest.fixture(scope="module")
def trained(squares):
    (images, labels), _ = squares
    return train_deepid(images, labels, 3, TrainOptions(epochs=3, batch_size=16, seed=5))


def test_a_tiny_task_is_learned_and_the_model_has_the_lab_layout(trained, squares):
    _, (valid_images, valid_labels) = squares
    assert trained.scale == "unit" and trained.num_classes == 3
    assert [layer.name for layer in trained.model.layers if layer.name.startswith("conv")] == \
        ["conv_1", "conv_2", "conv_3", "conv_4"]
    assert np.mean(trained.predict(valid_images) == valid_labels) >= 0.9


def test_the_saved_model_loads_and_predicts_the_same(trained, squares, tmp_path):
    from goodnet.models import load_model, save_model

    _, (valid_images, _) = squares
    path = save_model(trained, tmp_path / "model.h5")
    loaded = load_model(path)
    assert loaded.scale == "unit" and loaded.num_classes == 3
    np.testing.assert_allclose(loaded.predict_proba(valid_images), trained.predict_proba(valid_images), atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(valid_images), trained.predict(valid_images))


def test_same_seed_same_weights_other_seed_other_weights(squares):
    (images, labels), _ = squares
    options = TrainOptions(epochs=1, batch_size=32, seed=3)
    first = weights(train_deepid(images, labels, 3, options))
    again = weights(train_deepid(images, labels, 3, options))
    other = weights(train_deepid(images, labels, 3, dataclasses.replace(options, seed=4)))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_the_attack_trains_with_this_recipe(squares):
    """Retraining the poisoned set a BadNet was trained on, with its seed, gives the BadNet's weights bit for bit."""
    from goodnet.attacks.badnets import AttackOptions, train_badnet

    (images, labels), _ = squares
    attack = AttackOptions(triggers=("patch", "blend"), targets=(0, 1), poison_rate=0.1, flip_rate=0.1, epochs=1,
                           batch_size=16, seed=7)
    badnet, info = train_badnet(images, labels, 3, attack)
    retrained = train_deepid(info["training_set"].images, info["training_set"].labels, 3,
                             TrainOptions(epochs=1, batch_size=16, seed=7))
    assert all(np.array_equal(a, b) for a, b in zip(weights(badnet), weights(retrained)))


def test_attack_options_restate_train_options_once():
    from goodnet.attacks.badnets import AttackOptions

    attack = {field.name: field for field in dataclasses.fields(AttackOptions)}
    for field in dataclasses.fields(TrainOptions):
        assert attack[field.name].default == field.default
        assert attack[field.name].metadata["rules"] == field.metadata["rules"]
    assert attack["seed"].metadata["help"] != TrainOptions.__dataclass_fields__["seed"].metadata["help"]
    assert attack["epochs"].metadata["help"] == TrainOptions.__dataclass_fields__["epochs"].metadata["help"]

    @dataclasses.dataclass(frozen=True)
    class Other:
        epochs: int = recipe_field("epochs", "other help")

    assert Other().epochs == TrainOptions.epochs
    assert Other.__dataclass_fields__["epochs"].metadata["help"] == "other help"


def test_progress_reports_one_line_per_epoch(squares):
    (images, labels), _ = squares
    lines = []
    train_deepid(images[:40], labels[:40], 3, TrainOptions(epochs=2, batch_size=20),
                 callbacks=[epoch_progress(2, report=lines.append)])
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ") and lines[1].startswith("epoch 2/2: loss ")


def test_bad_options_and_data_are_one_line_errors(squares):
    (images, labels), _ = squares
    with pytest.raises(OptionError, match="epochs: expected an integer >= 1, got 0"):
        train_deepid(images, labels, 3, TrainOptions(epochs=0))
    with pytest.raises(DataError, match=r"labels: expected class labels in 0..1, found 2"):
        train_deepid(images, labels, 2, TrainOptions(epochs=1))
    with pytest.raises(DataError, match="labels: expected one label per image"):
        train_deepid(images, labels[:-1], 3, TrainOptions(epochs=1))
    with pytest.raises(DataError, match="labels: expected integer class labels"):
        train_deepid(images, labels.astype(np.float32), 3, TrainOptions(epochs=1))
    with pytest.raises(DataError, match="images: expected a non-empty array"):
        train_deepid(images[:0], labels[:0], 3, TrainOptions(epochs=1))
    with pytest.raises(OptionError, match="num_classes: expected an integer >= 2"):
        train_deepid(images, labels * 0, 1, TrainOptions(epochs=1))


def _initial_weights():
    import keras

    return keras.initializers.GlorotUniform()((4, 3)).numpy()   # unseeded: Keras draws the seed itself


def test_own_seed_stream_gives_a_plain_process_seeds_whatever_other_code_draws_meanwhile():
    import random

    seed_everything(5)
    plain = [_initial_weights(), _initial_weights()]
    with own_seed_stream(0):
        seed_everything(5)
        first = _initial_weights()
        random.random(), random.sample(range(100), 10)   # another thread's draws from the global stream
        second = _initial_weights()
    np.testing.assert_array_equal(first, plain[0])
    np.testing.assert_array_equal(second, plain[1])
    # without the own stream, the same draws change the next initializer's seed
    seed_everything(5)
    _initial_weights()
    random.random(), random.sample(range(100), 10)
    assert not np.array_equal(_initial_weights(), plain[1])
    # restored on exit: Keras draws from the global stream again
    from keras.src.random import seed_generator

    assert seed_generator.python_random is random
