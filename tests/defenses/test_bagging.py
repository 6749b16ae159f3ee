"""Bagging: the samples (bootstrap and subsets, seeded), members trained with goodnet's recipe on their own
sample, the averaging head against the NumPy mean, and the ensemble saved as one plain Keras model."""

import numpy as np
import pytest

from goodnet.defenses.bagging import Bagging, BaggingOptions, average_reference, bootstrap_samples
from goodnet.errors import DataError, OptionError
from goodnet.training import TrainOptions
from square_task import coloured_squares


def test_bootstrap_samples_are_seeded_and_sized():
    samples = bootstrap_samples(200, 4, 0.5, True, seed=3)
    assert len(samples) == 4 and all(len(sample) == 100 for sample in samples)
    assert any(len(np.unique(sample)) < 100 for sample in samples)          # with replacement: repeats
    assert all(np.all(np.diff(sample) >= 0) and sample.min() >= 0 and sample.max() < 200 for sample in samples)
    for mine, again in zip(samples, bootstrap_samples(200, 4, 0.5, True, seed=3)):
        np.testing.assert_array_equal(mine, again)
    assert not np.array_equal(samples[0], bootstrap_samples(200, 4, 0.5, True, seed=4)[0])
    halves = bootstrap_samples(200, 3, 0.5, False, seed=3)
    assert all(len(np.unique(sample)) == 100 for sample in halves)          # without: random halves
    assert len(bootstrap_samples(7, 2, 0.3, True, seed=0)[0]) == 2          # round(0.3 x 7)
    with pytest.raises(OptionError, match="sample_fraction"):
        bootstrap_samples(3, 2, 0.1, True, seed=0)


def test_member_epochs_match_the_single_model_s_image_passes():
    from goodnet.defenses._ensemble import member_epochs

    assert member_epochs(8, 0.5) == 16 and member_epochs(8, 0.1) == 80 and member_epochs(8, 1 / 3) == 24
    assert member_epochs(3, 0.4) == 8 and member_epochs(8, 1.0) == 8 and member_epochs(8, 0.5, False) == 8


def test_average_reference_is_the_mean():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=(3, 5))
    np.testing.assert_allclose(average_reference(probabilities), probabilities.mean(axis=0))


@pytest.fixture(scope="module")
def data():
    return coloured_squares(10, (5, 5), seed=0, classes=3)


@pytest.fixture(scope="module")
def fitted(data):
    images, labels = data
    return Bagging(models=2, sample_fraction=0.6, recipe=TrainOptions(epochs=1, batch_size=8, seed=5),
                   progress=False).fit(images, labels, 3)


def test_members_are_the_recipe_on_their_own_sample(fitted, data):
    from goodnet.training import train_deepid

    images, labels = data
    expected = bootstrap_samples(30, 2, 0.6, True, seed=5)
    for subset, want in zip(fitted.subsets_, expected):
        np.testing.assert_array_equal(subset, want)
    # member 1 is train_deepid on its sample with seed 5 + 1 for ceil(1 / 0.6) epochs, weight for weight
    assert fitted.member_epochs_ == 2
    alone = train_deepid(images[expected[1]], labels[expected[1]], 3, TrainOptions(epochs=2, batch_size=8, seed=6))
    for mine, theirs in zip(fitted.members_[1].model.get_weights(), alone.model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    summary = fitted.summary()
    assert summary["members"] == 2 and summary["member_images"] == [18, 18] and len(summary["member_seconds"]) == 2
    assert summary["member_epochs"] == 2
    assert summary["distinct_images"] == [len(np.unique(subset)) for subset in expected]


def test_the_head_averages_the_members_and_the_saved_model_predicts_the_same(fitted, data, tmp_path):
    import keras

    from goodnet.keras2 import obstacle
    from goodnet.models import load_model, save_model

    images, _ = data
    probabilities = fitted.predict_proba(images)
    np.testing.assert_allclose(probabilities, fitted.predict_proba_reference(images), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(fitted.predict(images), probabilities.argmax(axis=1))
    assert obstacle(fitted.ensemble_.model) is None
    path = save_model(fitted.ensemble_, str(tmp_path / "bagged.h5"))
    loaded = load_model(path)
    assert loaded.scale == "unit" and loaded.num_classes == 3
    np.testing.assert_array_equal(loaded.predict_proba(images), probabilities)
    plain = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(plain.predict(images / np.float32(255), verbose=0), probabilities, atol=1e-6)


def test_options_and_errors(data):
    images, labels = data
    assert Bagging.from_options(BaggingOptions(models=3)).get_params()["models"] == 3
    with pytest.raises(OptionError, match="sample_fraction"):
        Bagging(sample_fraction=0.0).fit(images, labels, 3)
    with pytest.raises(OptionError, match="bootstrap"):
        Bagging(bootstrap="yes").fit(images, labels, 3)
    with pytest.raises(OptionError, match="recipe"):
        Bagging(recipe={"epochs": 1}).fit(images, labels, 3)
    with pytest.raises(DataError, match="labels in 0..1"):
        Bagging(models=1).fit(images, labels, 2)
