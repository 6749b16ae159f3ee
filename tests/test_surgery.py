"""Tests for goodnet.surgery: finding the convolution, ranking its channels, zeroing them, masks.

The references are plain: a Keras sub-model called on the images and NumPy
float64 means for the ranking, the weights of real peer-pruned lab files for
the zeroing.
"""

import numpy as np
import pytest

from goodnet.data import load_image
from goodnet.errors import ModelError, OptionError
from goodnet.models import load_model
from goodnet.surgery import (apply_masks, channel_masks, convolution_layer, mean_activation_ranking,
                             measurement_layer, prune_model, rank_channels, zeroed_channels)

FACES = ["cl_0.png", "cl_1.png", "cl_2.png", "cl_3.png", "cl_4.png", "clean_950.png"]


def noisy_faces(shared, count, seed):
    """Real lab faces with random contrast and noise (raw pixels)."""
    bases = np.stack([load_image(shared / "images" / name) for name in FACES])
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(FACES), count)
    contrast = rng.uniform(0.5, 1.5, (count, 1, 1, 1))
    noise = rng.normal(0, 25, (count,) + bases.shape[1:])
    return np.clip((bases[which] - 128) * contrast + 128 + noise, 0, 255).round().astype(np.float32)


def tiny_model(seed=3):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 10, 3), name="input")
    conv = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    pool = keras.layers.MaxPooling2D(2, name="pool")(conv)
    flat = keras.layers.Flatten(name="flat")(pool)
    outputs = keras.layers.Dense(5, activation="softmax", name="out")(flat)
    return keras.Model(inputs, outputs)


def test_rank_channels_equals_numpy_means_of_the_measured_activations(shared, bd_net):
    import keras

    images = noisy_faces(shared, 90, seed=5)
    assert measurement_layer(bd_net.model, "conv_3").name == "pool_3"
    ranking, means = rank_channels(bd_net.model, images, "conv_3", divisor=bd_net.divisor, batch_size=32,
                                   progress=False)
    activations = np.asarray(keras.Model(bd_net.model.inputs, bd_net.model.get_layer("pool_3").output)(
        images, training=False))
    reference = activations.astype(np.float64).mean(axis=(0, 1, 2))
    assert means.dtype == np.float64 and ranking.dtype == np.int64
    np.testing.assert_allclose(means, reference, rtol=1e-5, atol=1e-6)
    assert np.array_equal(ranking, np.argsort(reference, kind="stable"))
    assert len(np.unique(np.round(reference, 3))) > 20          # a real ordering, not all ties (many are 0)
    again, _ = rank_channels(bd_net.model, images, "conv_3", "pool_3", divisor=1.0, progress=False)
    assert np.array_equal(again, ranking)                       # the measurement layer named explicitly

    # unit scaling: pixels / 255 before the network, as the whole model's forward pass does
    model = tiny_model()
    small = np.random.default_rng(0).uniform(0, 255, (40, 12, 10, 3)).astype(np.float32)
    ranking, means = rank_channels(model, small, "conv", divisor=255.0, progress=False)
    pooled = np.asarray(keras.Model(model.inputs, model.get_layer("pool").output)(small / np.float32(255)))
    np.testing.assert_allclose(means, pooled.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7)
    assert np.array_equal(ranking, np.argsort(pooled.astype(np.float64).mean(axis=(0, 1, 2)), kind="stable"))


def test_mean_activation_ranking_breaks_ties_by_channel_index():
    activations = np.zeros((3, 2, 2, 5), np.float32)
    activations[..., 1] = 2.0
    activations[..., 3] = 1.0
    ranking, means = mean_activation_ranking(activations)
    assert ranking.tolist() == [0, 2, 4, 3, 1]
    np.testing.assert_array_equal(means, [0.0, 2.0, 0.0, 1.0, 0.0])


def test_peer_repaired_files_are_nested_prunings_that_prune_model_reproduces(shared, bd_net):
    """A public solution's model_X files: nested zeroed conv_3 channels, and prune_model gives their weights."""
    previous = np.array([], np.int64)
    reference = [np.array(weights) for weights in bd_net.model.get_weights()]
    for drop, count in ((2, 45), (4, 48), (10, 52), (30, 54)):
        peer = load_model(shared / "models" / "peer_repaired" / f"lab3_B_prime_X={drop}.h5", scale="raw")
        channels = zeroed_channels(peer.model, "conv_3")
        assert channels.size == count and set(previous) <= set(channels)
        previous = channels
        expected = prune_model(bd_net.model, "conv_3", channels).get_weights()
        for mine, theirs in zip(expected, peer.model.get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    after = bd_net.model.get_weights()
    assert len(reference) == len(after)
    for before, now in zip(reference, after):                   # the input model is untouched
        np.testing.assert_array_equal(before, now)


def test_prune_model_zeroes_kernel_and_bias_of_a_copy():
    model = tiny_model()
    pruned = prune_model(model, "conv", [1, 6])
    kernel, bias = pruned.get_layer("conv").get_weights()
    assert not kernel[..., [1, 6]].any() and not bias[[1, 6]].any()
    assert zeroed_channels(pruned, "conv").tolist() == [1, 6]
    assert zeroed_channels(model, "conv").size == 0
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in model.layers]
    with pytest.raises(OptionError, match="channels: expected indices of conv's 8 output channels"):
        prune_model(model, "conv", [8])


def test_bad_layers_are_one_line_model_errors(bd_net):
    with pytest.raises(ModelError, match="no layer named 'conv_9'.*conv_3"):
        convolution_layer(bd_net.model, "conv_9")
    with pytest.raises(ModelError, match="'pool_3' is a MaxPooling2D, expected a convolution"):
        rank_channels(bd_net.model, np.zeros((1, 55, 47, 3), np.float32), "pool_3")


def test_channel_masks_hold_channels_at_zero():
    model = tiny_model()
    layer = model.get_layer("conv")
    kernel_mask, bias_mask = channel_masks(layer, [0, 5])
    assert kernel_mask.shape == tuple(layer.kernel.shape) and bias_mask.tolist() == [0, 1, 1, 1, 1, 0, 1, 1]
    kernel, bias = [np.array(value) for value in layer.get_weights()]
    layer.set_weights([kernel + 1.0, bias + 1.0])
    apply_masks(layer, kernel_mask, bias_mask)
    masked_kernel, masked_bias = layer.get_weights()
    assert not masked_kernel[..., [0, 5]].any() and not masked_bias[[0, 5]].any()
    np.testing.assert_array_equal(masked_kernel[..., 1], kernel[..., 1] + 1.0)
