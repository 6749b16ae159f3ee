"""Tests for goodnet.defenses.unlearning: the trigger search and stamping used by fine-pruning's unlearning."""

import keras
import numpy as np
import pytest

from goodnet.models import build_deepid
from goodnet.defenses.unlearning import TriggerSearch, stamp
from square_task import coloured_squares


def test_stamp_matches_a_pixel_by_pixel_reference():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 6, 5, 3)).astype(np.float32)
    mask = rng.uniform(0, 1, (6, 5, 1)).astype(np.float32)
    pattern = rng.uniform(0, 255, (6, 5, 3)).astype(np.float32)
    stamped = stamp(images, mask, pattern)
    for n in range(3):
        for row in range(6):
            for column in range(5):
                for channel in range(3):
                    weight = mask[row, column, 0]
                    expected = (1 - weight) * images[n, row, column, channel] + weight * pattern[row, column, channel]
                    assert stamped[n, row, column, channel] == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def backdoored():
    """A small model that learned: a white 6x6 corner square means class 0, whatever else the image shows."""
    images, labels = coloured_squares(40, corner=(15, 12), seed=1)
    poisoned = images[labels != 0][:80].copy()
    poisoned[:, 45:51, 37:43, :] = 255.0
    train_images = np.concatenate([images, poisoned])
    train_labels = np.concatenate([labels, np.zeros(len(poisoned), np.int64)])
    keras.utils.set_random_seed(1)
    model = build_deepid(4)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(train_images / 255.0, train_labels, epochs=12, batch_size=32, verbose=0)
    return model, images, labels


def _loss(model, images, labels):
    outputs = model.predict(images / 255.0, verbose=0)
    return float(np.mean(-np.log(outputs[np.arange(len(labels)), labels] + 1e-12)))


def test_search_finds_a_small_patch_that_hurts_the_model_and_warm_starts(backdoored):
    model, images, labels = backdoored
    before = [weights.copy() for weights in model.get_weights()]
    search = TriggerSearch(area=0.05, steps=40, seed=3).fit(model, images, labels, divisor=255.0)
    assert search.mask_.shape == (55, 47, 1) and search.pattern_.shape == (55, 47, 3)
    assert 0 <= search.mask_.min() and search.mask_.max() <= 1 and search.mask_.mean() <= 0.05 + 1e-4
    assert 0 <= search.pattern_.min() and search.pattern_.max() <= 255
    clean_loss = _loss(model, images, labels)
    stamped_loss = _loss(model, stamp(images, search.mask_, search.pattern_), labels)
    assert stamped_loss > clean_loss + 1.0     # the recovered patch misleads the model
    for weights, saved in zip(model.get_weights(), before):   # the model itself is untouched
        np.testing.assert_array_equal(weights, saved)
    mask = search.mask_.copy()
    search.fit(model, images, labels, divisor=255.0)          # continues from where it stopped
    assert not np.array_equal(mask, search.mask_)
    again = TriggerSearch(area=0.05, steps=40, seed=3).fit(model, images, labels, divisor=255.0)
    np.testing.assert_allclose(again.mask_, mask, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="area"):
        TriggerSearch(area=0.0).fit(model, images, labels)
