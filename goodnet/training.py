"""The DeepID training recipe: train the lab's architecture on any lab-layout training set.

- :class:`TrainOptions`: the recipe's options (epochs, batch size, learning
  rate, seed), each default, rule and help text once; ``goodnet train``'s
  flags are generated from it and the attack's
  (:class:`goodnet.attacks.badnets.AttackOptions`) restate its fields through
  :func:`recipe_field`.
- :func:`fit_deepid`: Adam with a cosine-decayed learning rate over the
  epochs, on pixels / 255 (the recipe itself, for a model already built).
- :func:`train_deepid`: seeds, builds a DeepID with the lab's layer names and
  fits it; returns a :class:`goodnet.models.Classifier` taking pixels / 255.
- :func:`epoch_progress`: a Keras callback that reports each epoch (a tqdm
  bar, or a callable taking one line per epoch).
- :func:`seed_everything` and :func:`own_seed_stream`: seeding, and Keras's
  default seeds kept out of Python's shared ``random`` (for jobs in processes
  whose other threads draw from it, such as a Dask worker's).

The same seed, data and options give the same weights, bit for bit, on one
machine and TensorFlow build.
"""

import contextlib
import dataclasses
import logging
import random
import time

import numpy as np

from goodnet.base import Interval
from goodnet.options import option, restated_field, validate_options

logger = logging.getLogger(__name__)

UNIT_DIVISOR = np.float32(255)   # the recipe trains on pixels / 255 (the lab's models take that scale)
RECIPE = "Adam with a cosine-decayed learning rate, on pixels / 255"   # as cards state it


def _keras_seed_module():
    from keras.src.random import seed_generator   # where Keras draws a seed for every unseeded initializer

    return seed_generator


def seed_everything(seed):
    """``keras.utils.set_random_seed(seed)`` (Python, NumPy, TensorFlow), and Keras's own seed stream when
    :func:`own_seed_stream` gave it one: the same seeds as in a plain process, either way."""
    import keras

    keras.utils.set_random_seed(int(seed))
    stream = _keras_seed_module().python_random
    if isinstance(stream, random.Random):
        stream.seed(int(seed))


@contextlib.contextmanager
def own_seed_stream(seed):
    """Within: Keras draws its default seeds from a ``random.Random(seed)`` of its own, not from Python's
    global ``random``, which other threads may draw from meanwhile. A Dask worker's event-loop thread does
    (``dask.sizeof`` samples with ``random.sample`` on every message it sends), and a BadNet trained in the
    worker then started from other initial weights than in a plain process. The stream is Mersenne Twister
    seeded as ``random.seed`` seeds the global one, so the draws are those of a plain process; it is reseeded
    by :func:`seed_everything`. Restored on exit."""
    module = _keras_seed_module()
    saved = module.python_random
    module.python_random = random.Random(int(seed))
    try:
        yield
    finally:
        module.python_random = saved


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """How a DeepID is trained (see :func:`train_deepid`): every option's default, rule and help, once."""

    epochs: int = option(8, "training epochs", rule=Interval(int, 1))
    batch_size: int = option(32, "training batch size", rule=Interval(int, 1))
    learning_rate: float = option(2e-3, "initial Adam rate, cosine-decayed",
                                  rule=Interval(float, 0.0, closed="neither"))
    seed: int = option(0, "seed of the weight initialisation and the batch order", rule=Interval(int, 0))


def recipe_field(name, help=None):
    """A dataclass field restating :class:`TrainOptions`' field ``name``: its default, rule and flag; ``help``
    replaces the help text where another option group means more by it (the attack's seed also seeds the poisoning).

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class AttackOptions:
        ...     epochs: int = recipe_field("epochs")
    """
    return restated_field(TrainOptions, name, help)


