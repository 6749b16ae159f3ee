"""DP-SGD: clipping, noise, Poisson sampling, the vectorised path against the per-example loop, the accounting."""

import dataclasses

import numpy as np
import pytest

from goodnet.defenses.dp_sgd import (DPSGD, DPSGDOptions, PrivateGradient, _epoch_ends, clip_factors,
                                     poisson_sample)
from goodnet.errors import OptionError
from goodnet.privacy import PrivacyOptions, noise_for_epsilon, privacy_budget
from goodnet.training import TrainOptions
from square_task import coloured_squares


def _tiny_model(seed=0, classes=5):
    """A small conv net (the per-example gradient of a convolution is the hard part to vectorise)."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(classes, activation="softmax")])


def _tiny_batch(count, seed=1, classes=5):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (count, 8, 8, 3)).astype(np.float32), rng.integers(0, classes, count)


def _tape_gradients(model, inputs, labels):
    """Per-example gradients one tape at a time, float64 NumPy, flattened: (n, parameters)."""
    import keras
    import tensorflow as tf

    rows = []
    for image, label in zip(inputs, labels):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(label[None], model(image[None]))[0]
        rows.append(np.concatenate([np.asarray(g, np.float64).ravel()
                                    for g in tape.gradient(loss, model.trainable_variables)]))
    return np.stack(rows)


def _flat(gradients):
    return np.concatenate([np.asarray(g, np.float64).ravel() for g in gradients])


# -- options ---------------------------------------------------------------------------------------------------


def test_options_restate_the_privacy_and_training_defaults():
    options, privacy, train = DPSGDOptions(), PrivacyOptions(), TrainOptions()
    for name in ("noise_multiplier", "delta", "batch_size", "epochs", "orders"):
        assert getattr(options, name) == getattr(privacy, name), name
    assert options.seed == train.seed
    assert DPSGD().get_params() == {**dataclasses.asdict(options), "method": "vectorized", "chunk_size": 32,
                                    "progress": None}
    assert DPSGD.from_options(DPSGDOptions(clip_norm=2.0)).clip_norm == 2.0


# -- clipping, noise, sampling -----------------------------------------------------------------------------------


def test_clip_factors():
    np.testing.assert_array_equal(clip_factors([0.0, 0.5, 1.0, 4.0], 1.0), [1.0, 1.0, 1.0, 0.25])


def test_clipping_against_numpy():
    model = _tiny_model()
    inputs, labels = _tiny_batch(7)
    raw = _tape_gradients(model, inputs, labels)
    norms = np.linalg.norm(raw, axis=1)
    clip = float(np.median(norms))                 # some examples above the clipping norm, some below
    assert (norms > clip * 1.01).sum() >= 2 and (norms < clip * 0.99).sum() >= 2
    private = PrivateGradient(model, clip, 0.0, 1, chunk_size=4)   # no noise, divisor 1: the clipped sum
    for index in range(len(labels)):                                # one example at a time: its clipped gradient
        gradients, _, reported = private(inputs[index:index + 1], labels[index:index + 1])
        clipped = _flat(gradients)
        assert reported[0] == pytest.approx(norms[index], rel=1e-5)
        assert np.linalg.norm(clipped) <= clip * (1 + 1e-6)
        if norms[index] <= clip:
            np.testing.assert_allclose(clipped, raw[index], rtol=1e-5, atol=1e-7)   # unchanged below C
        else:
            assert np.linalg.norm(clipped) == pytest.approx(clip, rel=1e-6)
            np.testing.assert_allclose(clipped, raw[index] * clip / norms[index], rtol=1e-5, atol=1e-7)
    gradients, _, _ = private(inputs, labels)       # 7 examples over two chunks of 4 (the last one padded)
    expected = (raw * clip_factors(norms, clip)[:, None]).sum(axis=0)
    np.testing.assert_allclose(_flat(gradients), expected, rtol=1e-5, atol=1e-6)


def test_noise_has_the_stated_standard_deviation():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(400, activation="softmax")])   # 400,400 weights
    sigma, clip, batch = 1.3, 0.7, 50
    private = PrivateGradient(model, clip, sigma, batch, seed=3)
    first = _flat(private(np.zeros((0, 1000), np.float32), np.zeros(0, np.int64))[0])   # no example: noise / B
    second = _flat(private(np.zeros((0, 1000), np.float32), np.zeros(0, np.int64))[0])
    expected = sigma * clip / batch
    # Fixed seed; n = 400,400 draws: the sample std's standard error is expected / sqrt(2n) (0.11 %), the bound 1 %.
    for noise in (first, second):
        assert noise.std() == pytest.approx(expected, rel=0.01)
        assert abs(noise.mean()) < 5 * expected / np.sqrt(noise.size)
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.01       # every step draws new noise


def test_poisson_sampling_rate():
    rng = np.random.default_rng(0)
    examples, q, draws = 200, 0.1, 3000
    included = np.zeros(examples)
    sizes = []
    for _ in range(draws):
        batch = poisson_sample(rng, examples, q)
        assert np.all(np.diff(batch) > 0)
        included[batch] += 1
        sizes.append(len(batch))
    sizes = np.asarray(sizes)
    # Binomial(200, 0.1): mean 20, variance 18; bounds of about 5 standard errors.
    assert sizes.mean() == pytest.approx(20.0, abs=5 * np.sqrt(18 / draws))
    assert sizes.var() == pytest.approx(18.0, rel=0.15)
    assert np.all(np.abs(included / draws - q) < 5 * np.sqrt(q * (1 - q) / draws))   # each example at rate q


def test_epoch_ends():
    assert _epoch_ends(10, 4, 2.5) == {3: 1.0, 5: 2.0, 7: 2.5}
    assert _epoch_ends(100, 10, 0.25) == {3: 0.25}


# -- the vectorised path against the loop ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 3, 9])
def test_vectorized_and_loop_give_the_same_update(count):
    import keras
    import tensorflow as tf

    inputs, labels = _tiny_batch(count)
    results = {}
    for method in ("vectorized", "loop"):
        model = _tiny_model()
        private = PrivateGradient(model, 0.5, 1.1, 6, seed=4, method=method, chunk_size=4)
        gradients, losses, norms = private(inputs, labels)
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.apply([tf.identity(g) for g in gradients], model.trainable_variables)
        results[method] = (_flat(gradients), losses, norms, _flat(model.trainable_variables))
    vectorized, loop = results["vectorized"], results["loop"]
    # Same batch, same noise draws: equal up to float32 rounding (sums in another order, float64 in the loop).
    for fast, slow in zip(vectorized, loop):
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)


def test_fit_loop_and_vectorized_agree_on_a_deepid():
    images, labels = coloured_squares(3, (5, 5), seed=0)    # 12 images, 4 classes
    fits = {method: DPSGD(batch_size=4, epochs=1, noise_multiplier=0.8, delta=1e-3, method=method, chunk_size=4,
                          progress=False).fit(images, labels, 4)
            for method in ("vectorized", "loop")}
    np.testing.assert_array_equal(fits["vectorized"].batch_sizes_, fits["loop"].batch_sizes_)
    assert fits["vectorized"].steps_ == 3
    for fast, slow in zip(fits["vectorized"].model_.model.trainable_variables,
                          fits["loop"].model_.model.trainable_variables):
        np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-5, atol=1e-6)   # Adam after 3 steps
    assert [r.loss for r in fits["vectorized"].history_] == pytest.approx([r.loss for r in fits["loop"].history_],
                                                                          rel=1e-5)


# -- training and accounting -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def budget_fit():
    images, labels = coloured_squares(8, (5, 5), seed=0)    # 32 images
    lines = []
    defense = DPSGD(target_epsilon=8.0, batch_size=8, epochs=2, delta=1e-3, progress=lines.append)
    defense.fit(images, labels, 4, valid=(images[:8], labels[:8]))
    return defense, lines


def test_epsilon_is_the_privacy_budget_of_the_steps_taken(budget_fit):
    defense, _ = budget_fit
    budget = privacy_budget(PrivacyOptions(examples=32, batch_size=8, noise_multiplier=defense.noise_multiplier_,
                                           epochs=2, delta=1e-3))
    assert defense.steps_ == budget.steps == len(defense.batch_sizes_) == 8
    assert defense.sampling_probability_ == budget.sampling_probability == 0.25
    assert defense.epsilon_["classic"].epsilon == pytest.approx(budget.classic.epsilon, rel=1e-12)
    assert defense.epsilon_["tight"].epsilon == pytest.approx(budget.tight.epsilon, rel=1e-12)
    assert defense.epsilon_["tight"].order == budget.tight.order
    assert [record.steps for record in defense.history_] == [4, 8]
    assert defense.history_[-1].epsilon_tight == pytest.approx(budget.tight.epsilon, rel=1e-12)
    assert defense.history_[0].epsilon_classic < defense.history_[1].epsilon_classic


def test_target_epsilon_chooses_the_noise(budget_fit):
    defense, lines = budget_fit
    expected = noise_for_epsilon(8.0, PrivacyOptions(examples=32, batch_size=8, epochs=2, delta=1e-3), "tight")
    assert defense.noise_multiplier_ == expected.noise_multiplier
    assert 0.99 * 8.0 <= defense.epsilon_["tight"].epsilon <= 8.0
    assert len(lines) == 2 and all("epsilon" in line and "valid accuracy" in line for line in lines)
    assert lines[-1].startswith("epoch 2/2: ")
    assert defense.warnings_ == []                                  # delta 1e-3 is below 1/N = 1/32
    summary = defense.summary()
    assert summary["epsilon"]["tight"]["epsilon"] == defense.epsilon_["tight"].epsilon
    assert len(summary["history"]) == 2


def test_target_epsilon_under_the_classic_conversion():
    images, labels = coloured_squares(4, (5, 5), seed=0)
    defense = DPSGD(target_epsilon=5.0, conversion="classic", batch_size=4, epochs=0.25, delta=0.1,
                    orders=(2.0, 3.0, 4.0, 8.0, 16.0, 32.0), progress=False).fit(images, labels, 4)
    assert defense.steps_ == 1
    assert "1/N" in defense.warnings_[0]   # delta 0.1 is not below 1/16
    assert 0.99 * 5.0 <= defense.epsilon_["classic"].epsilon <= 5.0
    assert defense.epsilon_["tight"].epsilon <= defense.epsilon_["classic"].epsilon


def test_the_saved_model_loads(budget_fit, tmp_path):
    from goodnet.models import load_model, save_model

    defense, _ = budget_fit
    images, _ = coloured_squares(2, (5, 5), seed=5)
    path = save_model(defense.model_, str(tmp_path / "dp.h5"))
    loaded = load_model(path)
    assert loaded.scale == "unit" and loaded.num_classes == 4
    np.testing.assert_allclose(loaded.predict_proba(images), defense.predict_proba(images), rtol=1e-5, atol=1e-6)


def test_a_tiny_task_learns_with_small_noise():
    images, labels = coloured_squares(16, (5, 5), seed=0, classes=3)     # 48 training images
    test_images, test_labels = coloured_squares(8, (5, 5), seed=9, classes=3)
    defense = DPSGD(noise_multiplier=0.3, batch_size=16, epochs=3, delta=1e-3, progress=False)
    defense.fit(images, labels, 3, valid=(test_images, test_labels))
    accuracy = np.mean(defense.predict(test_images) == test_labels)
    assert accuracy >= 0.9, defense.history_
    assert defense.history_[-1].valid_accuracy == accuracy


def test_bad_input():
    images, labels = coloured_squares(2, (5, 5), seed=0)
    with pytest.raises(OptionError, match="batch_size: expected at most examples"):
        DPSGD(batch_size=100, progress=False).fit(images, labels, 4)
    with pytest.raises(OptionError, match="target_epsilon"):
        DPSGD(target_epsilon=1e-9, batch_size=4, epochs=1, progress=False).fit(images, labels, 4)
    with pytest.raises(OptionError, match="DPSGD: clip_norm: expected a number > 0"):
        DPSGD(clip_norm=0.0).fit(images, labels, 4)
    with pytest.raises(OptionError, match="DPSGD: method"):
        DPSGD(method="fast").fit(images, labels, 4)
