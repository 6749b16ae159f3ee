"""STRIP's compiled per-copy kernels (private to :mod:`goodnet.defenses.strip`).

:class:`CopyKernel` turns (inputs, bank indices) into the entropy of every
perturbed copy: the copies of a chunk of inputs are built, run through the
network and reduced to entropies in one compiled TensorFlow call, the chunk
holding as many inputs as fit in the memory budget (:func:`chunk_inputs`).

- **Placement**: the network is the classifier's, in the execution's
  precision or in STRIP's own bfloat16 (both through
  :func:`goodnet.inference.with_precision`), replicated over the execution's
  devices with :func:`goodnet.inference.mirrored_replica`; each call's inputs
  are cut by :func:`goodnet.inference.run_replicated`, every input's copies
  staying on one replica, so the entropies are those of one device.
- **The linear path** (:func:`linear_split`): for the alpha blend on a
  network that starts with a convolution, the blend is done on that
  convolution's pre-activations (linear, so equal up to float rounding):
  conv_1 runs once per input and once per bank image instead of once per copy.
- **The bank operand**: the bank's pixels, or on the linear path ``alpha``
  times its conv_1 pre-activations, made once per kernel (one copy per replica).
"""

import logging

import numpy as np

logger = logging.getLogger(__name__)

STREAM_IMAGES = 256  # about this many images read at a time from an open file


def bytes_per_image(model):
    """Rough float32 memory one image needs in a forward pass (input plus every layer's output)."""
    values = int(np.prod(model.inputs[0].shape[1:])) * 3
    for layer in model.layers:
        try:
            shapes = layer.output.shape if not isinstance(layer.output, (list, tuple)) else layer.output[0].shape
            values += int(np.prod([size for size in shapes[1:] if size is not None]))
        except (AttributeError, ValueError, TypeError):
            continue
    return 4 * values


