"""DP-SGD: train a DeepID with differential privacy (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016).

Each step of differentially private SGD

1. samples its batch by **Poisson sampling**: every training example joins
   independently with probability ``q = batch_size / N`` (the batch size
   varies around ``batch_size``);
2. computes **every example's gradient** of its own loss, vectorised
   (``tf.vectorized_map`` over the per-example loss, no Python loop over the
   examples);
3. **clips** each one to global L2 norm ``clip_norm`` (all the model's
   weights together: ``g * min(1, C / ||g||)``);
4. sums them, adds **Gaussian noise** ``N(0, (noise_multiplier * clip_norm)^2)``
   to every coordinate, divides by the **expected** batch size ``batch_size``
   (the usual estimator under Poisson sampling: the divisor must not depend
   on the sampled batch) and takes an optimizer step.

Clipping bounds what one example can move the model, the noise hides it;
the privacy budget (epsilon at ``delta``) of the run is the RDP accountant of
the Poisson-subsampled Gaussian mechanism over the steps taken
(:mod:`goodnet.privacy`: the classic conversion on goodnet's own RDP, and
dp-accounting's tighter one). ``target_epsilon`` picks the smallest noise
multiplier that keeps the run within a budget
(:func:`goodnet.privacy.noise_for_epsilon`) before training. Against
poisoning, the same bound on each example's influence means a small share of
poisoned examples is learned less, at a cost in clean accuracy (the PRIMER's
"backdoor relevance"; ``bench/bench_dp_sgd.py`` measures it).

The model is the lab's DeepID (:func:`goodnet.models.build_deepid`, its layer
names), trained on pixels / 255 with a cosine-decayed learning rate, by plain
SGD at rate 2 by default, or by the recipe's Adam (:mod:`goodnet.training`):
on the digits benchmark (3000 images, B = 256, 15 epochs, epsilon 8, measured)
SGD reaches 62 % validation accuracy where Adam at 0.002 stays at 25 %
(Adam rescales every coordinate by its own noisy second moment, so the
noise sets the step); it saves as
an ordinary Keras file (:func:`goodnet.models.save_model`) that ``eval.py``
and ``goodnet grade`` score. TensorFlow Privacy does not import on TF 2.16+
(Keras 3): this is a native implementation.

Fast path and reference: ``method="vectorized"`` computes the per-example
gradients of a fixed-size chunk of examples in one compiled call (the last
chunk of a step padded and masked, so the function is traced once whatever
the Poisson batch size); ``method="loop"`` takes one
``tf.GradientTape`` per example and clips and sums in float64 NumPy, the slow
obviously-correct reference. Both draw the same batches and the same noise;
the tests check that they give the same update.

What DP covers: the trained weights (and anything computed from them
alone). The per-epoch training loss in ``history_`` is computed on the
training data and is not privatised; it is reported for monitoring only.

Example:
    >>> dp = DPSGD(target_epsilon=3.0, epochs=30).fit(train.images, train.labels, 10, valid=valid)
    >>> dp.epsilon_["tight"].epsilon <= 3.0, dp.noise_multiplier_
    >>> save_model(dp.model_, "models/dp.h5")
"""

import collections.abc
import contextlib
import dataclasses
import logging
import math
import time

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, OneOf, check_is_fitted
from goodnet.options import constraints_of, option, restated_field
from goodnet.privacy import CONVERSIONS, PrivacyOptions
from goodnet.training import UNIT_DIVISOR, recipe_field, seed_everything

logger = logging.getLogger(__name__)

METHODS = ("vectorized", "loop")
OPTIMIZERS = ("adam", "sgd")
DEFAULT_CHUNK = 32   # examples per compiled per-example-gradient call (the fastest on a 2-core CPU, measured)
NOISE_SEED_TAG = 0xD9   # the noise generator's seed is (seed, this); the sampling's NumPy generator (seed, 1 + this)


def privacy_field(name, help=None, **changes):
    """A dataclass field restating :class:`goodnet.privacy.PrivacyOptions`' field ``name`` (its default, rule,
    flag and help; ``help`` replaces the help text, ``changes`` other metadata such as ``cli=False``)."""
    return restated_field(PrivacyOptions, name, help, **changes)


