"""Trigger unlearning: recover a trigger-like patch from clean data, then teach the model to ignore it.

A backdoor is a shortcut: a small patch that sends any image to one class.
:class:`TriggerSearch` looks for the strongest such shortcut the current
model has, using clean images only: a mask ``m`` (H, W, 1) in [0, 1] and a
pattern ``p`` (H, W, C) in 0-255 such that the stamped images
``(1 - m) * x + m * p`` are misclassified as much as possible (untargeted: it
maximises the cross-entropy of the true labels), while the mask covers at
most ``area`` of the image on average (after every step the mask logits are
shifted down just enough to meet that bound). Fine-tuning on stamped images with
their true labels (see ``FineTuneRecipe.unlearn``) then removes the
shortcut. This is the unlearning step of Neural Cleanse (Wang et al. 2019)
without its per-class search, in the spirit of I-BAU (Zeng et al. 2022),
which alternates a universal-perturbation search with training on it.
"""

import numpy as np

from goodnet.base import Defense, Interval, check_is_fitted


def stamp(images, mask, pattern):
    """``(1 - mask) * images + mask * pattern``: the images with a trigger pasted in (raw 0-255 pixels).

    Args:
        images: (N, H, W, C) raw pixels.
        mask: (H, W, 1) or (H, W, C) weights in [0, 1].
        pattern: (H, W, C) raw pixels.

    Returns:
        np.ndarray: float32 stamped images.

    Example:
        >>> stamped = stamp(images, search.mask_, search.pattern_)
    """
    images = np.asarray(images, np.float32)
    mask = np.asarray(mask, np.float32)
    return (1.0 - mask) * images + mask * np.asarray(pattern, np.float32)


class TriggerSearch(Defense):
    """Find the mask and pattern that most hurt a model on clean images (untargeted, area-bounded).

    Each call of :meth:`fit` runs ``steps`` Adam steps from where the previous
    call stopped (warm start), so calling it once per fine-tuning epoch tracks
    the model as it changes. It follows goodnet's estimator contract
    (:mod:`goodnet.base`: the constructor stores, ``fit`` validates and
    returns self) with its own ``fit`` shape: it searches against the Keras
    model being fine-tuned (``FinePruning`` calls it every epoch), not a
    :class:`goodnet.models.Classifier`.

    Args:
        area: the largest mean mask value (the share of the image the trigger
            may cover), in (0, 1].
        steps: optimisation steps per ``fit``.
        learning_rate: Adam learning rate on the mask and pattern logits.
        batch_size: images drawn per ``fit`` (at most all of them).
        seed: seed of the initial pattern and of the drawn images.

    Attributes (after ``fit``):
        mask_: (H, W, 1) float32 mask in [0, 1].
        pattern_: (H, W, C) float32 pattern, 0-255.
        loss_: the cross-entropy of the true labels on the stamped draw at the last step.

    Example:
        >>> search = TriggerSearch(area=0.05).fit(model, images, labels, divisor=255.0)
        >>> stamped = search.stamped(images)     # stamp(images, search.mask_, search.pattern_)
    """

    _parameter_constraints = {"area": [Interval(float, 0, 1, "right")], "steps": [Interval(int, 0)],
                              "learning_rate": [Interval(float, 0, closed="neither")],
                              "batch_size": [Interval(int, 1)], "seed": [Interval(int, 0)]}

    def __init__(self, area=0.05, steps=10, learning_rate=0.1, batch_size=128, seed=0):
        self.area = area
        self.steps = steps
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.seed = seed

    def _start(self, shape):
        import keras
        import tensorflow as tf

        height, width, channels = shape
        self._rng = np.random.default_rng([self.seed, 7])
        # The mask starts uniform at about the allowed area; the pattern starts as noise.
        start = np.log(self.area / (1.0 - self.area)) if self.area < 1 else 3.0
        self._mask_logits = tf.Variable(np.full((height, width, 1), start, np.float32))
        self._pattern_logits = tf.Variable(self._rng.normal(0.0, 1.0, (height, width, channels)).astype(np.float32))
        self._optimizer = keras.optimizers.Adam(self.learning_rate)
        self._step = None

    def _compiled_step(self, model, divisor):
        import keras
        import tensorflow as tf

        area = np.float32(self.area)

        def area_shift(logits):
            # The smallest shift c >= 0 with mean(sigmoid(logits - c)) <= area, by bisection (0 when within).
            low, high = tf.constant(0.0), tf.constant(40.0)
            for _ in range(30):
                middle = 0.5 * (low + high)
                over = tf.reduce_mean(tf.sigmoid(logits - middle)) > area
                low, high = tf.where(over, middle, low), tf.where(over, high, middle)
            within = tf.reduce_mean(tf.sigmoid(logits)) <= area
            return tf.where(within, 0.0, high)

        variables = [self._mask_logits, self._pattern_logits]
        scale = np.float32(255.0 / divisor)

        @tf.function(reduce_retracing=True)
        def step(images, labels):
            with tf.GradientTape() as tape:
                mask = tf.sigmoid(self._mask_logits)
                stamped = (1.0 - mask) * images + mask * tf.sigmoid(self._pattern_logits) * scale
                outputs = model(stamped, training=False)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, outputs))
                objective = -loss   # the search maximises the loss
            self._optimizer.apply_gradients(zip(tape.gradient(objective, variables), variables))
            self._mask_logits.assign(self._mask_logits - area_shift(self._mask_logits))
            return loss

        return step

    def fit(self, model, images, labels, divisor=255.0):
        """Run ``steps`` search steps against ``model`` on a draw of ``images`` (raw pixels) and ``labels``.

        Args:
            model: the Keras model under repair (its current weights are used; they are not changed).
            images: (N, H, W, C) raw 0-255 clean images.
            labels: (N,) their labels.
            divisor: the model's input scaling (inputs are ``images / divisor``).

        Returns:
            TriggerSearch: self.
        """
        import tensorflow as tf

        self._validate_params()
        images = np.asarray(images, np.float32)
        if not hasattr(self, "_mask_logits"):
            self._start(images.shape[1:])
        if self._step is None or self._step_model is not model:
            self._step, self._step_model = self._compiled_step(model, divisor), model
        draw = self._rng.choice(len(images), min(self.batch_size, len(images)), replace=False)
        batch = tf.constant(images[draw] / np.float32(divisor))
        targets = tf.constant(np.asarray(labels)[draw])
        loss = None
        for _ in range(self.steps):
            loss = self._step(batch, targets)
        self.loss_ = float(loss) if loss is not None else float("nan")
        self.mask_ = tf.sigmoid(self._mask_logits).numpy()
        self.pattern_ = (tf.sigmoid(self._pattern_logits) * 255.0).numpy()
        return self

    def stamped(self, images):
        """``images`` (raw pixels) with the recovered trigger pasted in (:func:`stamp` with ``mask_``, ``pattern_``)."""
        check_is_fitted(self, ("mask_", "pattern_"))
        return stamp(images, self.mask_, self.pattern_)
