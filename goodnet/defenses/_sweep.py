"""The pruning sweep's engine (private to :mod:`goodnet.defenses.pruning`): exact, and fast.

:class:`goodnet.defenses.pruning.PruningDefense` prunes a convolution's
channels one by one in ranking order and needs the whole model's prediction
for every image after every step. Zeroing a channel's kernel and bias makes
that channel exactly zero after the ReLU and the pool, and nothing after the
pool reads anything else, so:

- the network up to the measurement layer (the *head*) runs once;
- pruning channel c changes nothing for an image whose measured channel c is
  all zero: only the other images are re-evaluated at that step;
- ``masked-tail`` (:func:`sweep_masked`): those images go through the rest of
  the network (the *tail*) with the pruned channels masked, using the same
  Keras layers as the whole model, so every prediction is the whole model's;
- ``incremental`` (:func:`sweep_incremental`, chosen automatically for the
  lab's two-branch tail: flatten -> dense and conv (relu) -> flatten -> dense,
  added, relu, dense softmax): the first dense and convolution of the tail are
  linear in the measured activations, so each step subtracts the pruned
  channel's contribution from them instead of recomputing them, then
  evaluates the rest in float32 inside fused TensorFlow calls (steps where few
  images have the channel non-zero update only those images; the last steps,
  where nearly all do, run block by block, all steps in one call). A
  prediction is *certified* from that evaluation only if no other logit comes
  within a guard band of the top one (``guard`` float32 unit roundoffs times
  the image's logit scale: about 0.05 on the lab BadNet, where float32
  rounding moves the logits by about 2e-4); the other (step, image) pairs are
  re-run through the model's own Keras tail. The result is therefore the
  whole model's prediction (tests compare every step with the straightforward
  method). Measured and not used: certifying "top-1 unchanged" from the change
  of the hidden vector (Cauchy-Schwarz on the output kernel) skips the output
  layer for about a fifth of the mid-sweep images and almost none of the last
  steps, where most of the work is;
- ``full`` (:func:`sweep_full`): the straightforward method (zero the
  weights, re-run the whole model on every image at every step). Used when
  the shortcut does not apply: a convolution whose activation does not map 0
  to 0, or a tail that needs more than the measured activations.

Every sweep function returns a :class:`SweepResult`: predictions
(steps + 1, N), step 0 the unpruned model.
"""

import dataclasses

import numpy as np

from goodnet.errors import OptionError
from goodnet.inference import compiled_forward, progress_bar, run_batches
from goodnet.surgery import (_consumers, _is_convolution, _maps_zero_to_zero, activation_function,
                             convolution_layer, measurement_layer)

DENSE_BLOCK = 4096


# --------------------------------------------------------------------------- the plan

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
    measure = measurement_layer(model, layer_name, path)
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


# --------------------------------------------------------------------------- head and tail


def head_function(model, plan, divisor, execution=None):
    """The compiled network up to the measurement layer, run as ``execution`` says (devices, precision)."""
    return activation_function(model, plan.measure, divisor, execution)


def measured_activations(model, plan, divisor, execution, datasets, batch_size, progress):
    """The head's output for every image of ``datasets`` (LabData), file by file, concatenated; and the sizes."""
    head = head_function(model, plan, divisor, execution)
    sizes = [len(data) for data in datasets]
    with progress_bar(sum(sizes), "activations", progress) as bar:
        parts = []
        for data in datasets:           # file by file: no concatenated copy of the images
            parts.append(run_batches(head, data.images, batch_size, False))
            bar.update(len(data))
    activations = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del parts
    return activations, sizes


def tail_function(model, plan):
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


def argmax_rows(function, activations, keep, batch_size):
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



# --------------------------------------------------------------------------- the sweeps


def choose_method(plan, method):
    """(method used, why): ``method`` ("auto", "incremental", "masked-tail" or "full") as ``plan`` allows it."""
    if method == "full":
        return "full", "requested"
    if not plan.shortcut:
        return "full", plan.reason
    if method == "incremental" and plan.deepid is None:
        raise OptionError(f"method: 'incremental' needs the lab's two-branch tail after {plan.measure.name} "
                          "(flatten->dense and conv->flatten->dense, add, relu, dense softmax); use 'masked-tail'")
    if method in ("incremental", "masked-tail"):
        return method, "requested"
    if plan.deepid is not None and _LabTail.fits(plan.deepid, tuple(plan.measure.output.shape[1:])):
        return "incremental", f"the lab's two-branch tail after {plan.measure.name}"
    return "masked-tail", f"the layers after {plan.measure.name} read only its output"


@dataclasses.dataclass
class SweepResult:
    """What a sweep computed.

    Attributes:
        predictions: (steps + 1, N) predicted classes (int32), step 0 unpruned.
        recomputed_rows: (step, image) pairs evaluated through Keras (the
            masked tail, the re-checks, or the whole model).
        certified_rows: (step, image) pairs certified by the incremental
            method's own evaluation (0 for the other methods).
    """

    predictions: np.ndarray
    recomputed_rows: int
    certified_rows: int = 0