@dataclasses.dataclass(frozen=True)
class DPSGDOptions:
    """Every option of :class:`DPSGD`, with its default, rule and help text, once.

    The privacy setting (noise multiplier, delta, expected batch size,
    epochs, Renyi orders) restates :class:`goodnet.privacy.PrivacyOptions`
    (TensorFlow Privacy's MNIST tutorial defaults), so ``goodnet privacy-budget
    --examples N`` with the same flags prints the budget of the same run; the
    seed restates :class:`goodnet.training.TrainOptions`.
    """

    clip_norm: float = option(1.0, "L2 norm C every example's gradient is clipped to (all weights together)",
                              rule=Interval(float, 0.0, closed="neither"), metavar="C")
    noise_multiplier: float = privacy_field("noise_multiplier")
    target_epsilon: float = option(None, "privacy budget: train with the smallest noise multiplier whose epsilon at "
                                         "--delta is at most this (--noise-multiplier is then only the search's "
                                         "start)", rule=Interval(float, 0.0, closed="neither"), allow_none=True,
                                   type=float, metavar="EPSILON")
    conversion: str = option("tight", "the epsilon --target-epsilon is met under: tight (dp-accounting's "
                                      "conversion) or classic (Mironov 2017)", rule=OneOf(CONVERSIONS))
    delta: float = privacy_field("delta")
    batch_size: int = privacy_field("batch_size")
    epochs: float = privacy_field("epochs")
    learning_rate: float = option(2.0, "initial learning rate, cosine-decayed to 0 over the steps (the default "
                                       "is sgd's; adam wants the recipe's ~0.002)",
                                  rule=Interval(float, 0.0, closed="neither"), metavar="RATE")
    optimizer: str = option("sgd", "optimizer of the noisy gradients: sgd, or adam (the DeepID recipe's; under "
                                   "DP noise it learns far less, see bench/bench_dp_sgd.py)", rule=OneOf(OPTIMIZERS))
    seed: int = recipe_field("seed", "seed of the weight initialisation, the Poisson sampling and the noise")
    orders: tuple = privacy_field("orders", cli=False)


_DEFAULTS = DPSGDOptions()


@dataclasses.dataclass(frozen=True)
class DPSGDEpoch:
    """Figures after one epoch of DP-SGD (``epoch`` may be fractional for the last one)."""

    epoch: float
    steps: int
    loss: float                  # mean per-example loss of the epoch's sampled examples (not privatised)
    valid_accuracy: float        # None without validation data
    epsilon_classic: float       # epsilon at delta after ``steps`` steps, classic conversion
    epsilon_tight: float         # ... dp-accounting's conversion
    seconds: float               # since training started

    def to_dict(self):
        return dataclasses.asdict(self)

    def line(self, epochs):
        """``epoch 3/60: loss 0.4121, valid accuracy 83.20%, epsilon 1.234 (tight) 1.456 (classic), 12.3 s``."""
        parts = [f"loss {self.loss:.4f}" if math.isfinite(self.loss) else "loss n/a"]
        if self.valid_accuracy is not None:
            parts.append(f"valid accuracy {self.valid_accuracy * 100:.2f}%")
        parts.append(f"epsilon {self.epsilon_tight:.3f} (tight) {self.epsilon_classic:.3f} (classic)")
        return f"epoch {self.epoch:g}/{epochs:g}: {', '.join(parts)}, {self.seconds:.1f} s"


# -- one step's private gradient -----------------------------------------------------------------------------------


def clip_factors(norms, clip_norm):
    """``min(1, C / norm)`` per example, written ``C / max(norm, C)`` (no division by zero), NumPy.

    Example:
        >>> clip_factors(np.array([0.0, 0.5, 2.0]), 1.0)
        array([1. , 1. , 0.5])
    """
    norms = np.asarray(norms, np.float64)
    return clip_norm / np.maximum(norms, clip_norm)


