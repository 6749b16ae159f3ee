"""The lab's pruning defense: rank a convolution's channels by clean activation, prune the dormant ones first.

The sweep (Liu, Dolan-Gavitt and Garg, 2018; the CSAW-HackML-2020 lab):

1. run the clean validation images, take the mean activation of every output
   channel of the chosen convolution, measured after the zero-preserving
   layers that follow it (its ReLU and max-pool: ``pool_3`` in the lab
   network);
2. prune channels in increasing order of that mean, setting the channel's
   kernel and bias to zero, and record clean accuracy and the attack success
   rate of every poisoned file after each channel;
3. keep the pruned model at which accuracy first dropped by X points.

Speed without approximation. Zeroing a channel's kernel and bias makes that
channel exactly zero after the ReLU and the pool, and nothing after the pool
reads anything else, so:

- the network up to the measurement layer (the *head*) runs once;
- pruning channel c changes nothing for an image whose measured channel c is
  all zero: only the other images are re-evaluated at that step;
- ``method="masked-tail"``: those images go through the rest of the network
  (the *tail*) with the pruned channels masked, using the same Keras layers
  as the whole model, so every prediction is the whole model's;
- ``method="incremental"`` (chosen automatically for the lab's two-branch
  tail: flatten -> dense and conv (relu) -> flatten -> dense, added, relu,
  dense softmax): the first dense and convolution of the tail are linear in
  the measured activations, so each step subtracts the pruned channel's
  contribution from them instead of recomputing them, then evaluates the
  rest in float32 inside fused TensorFlow calls (steps where few images
  have the channel non-zero update only those images; the last steps, where
  nearly all do, run block by block, all steps in one call). A prediction
  is *certified* from that evaluation only if no other logit comes within a
  guard band of the top one (``guard`` float32 unit roundoffs times the
  image's logit scale: about 0.05 on the lab BadNet, where float32 rounding
  moves the logits by about 2e-4); the other (step, image) pairs are re-run
  through the model's own Keras tail. The result is therefore the whole
  model's prediction (tests compare every step with the straightforward
  method). Measured and not used: certifying "top-1 unchanged" from the
  change of the hidden vector (Cauchy-Schwarz on the output kernel) skips
  the output layer for about a fifth of the mid-sweep images and almost none
  of the last steps, where most of the work is;
- ``method="full"``: the straightforward method (zero the weights, re-run the
  whole model on every image at every step). Used when the shortcut does not
  apply: a convolution whose activation does not map 0 to 0, or a tail that
  needs more than the measured activations.

Example:
    >>> defense = PruningDefense(load_model("models/bd_net.h5"), layer="conv_3")
    >>> defense.fit(load_h5("data/valid.h5"), poisoned_valid=[load_h5("data/bd_valid.h5")])
    >>> defense.selected_            # {2: 45, 4: 48, 10: 52} on the lab's data
    >>> model_2 = defense.pruned_classifier(defense.selected_[2])
"""

import dataclasses
import logging
import os

import numpy as np

from goodnet.errors import OptionError
from goodnet.inference import DEFAULT_BATCH, Execution, compiled_forward, progress_bar, run_batches
from goodnet.models import ModelError

logger = logging.getLogger(__name__)

POLICIES = ("first-reached", "last-within")
METHODS = ("auto", "incremental", "masked-tail", "full")
DEFAULT_DROPS = (2, 4, 10)
DEFAULT_GUARD = 256.0
DENSE_BLOCK = 4096


# --------------------------------------------------------------------------- model surgery


def _model_name(model, path=""):
    return os.fspath(path) if path else f"model {model.name!r}"


def convolution_layer(model, layer_name, path=""):
    """Return the convolution called ``layer_name``, or raise a one-line ModelError.

    Args:
        model: a Keras model.
        layer_name: the layer to prune (``conv_3`` in the lab network).
        path: the model's file, for messages.

    Returns:
        keras.layers.Layer: a Conv1D, Conv2D or Conv3D layer.
    """
    import keras

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
    del keras
    return layer


def _is_convolution(layer):
    import keras

    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    separable = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    return (isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))
            and not isinstance(layer, transposed + separable))


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
    channels = np.asarray(list(channels) if not isinstance(channels, np.ndarray) else channels, dtype=np.int64)
    if channels.ndim != 1 or (channels.size and (channels.min() < 0 or channels.max() >= filters)):
        raise OptionError(f"channels: expected indices of {layer_name}'s {filters} output channels, got {channels}")
    return channels


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


@dataclasses.dataclass
class SweepPlan:
    """Where a pruning sweep measures, and how it may be computed.

    Attributes:
        layer: the convolution being pruned.
        measure: the layer whose output ranks the channels (end of the
            zero-preserving chain after the convolution, e.g. ``pool_3``).
        shortcut: whether masking the measured channels equals zeroing the
            convolution's weights (activation maps 0 to 0, tail reads only
            the measured output).
        reason: why the shortcut does not apply ('' when it does).
        deepid: the lab tail's layers for the incremental method, or None.
    """

    layer: object
    measure: object
    shortcut: bool
    reason: str
    deepid: dict = None


def plan_sweep(model, layer_name, path=""):
    """Find the measurement layer after ``layer_name`` and decide which sweep methods are exact.

    Args:
        model: a functional Keras model.
        layer_name: the convolution to prune.
        path: the model's file, for messages.

    Returns:
        SweepPlan: see its attributes.
    """
    import keras

    layer = convolution_layer(model, layer_name, path)
    measure = layer
    while True:
        following = _consumers(measure)
        if len(following) != 1 or not _channelwise_zero_preserving(following[0]):
            break
        measure = following[0]
    reason = ""
    if not _maps_zero_to_zero(layer.activation):
        reason = (f"{layer_name}'s activation {getattr(layer.activation, '__name__', layer.activation)!r} "
                  "does not map 0 to 0, so a zeroed channel is not zero after it")
    if not reason:
        try:
            keras.Model(measure.output, model.outputs)
        except Exception as error:  # Keras: graph disconnected, or not functional
            reason = (f"the layers after {measure.name} read more than its output "
                      f"({str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__})")
    deepid = None if reason else _match_deepid_tail(model, measure)
    return SweepPlan(layer, measure, not reason, reason, deepid)


