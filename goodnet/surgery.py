"""Model surgery on a convolution's output channels: find the layer, rank its channels, zero them.

Used by the defenses (pruning, fine-pruning) and by the attacks (the
pruning-aware BadNet), so it sits in the core and imports neither.

- :func:`convolution_layer`: the convolution a name refers to, or a one-line
  :class:`goodnet.errors.ModelError`;
- :func:`measurement_layer`: where its channels are measured: the end of the
  chain of channel-wise zero-preserving layers after it (its ReLU and
  max-pool: ``pool_3`` after ``conv_3`` in the lab network);
- :func:`rank_channels`: the channels in increasing order of their mean
  clean activation at that layer (the pruning order of Liu, Dolan-Gavitt and
  Garg, 2018); :func:`mean_activation_ranking` is the same rule applied to
  activations already computed;
- :func:`prune_model`, :func:`zeroed_channels`: a copy with channels zeroed
  (kernel and bias), and which channels a model has zeroed;
- :func:`channel_masks`, :func:`apply_masks`: 0/1 masks that hold channels at
  zero while a model trains.

Example:
    >>> ranking, means = rank_channels(bd_net.model, valid.images, "conv_3", divisor=bd_net.divisor)
    >>> pruned = prune_model(bd_net.model, "conv_3", ranking[:45])
    >>> zeroed_channels(pruned, "conv_3").size
    45
"""

import os

import numpy as np

from goodnet.errors import ModelError, OptionError
from goodnet.inference import DEFAULT_BATCH, compiled_forward, run_batches


def _model_name(model, path=""):
    return os.fspath(path) if path else f"model {model.name!r}"


# -- finding the layer -------------------------------------------------------------------------------------------


def convolution_layer(model, layer_name, path=""):
    """Return the convolution called ``layer_name``, or raise a one-line ModelError.

    Args:
        model: a Keras model.
        layer_name: the layer to prune (``conv_3`` in the lab network).
        path: the model's file, for messages.

    Returns:
        keras.layers.Layer: a Conv1D, Conv2D or Conv3D layer.
    """
    where = _model_name(model, path)
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        convolutions = [layer.name for layer in model.layers if _is_convolution(layer)]
        raise ModelError(f"{where}: layer: no layer named {layer_name!r} "
                         f"(expected one of the convolutions {', '.join(convolutions) or '(none)'})")
    layer = model.get_layer(layer_name)
    if not _is_convolution(layer):
        raise ModelError(f"{where}: layer: {layer_name!r} is a {type(layer).__name__}, "
                         "expected a convolution (Conv1D, Conv2D or Conv3D) whose output channels can be pruned")
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ModelError(f"{where}: layer: {layer_name!r} uses {layer.data_format}, expected channels_last")
    return layer


def _is_convolution(layer):
    import keras

    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    separable = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    return (isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))
            and not isinstance(layer, transposed + separable))


def _consumers(layer):
    """Layers that read ``layer``'s output (functional graph)."""
    seen = []
    for node in getattr(layer, "_outbound_nodes", []):
        operation = getattr(node, "operation", None)
        if operation is not None and operation not in seen:
            seen.append(operation)
    return seen


def _maps_zero_to_zero(function):
    import keras

    try:
        value = keras.ops.convert_to_numpy(function(keras.ops.zeros((1, 4))))
    except Exception:  # an activation we cannot evaluate: assume the worst
        return False
    return bool(np.all(value == 0))


def _channelwise_zero_preserving(layer):
    """Whether ``layer`` maps an all-zero channel to an all-zero channel, channel by channel."""
    import keras

    pools = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
             keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D)
    if isinstance(layer, pools):
        return getattr(layer, "data_format", "channels_last") == "channels_last" and layer.padding == "valid"
    if isinstance(layer, (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                          keras.layers.SpatialDropout3D, keras.layers.GaussianNoise)):
        return True  # identity at inference
    if isinstance(layer, keras.layers.Activation):
        return _maps_zero_to_zero(layer.activation)
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)):
        return _maps_zero_to_zero(layer)
    return False


def measurement_layer(model, layer_name, path=""):
    """The layer at which ``layer_name``'s channels are measured: the end of the zero-preserving chain after it.

    Follows the convolution through single consumers that map an all-zero
    channel to an all-zero channel (ReLU, valid max- or average-pooling,
    dropout); ``pool_3`` for ``conv_3`` in the lab network. The convolution
    itself when nothing such follows it.
    """
    measure = convolution_layer(model, layer_name, path)
    while True:
        following = _consumers(measure)
        if len(following) != 1 or not _channelwise_zero_preserving(following[0]):
            return measure
        measure = following[0]


# -- ranking -----------------------------------------------------------------------------------------------------


def activation_function(model, measure, divisor=1.0, execution=None):
    """The compiled network up to layer ``measure`` (a name or a layer), run as ``execution`` says.

    Takes raw-pixel images, divides them by ``divisor`` as the whole model's
    forward pass does (see :func:`goodnet.inference.compiled_forward`).
    """
    import keras

    layer = model.get_layer(measure) if isinstance(measure, str) else measure
    return compiled_forward(keras.Model(model.inputs, layer.output), divisor, execution)