@contextlib.contextmanager
def _quiet(name, fragment):
    """Drop the records of logger ``name`` whose message contains ``fragment`` while the block runs."""
    class _Filter(logging.Filter):
        def filter(self, record):
            return fragment not in record.getMessage()

    target = logging.getLogger(name)
    quiet = _Filter()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


def _quiet_dp_accounting():
    """Hide dp-accounting's "failed to converge ... excluding this order" warnings (at large q and orders near 1):
    excluding an order can only make its epsilon larger (safe), and the orders that fail are not the best ones."""
    return _quiet("absl", "failed to converge")


def _quiet_pfor():
    """Hide TensorFlow's "Conv2DBackpropFilter uses a while_loop. Fix that!" while tracing the vectorised
    per-example gradients: pfor has no vectorised rule for a convolution's per-example filter gradient and
    loops over the examples inside the compiled graph (still several times faster than a Python loop)."""
    return _quiet("tensorflow", "uses a while_loop")


class PrivateGradient:
    """One DP-SGD step's gradient for a Keras model: per-example gradients, clipping, sum, noise, / batch_size.

    ``gradient = (sum_i g_i * min(1, C / ||g_i||) + N(0, (sigma C)^2 I)) / B`` over the examples given,
    with ``g_i`` the gradient of example i's cross-entropy with respect to the model's trainable weights
    (all of them together in one L2 norm) and ``B`` the expected batch size.

    Args:
        model: a Keras model with softmax outputs (inputs as it takes them: pixels / 255 for a DeepID).
        clip_norm: C.
        noise_multiplier: sigma.
        batch_size: B, the divisor (the expected batch of Poisson sampling).
        seed: seed of the noise (a ``tf.random.Generator``; each call draws new noise).
        method: ``"vectorized"`` (``tf.vectorized_map`` over a chunk, clipping and sum in the same compiled
            call) or ``"loop"`` (one ``tf.GradientTape`` per example, clipping and sum in float64 NumPy).
        chunk_size: examples per compiled call of ``"vectorized"`` (the last chunk is padded and masked).

    Example:
        >>> private = PrivateGradient(model, 1.0, 1.1, 256)
        >>> gradients, losses, norms = private(inputs, labels)   # gradients: one tensor per trainable weight
    """

    def __init__(self, model, clip_norm, noise_multiplier, batch_size, seed=0, method="vectorized",
                 chunk_size=DEFAULT_CHUNK):
        import tensorflow as tf

        if method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        self.model = model
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.batch_size = batch_size
        self.method = method
        self.chunk_size = int(chunk_size)
        self.variables = list(model.trainable_variables)
        self.sums = [tf.Variable(tf.zeros(variable.shape, tf.float32), trainable=False) for variable in self.variables]
        self.generator = tf.random.Generator.from_seed(seed + (NOISE_SEED_TAG << 32))
        self._chunk = self._compiled_chunk() if method == "vectorized" else None
        self._one = self._compiled_one() if method == "loop" else None
        self._finish = self._compiled_finish()

    def _losses(self, inputs, labels):
        import keras

        return keras.losses.sparse_categorical_crossentropy(labels, self.model(inputs, training=True))

    def _compiled_chunk(self):
        import tensorflow as tf

        variables, sums, clip = self.variables, self.sums, np.float32(self.clip_norm)

        def one(example):
            image, label = example
            with tf.GradientTape() as tape:
                loss = self._losses(image[None], label[None])[0]
            return loss, tape.gradient(loss, variables)

        @tf.function
        def chunk(inputs, labels, mask):
            losses, gradients = tf.vectorized_map(one, (inputs, labels))
            count = tf.shape(inputs)[0]
            squares = tf.add_n([tf.reduce_sum(tf.square(tf.reshape(gradient, (count, -1))), axis=1)
                                for gradient in gradients])
            norms = tf.sqrt(squares)
            factors = mask * clip / tf.maximum(norms, clip)
            for total, gradient in zip(sums, gradients):
                total.assign_add(tf.tensordot(factors, gradient, axes=1))
            return losses, norms

        return chunk

    def _compiled_one(self):
        import tensorflow as tf

        variables = self.variables

        @tf.function
        def one(inputs, labels):
            with tf.GradientTape() as tape:
                loss = self._losses(inputs, labels)[0]
            return loss, tape.gradient(loss, variables)

        return one

    def _compiled_finish(self):
        import tensorflow as tf

        sums, generator = self.sums, self.generator
        scale = np.float32(self.noise_multiplier * self.clip_norm)
        divisor = np.float32(self.batch_size)

        @tf.function
        def finish():
            gradients = []
            for total in sums:
                gradients.append((total + generator.normal(total.shape, dtype=tf.float32) * scale) / divisor)
                total.assign(tf.zeros_like(total))
            return gradients

        return finish

    def __call__(self, inputs, labels):
        """The private gradient over the examples ``inputs`` (model-scaled) and ``labels`` (any number, 0 too).

        Returns:
            tuple: (list of tf.Tensor gradients, one per trainable weight; (n,) float64 per-example losses;
            (n,) float64 per-example gradient norms before clipping).
        """
        inputs = np.asarray(inputs, np.float32)
        labels = np.asarray(labels, np.int64)
        if self.method == "vectorized":
            with _quiet_pfor():
                losses, norms = self._vectorized(inputs, labels)
        else:
            losses, norms = self._loop(inputs, labels)
        return self._finish(), losses, norms

    def _vectorized(self, inputs, labels):
        size = self.chunk_size
        losses, norms = [], []
        for start in range(0, len(labels), size):
            stop = min(start + size, len(labels))
            count = stop - start
            chunk_inputs = np.zeros((size,) + inputs.shape[1:], np.float32)
            chunk_labels = np.zeros(size, np.int64)
            mask = np.zeros(size, np.float32)
            chunk_inputs[:count], chunk_labels[:count], mask[:count] = inputs[start:stop], labels[start:stop], 1.0
            chunk_losses, chunk_norms = self._chunk(chunk_inputs, chunk_labels, mask)
            losses.append(chunk_losses.numpy()[:count])
            norms.append(chunk_norms.numpy()[:count])
        if not losses:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(losses).astype(np.float64), np.concatenate(norms).astype(np.float64)

    def _loop(self, inputs, labels):
        totals = [np.zeros(variable.shape, np.float64) for variable in self.variables]
        losses, norms = [], []
        for index in range(len(labels)):
            loss, gradients = self._one(inputs[index:index + 1], labels[index:index + 1])
            gradients = [np.asarray(gradient, np.float64) for gradient in gradients]
            norm = math.sqrt(sum(float(np.sum(gradient * gradient)) for gradient in gradients))
            factor = float(clip_factors(norm, self.clip_norm))
            for total, gradient in zip(totals, gradients):
                total += factor * gradient
            losses.append(float(loss))
            norms.append(norm)
        for total, value in zip(self.sums, totals):
            total.assign(value.astype(np.float32))
        return np.asarray(losses, np.float64), np.asarray(norms, np.float64)