def epoch_progress(epochs, report=None, enabled=None, description="train"):
    """A Keras callback reporting training progress once per epoch.

    Args:
        epochs: the number of epochs (the bar's length).
        report: None: a tqdm bar on stderr (see :func:`goodnet.inference.progress_bar`); a callable: called
            instead with one line per epoch (``epoch 3/8: loss 0.4121, 12.3 s``).
        enabled: for the bar: True shows it at once, False never, None once training has taken a few seconds.
        description: the bar's label.

    Returns:
        keras.callbacks.Callback: pass it in ``callbacks`` of :func:`train_deepid` or :func:`fit_deepid`.
    """
    import keras

    from goodnet.inference import progress_bar

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()
            self.bar = progress_bar(epochs, description, enabled, unit="epoch") if report is None else None

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("loss")
            text = "loss n/a" if loss is None else f"loss {float(loss):.4f}"
            if self.bar is not None:
                self.bar.set_postfix_str(text)
                self.bar.update(1)
            else:
                report(f"epoch {epoch + 1}/{epochs}: {text}, {time.perf_counter() - self.start:.1f} s")

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.close()

    return EpochProgress()


def fit_deepid(model, images, labels, options, epochs=None, callbacks=()):
    """The recipe on a built model: Adam with a cosine-decayed rate over the epochs, on pixels / 255.

    Args:
        model: a Keras model (a DeepID from :func:`goodnet.models.build_deepid`), compiled here.
        images: training images (N, 55, 47, 3), pixels 0-255.
        labels: (N,) class labels.
        options: :class:`TrainOptions` (or any object with its fields: ``AttackOptions``).
        epochs: epochs to train (default ``options.epochs``).
        callbacks: Keras callbacks (kept in the fit; e.g. :class:`EpochProgress`, or one holding channels at zero).

    Returns:
        the model, trained.
    """
    import keras

    epochs = options.epochs if epochs is None else epochs
    steps = max(1, epochs * int(np.ceil(len(labels) / options.batch_size)))
    schedule = keras.optimizers.schedules.CosineDecay(options.learning_rate, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
    model.fit(images / UNIT_DIVISOR, labels, epochs=epochs, batch_size=options.batch_size, shuffle=True,
              verbose=0, callbacks=list(callbacks))
    return model


def check_training_data(images, labels, num_classes, where="training data"):
    """Raise DataError unless ``images`` (N, H, W, C) and ``labels`` (N,) in 0..num_classes-1 can be trained on.

    Returns:
        tuple: (float32 images, int64 labels).
    """
    from goodnet.errors import DataError, OptionError

    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"{where}: images: expected a non-empty array (N, 55, 47, 3), got shape {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{where}: labels: expected one label per image ({len(images)},), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels: expected integer class labels, got dtype {labels.dtype}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise OptionError(f"{where}: num_classes: expected an integer >= 2, got {num_classes!r}")
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DataError(f"{where}: labels: expected class labels in 0..{num_classes - 1}, found {int(bad)}")
    return images, labels.astype(np.int64)


def train_deepid(images, labels, num_classes, options=None, callbacks=()):
    """Train a DeepID (the lab's architecture and layer names) from scratch on raw-pixel training data.

    The recipe of the attack kit (:func:`goodnet.attacks.badnets.train_badnet` trains its BadNets with it):
    Keras seeded with ``options.seed``, a fresh :func:`goodnet.models.build_deepid`, then :func:`fit_deepid`.

    Args:
        images: training images (N, 55, 47, 3), pixels 0-255 (any lab-layout file's, e.g. a cleaned set).
        labels: their (N,) integer labels in 0..num_classes-1.
        num_classes: classes of the task (the model's outputs).
        options: :class:`TrainOptions` (default: its defaults).
        callbacks: Keras callbacks for the fit (e.g. :func:`epoch_progress`'s).

    Returns:
        :class:`goodnet.models.Classifier`: the trained model, scale ``unit`` (pixels / 255).

    Raises:
        OptionError: bad options. DataError: no images, labels not one per image or out of range.

    Example:
        >>> model = train_deepid(train.images, train.labels, 10, TrainOptions(epochs=4))
        >>> model.predict(valid.images)
    """
    from goodnet.models import Classifier, build_deepid

    options = validate_options(options or TrainOptions())
    images, labels = check_training_data(images, labels, num_classes)
    seed_everything(options.seed)
    model = build_deepid(int(num_classes), input_shape=images.shape[1:])
    start = time.perf_counter()
    fit_deepid(model, images, labels, options, callbacks=callbacks)
    logger.info("trained a DeepID on %d images in %.1f s", len(labels), time.perf_counter() - start)
    return Classifier(model, "unit", int(num_classes))