def _activation_name(function):
    import keras

    try:
        return keras.activations.serialize(function)
    except Exception:
        return getattr(function, "__name__", "")


def _is_relu_layer(layer):
    import keras

    if isinstance(layer, keras.layers.Activation):
        return _activation_name(layer.activation) == "relu"
    if isinstance(layer, keras.layers.ReLU):
        return (layer.max_value is None and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0)
    return False


def _single(layers, kind):
    return layers[0] if len(layers) == 1 and isinstance(layers[0], kind) else None


def _match_deepid_tail(model, measure):
    """The lab's two-branch tail after ``measure``, as a dict of layers, or None if it is not that shape.

    measure -> flatten -> dense (linear) ----------------------\\
    measure -> conv2d (relu, valid) -> flatten -> dense (linear) -> add -> relu -> dense (softmax) = model output
    """
    import keras

    branches = _consumers(measure)
    if len(branches) != 2 or len(measure.output.shape) != 4:
        return None
    flatten = [layer for layer in branches if isinstance(layer, keras.layers.Flatten)]
    convolution = [layer for layer in branches if isinstance(layer, keras.layers.Conv2D) and _is_convolution(layer)]
    if len(flatten) != 1 or len(convolution) != 1:
        return None
    flatten, convolution = flatten[0], convolution[0]
    if (convolution.padding != "valid" or tuple(convolution.dilation_rate) != (1, 1) or convolution.groups != 1
            or convolution.data_format != "channels_last" or _activation_name(convolution.activation) != "relu"):
        return None
    dense_1 = _single(_consumers(flatten), keras.layers.Dense)
    flatten_2 = _single(_consumers(convolution), keras.layers.Flatten)
    dense_2 = _single(_consumers(flatten_2), keras.layers.Dense) if flatten_2 is not None else None
    if dense_1 is None or dense_2 is None:
        return None
    if _activation_name(dense_1.activation) != "linear" or _activation_name(dense_2.activation) != "linear":
        return None
    add = _single(_consumers(dense_1), keras.layers.Add)
    if add is None or _consumers(dense_2) != [add] or len(add.input) != 2:
        return None
    relu = _consumers(add)
    if len(relu) != 1 or not _is_relu_layer(relu[0]):
        return None
    output = _single(_consumers(relu[0]), keras.layers.Dense)
    if output is None or _activation_name(output.activation) != "softmax" or _consumers(output):
        return None
    if output.output is not model.outputs[0]:
        return None
    return {"dense_1": dense_1, "conv": convolution, "dense_2": dense_2, "output": output}


# --------------------------------------------------------------------------- sweep engines


def _head_function(model, plan, divisor, execution=None):
    """The compiled network up to the measurement layer, run as ``execution`` says (devices, precision)."""
    import keras

    head = keras.Model(model.inputs, plan.measure.output)
    return compiled_forward(head, divisor, execution)


def _tail_function(model, plan):
    """A compiled function (measured activations, 0/1 channel mask) -> model outputs, via the model's own layers."""
    import keras
    import tensorflow as tf

    tail = keras.Model(plan.measure.output, model.outputs)
    shape = tuple(int(size) for size in plan.measure.output.shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((None,) + shape, tf.float32), tf.TensorSpec((shape[-1],), tf.float32)],
                 reduce_retracing=True)
    def masked_tail(activations, keep):
        return tail(activations * keep, training=False)

    return masked_tail


def _argmax_rows(function, activations, keep, batch_size):
    """Top-1 class of ``function(activations, keep)`` for each row (int32)."""
    results = []
    for start in range(0, len(activations), batch_size):
        scores = np.asarray(function(activations[start:start + batch_size], keep))
        results.append(scores.argmax(axis=1).astype(np.int32))
    return np.concatenate(results) if results else np.zeros(0, np.int32)


FLOAT32_UNIT = 2.0 ** -24   # float32 unit roundoff
# A float64 sum's error relative to its magnitude, in float32 units: 2**-53 per term for up to 2**20 terms.
FLOAT64_ERROR = 2.0 ** -33 / FLOAT32_UNIT


def _channel_maps(layers, measure_shape):
    """Per measured channel c: the (H*W, units) slices of the first dense kernel and the
    (H*W, conv outputs) linear map of the tail convolution, so that removing channel c of
    an image subtracts ``x_c @ dense_map[c]`` and ``x_c @ conv_map[c]`` (x_c: that channel's
    H*W activations)."""
    height, width, channels = measure_shape
    dense = np.asarray(layers["dense_1"].kernel, np.float32)             # (H*W*C, units)
    dense_map = np.ascontiguousarray(dense.reshape(height * width, channels, -1).transpose(1, 0, 2))
    kernel = np.asarray(layers["conv"].kernel, np.float32)               # (kh, kw, C, F)
    kernel_height, kernel_width, _, filters = kernel.shape
    stride_y, stride_x = (int(step) for step in layers["conv"].strides)
    out_height = (height - kernel_height) // stride_y + 1
    out_width = (width - kernel_width) // stride_x + 1
    conv_map = np.zeros((channels, height, width, out_height, out_width, filters), np.float32)
    for out_y in range(out_height):
        for out_x in range(out_width):
            for tap_y in range(kernel_height):
                for tap_x in range(kernel_width):
                    conv_map[:, out_y * stride_y + tap_y, out_x * stride_x + tap_x, out_y, out_x, :] = \
                        kernel[tap_y, tap_x]
    return dense_map, conv_map.reshape(channels, height * width, -1)


