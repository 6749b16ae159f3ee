"""goodnet's own serializable Keras layers: the GoodNet combiner and the STRIP gate.

Both are registered with ``keras.saving.register_keras_serializable(package="goodnet")``,
so a model holding them opens with :func:`goodnet.load_model`, or with plain Keras
once this module is imported (or given as ``custom_objects``)::

    import keras
    from goodnet.layers import custom_objects
    model = keras.models.load_model("G.h5", custom_objects=custom_objects(), compile=False)

- :class:`GoodNetCombiner` turns the class scores of a BadNet B and of a repaired
  B' (and optionally a STRIP entropy) into N+1 scores: B's scores where
  ``argmax B == argmax B'`` (and the entropy is not below the threshold), else
  a one-hot on N ("poisoned").
- :class:`StripGate` wraps a classifier network and returns, for each input, the
  network's own scores and the STRIP entropy: the mean over ``copies`` perturbed
  copies (the input superimposed with each clean image of a stored bank) of the
  Shannon entropy (log2) of the network's softmax over classes. The copies are
  run through the network in chunks of ``chunk_inputs`` inputs (all their copies
  in one call), so memory stays bounded whatever the batch size.
"""

import math

import keras

from goodnet.errors import OptionError

PACKAGE = "goodnet"
BLENDS = ("add", "alpha")


def custom_objects():
    """The ``custom_objects`` dict plain ``keras.models.load_model`` needs for goodnet models."""
    classes = (GoodNetCombiner, StripGate, PixelScaling)
    return {**{cls.__name__: cls for cls in classes}, **{f"{PACKAGE}>{cls.__name__}": cls for cls in classes}}


def entropy_bits(probabilities, axis=-1):
    """Shannon entropy in bits of probability vectors along ``axis`` (0 log 0 = 0).

    Args:
        probabilities: tensor of softmax outputs.
        axis: the class axis.

    Returns:
        tensor: the entropies, ``axis`` removed.
    """
    probabilities = keras.ops.convert_to_tensor(probabilities, "float32")
    positive = keras.ops.greater(probabilities, 0.0)
    safe = keras.ops.where(positive, probabilities, keras.ops.ones_like(probabilities))
    plogp = keras.ops.where(positive, probabilities * keras.ops.log(safe), keras.ops.zeros_like(probabilities))
    return -keras.ops.sum(plogp, axis=axis) / math.log(2.0)


