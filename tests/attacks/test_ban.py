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
