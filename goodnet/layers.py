"""goodnet's own serializable Keras layers: the GoodNet combiner, the STRIP gate and the BaDExpert score.

Both are registered with ``keras.saving.register_keras_serializable(package="goodnet")``,
so a model holding them opens with :func:`goodnet.load_model`, or with plain Keras
once this module is imported (or given as ``custom_objects``)::

    import keras
    from goodnet.layers import custom_objects
    model = keras.models.load_model("G.h5", custom_objects=custom_objects(), compile=False)

- :class:`GoodNetCombiner` turns the class scores of a BadNet B and of a repaired
  B' (and optionally gate signals: a STRIP entropy, a BaDExpert score, or both)
  into N+1 scores: B's scores where ``argmax B == argmax B'`` (and no signal is
  below its threshold), else a one-hot on N ("poisoned").
- :class:`StripGate` wraps a classifier network and returns, for each input, the
  network's own scores and the STRIP entropy: the mean over ``copies`` perturbed
  copies (the input superimposed with each clean image of a stored bank) of the
  Shannon entropy (log2) of the network's softmax over classes. The copies are
  run through the network in chunks of ``chunk_inputs`` inputs (all their copies
  in one call), so memory stays bounded whatever the batch size.
- :class:`ExpertScore` turns the class scores of a model M, of its backdoor
  expert and of its auxiliary model into BaDExpert's score (lower: more
  suspicious), by the rules of :mod:`goodnet.defenses.badexpert`.
"""

import math

import keras

from goodnet.errors import OptionError

PACKAGE = "goodnet"
BLENDS = ("add", "alpha")
SCORE_RULES = ("taught", "rectangle", "log-ratio", "triangle", "expert")   # goodnet.defenses.badexpert.COMBINATIONS
TINY = 1e-8   # the clamp of a confidence in a denominator (goodnet.defenses.badexpert.TINY)
SHIFT = 1     # the backdoor expert is taught (y + SHIFT) mod C for label y (goodnet.defenses.badexpert.SHIFT)


def taught_confidence(expert, answers):
    """The backdoor expert's confidence in the label it was taught for each answer, ``(answer + SHIFT) mod C``.

    Args:
        expert: (batch, C) class scores of the backdoor expert.
        answers: (batch,) integer answers of the model.
    """
    classes = keras.ops.shape(expert)[-1]
    taught = keras.ops.mod(keras.ops.cast(answers, "int32") + SHIFT, classes)
    return keras.ops.take_along_axis(expert, keras.ops.expand_dims(taught, -1), axis=-1)[:, 0]


def expert_confidences(original, expert, auxiliary):
    """From the class scores of M, its backdoor expert and its auxiliary model: M's answers, the expert's and the
    auxiliary model's confidence in them, and the expert's in the label it was taught for them
    (:func:`taught_confidence`). :class:`ExpertScore` and BaDExpert's compiled scoring both call it."""
    original, expert, auxiliary = (keras.ops.cast(value, "float32") for value in (original, expert, auxiliary))
    answers = keras.ops.argmax(original, axis=-1)
    column = keras.ops.expand_dims(answers, -1)
    x = keras.ops.take_along_axis(expert, column, axis=-1)[:, 0]
    y = keras.ops.take_along_axis(auxiliary, column, axis=-1)[:, 0]
    return answers, x, y, taught_confidence(expert, answers)


def expert_score(x, y, combination, taught=None):
    """BaDExpert's score (Keras ops, so any backend's tensors) from ``x``, the backdoor expert's confidence in the
    model's answer, ``y``, the auxiliary model's, and ``taught``, the expert's confidence in the label it was taught
    for that answer (:func:`taught_confidence`; only the "taught" rule reads it): the rules :class:`ExpertScore`
    states (low: suspicious). :class:`ExpertScore` and BaDExpert's compiled scoring both call it; the NumPy
    reference is :func:`goodnet.defenses.badexpert.combine_reference`."""
    if combination == "taught":
        return keras.ops.log(keras.ops.maximum(taught, TINY)) - keras.ops.log(keras.ops.maximum(x, TINY))
    if combination == "rectangle":
        return keras.ops.minimum(y, 1.0 - x)
    if combination == "log-ratio":
        return keras.ops.log(keras.ops.maximum(y, TINY)) - keras.ops.log(keras.ops.maximum(x, TINY))
    if combination == "triangle":
        return keras.ops.minimum(2.0 * y / keras.ops.maximum(x, TINY), (1.0 - x) / keras.ops.maximum(0.5 - y, TINY))
    return -x