# -- accounting ----------------------------------------------------------------------------------------------------


class _Accountant:
    """Epsilon after a number of steps of one (q, sigma) setting, both conversions, as goodnet.privacy computes it."""

    def __init__(self, q, noise_multiplier, delta, orders):
        from goodnet.privacy import rdp_sampled_gaussian

        self.q, self.noise_multiplier, self.delta, self.orders = q, noise_multiplier, delta, tuple(orders)
        self.one_step = rdp_sampled_gaussian(q, noise_multiplier, self.orders)   # RDP of one step (adds up)

    def at(self, steps):
        """{"classic": Epsilon, "tight": Epsilon} after ``steps`` steps (what :func:`goodnet.privacy.epsilon_of`
        gives for a run of that many steps)."""
        from goodnet.privacy import Epsilon, classic_epsilon, dp_accounting_epsilon

        classic = classic_epsilon(self.orders, steps * self.one_step, self.delta)
        with _quiet_dp_accounting():
            tight = dp_accounting_epsilon(self.q, self.noise_multiplier, steps, self.delta, self.orders)
        return {"classic": Epsilon("classic", *classic, self.noise_multiplier),
                "tight": Epsilon("tight", *tight, self.noise_multiplier)}


def poisson_sample(rng, examples, q):
    """Poisson sampling: the indices (sorted) of the examples that join the batch, each independently with
    probability ``q`` (``rng``: a NumPy Generator; the batch size is Binomial(examples, q)).

    Example:
        >>> poisson_sample(np.random.default_rng(0), 10, 0.5)
        array([1, 2, 3])
    """
    return np.flatnonzero(rng.random(examples) < q)