def _lab_tail_functions():
    """The compiled TensorFlow functions of the incremental method (weights are arguments, so
    one trace serves every model and every fit).

    The running sums (the pre-activations of the tail's first dense layer and
    convolution) are kept in float64: pruning subtracts terms from them but
    not the rounding error those terms brought, so in float32 that error
    would stay at the scale of the unpruned sums while the sums themselves
    shrink (late in a sweep the surviving logits can be smaller than it). In
    float64 it is about 2**-29 times smaller and the rest of the tail is
    evaluated in float32 from the rounded sums, like the whole model."""
    import tensorflow as tf

    def evaluate(linear_1, convolution, magnitude, weights, guard):
        dense_2, bias_2, output, bias_out, output_norm = weights[:5]
        linear_1 = tf.cast(linear_1, tf.float32)
        hidden_in = tf.matmul(tf.nn.relu(tf.cast(convolution, tf.float32)), dense_2)
        hidden = tf.nn.relu(linear_1 + hidden_in + bias_2)
        logits = tf.matmul(hidden, output) + bias_out
        best = tf.argmax(logits, axis=1, output_type=tf.int32)
        top = tf.reduce_max(logits, axis=1)
        # Guard band: a multiple of float32 rounding at this image's scale (see _LabTail), plus
        # the float64 sums' own error (at most about 2**-53 per term of their magnitude).
        scale = (output_norm * (tf.norm(linear_1, axis=1) + tf.norm(hidden_in, axis=1) + tf.norm(bias_2)
                                + magnitude * FLOAT64_ERROR) + tf.abs(top))
        band = guard * FLOAT32_UNIT * scale
        rivals = tf.reduce_sum(tf.cast(logits >= (top - band)[:, None], tf.int32), axis=1)
        return best, tf.equal(rivals, 1)

    matrix = tf.TensorSpec((None, None), tf.float32)
    matrix_64 = tf.TensorSpec((None, None), tf.float64)
    stack_64 = tf.TensorSpec((None, None, None), tf.float64)
    vector = tf.TensorSpec((None,), tf.float32)
    weights = (matrix, vector, matrix, vector) + (tf.TensorSpec((), tf.float32),) * 3
    scalar = tf.TensorSpec((), tf.float32)

    @tf.function(input_signature=[matrix_64, matrix_64, vector, matrix, matrix_64, matrix_64, weights, scalar],
                 reduce_retracing=True)
    def step(linear_1, convolution, magnitude, values, dense_map, conv_map, weights, guard):
        values = tf.cast(values, tf.float64)
        linear_1 = linear_1 - tf.matmul(values, dense_map)
        convolution = convolution - tf.matmul(values, conv_map)
        best, sure = evaluate(linear_1, convolution, magnitude, weights, guard)
        return linear_1, convolution, best, sure

    @tf.function(input_signature=[matrix_64, matrix_64, vector, tf.TensorSpec((None, None, None), tf.float32),
                                  stack_64, stack_64, weights, scalar],
                 reduce_retracing=True)
    def steps(linear_1, convolution, magnitude, values, dense_maps, conv_maps, weights, guard):
        count = tf.shape(values)[0]
        bests = tf.TensorArray(tf.int32, size=count)
        sures = tf.TensorArray(tf.bool, size=count)
        for index in tf.range(count):
            part = tf.cast(values[index], tf.float64)
            linear_1 = linear_1 - tf.matmul(part, dense_maps[index])
            convolution = convolution - tf.matmul(part, conv_maps[index])
            best, sure = evaluate(linear_1, convolution, magnitude, weights, guard)
            bests = bests.write(index, best)
            sures = sures.write(index, sure)
        return bests.stack(), sures.stack()

    @tf.function(reduce_retracing=True)
    def start(activations, dense_1, bias_1, kernel, conv_bias, strides, weights, guard):
        count = tf.shape(activations)[0]
        wide = tf.cast(activations, tf.float64)        # float32 products are exact in float64
        linear_1 = tf.matmul(tf.reshape(wide, (count, -1)), dense_1) + bias_1
        convolution = tf.nn.conv2d(wide, kernel, strides=(1,) + strides + (1,), padding="VALID")
        convolution = tf.reshape(convolution + conv_bias, (count, -1))
        # Magnitude of the sums: a bound on the norms of the sums of absolute values of every term
        # they ever hold (the first dense layer's, and the convolution's through |dense_2|); it
        # bounds the scale of their float64 rounding error at every step. weights[5:]: the
        # matrix norms that turn the input's norm into that bound (see _LabTail).
        magnitude = tf.norm(tf.reshape(activations, (count, -1)), axis=1) * weights[5] + weights[6]
        best, sure = evaluate(linear_1, convolution, magnitude, weights, guard)
        return linear_1, convolution, magnitude, best, sure

    return start, step, steps


_FUNCTIONS = []


def _compiled_lab_tail():
    if not _FUNCTIONS:
        _FUNCTIONS.append(_lab_tail_functions())
    return _FUNCTIONS[0]


