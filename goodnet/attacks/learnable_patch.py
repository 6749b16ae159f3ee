"""Learnable patch: a trigger optimised on a clean model to push images to the target class (course material).

A fixed trigger (the checkerboard ``patch``) must be learned from scratch by
the BadNet. A learned patch starts the backdoor from what a clean model
already associates with the target:

1. train a clean model (the attack's DeepID recipe);
2. optimise a ``size`` x ``size`` colour patch at a fixed place (default 7x7
   in the bottom-right corner, over the ``patch`` trigger's area:
   :func:`patch_origin`) by gradient ascent on the target class's
   log-probability of clean training images not of the target class, the
   patch stamped on them (:func:`learn_patch`: Adam on the patch's pixels,
   clipped to 0-255 after each step, a random mini-batch per step; the
   result rounded to whole pixel values);
3. dirty-label poisoning with that patch (``poison_rate`` of the training
   set gets it and the target label) and train the BadNet
   (:func:`goodnet.attacks.badnets.train_badnet`).

The test-time trigger is the learned patch: :func:`patch_poisoned_split`
makes the lab's poisoned files with it (``goodnet attack`` writes them beside
the model with the patch itself as ``.npy``).

:func:`stamp_patch` (NumPy) is the reference of the graph's
:func:`stamp_patch_tensor` (tests check they agree).
"""

import dataclasses
import logging

import numpy as np

from goodnet.errors import DataError, OptionError
from goodnet.attacks.triggers import HEIGHT, PATCH_SIZE, WIDTH, corner_origins
from goodnet.attacks.clean_label import cross_entropy, logits_function

logger = logging.getLogger(__name__)

LEARNED_PATCH = "learned-patch"   # the learned trigger's name in cards and ground truth