def mean_activation_ranking(activations):
    """The ranking rule: channels by increasing mean activation (float64 means, ties by channel index).

    Args:
        activations: measured activations, channels last (N, ..., C).

    Returns:
        tuple: (ranking (C,) int64, means (C,) float64).
    """
    activations = np.asarray(activations)
    means = activations.mean(axis=tuple(range(activations.ndim - 1)), dtype=np.float64)
    return np.argsort(means, kind="stable").astype(np.int64), means


def rank_channels(model, images, layer="conv_3", measure=None, divisor=1.0, batch_size=DEFAULT_BATCH,
                  execution=None, progress=None):
    """Rank ``layer``'s output channels by their mean activation over ``images``, most dormant first.

    The pruning order of Liu, Dolan-Gavitt and Garg (2018), the lab's and
    goodnet's pruning defense's and the pruning-aware attack's.

    Args:
        model: a Keras model.
        images: clean raw-pixel images (N, ...).
        layer: the convolution whose channels are ranked.
        measure: the layer whose output is averaged (a name; default
            :func:`measurement_layer`: ``pool_3`` for the lab's ``conv_3``).
        divisor: input scaling (1.0 for raw pixels, 255.0 for unit scaling).
        batch_size: images per TensorFlow call.
        execution: a :class:`goodnet.inference.Execution` (default: one device, float32).
        progress: progress bar (None: only for long work).

    Returns:
        tuple: (ranking (C,) int64, means (C,) float64), see :func:`mean_activation_ranking`.

    Example:
        >>> ranking, _ = rank_channels(badnet.model, train.images, "conv_3", "pool_3", divisor=255.0)
        >>> decoys = ranking[:30]
    """
    convolution_layer(model, layer)
    where = measurement_layer(model, layer) if measure is None else measure
    activations = run_batches(activation_function(model, where, divisor, execution), images, batch_size, progress,
                              "activations")
    return mean_activation_ranking(activations)


# -- zeroing channels --------------------------------------------------------------------------------------------


def zeroed_channels(model, layer_name, path=""):
    """Output channels of a convolution whose kernel and bias are all exactly zero.

    Args:
        model: a Keras model.
        layer_name: the convolution's name.
        path: the model's file, for messages.

    Returns:
        np.ndarray: sorted channel indices (int64).

    Example:
        >>> zeroed_channels(load_model("lab3_B_prime_X=2.h5").model, "conv_3").size
        45
    """
    layer = convolution_layer(model, layer_name, path)
    kernel = np.asarray(layer.kernel)
    zero = np.all(kernel.reshape(-1, kernel.shape[-1]) == 0, axis=0)
    if layer.bias is not None:
        zero &= np.asarray(layer.bias) == 0
    return np.flatnonzero(zero).astype(np.int64)


def prune_model(model, layer_name, channels, path=""):
    """A copy of ``model`` whose convolution ``layer_name`` has ``channels`` zeroed (kernel and bias).

    The copy has the same architecture, layer names and configuration, so it
    saves and loads like the original.

    Args:
        model: a Keras model (left untouched).
        layer_name: the convolution to prune.
        channels: output-channel indices.
        path: the model's file, for messages.

    Returns:
        keras.Model: the pruned copy.
    """
    import keras

    layer = convolution_layer(model, layer_name, path)
    channels = _check_channels(channels, int(layer.filters), layer_name)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    target = copy.get_layer(layer_name)
    kernel = np.array(target.kernel)
    kernel[..., channels] = 0.0
    target.kernel.assign(kernel)
    if target.bias is not None:
        bias = np.array(target.bias)
        bias[channels] = 0.0
        target.bias.assign(bias)
    return copy


def _check_channels(channels, filters, layer_name):
    """``channels`` as an int64 index array of a layer with ``filters`` output channels, or an OptionError."""
    channels = np.asarray(list(channels) if not isinstance(channels, np.ndarray) else channels, dtype=np.int64)
    if channels.ndim != 1 or (channels.size and (channels.min() < 0 or channels.max() >= filters)):
        raise OptionError(f"channels: expected indices of {layer_name}'s {filters} output channels, got {channels}")
    return channels


def channel_masks(layer, channels):
    """0/1 masks (kernel mask, bias mask) that zero ``channels`` of a convolution's output."""
    kernel, bias = layer.kernel, layer.bias
    keep = np.ones(int(kernel.shape[-1]), dtype=np.float32)
    keep[list(channels)] = 0.0
    kernel_mask = np.broadcast_to(keep, tuple(kernel.shape)).astype(np.float32)
    return kernel_mask, keep if bias is not None else None


def apply_masks(layer, kernel_mask, bias_mask):
    """Multiply the layer's kernel (and bias) by the masks, in place."""
    layer.kernel.assign(layer.kernel * kernel_mask)
    if bias_mask is not None:
        layer.bias.assign(layer.bias * bias_mask)