def superimpose(images, bank, blend="add", alpha=0.5, maximum=255.0):
    """Superimpose every image with every bank image.

    Args:
        images: tensor (K, H, W, C).
        bank: tensor (N, H, W, C), same pixel units as ``images``.
        blend: "add" (the paper's ``addWeighted(x, 1, clean, 1, 0)`` with
            saturation at ``maximum``) or "alpha" (``(1 - alpha) x + alpha clean``).
        alpha: the weight of the bank image for "alpha".
        maximum: the largest pixel value (255 for raw pixels, 1 for unit scaling).

    Returns:
        tensor (K, N, H, W, C).
    """
    images = keras.ops.expand_dims(images, 1)
    bank = keras.ops.expand_dims(bank, 0)
    if blend == "add":
        return keras.ops.clip(images + bank, 0.0, maximum)
    if blend == "alpha":
        return (1.0 - alpha) * images + alpha * bank
    raise OptionError(f"blend: expected one of {BLENDS}, got {blend!r}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PixelScaling(keras.layers.Layer):
    """``inputs * multiplier / divisor``: converts one model's pixel scaling to another's.

    Division (not multiplication by a reciprocal) gives exactly the values the
    lab's scripts compute for pixels / 255.

    Args:
        multiplier: the first model's divisor (back to raw 0-255 pixels).
        divisor: the second model's divisor.
    """

    def __init__(self, multiplier=1.0, divisor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.multiplier = float(multiplier)
        self.divisor = float(divisor)

    def call(self, inputs):
        if self.multiplier != 1.0:
            inputs = inputs * self.multiplier
        if self.divisor != 1.0:
            inputs = inputs / self.divisor
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"multiplier": self.multiplier, "divisor": self.divisor})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GoodNetCombiner(keras.layers.Layer):
    """N+1 scores from a BadNet's and a repaired model's scores (and an optional STRIP entropy).

    Inputs ``[scores_bad, scores_repaired]`` or ``[scores_bad, scores_repaired, entropy]``
    with scores (batch, N) and entropy (batch,). Output (batch, N+1): where the two
    argmaxes agree (and, if given, ``entropy >= threshold``) B's scores followed by
    0; otherwise zeros followed by 1, so that argmax answers N ("poisoned").

    Args:
        num_classes: N, the number of real classes.
        threshold: the STRIP entropy threshold, used when an entropy is given.

    Example:
        >>> combiner = GoodNetCombiner(3)
        >>> combiner([np.eye(3)[[0, 1]], np.eye(3)[[0, 2]]]).numpy().argmax(1)
        array([0, 3])
    """

    def __init__(self, num_classes, threshold=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.threshold = None if threshold is None else float(threshold)

    def call(self, inputs):
        scores_bad, scores_repaired = inputs[0], inputs[1]
        agree = keras.ops.equal(keras.ops.argmax(scores_bad, axis=-1), keras.ops.argmax(scores_repaired, axis=-1))
        if len(inputs) > 2:
            if self.threshold is None:
                raise OptionError("GoodNetCombiner: threshold: expected a number when an entropy input is given")
            agree = keras.ops.logical_and(agree, keras.ops.greater_equal(inputs[2], self.threshold))
        keep = keras.ops.expand_dims(keras.ops.cast(agree, scores_bad.dtype), -1)
        poisoned = 1.0 - keep
        return keras.ops.concatenate([scores_bad * keep, poisoned], axis=-1)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0][:-1]) + (self.num_classes + 1,)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "threshold": self.threshold})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class StripGate(keras.layers.Layer):
    """A network together with its STRIP entropy: input -> [scores, entropy].

    The clean bank is stored as a (non-trainable) weight of the layer, so a saved
    model holds it. Every input is superimposed with each of the ``copies`` bank
    images (the same images for every input: deterministic and independent of
    batching); the entropy is the mean over copies of the entropy (bits) of the
    network's softmax over classes.

    Args:
        network: the Keras model to run (it takes the same pixel units as this layer).
        bank_shape: (copies, height, width, channels) of the bank.
        blend: "add" (additive, saturated at ``maximum``) or "alpha".
        alpha: bank weight for "alpha" blending.
        maximum: the largest pixel value of the inputs (255, or 1 for unit scaling).
        chunk_inputs: inputs whose copies go through the network in one call.

    Example:
        >>> gate = StripGate(network, bank_shape=(100, 55, 47, 3))
        >>> gate.build((None, 55, 47, 3)); gate.bank.assign(clean_bank)
        >>> scores, entropy = gate(images)
    """

    def __init__(self, network, bank_shape, blend="add", alpha=0.5, maximum=255.0, chunk_inputs=16, **kwargs):
        super().__init__(**kwargs)
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        if callable(blend):  # Keras's legacy .h5 loader turns the string "add" into keras.layers.add
            blend = blend.__name__
        if blend not in BLENDS:
            raise OptionError(f"StripGate: blend: expected one of {BLENDS}, got {blend!r}")
        self.network = network
        self.bank_shape = tuple(int(size) for size in bank_shape)
        self.blend = blend
        self.alpha = float(alpha)
        self.maximum = float(maximum)
        self.chunk_inputs = max(1, int(chunk_inputs))

    @property
    def copies(self):
        """N, the number of perturbed copies per input."""
        return self.bank_shape[0]

    def build(self, input_shape):
        self.bank = self.add_weight(name="bank", shape=self.bank_shape, initializer="zeros", trainable=False)
        self.network.build(input_shape)
        self.built = True

    def _chunk_entropy(self, chunk):
        copies = superimpose(chunk, self.bank, self.blend, self.alpha, self.maximum)
        flat = keras.ops.reshape(copies, (-1,) + self.bank_shape[1:])
        scores = self.network(flat, training=False)
        per_copy = keras.ops.reshape(entropy_bits(scores), (-1, self.copies))
        return keras.ops.mean(per_copy, axis=1)

    def call(self, inputs):
        scores = self.network(inputs, training=False)
        count = keras.ops.shape(inputs)[0]
        size = self.chunk_inputs
        padding = (size - count % size) % size
        padded = keras.ops.pad(inputs, [[0, padding], [0, 0], [0, 0], [0, 0]])
        chunks = keras.ops.reshape(padded, (-1, size) + self.bank_shape[1:])
        entropies = keras.ops.map(self._chunk_entropy, chunks)
        entropy = keras.ops.reshape(entropies, (-1,))[:count]
        return [scores, entropy]

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return [(batch, int(self.network.outputs[0].shape[-1])), (batch,)]

    def get_config(self):
        config = super().get_config()
        config.update({"network": keras.saving.serialize_keras_object(self.network),
                       "bank_shape": list(self.bank_shape), "blend": self.blend, "alpha": self.alpha,
                       "maximum": self.maximum, "chunk_inputs": self.chunk_inputs})
        return config