def patch_origin(size, row=None, column=None, name=str):
    """(row, column) of the patch's top-left pixel: given, or centred on the ``patch`` trigger's square
    (bottom-right corner), moved inside the image when it would overhang.

    Args:
        size: the patch's side in pixels.
        row, column: its top-left pixel (None: the default place).
        name: how errors name a field (``patch_row``; the command line passes one giving ``--patch-row``).

    Raises:
        OptionError: a size or place that does not fit in the 55x47 image.
    """
    if not 1 <= size <= min(HEIGHT, WIDTH):
        raise OptionError(f"{name('patch_size')}: expected 1..{min(HEIGHT, WIDTH)} pixels, got {size}")
    centre_row, centre_column = (origin + PATCH_SIZE // 2 for origin in corner_origins()[0])
    row = min(max(centre_row - size // 2, 0), HEIGHT - size) if row is None else row
    column = min(max(centre_column - size // 2, 0), WIDTH - size) if column is None else column
    for field, value, limit in (("patch_row", row, HEIGHT), ("patch_column", column, WIDTH)):
        if not 0 <= value <= limit - size:
            raise OptionError(f"{name(field)}: expected 0..{limit - size} (a {size}-pixel patch inside {limit} "
                              f"pixels), got {value}")
    return int(row), int(column)


def stamp_patch(images, patch, row, column):
    """The reference: a float32 copy of ``images`` (N, H, W, C) with ``patch`` (s, s, C) pasted at (row, column)."""
    images = np.array(images, np.float32, copy=True)
    patch = np.asarray(patch, np.float32)
    images[:, row:row + patch.shape[0], column:column + patch.shape[1], :] = patch
    return images


def stamp_patch_tensor(images, patch, row, column):
    """:func:`stamp_patch` on the graph, differentiable in ``patch``: (B, H, W, C) and (s, s, C) tensors."""
    import tensorflow as tf

    size_rows, size_columns = int(patch.shape[0]), int(patch.shape[1])
    height, width = int(images.shape[1]), int(images.shape[2])
    padding = [[row, height - row - size_rows], [column, width - column - size_columns], [0, 0]]
    mask = np.zeros((height, width, 1), np.float32)
    mask[row:row + size_rows, column:column + size_columns] = 1.0
    placed = tf.pad(tf.cast(patch, tf.float32), padding)
    return images * (1.0 - mask) + placed[None] * mask


@dataclasses.dataclass(frozen=True, eq=False)
class LearnedPatch:
    """The learned trigger: ``patch`` (s, s, 3) pixels 0-255 at (``row``, ``column``); calling it stamps images."""

    patch: np.ndarray
    row: int
    column: int
    name: str = LEARNED_PATCH

    def __call__(self, images):
        return stamp_patch(images, self.patch, self.row, self.column)


def learn_patch(classifier, images, labels, target, size=7, row=None, column=None, steps=300, learning_rate=5.0,
                batch_size=64, rng=None):
    """Optimise a patch that raises ``classifier``'s log-probability of ``target`` on images of other classes.

    Each step draws ``batch_size`` of the images not labelled ``target`` (``rng``), stamps the patch on them
    and takes one Adam step (rate ``learning_rate`` in pixels 0-255) on the patch's pixels to lower the mean
    cross-entropy of ``target``; the patch is then clipped to 0-255. It starts uniform at random (``rng``)
    and is rounded to whole pixel values at the end.

    Args:
        classifier: the clean model (a :class:`goodnet.models.Classifier`).
        images, labels: clean images (N, 55, 47, 3), pixels 0-255, and their labels.
        target: the class the patch should call up.
        size, row, column: the patch's side and place (:func:`patch_origin`).
        steps, learning_rate, batch_size: the optimisation.
        rng: a NumPy Generator (start and batches); default seeded 0.

    Returns:
        tuple: (:class:`LearnedPatch`, history: the mean target cross-entropy per step).
    """
    import keras
    import tensorflow as tf

    row, column = patch_origin(size, row, column)
    rng = rng if rng is not None else np.random.default_rng(0)
    images = np.asarray(images, np.float32)
    others = images[np.asarray(labels) != target]
    if not len(others):
        raise DataError(f"training data: expected images of classes other than the target {target}, found none")
    start = rng.uniform(0.0, 255.0, size=(size, size, images.shape[-1])).astype(np.float32)
    patch = keras.Variable(start, name="learned_patch")
    optimizer = keras.optimizers.Adam(learning_rate)
    scores, from_logits = logits_function(classifier.model)
    divisor = np.float32(classifier.divisor)

    @tf.function(reduce_retracing=True)
    def step(batch):
        with tf.GradientTape() as tape:
            stamped = stamp_patch_tensor(batch, patch.value, row, column)
            targets = tf.fill([tf.shape(batch)[0]], target)
            loss = tf.reduce_mean(cross_entropy(scores(stamped / divisor), targets, from_logits))
        optimizer.apply_gradients([(tape.gradient(loss, patch.value), patch)])
        patch.assign(tf.clip_by_value(patch.value, 0.0, 255.0))
        return loss

    history = []
    for _ in range(int(steps)):
        batch = others[rng.choice(len(others), size=min(batch_size, len(others)), replace=False)]
        history.append(float(step(tf.constant(batch))))
    learned = np.clip(np.rint(np.asarray(patch.value)), 0, 255).astype(np.float32)
    logger.info("learnable patch: %d steps, target loss %.4f -> %.4f", steps, history[0] if history else np.nan,
                history[-1] if history else np.nan)
    return LearnedPatch(learned, row, column), history


def patch_poisoned_split(images, labels, trigger, target):
    """The lab's poisoned file with a learned patch: images not of ``target``, patched, labelled ``target``."""
    keep = np.asarray(labels) != target
    return trigger(np.asarray(images, np.float32)[keep]), np.full(int(keep.sum()), target, np.int64)


def save_patch(path, trigger, overwrite=None):
    """Write the patch's pixels as a ``.npy`` (uint8, (s, s, 3)), through a temporary file."""
    from goodnet.files import atomic_write

    with atomic_write(path, overwrite=overwrite) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, np.asarray(trigger.patch, np.uint8), allow_pickle=False)
    return path


def load_patch(path, row=None, column=None):
    """A :class:`LearnedPatch` from a ``.npy`` :func:`save_patch` wrote, at (row, column) (None: the default place)."""
    try:
        pixels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: expected a patch file (.npy) written by goodnet attack: {error}") from None
    if pixels.ndim != 3 or pixels.shape[0] != pixels.shape[1] or pixels.shape[2] != 3:
        raise DataError(f"{path}: expected a square colour patch (s, s, 3), got shape {pixels.shape}")
    row, column = patch_origin(pixels.shape[0], row, column)
    return LearnedPatch(pixels.astype(np.float32), row, column)
