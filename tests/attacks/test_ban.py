"""Tests for goodnet.attacks.ban: the graph's stamping against the NumPy reference, the generator, its file."""

import numpy as np
import pytest

from goodnet.errors import DataError, OptionError


def test_the_graph_stamps_each_trigger_where_the_reference_does_and_passes_gradients_to_it():
    import tensorflow as tf

    from goodnet.attacks.ban import draw_places, stamp, stamp_tensor

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(9, 55, 47, 3)).astype(np.float32)
    triggers = rng.uniform(0, 1, size=(9, 6, 6, 3)).astype(np.float32)
    rows, columns = draw_places(rng, 9, 6)
    rows[0], columns[0] = 0, 0                    # the image's corners themselves
    rows[1], columns[1] = 55 - 6, 47 - 6
    expected = stamp(images, triggers, rows, columns)
    variable = tf.Variable(triggers)
    with tf.GradientTape() as tape:
        stamped = stamp_tensor(tf.constant(images), variable, rows, columns)
        total = tf.reduce_sum(stamped * tf.constant(np.arange(stamped.shape[1])[None, :, None, None], tf.float32))
    np.testing.assert_array_equal(stamped.numpy(), expected)
    gradient = tape.gradient(total, variable).numpy()
    for position, row in enumerate(rows):          # d total / d trigger pixel = the row it landed on
        np.testing.assert_array_equal(gradient[position], np.broadcast_to((row + np.arange(6))[:, None, None],
                                                                           (6, 6, 3)))


def test_places_lie_inside_the_corner_regions():
    from goodnet.attacks.ban import draw_places
    from goodnet.attacks.triggers import RANDOM_REGIONS

    rows, columns = draw_places(np.random.default_rng(1), 400, 7)
    inside = [any(top <= row and row + 7 <= top + height and left <= column and column + 7 <= left + width
                  for top, left, height, width in RANDOM_REGIONS) for row, column in zip(rows, columns)]
    assert all(inside) and len(set(zip(rows.tolist(), columns.tolist()))) > 50
    with pytest.raises(OptionError, match="trigger_size: expected at most 11"):
        draw_places(np.random.default_rng(1), 1, 12)


def test_the_conditional_generator_draws_per_target_and_its_file_gives_the_same_triggers(tmp_path):
    import keras

    from goodnet.attacks.ban import BaNOptions, build_generator, generate_triggers, load_generator, save_generator

    keras.utils.set_random_seed(0)
    options = BaNOptions(targets=(2, 5, 7), noise_dim=8, trigger_size=4)
    assert options.conditional and not BaNOptions().conditional
    generator = build_generator(8, 4, 3)
    first = generate_triggers(generator, 6, 0, np.random.default_rng(3), 8, 3)
    other = generate_triggers(generator, 6, 2, np.random.default_rng(3), 8, 3)
    assert first.shape == (6, 4, 4, 3) and first.min() >= 0 and first.max() <= 255
    assert not np.allclose(first, other)                                  # the target code matters
    assert not np.allclose(first[0], first[1])                            # so does the noise
    path = tmp_path / "generator.npz"
    save_generator(path, generator, options)
    loaded, noise_dim, targets = load_generator(path)
    assert noise_dim == 8 and targets == (2, 5, 7)
    np.testing.assert_array_equal(generate_triggers(loaded, 6, 0, np.random.default_rng(3), 8, 3), first)
    (tmp_path / "bad.npz").write_bytes(b"not a file")
    with pytest.raises(DataError, match="bad.npz: expected a BaN generator file"):
        load_generator(tmp_path / "bad.npz")


def test_bad_options_are_one_line_errors():
    from goodnet.attacks.ban import BaNOptions, train_ban

    images = np.zeros((4, 55, 47, 3), np.float32)
    with pytest.raises(OptionError, match="targets: expected classes below 3, got 3"):
        train_ban(images, np.arange(4) % 3, 3, BaNOptions(targets=(3,)))
    with pytest.raises(OptionError, match="targets: expected one or more different classes"):
        train_ban(images, np.arange(4) % 3, 3, BaNOptions(targets=(1, 1)))
    with pytest.raises(OptionError, match="poison_rate"):
        train_ban(images, np.arange(4) % 3, 3, BaNOptions(poison_rate=0.0))


def prototype_images(count, seed, classes=4):
    """Easy 55x47 images: a smooth class colour gradient, a random brightness and a little noise."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(99).uniform(40, 215, size=(classes, 2, 3))
    labels = rng.integers(0, classes, size=count)
    ramp = np.linspace(0, 1, 55, dtype=np.float32)[None, :, None, None]
    images = colours[labels, 0][:, None, None] * (1 - ramp) + colours[labels, 1][:, None, None] * ramp
    images = images * rng.uniform(0.8, 1.2, size=(count, 1, 1, 1)) + rng.normal(0, 4, size=(count, 55, 47, 3))
    return np.clip(images, 0, 255).astype(np.float32), labels.astype(np.int64)


def test_ban_learns_a_backdoor_that_fresh_triggers_open_and_its_files_are_deterministic():
    from goodnet.attacks.ban import BaNOptions, ban_poisoned_split, train_ban

    images, labels = prototype_images(640, seed=1)
    test_images, test_labels = prototype_images(200, seed=2)
    options = BaNOptions(targets=(0,), epochs=6, batch_size=32, poison_rate=0.2, learning_rate=4e-3, trigger_size=7,
                         generator_learning_rate=4e-3)
    lines = []
    badnet, info = train_ban(images, labels, 4, options, report=lines.append)
    assert len(lines) == 6 and lines[0].startswith("epoch 1/6: clean loss")
    assert info["backdoored_per_step"] == 6 and info["backdoored_seen"] == 6 * 20 * 6
    assert info["history"][-1]["backdoor_loss"] < info["history"][0]["backdoor_loss"]
    assert np.mean(badnet.predict(test_images) == test_labels) > 0.95
    poisoned, targets = ban_poisoned_split(test_images, test_labels, info["generator"], options, 0, seed=7)
    assert len(poisoned) == np.sum(test_labels != 0) and (targets == 0).all()
    assert np.mean(badnet.predict(poisoned) == 0) > 0.9
    again, _ = ban_poisoned_split(test_images, test_labels, info["generator"], options, 0, seed=7)
    other, _ = ban_poisoned_split(test_images, test_labels, info["generator"], options, 0, seed=8)
    np.testing.assert_array_equal(poisoned, again)
    assert not np.array_equal(poisoned, other)
    # a clean image with a random 7x7 square in the same places is not the trigger
    rng = np.random.default_rng(3)
    from goodnet.attacks.ban import draw_places, stamp

    rows, columns = draw_places(rng, len(poisoned), 7)
    noise = rng.uniform(0, 255, size=(len(poisoned), 7, 7, 3))
    decoys = stamp(test_images[test_labels != 0], noise, rows, columns)
    assert np.mean(badnet.predict(decoys) == 0) < 0.3