def sweep_masked(model, plan, activations, ranking, batch_size, progress=None):
    """The masked-tail method: at each step, the images whose pruned channel is non-zero through the masked tail."""
    channels = activations.shape[-1]
    tail = tail_function(model, plan)
    spatial = tuple(range(1, activations.ndim - 1))
    active = np.any(activations != 0, axis=spatial)          # (N, C): channel c non-zero somewhere
    keep = np.ones(channels, np.float32)
    predictions = np.empty((channels + 1, len(activations)), np.int32)
    recomputed = 0
    with progress_bar(int(active.sum()) + len(activations), "pruning sweep", progress) as bar:
        for step in range(channels + 1):
            rows = np.arange(len(activations))
            if step:
                channel = ranking[step - 1]
                keep[channel] = 0.0
                predictions[step] = predictions[step - 1]
                rows = np.flatnonzero(active[:, channel])
            if rows.size:
                predictions[step, rows] = argmax_rows(tail, activations[rows], keep, batch_size)
                recomputed += int(rows.size)
            bar.update(int(rows.size))
    return SweepResult(predictions, recomputed)


def sweep_incremental(model, plan, activations, ranking, guard, batch_size, progress=None):
    """The incremental method (see :class:`_LabTail`).

    Steps where few images have the pruned channel non-zero update only
    those images (gathered); from the step on which the remaining work is
    cheaper done for every image, blocks of images run all remaining
    steps in one TensorFlow call. Uncertified images are re-run through
    the Keras tail, grouped by step.
    """
    count, height, width, channels = activations.shape
    tail = _LabTail(plan.deepid, (height, width, channels), guard)
    active = np.any(activations != 0, axis=(1, 2))[:, ranking]      # (N, steps)
    dense_from = _dense_phase_start(active.sum(axis=0), count)
    # channel-major copy: one channel's activations of the images are contiguous
    by_channel = np.ascontiguousarray(activations.reshape(count, height * width, channels).transpose(2, 0, 1))
    predictions = np.empty((channels + 1, count), np.int32)
    uncertain = np.zeros((channels + 1, count), bool)
    block = max(1, int(batch_size))
    work = count + int(active[:, :dense_from].sum()) + count * (channels - dense_from)
    with progress_bar(work, "pruning sweep", progress) as bar:
        states = []
        for begin in range(0, count, block):
            linear_1, convolution, magnitude, best, sure = tail.start(activations[begin:begin + block])
            states.append((linear_1, convolution, magnitude))
            predictions[0, begin:begin + block], uncertain[0, begin:begin + block] = best, ~sure
            bar.update(len(best))
        linear_1, convolution, magnitude = (np.concatenate(parts) for parts in zip(*states))
        del states
        for step in range(1, dense_from + 1):
            channel = ranking[step - 1]
            predictions[step] = predictions[step - 1]
            rows = np.flatnonzero(active[:, step - 1])
            for begin in range(0, rows.size, block):
                part = rows[begin:begin + block]
                linear_1[part], convolution[part], best, sure = tail.step(
                    linear_1[part], convolution[part], magnitude[part], by_channel[channel, part], channel)
                predictions[step, part], uncertain[step, part] = best, ~sure
            bar.update(int(rows.size))
        late = ranking[dense_from:]
        if late.size:
            block = max(block, DENSE_BLOCK)    # all remaining steps per call: larger blocks amortise better
            for begin in range(0, count, block):
                part = slice(begin, begin + block)
                values = by_channel[late, part]
                best, sure = tail.steps(linear_1[part], convolution[part], magnitude[part], values, late)
                predictions[dense_from + 1:, part], uncertain[dense_from + 1:, part] = best, ~sure
                bar.update(int(best.size))
    del linear_1, convolution, by_channel
    recomputed = _recheck(model, plan, activations, ranking, predictions, uncertain, active, dense_from, batch_size)
    evaluated = count + int(active[:, :dense_from].sum()) + count * (channels - dense_from)
    return SweepResult(predictions, recomputed, evaluated - int(uncertain.sum()))


def _recheck(model, plan, activations, ranking, predictions, uncertain, active, dense_from, batch_size):
    """Re-run the uncertified (step, image) pairs through the Keras tail; returns how many.

    Up to ``dense_from``, an image whose pruned channel is all zero keeps
    its previous prediction (re-copied after that step's re-check)."""
    tail = tail_function(model, plan)
    keep = np.ones(activations.shape[-1], np.float32)
    total = 0
    for step in range(len(predictions)):
        if step:
            keep[ranking[step - 1]] = 0.0
        if 1 <= step <= dense_from:
            unchanged = ~active[:, step - 1]
            predictions[step, unchanged] = predictions[step - 1, unchanged]
        rows = np.flatnonzero(uncertain[step])
        if rows.size:
            predictions[step, rows] = argmax_rows(tail, activations[rows], keep, batch_size)
            total += int(rows.size)
    return total


def sweep_full(classifier, layer_name, images, ranking, execution, batch_size, progress=None):
    """The straightforward method: zero the weights, re-run the whole model on every image at every step."""
    import keras

    model = classifier.model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    forward = compiled_forward(copy, classifier.divisor, execution)
    layer = forward.model.get_layer(layer_name)   # the model the function runs (precision clone, replica)
    channels = int(layer.filters)
    predictions = np.empty((channels + 1, len(images)), np.int32)
    kernel = np.array(layer.kernel)
    bias = np.array(layer.bias) if layer.bias is not None else None
    with progress_bar((channels + 1) * len(images), "pruning sweep (whole model)", progress) as bar:
        for step in range(channels + 1):
            if step:
                channel = ranking[step - 1]
                kernel[..., channel] = 0.0
                layer.kernel.assign(kernel)
                if bias is not None:
                    bias[channel] = 0.0
                    layer.bias.assign(bias)
            predictions[step] = run_batches(forward, images, batch_size, False).argmax(axis=1)
            bar.update(len(images))
    return SweepResult(predictions, (channels + 1) * len(images))