def _magnitude_factors(layers, measure_shape):
    """(gain, offset): ``gain * ||x|| + offset`` bounds, for measured activations x, the norm of
    ``|x| @ |dense_1| + |bias_1|`` plus ``|| |dense_2| ||`` times the norm of ``conv(|x|, |kernel|) + |bias|``.

    Spectral norms of the absolute kernels; a convolution reads each input value through at
    most ``kh * kw`` taps, hence the square root."""
    def spectral(matrix):
        return float(np.linalg.norm(np.abs(np.asarray(matrix, np.float64)).reshape(-1, matrix.shape[-1]), 2))

    def bias_norm(layer):
        return float(np.linalg.norm(np.asarray(layer.bias, np.float64))) if layer.use_bias else 0.0

    kernel = np.asarray(layers["conv"].kernel)
    taps = kernel.shape[0] * kernel.shape[1]
    stride_y, stride_x = (int(step) for step in layers["conv"].strides)
    positions = (((measure_shape[0] - kernel.shape[0]) // stride_y + 1)
                 * ((measure_shape[1] - kernel.shape[1]) // stride_x + 1))   # the bias repeats at each
    dense_2 = spectral(np.asarray(layers["dense_2"].kernel))
    gain = spectral(np.asarray(layers["dense_1"].kernel)) + dense_2 * np.sqrt(taps) * spectral(kernel)
    offset = bias_norm(layers["dense_1"]) + dense_2 * bias_norm(layers["conv"]) * np.sqrt(positions)
    return gain * 1.001, offset * 1.001


class _LabTail:
    """The lab tail (see :func:`_match_deepid_tail`) evaluated from running linear sums.

    The first dense layer and the convolution of the tail are linear in the
    measured activations, so pruning channel c subtracts that channel's
    contribution from their pre-activations (kept in float64 per image); the
    rest of the tail is evaluated from them. A top-1 class is *certified* when
    no other logit comes within a guard band of it: ``guard`` times the
    float32 unit roundoff times the image's logit scale (the output kernel's
    largest column norm times the norms of the summands of the hidden layer,
    plus the top logit). The running sums are float64 (see
    :func:`_lab_tail_functions`), so their own error, bounded by 2**-33
    times their *magnitude* (fixed per image at the start: the norms of the
    sums of absolute values of all their terms), is added to that scale.
    Float32 rounding moves these logits by at most a few
    units of that scale (measured by the tests against float64 and against
    the whole Keras model), so the default guard of 256 leaves a wide safety
    factor; images that are not certified are re-run through the model's own
    Keras layers.
    """

    def __init__(self, layers, measure_shape, guard):
        import tensorflow as tf

        as_array = lambda variable: np.asarray(variable, dtype=np.float32)  # noqa: E731
        zeros = lambda layer, size: as_array(layer.bias) if layer.use_bias else np.zeros(size, np.float32)  # noqa: E731
        self.guard = tf.constant(float(guard), tf.float32)
        dense_map, conv_map = _channel_maps(layers, measure_shape)
        self.dense_map, self.conv_map = dense_map.astype(np.float64), conv_map.astype(np.float64)
        wide = lambda variable: tf.constant(np.asarray(variable, dtype=np.float64))  # noqa: E731
        output = as_array(layers["output"].kernel)
        self.weights = (tf.constant(as_array(layers["dense_2"].kernel)),
                        tf.constant(zeros(layers["dense_2"], layers["dense_2"].units)),
                        tf.constant(output), tf.constant(zeros(layers["output"], layers["output"].units)),
                        tf.constant(float(np.sqrt((output.astype(np.float64) ** 2).sum(axis=0)).max()), tf.float32),
                        *(tf.constant(value, tf.float32) for value in _magnitude_factors(layers, measure_shape)))
        self.dense_1 = wide(as_array(layers["dense_1"].kernel))
        self.bias_1 = wide(zeros(layers["dense_1"], layers["dense_1"].units))
        self.kernel = wide(as_array(layers["conv"].kernel))
        self.conv_bias = wide(zeros(layers["conv"], layers["conv"].filters))
        self.strides = tuple(int(step) for step in layers["conv"].strides)
        self.start_function, self.step_function, self.steps_function = _compiled_lab_tail()

    @staticmethod
    def fits(layers, measure_shape, limit_bytes=256 * 2 ** 20):
        """Whether the per-channel maps stay small enough to hold in memory."""
        height, width, channels = measure_shape
        kernel = layers["conv"].kernel.shape
        strides = layers["conv"].strides
        outputs = ((height - kernel[0]) // strides[0] + 1) * ((width - kernel[1]) // strides[1] + 1) * kernel[3]
        return 8 * channels * height * width * outputs <= limit_bytes

    def start(self, activations):
        """(dense pre-activation, conv pre-activation, magnitude, top-1, certified) of the unpruned tail.

        ``magnitude`` (per image) is the scale of the rounding error the running
        sums carry at every later step (see :func:`_lab_tail_functions`)."""
        activations = np.asarray(activations, np.float32)
        state = self.start_function(activations, self.dense_1, self.bias_1, self.kernel, self.conv_bias,
                                    self.strides, self.weights, self.guard)
        return tuple(np.asarray(value) for value in state)

    def step(self, linear_1, convolution, magnitude, values, channel):
        """Remove ``channel`` (its activations ``values`` (n, H*W)); returns the new state, top-1, certified."""
        linear_1, convolution, best, sure = self.step_function(linear_1, convolution, magnitude, values,
                                                               self.dense_map[channel], self.conv_map[channel],
                                                               self.weights, self.guard)
        return np.asarray(linear_1), np.asarray(convolution), np.asarray(best), np.asarray(sure)

    def steps(self, linear_1, convolution, magnitude, values, channels):
        """Remove ``channels`` one after the other (values (len(channels), n, H*W)); (top-1, certified) per step."""
        best, sure = self.steps_function(linear_1, convolution, magnitude, values, self.dense_map[channels],
                                         self.conv_map[channels], self.weights, self.guard)
        return np.asarray(best), np.asarray(sure)


def _dense_phase_start(active_counts, count, gather_cost=1.5):
    """The step after which every image is updated at every step (the rest only where the channel is active).

    Minimises gather_cost * (active images before) + count * (steps after):
    updating only the active images costs a gather and a scatter per image.
    """
    steps = len(active_counts)
    before = np.concatenate([[0.0], np.cumsum(active_counts, dtype=np.float64)]) * gather_cost
    after = count * (steps - np.arange(steps + 1, dtype=np.float64))
    return int(np.argmin(before + after))


def predict_pruned(classifier, layer, channel_sets, images, batch_size=DEFAULT_BATCH, progress=None):
    """Predictions of ``classifier`` with each set of ``layer``'s channels pruned, running the head once.

    Exact: the pruned channels are masked after the measurement layer and the
    rest of the network runs through the model's own Keras layers (the
    whole-model path is used when that shortcut does not apply). Runs as the
    classifier's execution says (see :class:`PruningDefense`).

    Args:
        classifier: a :class:`goodnet.models.Classifier`.
        layer: the convolution's name.
        channel_sets: sequence of channel-index collections.
        images: raw-pixel images (N, 55, 47, 3).
        batch_size: images per TensorFlow call.
        progress: progress bars (None: only for long work).

    Returns:
        np.ndarray: (len(channel_sets), N) predicted classes (int32).

    Example:
        >>> predict_pruned(bd_net, "conv_3", [[], ranking[:45]], valid.images)
    """
    model = classifier.model
    plan = plan_sweep(model, layer, classifier.path)
    filters = int(plan.layer.filters)
    sets = [_check_channels(channels, filters, layer) for channels in channel_sets]
    images = np.asarray(images, np.float32)
    if not plan.shortcut:
        logger.warning("pruning %s: exact slow path (%s)", layer, plan.reason)
        results = []
        for channels in sets:
            pruned = classifier.with_model(prune_model(model, layer, channels, classifier.path))
            results.append(pruned.predict(images, batch_size, progress).astype(np.int32))
        return np.stack(results) if results else np.zeros((0, len(images)), np.int32)
    execution = Execution.of(classifier)
    activations = run_batches(_head_function(model, plan, classifier.divisor, execution), images, batch_size,
                              progress, "activations")
    with execution.placement():
        tail = _tail_function(model, plan)
        results = []
        for channels in sets:
            keep = np.ones(filters, np.float32)
            keep[channels] = 0.0
            results.append(_argmax_rows(tail, activations, keep, batch_size))
    return np.stack(results) if results else np.zeros((0, len(images)), np.int32)


# --------------------------------------------------------------------------- the estimator


@dataclasses.dataclass
class PruneCurve:
    """Figures after every step of the sweep (step 0 = the unpruned model).

    Attributes:
        channels: channel pruned at each step (-1 at step 0).
        fraction_pruned: share of the layer's channels pruned after the step.
        clean_accuracy: clean validation accuracy after the step.
        attack_success: (steps + 1, files) ASR of each poisoned validation file.
        poisoned_names: names of the poisoned files (column labels).
    """

    channels: np.ndarray
    fraction_pruned: np.ndarray
    clean_accuracy: np.ndarray
    attack_success: np.ndarray
    poisoned_names: list

    @property
    def steps(self):
        return np.arange(len(self.channels))

    def rows(self):
        """One dict per step (what the CSV and JSON files hold)."""
        rows = []
        for step in self.steps:
            row = {"step": int(step), "channel": int(self.channels[step]),
                   "fraction_pruned": float(self.fraction_pruned[step]),
                   "clean_accuracy": float(self.clean_accuracy[step])}
            for index, name in enumerate(self.poisoned_names):
                row[f"attack_success_rate[{name}]"] = float(self.attack_success[step, index])
            rows.append(row)
        return rows


def select_steps(accuracy, drops=DEFAULT_DROPS, policy="first-reached"):
    """The steps whose pruned models are saved, one per accuracy drop X (in points).

    Args:
        accuracy: clean validation accuracy per step (step 0 unpruned), fractions.
        drops: X values in percentage points.
        policy: "first-reached" (the lab's convention): the first step whose
            accuracy is at least X points below step 0's; "last-within": the
            step before it, the last one still less than X points below.

    Returns:
        dict: {X: step or None (never reached by "first-reached")}.

    Example:
        >>> select_steps(np.array([0.99, 0.98, 0.96, 0.90]), drops=(2,))
        {2: 2}
    """
    if policy not in POLICIES:
        raise OptionError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    accuracy = np.asarray(accuracy, dtype=np.float64)
    chosen = {}
    for drop in drops:
        if not drop > 0:
            raise OptionError(f"drops: expected accuracy drops above 0 points, got {drop}")
        # Compare in points with a tolerance far below one image out of millions.
        reached = np.flatnonzero((accuracy[0] - accuracy[1:]) * 100.0 >= float(drop) - 1e-9) + 1
        if policy == "first-reached":
            chosen[drop] = int(reached[0]) if reached.size else None
        else:
            chosen[drop] = int(reached[0]) - 1 if reached.size else len(accuracy) - 1
    return chosen


class PruningDefense:
    """The lab's pruning sweep over one convolution, as a scikit-learn style estimator.

    Args:
        classifier: the :class:`goodnet.models.Classifier` to repair (the BadNet).
        layer: the convolution whose output channels are pruned.
        drops: accuracy drops X (points) at which models are selected.
        policy: "first-reached" or "last-within" (see :func:`select_steps`).
        method: "auto" (fastest exact method that applies), "incremental",
            "masked-tail" or "full" (the straightforward method).
        guard: the incremental method certifies a top-1 class when no other
            logit is within ``guard`` float32 unit roundoffs (times the
            image's logit scale) of it; the other images are re-run through
            the Keras tail (a huge guard sends every image there).
        batch_size: images per TensorFlow call (per device).
        progress: progress bars (None: only for long work).

    Where it runs comes from ``classifier.execution`` (see
    :meth:`goodnet.models.Classifier.configure`): the pass up to the
    measurement layer (and, for ``method="full"``, every whole-model pass) is
    the compiled forward path, replicated over the execution's devices with
    each device running exactly one device's batches (identical results) and
    computed in its precision; the rest of the sweep (the fused TensorFlow
    calls of the incremental method, the masked Keras tail, the re-checks)
    runs in float32 on the execution's first device.

    Attributes (after ``fit``):
        plan_: the :class:`SweepPlan` (measurement layer and why a shortcut applies or not).
        method_: the method used; ``method_reason_`` why.
        mean_activations_: mean clean activation of each channel (float64).
        ranking_: channels in pruning order (increasing mean; ties by index).
        curve_: the :class:`PruneCurve`.
        clean_predictions_: (steps + 1, N) predicted classes, per step.
        poisoned_predictions_: list of (steps + 1, M) arrays, one per poisoned file.
        selected_: {X: step} chosen by ``policy`` (None: never reached).
        recomputed_rows_: images the sweep re-evaluated through Keras (fast methods).
        execution_: the :class:`goodnet.inference.Execution` the sweep ran under.

    Example:
        >>> defense = PruningDefense(load_model("bd_net.h5"), "conv_3").fit(valid, poisoned_valid=[bd_valid])
        >>> defense.curve_.clean_accuracy[defense.selected_[2]]
    """

    def __init__(self, classifier, layer="conv_3", drops=DEFAULT_DROPS, policy="first-reached", method="auto",
                 guard=DEFAULT_GUARD, batch_size=DEFAULT_BATCH, progress=None):
        self.classifier = classifier
        self.layer = layer
        self.drops = drops
        self.policy = policy
        self.method = method
        self.guard = guard
        self.batch_size = batch_size
        self.progress = progress

    # -- fitting

    def fit(self, clean_valid, poisoned_valid=()):
        """Rank the channels on ``clean_valid`` and run the sweep.

        Args:
            clean_valid: :class:`goodnet.data.LabData`, clean validation images.
            poisoned_valid: LabData of poisoned validation images (labels =
                attack targets), any number.

        Returns:
            PruningDefense: self.
        """
        if self.method not in METHODS:
            raise OptionError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.policy not in POLICIES:
            raise OptionError(f"policy: expected one of {', '.join(POLICIES)}, got {self.policy!r}")
        if len(clean_valid) == 0:
            raise OptionError(f"{clean_valid.path or 'clean data'}: data: expected at least one clean image")
        model = self.classifier.model
        self.plan_ = plan_sweep(model, self.layer, self.classifier.path)
        self.method_, self.method_reason_ = self._choose_method()
        if self.method_reason_ and self.method_ == "full":
            logger.warning("pruning %s: exact slow path (%s)", self.layer, self.method_reason_)
        logger.info("pruning %s measured at %s, method %s", self.layer, self.plan_.measure.name, self.method_)

        self.execution_ = Execution.of(self.classifier)
        with self.execution_.placement():
            self._sweep(clean_valid, poisoned_valid)
        return self

    def _sweep(self, clean_valid, poisoned_valid):
        """The head pass, the ranking and the sweep (see :meth:`fit`); sets the fitted attributes."""
        model = self.classifier.model
        datasets = [clean_valid] + list(poisoned_valid)
        sizes = [len(data) for data in datasets]
        head = _head_function(model, self.plan_, self.classifier.divisor, self.execution_)
        with progress_bar(sum(sizes), "activations", self.progress) as bar:
            parts = []
            for data in datasets:           # file by file: no concatenated copy of the images
                parts.append(run_batches(head, data.images, self.batch_size, False))
                bar.update(len(data))
        activations = parts[0] if len(parts) == 1 else np.concatenate(parts)
        del parts
        if activations.ndim < 2:
            raise ModelError(f"{self.classifier.path or 'model'}: {self.plan_.measure.name}: expected channels last")
        clean_activations = activations[:sizes[0]]
        axes = tuple(range(clean_activations.ndim - 1))
        self.mean_activations_ = clean_activations.mean(axis=axes, dtype=np.float64)
        self.ranking_ = np.argsort(self.mean_activations_, kind="stable").astype(np.int64)

        if self.method_ == "full":
            del activations
            predictions = self._sweep_full(np.concatenate([np.asarray(data.images, np.float32) for data in datasets]))
        else:
            predictions = (self._sweep_incremental(activations) if self.method_ == "incremental"
                           else self._sweep_masked(activations))
        boundaries = np.cumsum(sizes)[:-1]
        parts = np.split(predictions, boundaries, axis=1)
        self.clean_predictions_ = parts[0]
        self.poisoned_predictions_ = parts[1:]
        self.curve_ = self._curve(datasets)
        self.selected_ = select_steps(self.curve_.clean_accuracy, self.drops, self.policy)

    def _choose_method(self):
        plan = self.plan_
        if self.method == "full":
            return "full", "requested"
        if not plan.shortcut:
            return "full", plan.reason
        if self.method == "incremental" and plan.deepid is None:
            raise OptionError(f"method: 'incremental' needs the lab's two-branch tail after {plan.measure.name} "
                             "(flatten->dense and conv->flatten->dense, add, relu, dense softmax); use 'masked-tail'")
        if self.method in ("incremental", "masked-tail"):
            return self.method, "requested"
        if plan.deepid is not None and _LabTail.fits(plan.deepid, tuple(plan.measure.output.shape[1:])):
            return "incremental", f"the lab's two-branch tail after {plan.measure.name}"
        return "masked-tail", f"the layers after {plan.measure.name} read only its output"

    def _sweep_masked(self, activations):
        """Predictions (steps + 1, N) by the masked-tail method."""
        channels = activations.shape[-1]
        tail = _tail_function(self.classifier.model, self.plan_)
        spatial = tuple(range(1, activations.ndim - 1))
        active = np.any(activations != 0, axis=spatial)          # (N, C): channel c non-zero somewhere
        keep = np.ones(channels, np.float32)
        predictions = np.empty((channels + 1, len(activations)), np.int32)
        self.recomputed_rows_ = 0
        with progress_bar(int(active.sum()) + len(activations), "pruning sweep", self.progress) as bar:
            for step in range(channels + 1):
                rows = np.arange(len(activations))
                if step:
                    channel = self.ranking_[step - 1]
                    keep[channel] = 0.0
                    predictions[step] = predictions[step - 1]
                    rows = np.flatnonzero(active[:, channel])
                if rows.size:
                    predictions[step, rows] = _argmax_rows(tail, activations[rows], keep, self.batch_size)
                    self.recomputed_rows_ += int(rows.size)
                bar.update(int(rows.size))
        return predictions

    def _sweep_incremental(self, activations):
        """Predictions (steps + 1, N) by the incremental method (see :class:`_LabTail`).

        Steps where few images have the pruned channel non-zero update only
        those images (gathered); from the step on which the remaining work is
        cheaper done for every image, blocks of images run all remaining
        steps in one TensorFlow call. Uncertified images are re-run through
        the Keras tail, grouped by step.
        """
        count, height, width, channels = activations.shape
        tail = _LabTail(self.plan_.deepid, (height, width, channels), self.guard)
        active = np.any(activations != 0, axis=(1, 2))[:, self.ranking_]      # (N, steps)
        dense_from = _dense_phase_start(active.sum(axis=0), count)
        # channel-major copy: one channel's activations of the images are contiguous
        by_channel = np.ascontiguousarray(activations.reshape(count, height * width, channels).transpose(2, 0, 1))
        predictions = np.empty((channels + 1, count), np.int32)
        uncertain = np.zeros((channels + 1, count), bool)
        block = max(1, int(self.batch_size))
        work = count + int(active[:, :dense_from].sum()) + count * (channels - dense_from)
        with progress_bar(work, "pruning sweep", self.progress) as bar:
            states = []
            for begin in range(0, count, block):
                linear_1, convolution, magnitude, best, sure = tail.start(activations[begin:begin + block])
                states.append((linear_1, convolution, magnitude))
                predictions[0, begin:begin + block], uncertain[0, begin:begin + block] = best, ~sure
                bar.update(len(best))
            linear_1, convolution, magnitude = (np.concatenate(parts) for parts in zip(*states))
            del states
            for step in range(1, dense_from + 1):
                channel = self.ranking_[step - 1]
                predictions[step] = predictions[step - 1]
                rows = np.flatnonzero(active[:, step - 1])
                for begin in range(0, rows.size, block):
                    part = rows[begin:begin + block]
                    linear_1[part], convolution[part], best, sure = tail.step(
                        linear_1[part], convolution[part], magnitude[part], by_channel[channel, part], channel)
                    predictions[step, part], uncertain[step, part] = best, ~sure
                bar.update(int(rows.size))
            late = self.ranking_[dense_from:]
            if late.size:
                block = max(block, DENSE_BLOCK)    # all remaining steps per call: larger blocks amortise better
                for begin in range(0, count, block):
                    part = slice(begin, begin + block)
                    values = by_channel[late, part]
                    best, sure = tail.steps(linear_1[part], convolution[part], magnitude[part], values, late)
                    predictions[dense_from + 1:, part], uncertain[dense_from + 1:, part] = best, ~sure
                    bar.update(int(best.size))
        del linear_1, convolution, by_channel
        self.recomputed_rows_ = self._recheck(activations, predictions, uncertain, active, dense_from)
        evaluated = count + int(active[:, :dense_from].sum()) + count * (channels - dense_from)
        self.certified_rows_ = evaluated - int(uncertain.sum())
        return predictions

    def _recheck(self, activations, predictions, uncertain, active, dense_from):
        """Re-run the uncertified (step, image) pairs through the Keras tail; returns how many.

        Up to ``dense_from``, an image whose pruned channel is all zero keeps
        its previous prediction (re-copied after that step's re-check)."""
        tail = _tail_function(self.classifier.model, self.plan_)
        keep = np.ones(activations.shape[-1], np.float32)
        total = 0
        for step in range(len(predictions)):
            if step:
                keep[self.ranking_[step - 1]] = 0.0
            if 1 <= step <= dense_from:
                unchanged = ~active[:, step - 1]
                predictions[step, unchanged] = predictions[step - 1, unchanged]
            rows = np.flatnonzero(uncertain[step])
            if rows.size:
                predictions[step, rows] = _argmax_rows(tail, activations[rows], keep, self.batch_size)
                total += int(rows.size)
        return total

    def _sweep_full(self, images):
        """Predictions (steps + 1, N) by the straightforward method: zero the weights, re-run the whole model."""
        import keras

        model = self.classifier.model
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        forward = compiled_forward(copy, self.classifier.divisor, self.execution_)
        layer = forward.model.get_layer(self.layer)   # the model the function runs (precision clone, replica)
        channels = int(layer.filters)
        predictions = np.empty((channels + 1, len(images)), np.int32)
        kernel = np.array(layer.kernel)
        bias = np.array(layer.bias) if layer.bias is not None else None
        with progress_bar((channels + 1) * len(images), "pruning sweep (whole model)", self.progress) as bar:
            for step in range(channels + 1):
                if step:
                    channel = self.ranking_[step - 1]
                    kernel[..., channel] = 0.0
                    layer.kernel.assign(kernel)
                    if bias is not None:
                        bias[channel] = 0.0
                        layer.bias.assign(bias)
                predictions[step] = run_batches(forward, images, self.batch_size, False).argmax(axis=1)
                bar.update(len(images))
        self.recomputed_rows_ = (channels + 1) * len(images)
        return predictions

    def _curve(self, datasets):
        channels = len(self.ranking_)
        steps = np.arange(channels + 1)
        clean = datasets[0]
        accuracy = np.mean(self.clean_predictions_ == clean.labels[None, :], axis=1)
        attack = np.stack([np.mean(predictions == data.labels[None, :], axis=1)
                           for predictions, data in zip(self.poisoned_predictions_, datasets[1:])], axis=1) \
            if len(datasets) > 1 else np.zeros((channels + 1, 0))
        names = _short_names([data.path or f"poisoned_{index}" for index, data in enumerate(datasets[1:])])
        return PruneCurve(np.concatenate([[-1], self.ranking_]).astype(np.int64), steps / channels,
                          accuracy, attack, names)

    # -- results

    def pruned_classifier(self, step):
        """The Classifier with the first ``step`` channels of ``ranking_`` pruned (a new Keras model)."""
        if not 0 <= int(step) <= len(self.ranking_):
            raise OptionError(f"step: expected 0..{len(self.ranking_)}, got {step}")
        model = prune_model(self.classifier.model, self.layer, self.ranking_[:int(step)], self.classifier.path)
        return self.classifier.with_model(model)

    def selected_classifiers(self):
        """{X: pruned Classifier} for every selected step (steps never reached are left out)."""
        return {drop: self.pruned_classifier(step) for drop, step in self.selected_.items() if step is not None}

    def summary(self):
        """A JSON-ready dict: ranking, mean activations, curve rows and selections."""
        return {"model": self.classifier.path, "layer": self.layer, "measured_at": self.plan_.measure.name,
                "method": self.method_, "method_reason": self.method_reason_, "policy": self.policy,
                "channels": int(len(self.ranking_)), "ranking": self.ranking_.tolist(),
                "mean_activations": self.mean_activations_.tolist(),
                "baseline_accuracy": float(self.curve_.clean_accuracy[0]),
                "poisoned_files": list(self.curve_.poisoned_names),
                "selected": {str(drop): step for drop, step in self.selected_.items()},
                "execution": self.execution_.describe(), "curve": self.curve_.rows()}


def _short_names(paths):
    names = [os.path.basename(os.fspath(path)) for path in paths]
    if len(set(names)) != len(names):
        names = [os.fspath(path) for path in paths]
    return names


# --------------------------------------------------------------------------- files


def curve_csv_text(curve):
    """The curve as CSV text (header, one row per step)."""
    import csv
    import io

    rows = curve.rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


CURVE_FILES = {"csv": "prune_curve.csv", "json": "prune_curve.json", "png": "prune_curve.png"}


def output_names(drops, extension=".h5"):
    """Every file name :func:`run_pruning_defense` may write for these drops."""
    return [model_filename(drop, extension) for drop in drops] + list(CURVE_FILES.values())


def model_filename(drop, extension=".h5"):
    """``model_X=2.h5`` for drop 2 (integers without a decimal point)."""
    text = f"{drop:g}" if isinstance(drop, float) else str(drop)
    return f"model_X={text}{extension}"


def run_pruning_defense(classifier, clean_valid, poisoned_valid, out_dir, layer="conv_3", drops=DEFAULT_DROPS,
                        policy="first-reached", method="auto", batch_size=DEFAULT_BATCH, progress=None,
                        protect=(), plot=True, extension=".h5"):
    """Run the sweep and write everything the lab asks for into ``out_dir``.

    Writes ``prune_curve.csv``, ``prune_curve.json``, ``prune_curve.png`` and
    ``model_X=<X>.h5`` for every selected X (atomically, never over an input).

    Args:
        classifier: the BadNet (:class:`goodnet.models.Classifier`).
        clean_valid: clean validation LabData.
        poisoned_valid: poisoned validation LabData list.
        out_dir: output folder (created).
        layer, drops, policy, method, batch_size, progress: see :class:`PruningDefense`.
        protect: input paths that must never be overwritten.
        plot: write the PNG.
        extension: ".h5" (legacy, opens in plain Keras) or ".keras".

    Returns:
        dict: ``defense`` (the fitted :class:`PruningDefense`), ``summary``
        (its JSON dict plus ``files``), ``models`` ({X: path}).

    Example:
        >>> result = run_pruning_defense(bd_net, valid, [bd_valid], "out/prune")
        >>> result["models"][2]
        'out/prune/model_X=2.h5'
    """
    from goodnet.files import write_text
    from goodnet.models import save_model

    import json

    defense = PruningDefense(classifier, layer, drops, policy, method, batch_size=batch_size,
                             progress=progress).fit(clean_valid, poisoned_valid)
    os.makedirs(out_dir, exist_ok=True)
    protect = tuple(protect) + tuple(data.path for data in [clean_valid, *poisoned_valid] if data.path)
    models = {}
    for drop, step in defense.selected_.items():
        if step is None:
            logger.warning("accuracy never dropped by %s points: no %s", drop, model_filename(drop, extension))
            continue
        path = os.path.join(out_dir, model_filename(drop, extension))
        save_model(defense.pruned_classifier(step), path, protect=protect)
        models[drop] = path
    summary = defense.summary()
    files = {kind: os.path.join(out_dir, CURVE_FILES[kind]) for kind in ("csv", "json")}
    write_text(files["csv"], curve_csv_text(defense.curve_), protect=protect)
    if plot:
        from goodnet.plots import plot_prune_curve

        files["png"] = plot_prune_curve(defense.curve_, defense.selected_, os.path.join(out_dir, CURVE_FILES["png"]),
                                        title=f"pruning {layer} of {os.path.basename(classifier.path) or 'model'}")
    summary["models"] = {str(drop): path for drop, path in models.items()}
    summary["files"] = dict(files)
    write_text(files["json"], json.dumps(summary, indent=2) + "\n", protect=protect)
    return {"defense": defense, "summary": summary, "models": models}