def _epoch_ends(examples, batch_size, epochs):
    """{step: epoch} at the last step of every epoch (epoch e ends at step ceil(e N / B)); the last may be fractional."""
    from goodnet.privacy import steps_for

    ends = {steps_for(examples, batch_size, epoch): float(epoch) for epoch in range(1, int(math.floor(epochs)) + 1)}
    ends[steps_for(examples, batch_size, epochs)] = float(epochs)
    return ends


def _valid_data(valid):
    if valid is None:
        return None
    if hasattr(valid, "images") and hasattr(valid, "labels"):
        return np.asarray(valid.images, np.float32), np.asarray(valid.labels)
    images, labels = valid
    return np.asarray(images, np.float32), np.asarray(labels)


# -- the defense ---------------------------------------------------------------------------------------------------


RECIPE = ("DP-SGD (Abadi et al. 2016): Poisson batches, per-example gradients clipped, Gaussian noise, "
          "Adam or SGD with a cosine-decayed learning rate, on pixels / 255")   # as cards state it


class DPSGD(Defense):
    """Train a DeepID with DP-SGD (Abadi et al. 2016): Poisson batches, clipped per-example gradients, Gaussian noise.

    The parameters are the fields of :class:`DPSGDOptions` (their defaults,
    rules and meaning are documented there; :meth:`from_options` builds the
    defense from an instance), plus:

    Args:
        method: ``"vectorized"`` (default) or ``"loop"`` (the per-example reference; same batches and noise).
        chunk_size: examples per compiled per-example-gradient call (memory and speed; the result is the same
            up to float rounding).
        progress: None: a bar over the steps once training takes a few seconds, showing the last epoch's
            figures; True: at once; False: none; a callable: called with one line per epoch instead.

    Attributes (after ``fit``):
        model_: :class:`goodnet.models.Classifier`, scale ``unit`` (pixels / 255).
        noise_multiplier_: the noise multiplier trained with (``noise_multiplier``, or the one
            ``target_epsilon`` chose).
        sampling_probability_: q = batch_size / N.
        steps_: steps taken (``goodnet.privacy.steps_for(N, batch_size, epochs)``).
        epsilon_: ``{"classic": Epsilon, "tight": Epsilon}`` at ``delta`` after ``steps_`` steps
            (:class:`goodnet.privacy.Epsilon`: epsilon, best order, noise multiplier).
        batch_sizes_: (steps_,) the Poisson batch size of each step.
        history_: list of :class:`DPSGDEpoch` (loss, validation accuracy, epsilon so far).
        warnings_: cautions about the privacy setting (delta not below 1/N, best order at the end of the orders).
        seconds_: training time.

    Example:
        >>> dp = DPSGD(noise_multiplier=1.1, epochs=30).fit(images, labels, 10, valid=(valid_images, valid_labels))
        >>> dp.epsilon_["classic"].epsilon, dp.history_[-1].valid_accuracy
    """

    _parameter_constraints = {**constraints_of(DPSGDOptions), "method": [OneOf(METHODS)],
                              "chunk_size": [Interval(int, 1)],
                              "progress": [InstanceOf(bool), InstanceOf(collections.abc.Callable, "a callable"),
                                           None]}
    RECIPE = RECIPE

    def __init__(self, clip_norm=_DEFAULTS.clip_norm, noise_multiplier=_DEFAULTS.noise_multiplier,
                 target_epsilon=_DEFAULTS.target_epsilon, conversion=_DEFAULTS.conversion, delta=_DEFAULTS.delta,
                 batch_size=_DEFAULTS.batch_size, epochs=_DEFAULTS.epochs, learning_rate=_DEFAULTS.learning_rate,
                 optimizer=_DEFAULTS.optimizer, seed=_DEFAULTS.seed, orders=_DEFAULTS.orders, method="vectorized",
                 chunk_size=DEFAULT_CHUNK, progress=None):
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.target_epsilon = target_epsilon
        self.conversion = conversion
        self.delta = delta
        self.batch_size = batch_size
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.seed = seed
        self.orders = orders
        self.method = method
        self.chunk_size = chunk_size
        self.progress = progress

    def options(self):
        """The :class:`DPSGDOptions` of the current parameters."""
        return DPSGDOptions(**{field.name: getattr(self, field.name) for field in dataclasses.fields(DPSGDOptions)})

    def privacy_options(self, examples, noise_multiplier=None):
        """The :class:`goodnet.privacy.PrivacyOptions` of a run on ``examples`` training examples."""
        return PrivacyOptions(examples=int(examples), batch_size=self.batch_size,
                              noise_multiplier=self.noise_multiplier if noise_multiplier is None else noise_multiplier,
                              epochs=self.epochs, delta=self.delta, orders=tuple(self.orders))

    def _choose_noise(self, privacy):
        from goodnet.privacy import noise_for_epsilon

        if self.target_epsilon is None:
            return float(self.noise_multiplier)
        with _quiet_dp_accounting():
            found = noise_for_epsilon(float(self.target_epsilon), privacy, self.conversion)
        logger.info("target epsilon %g (%s): noise multiplier %.6g", self.target_epsilon, self.conversion,
                    found.noise_multiplier)
        return found.noise_multiplier

    def _optimizer(self, steps):
        import keras

        schedule = keras.optimizers.schedules.CosineDecay(self.learning_rate, steps)
        if self.optimizer == "adam":
            return keras.optimizers.Adam(schedule)
        return keras.optimizers.SGD(schedule)

    def fit(self, images, labels, num_classes, valid=None):
        """Train a DeepID from scratch on raw-pixel ``images`` and ``labels`` with DP-SGD.

        Args:
            images: (N, 55, 47, 3) training images, pixels 0-255.
            labels: (N,) integer labels in 0..num_classes-1.
            num_classes: classes of the task (the model's outputs).
            valid: optional clean validation data (a :class:`goodnet.data.LabData` or (images, labels)):
                its accuracy is reported after every epoch (it does not steer the training).

        Returns:
            DPSGD: self.

        Raises:
            OptionError: a bad parameter, a batch larger than the training set, a target epsilon no noise
                multiplier reaches. DataError: no images, labels not one per image or out of range.
        """
        import tensorflow as tf

        from goodnet.inference import progress_bar
        from goodnet.models import Classifier, build_deepid
        from goodnet.privacy import sampling_probability, steps_for, validate_privacy_options
        from goodnet.training import check_training_data

        self._validate_params()
        images, labels = check_training_data(images, labels, num_classes)
        valid = _valid_data(valid)
        examples = len(labels)
        privacy = validate_privacy_options(self.privacy_options(examples))
        noise = self._choose_noise(privacy)
        privacy = dataclasses.replace(privacy, noise_multiplier=noise)
        steps = steps_for(examples, self.batch_size, self.epochs)
        q = sampling_probability(examples, self.batch_size)
        accountant = _Accountant(q, noise, self.delta, self.orders)

        seed_everything(self.seed)
        model = build_deepid(int(num_classes), input_shape=images.shape[1:])
        optimizer = self._optimizer(steps)
        optimizer.build(model.trainable_variables)
        private = PrivateGradient(model, self.clip_norm, noise, self.batch_size, self.seed, self.method,
                                  self.chunk_size)
        variables = private.variables

        @tf.function
        def apply(gradients):
            optimizer.apply(gradients, variables)

        classifier = Classifier(model, "unit", int(num_classes))
        sampler = np.random.default_rng([self.seed, NOISE_SEED_TAG + 1])
        ends = _epoch_ends(examples, self.batch_size, self.epochs)
        report = self.progress if callable(self.progress) else None
        bar = None if report is not None else progress_bar(steps, "dp-sgd", self.progress, unit="step")
        history, batch_sizes, epoch_losses = [], [], []
        start = time.perf_counter()
        try:
            for step in range(1, steps + 1):
                batch = poisson_sample(sampler, examples, q)
                batch_sizes.append(len(batch))
                gradients, losses, _ = private(images[batch] / UNIT_DIVISOR, labels[batch])
                apply(gradients)
                epoch_losses.append(losses)
                if bar is not None:
                    bar.update(1)
                if step in ends:
                    record = self._epoch_record(ends[step], step, epoch_losses, classifier, valid, accountant,
                                                time.perf_counter() - start)
                    history.append(record)
                    epoch_losses = []
                    line = record.line(self.epochs)
                    logger.info("dp-sgd %s", line)
                    if report is not None:
                        report(line)
                    elif bar is not None:
                        bar.set_postfix_str(line.split(": ", 1)[1].rsplit(",", 1)[0])
        finally:
            if bar is not None:
                bar.close()
        self.seconds_ = time.perf_counter() - start
        self.model_ = classifier
        self.noise_multiplier_ = noise
        self.sampling_probability_ = q
        self.steps_ = steps
        self.batch_sizes_ = np.asarray(batch_sizes, np.int64)
        self.epsilon_ = accountant.at(steps)
        self.history_ = history
        budget_warnings = [warning for epsilon in self.epsilon_.values()
                           for warning in epsilon.edge_warnings(self.orders)]
        self.warnings_ = self._setting_warnings(examples) + budget_warnings
        for warning in self.warnings_:
            logger.warning("dp-sgd: %s", warning)
        logger.info("dp-sgd: %d steps (q %.4g, noise multiplier %.4g) in %.1f s: epsilon %.4g (tight), %.4g "
                    "(classic) at delta %g", steps, q, noise, self.seconds_, self.epsilon_["tight"].epsilon,
                    self.epsilon_["classic"].epsilon, self.delta)
        return self

    def _setting_warnings(self, examples):
        if self.delta >= 1 / examples:
            return [f"delta {self.delta:g} is not below 1/N = {1 / examples:.3g}: a mechanism that publishes one "
                    "random example in full meets (0, 1/N)-DP"]
        return []

    @staticmethod
    def _epoch_record(epoch, step, losses, classifier, valid, accountant, seconds):
        losses = np.concatenate(losses) if losses else np.zeros(0)
        loss = float(losses.mean()) if len(losses) else float("nan")
        accuracy = None
        if valid is not None:
            accuracy = float(np.mean(classifier.predict(valid[0], progress=False) == valid[1]))
        epsilon = accountant.at(step)
        return DPSGDEpoch(epoch, step, loss, accuracy, epsilon["classic"].epsilon, epsilon["tight"].epsilon,
                          round(seconds, 3))

    def predict_proba(self, images):
        """The trained model's outputs for raw-pixel images."""
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(images, progress=False)

    def predict(self, images):
        """The trained model's top-1 class for raw-pixel images."""
        check_is_fitted(self, "model_")
        return self.model_.predict(images, progress=False)

    def summary(self):
        """JSON-ready: parameters, the noise trained with, steps, q, epsilon under both conversions, the history."""
        result = super().summary()
        if hasattr(self, "model_"):
            result.update({"noise_multiplier": self.noise_multiplier_, "steps": self.steps_,
                           "sampling_probability": self.sampling_probability_, "delta": self.delta,
                           "epsilon": {name: value.to_dict() for name, value in self.epsilon_.items()},
                           "mean_batch_size": float(self.batch_sizes_.mean()),
                           "history": [record.to_dict() for record in self.history_],
                           "warnings": list(self.warnings_), "seconds": round(self.seconds_, 2)})
        return result
