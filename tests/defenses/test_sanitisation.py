"""Sanitisation: the isolation forest on features is scikit-learn's, per class or global; the transforms match
their per-image references (scipy.ndimage, plain loops)."""

import numpy as np
import pytest

from goodnet.defenses import sanitisation
from goodnet.defenses.sanitisation import IsolationSanitiser, TransformOptions, sanitise_images


def _features(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([4, 9, 2], [60, 50, 5])
    values = rng.normal(0, 1, (len(labels), 6))
    values[[3, 70]] += 12.0                                   # one far outlier in each of the two large classes
    order = rng.permutation(len(labels))
    return values[order], labels[order], np.isin(order, [3, 70])


def test_per_class_forests_are_scikit_learn_forests_on_each_class():
    from sklearn.ensemble import IsolationForest

    values, labels, outliers = _features()
    sanitiser = IsolationSanitiser(per_class=True, seed=3).fit(values, labels=labels)
    for label in (4, 9):
        members = np.flatnonzero(labels == label)             # file indices
        forest = IsolationForest(n_estimators=100, contamination="auto", random_state=3).fit(values[members])
        np.testing.assert_allclose(sanitiser.scores_[members], -forest.score_samples(values[members]))
        np.testing.assert_array_equal(np.isin(members, sanitiser.flagged_), forest.predict(values[members]) == -1)
    assert np.isnan(sanitiser.scores_[labels == 2]).all()     # 5 samples: fewer than min_class_size
    assert set(np.flatnonzero(outliers)) <= set(sanitiser.flagged_.tolist())
    assert (sanitiser.scores_[outliers] > 0.6).all()


def test_the_global_forest_and_a_fixed_contamination():
    from sklearn.ensemble import IsolationForest

    values, labels, outliers = _features()
    sanitiser = IsolationSanitiser(contamination=0.017).fit(values, labels=labels)
    forest = IsolationForest(n_estimators=100, contamination=0.017, random_state=0).fit(values)
    np.testing.assert_allclose(sanitiser.scores_, -forest.score_samples(values))
    np.testing.assert_array_equal(sanitiser.flagged_, np.flatnonzero(forest.predict(values) == -1))
    np.testing.assert_array_equal(sanitiser.flagged_, np.flatnonzero(outliers))
    verdict = {row["class"]: row for row in sanitiser.class_verdict_}
    assert verdict[4]["flagged"] == 1 and verdict[9]["flagged"] == 1 and verdict[2]["flagged"] == 0
    assert sanitiser.summary()["flagged"] == 2


def test_blur_rotation_and_jitter_match_their_references():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (5, 55, 47, 3))
    sigmas = np.array([0.0, 0.4, 0.8, 0.8, 1.7])
    np.testing.assert_allclose(sanitisation.gaussian_blur(images, sigmas),
                               sanitisation.gaussian_blur_reference(images, sigmas), atol=1e-9)
    angles = np.array([0.0, 3.0, -9.5, 90.0, 180.0])
    np.testing.assert_allclose(sanitisation.rotate(images, angles), sanitisation.rotate_reference(images, angles),
                               atol=1e-8)
    np.testing.assert_allclose(sanitisation.rotate(images[:1], 0.0), images[:1], atol=1e-9)
    quarter = sanitisation.rotate(images[:1, :47, :47], 90.0)[0]
    np.testing.assert_allclose(quarter, np.rot90(images[0, :47, :47]), atol=1e-8)   # counter-clockwise
    factors = [np.array([1.0, 0.8, 1.2]), np.array([1.0, 1.2, 0.9]), np.array([1.0, 0.7, 1.3])]
    small = images[:3, :9, :7]
    jittered = sanitisation.colour_jitter(small, *factors)
    np.testing.assert_allclose(jittered, sanitisation.colour_jitter_reference(small, *factors), atol=1e-9)
    np.testing.assert_allclose(jittered[0], small[0], atol=1e-9)                # factors 1: unchanged
    assert jittered.min() >= 0 and jittered.max() <= 255


def test_sanitised_images_are_the_same_whole_or_chunk_by_chunk_and_change_a_patch():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (6, 55, 47, 3)).astype(np.float32)
    options = TransformOptions()
    whole = sanitise_images(images, options, seed=4)
    parameters = sanitisation.transform_parameters(6, options, seed=4)
    parts = [sanitise_images(images[start:start + 4], options,
                             parameters={key: value[start:start + 4] for key, value in parameters.items()})
             for start in (0, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    reference = sanitise_images(images[:2], options, parameters={key: value[:2] for key, value in parameters.items()},
                                method="reference")
    np.testing.assert_allclose(reference, whole[:2], atol=1e-3)
    assert whole.dtype == np.float32 and not np.array_equal(whole, images)
    off = TransformOptions(blur_sigma=0.0, max_rotation=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
    np.testing.assert_allclose(sanitise_images(images, off, seed=1), images, atol=1e-3)
    patched = np.zeros((1, 55, 47, 3), np.float32)
    patched[0, -6:, -6:] = 255.0                                             # a pixel-aligned patch trigger
    blurred = sanitise_images(patched, TransformOptions(transforms=("blur",), blur_sigma=1.0),
                              parameters={"sigma": np.array([1.0])})
    assert blurred[0, -6:, -6:].min() < 200 and blurred[0, -8, -8].max() > 0


def test_parameters_are_checked():
    from goodnet.errors import OptionError

    values, labels, _ = _features()
    with pytest.raises(OptionError, match="contamination"):
        IsolationSanitiser(contamination=0.9).fit(values, labels=labels)
    with pytest.raises(OptionError, match="n_estimators"):
        IsolationSanitiser(n_estimators=0).fit(values, labels=labels)