def custom_objects():
    """The ``custom_objects`` dict plain ``keras.models.load_model`` needs for goodnet models."""
    classes = (GoodNetCombiner, StripGate, PixelScaling, ExpertScore)
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
    """N+1 scores from a BadNet's and a repaired model's scores (and optional gate signals).

    Inputs ``[scores_bad, scores_repaired]`` or ``[scores_bad, scores_repaired, signal, ...]``
    with scores (batch, N) and each signal (batch,) (a STRIP entropy, a BaDExpert
    score: low is suspicious). Output (batch, N+1): where the two argmaxes agree
    (and every signal is at least its threshold) B's scores followed by 0;
    otherwise zeros followed by 1, so that argmax answers N ("poisoned").

    Args:
        num_classes: N, the number of real classes.
        threshold: the threshold of the one signal (a number, the STRIP gate's
            form), or a list of one threshold per signal, in input order.

    Example:
        >>> combiner = GoodNetCombiner(3)
        >>> combiner([np.eye(3)[[0, 1]], np.eye(3)[[0, 2]]]).numpy().argmax(1)
        array([0, 3])
    """

    def __init__(self, num_classes, threshold=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        if isinstance(threshold, (list, tuple)):
            self.threshold = [float(value) for value in threshold]
        else:
            self.threshold = None if threshold is None else float(threshold)

    @property
    def thresholds(self):
        """One threshold per gate signal (empty without any)."""
        if self.threshold is None:
            return ()
        return tuple(self.threshold) if isinstance(self.threshold, list) else (self.threshold,)

    def call(self, inputs):
        scores_bad, scores_repaired = inputs[0], inputs[1]
        agree = keras.ops.equal(keras.ops.argmax(scores_bad, axis=-1), keras.ops.argmax(scores_repaired, axis=-1))
        signals = list(inputs[2:])
        if signals:
            if len(signals) != len(self.thresholds):
                raise OptionError(f"GoodNetCombiner: threshold: expected one number per gate signal "
                                  f"({len(signals)}), got {self.threshold!r}")
            for signal, threshold in zip(signals, self.thresholds):
                agree = keras.ops.logical_and(agree, keras.ops.greater_equal(signal, threshold))
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExpertScore(keras.layers.Layer):
    """BaDExpert's score from three models' class scores: ``[original, expert, auxiliary] -> score``.

    With y^ = argmax of the original model M, x_B = expert[y^] (the backdoor
    expert's confidence in M's answer), t_B = expert[(y^ + 1) mod C] (its
    confidence in the label it was taught for y^) and x_M' = auxiliary[y^]:
    "taught" log(t_B / x_B), "rectangle"
    min(x_M', 1 - x_B), "log-ratio" log(x_M' / x_B), "triangle"
    min(2 x_M' / x_B, (1 - x_B) / (0.5 - x_M')) (denominators clamped at 1e-8),
    "expert" -x_B. Low scores are suspicious (the gate passes scores at least
    the threshold). The reference is :func:`goodnet.defenses.badexpert.combine_reference`.

    Args:
        combination: one of :data:`SCORE_RULES`.

    Example:
        >>> ExpertScore("taught")([original, expert, auxiliary])   # (batch,)
    """

    def __init__(self, combination="taught", **kwargs):
        super().__init__(**kwargs)
        if combination not in SCORE_RULES:
            raise OptionError(f"ExpertScore: combination: expected one of {SCORE_RULES}, got {combination!r}")
        self.combination = combination

    def call(self, inputs):
        _, x, y, taught = expert_confidences(*inputs)
        return expert_score(x, y, self.combination, taught)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0],)

    def get_config(self):
        config = super().get_config()
        config.update({"combination": self.combination})
        return config