def chunk_inputs(model, memory_mb, copies):
    """Inputs per network call so that all their ``copies`` copies fit in ``memory_mb``."""
    budget = int(memory_mb) * 2 ** 20 // bytes_per_image(model)
    return max(1, budget // int(copies))


def stream_batch(chunk):
    """Images read at a time from an open file: a multiple of the chunk ``chunk``, so that a streamed file
    goes through exactly the network calls that the same images in memory do."""
    return chunk * max(1, STREAM_IMAGES // chunk)   # a multiple of the chunk for any number of devices


def pre_activation(conv, images):
    """A Conv2D layer's output before its activation (convolution plus bias)."""
    import keras

    pre = conv.convolution_op(images, conv.kernel)
    if conv.use_bias:
        pre = pre + keras.ops.reshape(conv.bias, (1,) * (len(pre.shape) - 1) + (-1,))
    return pre


def linear_split(model):
    """(first convolution, rest of the network) when the alpha blend can be done after conv_1, else None.

    The alpha blend is linear and so is a convolution before its activation:
    ``conv((1 - a) x + a b) = (1 - a) conv(x) + a conv(b)`` (the bias too, as
    the weights sum to 1). When the model's input feeds exactly one Conv2D
    (channels last, one group, float32), the pre-activation of every input and of
    every bank image is computed once and each copy only adds two of them.
    Results differ from blending pixels only by float rounding.
    """
    import keras

    try:
        source = model.inputs[0]
        consumers = [layer for layer in model.layers
                     if any(tensor is source for node in layer._inbound_nodes for tensor in node.input_tensors)]
        if len(consumers) != 1 or type(consumers[0]) is not keras.layers.Conv2D:
            return None
        conv = consumers[0]
        if (conv.data_format != "channels_last" or conv.groups != 1 or len(conv._inbound_nodes) != 1
                or conv.compute_dtype != "float32" or conv.kernel.dtype != "float32"):
            return None
        rest = keras.Model(conv.output, model.outputs, name=f"{model.name}_after_{conv.name}")
    except (AttributeError, ValueError, TypeError, IndexError) as error:
        logger.info("STRIP: direct path (the network cannot be split after its first layer: %s)", error)
        return None
    return conv, rest


def placed_network(model, execution, precision):
    """(network to run, MirroredStrategy or None): ``model`` in STRIP's ``precision`` or the execution's,
    replicated over the execution's devices when there are several."""
    from goodnet.inference import mirrored_replica, with_precision

    network = with_precision(model, "bfloat16" if precision == "bfloat16" else execution.precision)
    names = execution.device_names()
    if len(names) == 1:
        return network, None
    strategy, replica = mirrored_replica(network, names)
    return replica, strategy


def per_copy_function(network, split, divisor, shape, blend, alpha, jit_compile):
    """Compiled: (inputs (K,H,W,C) raw, bank operand, indices (K,M)) -> per-copy entropies (K, M).

    On the linear path (``split`` not None) the bank operand is ``alpha`` times
    the bank's conv_1 pre-activations; otherwise the bank's raw pixels.
    """
    import tensorflow as tf

    from goodnet.layers import entropy_bits

    divisor, alpha = float(divisor), float(alpha)
    shape = tuple(shape)
    jit_compile = jit_compile or None   # --xla: the whole per-copy function in XLA

    if split is not None:
        conv, rest = split
        pre_shape = tuple(int(size) for size in conv.output.shape[1:])

        @tf.function(reduce_retracing=True, jit_compile=jit_compile, input_signature=[
            tf.TensorSpec((None,) + shape, tf.float32), tf.TensorSpec((None,) + pre_shape, tf.float32),
            tf.TensorSpec((None, None), tf.int32)])
        def per_copy(images, bank_pre, indices):
            # bank_pre holds alpha * conv_1(bank) already, so each copy costs one gather and one add
            pre = (1.0 - alpha) * pre_activation(conv, images / divisor if divisor != 1.0 else images)
            mixed = pre[:, None] + tf.gather(bank_pre, indices)   # (K, M, ...)
            flat = tf.reshape(mixed, (-1,) + pre_shape)
            scores = rest(conv.activation(flat), training=False)
            return tf.reshape(entropy_bits(scores), tf.shape(indices))

        return per_copy

    @tf.function(reduce_retracing=True, jit_compile=jit_compile, input_signature=[
        tf.TensorSpec((None,) + shape, tf.float32), tf.TensorSpec((None,) + shape, tf.float32),
        tf.TensorSpec((None, None), tf.int32)])
    def per_copy(images, bank, indices):
        drawn = tf.gather(bank, indices)                      # (K, M, H, W, C)
        expanded = images[:, None]
        if blend == "add":
            copies = tf.clip_by_value(expanded + drawn, 0.0, 255.0)
        else:
            copies = (1.0 - alpha) * expanded + alpha * drawn
        flat = tf.reshape(copies, (-1,) + shape)
        if divisor != 1.0:
            flat = flat / divisor
        scores = network(flat, training=False)
        return tf.reshape(entropy_bits(scores), tf.shape(indices))

    return per_copy


def replicated(per_copy, strategy, jit_compile):
    """``per_copy`` run data-parallel: each call's inputs (and their index rows) are cut into consecutive parts of
    ``part_size``, one per MirroredStrategy replica, so that every replica runs exactly the call one device would
    run; every input's copies stay on one replica. Returns ``function(images, bank, indices, part_size)``."""
    from goodnet.inference import replicated_step, run_replicated

    replica_step = per_copy.python_function   # strategy.run hands a tf.function the per-replica wrappers
    step = replicated_step(strategy, lambda images, indices, bank: replica_step(images, bank, indices), jit_compile)

    def function(images, bank, indices, part_size):
        arrays = [np.asarray(images, np.float32), np.asarray(indices, np.int32)]
        return run_replicated(strategy, step, arrays, part_size, shared=(bank,))

    return function


class CopyKernel:
    """The entropy of every perturbed copy of inputs superimposed with images of one clean bank.

    Args:
        classifier: the :class:`goodnet.models.Classifier` watched (its model, scaling, input shape).
        execution: the :class:`goodnet.inference.Execution` to run under.
        bank: the clean bank, raw pixels (B, H, W, C) float32.
        blend, alpha: the superimposition (see :class:`goodnet.defenses.strip.STRIP`).
        precision: STRIP's precision ("float32" or "bfloat16").
        memory_mb: memory budget of one network call.
        linear: try the linear path (the alpha blend after conv_1, :func:`linear_split`).

    Attributes:
        path: "linear" or "direct".
        strategy: the MirroredStrategy over the execution's devices, or None for one device.
    """

    def __init__(self, classifier, execution, bank, blend, alpha, precision="float32", memory_mb=1024,
                 linear=True):
        self.classifier, self.execution, self.bank = classifier, execution, bank
        self.blend, self.alpha, self.precision, self.memory_mb = blend, alpha, precision, memory_mb
        self.network, self.strategy = placed_network(classifier.model, execution, precision)
        self.split = linear_split(self.network) if linear and blend == "alpha" else None
        if self.split is not None and len(bank) * int(np.prod(self.split[0].output.shape[1:])) * 4 > \
                int(memory_mb) * 2 ** 20:
            self.split = None  # the bank's pre-activations would not fit the memory budget
        self.path = "direct" if self.split is None else "linear"
        self.replicas = 1 if self.strategy is None else self.strategy.num_replicas_in_sync
        self._bank_tensor = None
        self._function = None

    def twin(self, classifier, execution, precision="float32"):
        """The same kernel (bank, blend, path) for another classifier, execution or precision."""
        return CopyKernel(classifier, execution, self.bank, self.blend, self.alpha, precision, self.memory_mb,
                          linear=self.split is not None)

    def chunk_inputs(self, copies):
        """Inputs per network call so that all their copies fit in the memory budget."""
        return chunk_inputs(self.classifier.model, self.memory_mb, copies)

    def function(self):
        """The compiled per-copy function (made once)."""
        if self._function is None:
            per_copy = per_copy_function(self.network, self.split, self.classifier.divisor,
                                         self.classifier.input_shape, self.blend, self.alpha,
                                         self.execution.jit_compile)
            self._function = per_copy if self.strategy is None else replicated(per_copy, self.strategy,
                                                                               self.execution.jit_compile)
        return self._function

    def bank_operand(self):
        """The bank as the compiled function takes it: pixels, or conv_1 pre-activations on the linear path."""
        if self._bank_tensor is None:
            import tensorflow as tf

            if self.split is None:
                self._bank_tensor = tf.constant(self.bank, tf.float32)
            else:
                conv, _ = self.split
                divisor = float(self.classifier.divisor)
                alpha = float(self.alpha)

                def pre_function(images):   # eager: once per fit, so no function to trace again each fit
                    return alpha * pre_activation(conv, images / divisor if divisor != 1.0 else images)

                size = max(1, self.chunk_inputs(1))
                parts = [pre_function(tf.constant(self.bank[start:start + size], tf.float32))
                         for start in range(0, len(self.bank), size)]
                self._bank_tensor = tf.concat(parts, axis=0)
            if self.strategy is not None:   # one copy of the bank on every replica's device, made once
                bank = self._bank_tensor
                self._bank_tensor = self.strategy.experimental_distribute_values_from_function(
                    lambda context: tf.identity(bank))
        return self._bank_tensor

    def __call__(self, images, indices, bar):
        """Per-copy entropies (K, M) float32 of ``images`` (K, H, W, C) with bank ``indices`` (K, M); updates
        ``bar``."""
        import tensorflow as tf

        with self.execution.placement():
            bank = self.bank_operand()
            function = self.function()
            size = self.chunk_inputs(indices.shape[1])
            results = []
            for start in range(0, len(images), size * self.replicas):   # one chunk per device per call
                stop = start + size * self.replicas
                if self.replicas == 1:
                    scores = function(tf.constant(images[start:stop]), bank, tf.constant(indices[start:stop]))
                else:
                    scores = function(images[start:stop], bank, indices[start:stop], size)
                results.append(np.asarray(scores))
                bar.update(len(images[start:stop]) * indices.shape[1])
        if not results:
            return np.zeros((0, indices.shape[1]), np.float32)
        return np.concatenate(results, axis=0)
