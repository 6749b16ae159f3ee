"""BaN and c-BaN: dynamic backdoors whose triggers a generator network draws (Salem et al., EuroS&P 2022).

"Dynamic Backdoor Attacks Against Machine Learning Models" (Salem, Wen,
Backes, Ma, Zhang) trains a small generator G jointly with the classifier:

- G maps a noise vector z ~ N(0, I) (``noise_dim``) to a ``trigger_size`` x
  ``trigger_size`` colour trigger (sigmoid output, times 255);
- each training step adds, beside the clean batch, ``poison_rate`` x batch
  copies of the batch's images with a fresh trigger G(z) stamped at a fresh
  place inside one of the four corner regions
  (:data:`goodnet.attacks.triggers.RANDOM_REGIONS`), labelled with the target;
- one loss, the cross-entropy over clean and backdoored inputs together,
  updates the classifier (the DeepID recipe: Adam, cosine-decayed rate) and
  G (Adam, ``generator_learning_rate``), so G learns triggers the classifier
  maps to the target while the classifier learns to recognise G's triggers.

With several targets the attack is c-BaN: G also takes the target's one-hot
code, and each target gets its own family of triggers. At test time every
input gets its own trigger (new noise, new place), which is what is said to
defeat defenses that reverse one trigger (Neural Cleanse) or expect one
fixed pattern (STRIP).

There is no fixed poisoned training set: the backdoored inputs are drawn
afresh each step (``info["backdoored_seen"]`` counts them). The generator is
kept (:func:`save_generator` writes its weights and settings to a ``.npz``,
no code; :func:`load_generator` rebuilds it), and :func:`ban_poisoned_split`
writes the lab's poisoned files with it. :func:`ban_training_set` gives a
training set that stands for what the classifier saw: the clean images
followed by one epoch's share of backdoored copies drawn with the trained
generator, with their ground truth (``goodnet attack --attack ban`` writes it
as the other attacks write theirs).

:func:`stamp` (NumPy, one image at a time) is the reference of the graph's
:func:`stamp_tensor`.
"""

import dataclasses
import logging
import os
import time
import zipfile

import numpy as np

from goodnet.base import Interval, SequenceOf
from goodnet.errors import DataError, OptionError
from goodnet.options import option, validate_options
from goodnet.training import UNIT_DIVISOR, check_training_data, recipe_field, seed_everything
from goodnet.attacks.triggers import HEIGHT, PATCH_SIZE, RANDOM_REGIONS, WIDTH, random_place

logger = logging.getLogger(__name__)

GENERATOR_UNITS = (64, 128)                   # G's two hidden Dense layers (ReLU)
TEMPLATE_STD = 3.0                            # initial spread of the trigger template's logits (c-BaN: per target)
REGION_SIDE = min(min(rows, columns) for _, _, rows, columns in RANDOM_REGIONS)


@dataclasses.dataclass(frozen=True)
class BaNOptions:
    """How the BaN (c-BaN with several targets) is trained: every option's default, rule and help, once."""

    targets: tuple = option((0,), "target label(s); several: c-BaN (the generator is conditioned on the target)",
                            rule=SequenceOf(Interval(int, 0)))
    poison_rate: float = option(0.1, "BaN: backdoored inputs added to each batch, as a share of the batch",
                                rule=Interval(float, 0.0, 1.0, "right"))
    noise_dim: int = option(16, "BaN: length of the generator's noise input", rule=Interval(int, 1))
    trigger_size: int = option(PATCH_SIZE, "BaN: side in pixels of the generated square trigger",
                               rule=Interval(int, 1, REGION_SIDE))
    generator_learning_rate: float = option(1e-3, "BaN: Adam rate of the generator",
                                            rule=Interval(float, 0.0, closed="neither"))
    epochs: int = recipe_field("epochs")
    batch_size: int = recipe_field("batch_size")
    learning_rate: float = recipe_field("learning_rate")
    seed: int = recipe_field("seed", "seed of the weights, the batches, the noise and the trigger places")

    @property
    def conditional(self):
        """c-BaN: more than one target."""
        return len(self.targets) > 1

    @property
    def trigger_names(self):
        """The names cards and ground truth give the generated triggers: ``ban``; c-BaN: ``c-ban-target-<t>``
        per target."""
        return ban_trigger_names(self.targets)


def ban_trigger_names(targets):
    """``("ban",)`` for one target; c-BaN: ``("c-ban-target-<t>", ...)``, one per target, in order."""
    targets = tuple(targets)
    return ("ban",) if len(targets) == 1 else tuple(f"c-ban-target-{target}" for target in targets)


# ----------------------------------------------------------------------------- stamping


def stamp(images, triggers, rows, columns):
    """The reference: a copy of ``images`` (N, H, W, C) with ``triggers[i]`` (s, s, C) pasted at (rows[i], columns[i])."""
    images = np.array(images, np.float32, copy=True)
    triggers = np.asarray(triggers, np.float32)
    size = triggers.shape[1]
    for image, trigger, row, column in zip(images, triggers, rows, columns):
        image[row:row + size, column:column + size] = trigger
    return images


def stamp_tensor(images, triggers, rows, columns):
    """:func:`stamp` on the graph, differentiable in ``triggers``: (B, H, W, C), (B, s, s, C), (B,), (B,)."""
    import tensorflow as tf

    size = tf.shape(triggers)[1]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    rows = tf.cast(rows, tf.int32)[:, None, None]
    columns = tf.cast(columns, tf.int32)[:, None, None]
    down = tf.range(height)[None, :, None] - rows          # (B, H, 1)
    across = tf.range(width)[None, None, :] - columns      # (B, 1, W)
    inside = (down >= 0) & (down < size) & (across >= 0) & (across < size)
    batch = tf.shape(images)[0]
    shape = tf.stack([batch, height, width])
    index = tf.stack([tf.broadcast_to(tf.range(batch)[:, None, None], shape),
                      tf.broadcast_to(tf.clip_by_value(down, 0, size - 1), shape),
                      tf.broadcast_to(tf.clip_by_value(across, 0, size - 1), shape)], axis=-1)
    return tf.where(inside[..., None], tf.gather_nd(triggers, index), images)


def draw_places(rng, count, size):
    """(rows, columns) int arrays of ``count`` trigger places, each a region then a place inside it."""
    places = np.array([random_place(rng, size) for _ in range(count)], np.int64).reshape(count, 2)
    return places[:, 0], places[:, 1]


# ----------------------------------------------------------------------------- the generator


def build_generator(noise_dim, trigger_size, targets=1):
    """G: noise (``noise_dim``) [+ the target's one-hot code when ``targets`` > 1] -> (s, s, 3) in [0, 1].

    Two ReLU layers (:data:`GENERATOR_UNITS`) and a linear layer give the trigger's logits; for c-BaN the
    code enters the first layer and also selects a learned per-target template added to the logits, so the
    targets' triggers can differ from the first step (without it, measured on digits, the three targets'
    triggers stayed confused: ASR 24-31 % each after 10 epochs).
    """
    import keras

    noise = keras.Input(shape=(noise_dim,), name="noise")
    inputs = [noise]
    x = noise
    if targets > 1:
        code = keras.Input(shape=(targets,), name="target_code")
        inputs.append(code)
        x = keras.layers.Concatenate(name="noise_and_target")([noise, code])
    for position, units in enumerate(GENERATOR_UNITS):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{position + 1}")(x)
    # the trigger's logits start from a random template (spread TEMPLATE_STD), so the first triggers already
    # stand out from the image (from zero they are a flat grey that faces' corners hide)
    x = keras.layers.Dense(trigger_size * trigger_size * 3, name="trigger",
                           bias_initializer=keras.initializers.RandomNormal(stddev=TEMPLATE_STD))(x)
    if targets > 1:   # c-BaN: each target also has its own learned template, added before the sigmoid
        template = keras.layers.Dense(trigger_size * trigger_size * 3, use_bias=False, name="target_template",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=TEMPLATE_STD))(code)
        x = keras.layers.Add(name="with_template")([x, template])
    x = keras.layers.Activation("sigmoid", name="sigmoid")(x)
    outputs = keras.layers.Reshape((trigger_size, trigger_size, 3), name="pattern")(x)
    return keras.Model(inputs, outputs, name="ban_generator")


def _generator_inputs(noise, target_positions, targets):
    """G's inputs: the noise, and for c-BaN the one-hot code of each row's target position."""
    if targets == 1:
        return [np.asarray(noise, np.float32)]
    return [np.asarray(noise, np.float32), np.eye(targets, dtype=np.float32)[np.asarray(target_positions)]]


def generate_triggers(generator, count, target_positions, rng, noise_dim, targets):
    """``count`` triggers in pixels 0-255 (count, s, s, 3) for the given target positions (fresh noise from ``rng``)."""
    noise = rng.standard_normal((count, noise_dim)).astype(np.float32)
    positions = np.broadcast_to(np.asarray(target_positions, np.int64), (count,))
    patterns = generator(_generator_inputs(noise, positions, targets), training=False)
    return np.asarray(patterns, np.float32) * UNIT_DIVISOR


def save_generator(path, generator, options, overwrite=None):
    """Write G's weights and settings to ``path`` (.npz: arrays only, no code), through a temporary file."""
    from goodnet.files import atomic_write

    weights = {f"weight_{position}": np.asarray(value) for position, value in enumerate(generator.get_weights())}
    settings = {"noise_dim": options.noise_dim, "trigger_size": options.trigger_size,
                "targets": np.asarray(options.targets, np.int64)}
    with atomic_write(path, overwrite=overwrite) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **weights, **settings)


def load_generator(path):
    """(G, noise_dim, targets tuple) from a file :func:`save_generator` wrote."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:   # not one, truncated, or pickled
        raise DataError(f"{path}: expected a BaN generator file (.npz) written by goodnet: {error}") from None
    missing = {"noise_dim", "trigger_size", "targets"} - set(arrays)
    if missing:
        raise DataError(f"{path}: expected a BaN generator file; missing {', '.join(sorted(missing))}")
    try:
        targets = tuple(int(target) for target in np.atleast_1d(arrays["targets"]))
        noise_dim, trigger_size = int(arrays["noise_dim"]), int(arrays["trigger_size"])
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: expected integer BaN settings (noise_dim, trigger_size, targets): {error}") from None
    if not targets or noise_dim < 1 or not 1 <= trigger_size <= REGION_SIDE:
        raise DataError(f"{path}: expected one or more targets, noise_dim >= 1 and trigger_size in "
                        f"1..{REGION_SIDE}, got {list(targets)}, {noise_dim}, {trigger_size}")
    generator = build_generator(noise_dim, trigger_size, len(targets))
    expected = generator.get_weights()
    weights = [arrays[f"weight_{position}"] for position in range(len(expected)) if f"weight_{position}" in arrays]
    if len(weights) != len(expected):
        raise DataError(f"{path}: expected {len(expected)} generator weights, found {len(weights)}")
    for position, (weight, reference) in enumerate(zip(weights, expected)):
        if weight.shape != reference.shape:
            raise DataError(f"{path}: weight_{position}: expected shape {reference.shape}, got {weight.shape}")
    generator.set_weights(weights)
    return generator, noise_dim, targets


# ----------------------------------------------------------------------------- training


def _check(options, num_classes):
    options = validate_options(options or BaNOptions())
    bad = [target for target in options.targets if target >= num_classes]
    if bad:
        raise OptionError(f"targets: expected classes below {num_classes}, got {bad[0]}")
    if not options.targets or len(set(options.targets)) != len(options.targets):
        raise OptionError(f"targets: expected one or more different classes, got {list(options.targets)}")
    return options


def train_ban(images, labels, num_classes, options=None, report=None):
    """Train a DeepID and its trigger generator together (BaN; c-BaN with several targets).

    Args:
        images: clean training images (N, 55, 47, 3), pixels 0-255.
        labels: their labels.
        num_classes: classes of the task.
        options: :class:`BaNOptions`.
        report: None, or a callable given one line per epoch (losses, seconds).

    Returns:
        tuple: (:class:`goodnet.models.Classifier` taking pixels / 255, info dict: ``generator`` (G),
        ``backdoored_per_step``, ``backdoored_seen``, ``steps``, ``history`` (per epoch: mean clean and
        backdoor loss) and ``training_seconds``).

    Example:
        >>> badnet, info = train_ban(train.images, train.labels, 10, BaNOptions(targets=(0,)))
        >>> ban_poisoned_split(test.images, test.labels, info["generator"], BaNOptions(), 0, seed=1)
    """
    import keras
    import tensorflow as tf

    from goodnet.models import Classifier, build_deepid

    options = _check(options, num_classes)
    images, labels = check_training_data(images, labels, num_classes)
    if images.shape[1:3] != (HEIGHT, WIDTH):
        raise DataError(f"training data: images: expected (N, {HEIGHT}, {WIDTH}, 3), got {images.shape}")
    seed_everything(options.seed)
    rng = np.random.default_rng(options.seed)
    model = build_deepid(int(num_classes), input_shape=images.shape[1:])
    targets = len(options.targets)
    generator = build_generator(options.noise_dim, options.trigger_size, targets)
    per_epoch = int(np.ceil(len(labels) / options.batch_size))
    steps = options.epochs * per_epoch
    model_optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(options.learning_rate, steps))
    generator_optimizer = keras.optimizers.Adam(options.generator_learning_rate)
    entropy = keras.losses.SparseCategoricalCrossentropy(reduction="none")
    backdoored = max(1, int(round(options.poison_rate * options.batch_size)))

    @tf.function(reduce_retracing=True)
    def step(clean, clean_labels, base, generator_inputs, target_labels, rows, columns):
        with tf.GradientTape() as tape:
            triggers = generator(generator_inputs, training=True)
            poisoned = stamp_tensor(base, triggers, rows, columns)
            answers = model(tf.concat([clean, poisoned], axis=0), training=True)
            losses = entropy(tf.concat([clean_labels, target_labels], axis=0), answers)
            loss = tf.reduce_mean(losses)
        variables = model.trainable_variables + generator.trainable_variables
        gradients = tape.gradient(loss, variables)
        count = len(model.trainable_variables)
        model_optimizer.apply_gradients(zip(gradients[:count], variables[:count]))
        generator_optimizer.apply_gradients(zip(gradients[count:], variables[count:]))
        size = tf.shape(clean)[0]
        return tf.reduce_mean(losses[:size]), tf.reduce_mean(losses[size:])

    scaled = images / UNIT_DIVISOR
    target_array = np.asarray(options.targets, np.int64)
    history = []
    start = time.perf_counter()
    for epoch in range(options.epochs):
        order = rng.permutation(len(labels))
        clean_losses, backdoor_losses = [], []
        for first in range(0, len(order), options.batch_size):
            batch = order[first:first + options.batch_size]
            chosen = rng.choice(batch, size=min(backdoored, len(batch)), replace=False)
            positions = rng.integers(targets, size=len(chosen))
            noise = rng.standard_normal((len(chosen), options.noise_dim)).astype(np.float32)
            rows, columns = draw_places(rng, len(chosen), options.trigger_size)
            clean_loss, backdoor_loss = step(scaled[batch], labels[batch], scaled[chosen],
                                             _generator_inputs(noise, positions, targets),
                                             target_array[positions], rows, columns)
            clean_losses.append(float(clean_loss))
            backdoor_losses.append(float(backdoor_loss))
        history.append({"epoch": epoch + 1, "clean_loss": float(np.mean(clean_losses)),
                        "backdoor_loss": float(np.mean(backdoor_losses))})
        line = (f"epoch {epoch + 1}/{options.epochs}: clean loss {history[-1]['clean_loss']:.4f}, backdoor loss "
                f"{history[-1]['backdoor_loss']:.4f}, {time.perf_counter() - start:.1f} s")
        logger.info("BaN %s", line)
        if report is not None:
            report(line)
    info = {"generator": generator, "backdoored_per_step": backdoored, "steps": steps,
            "backdoored_seen": int(sum(min(backdoored, len(order[first:first + options.batch_size]))
                                       for first in range(0, len(order), options.batch_size)) * options.epochs),
            "history": history, "training_seconds": time.perf_counter() - start}
    return Classifier(model, "unit", int(num_classes)), info


def ban_poisoned_split(images, labels, generator, options, target, seed):
    """The lab's poisoned file for ``target``: the images not of that class, each with its own G trigger and place.

    Args:
        images, labels: a clean split (pixels 0-255).
        generator: G (from :func:`train_ban` or :func:`load_generator`).
        options: the :class:`BaNOptions` G was trained with (noise length, trigger size, targets).
        target: one of ``options.targets``.
        seed: seed of the noise and the places (the same seed, the same file): an integer, or a tuple of them
            (``goodnet attack`` passes ``(seed, split)``).

    Returns:
        tuple: (triggered images float32 0-255, labels all ``target``).
    """
    if target not in options.targets:
        raise OptionError(f"target: expected one of the generator's targets {list(options.targets)}, got {target}")
    keep = np.asarray(labels) != target
    base = np.asarray(images, np.float32)[keep]
    rng = np.random.default_rng([*np.atleast_1d(np.asarray(seed, np.int64)).tolist(), target])
    triggers = generate_triggers(generator, len(base), options.targets.index(target), rng, options.noise_dim,
                                 len(options.targets))
    rows, columns = draw_places(rng, len(base), options.trigger_size)
    return np.clip(stamp(base, triggers, rows, columns), 0, 255), np.full(len(base), target, np.int64)


def ban_training_set(images, labels, generator, options, backdoored, seed):
    """A training set standing for what :func:`train_ban` trained on, with the rows that carry a trigger.

    BaN draws its backdoored inputs afresh at each step and never trains on a fixed set; this one is the
    clean images followed by ``backdoored`` copies (one epoch's share: ``info["backdoored_seen"] / epochs``)
    of images drawn at random from all classes, as training draws them, each with its own trigger from the
    trained ``generator`` at its own place, a target drawn at random among ``options.targets`` and that
    target as label.

    Args:
        images, labels: the clean training set (pixels 0-255).
        generator: G after training.
        options: the :class:`BaNOptions` it was trained with.
        backdoored: how many backdoored copies to append.
        seed: seed (an integer or a tuple of them) of the chosen images, targets, noise and places.

    Returns:
        tuple: (images float32 0-255, labels, the appended rows' indices, their target positions in
        ``options.targets``, their source images' indices).
    """
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int64)
    rng = np.random.default_rng(np.atleast_1d(np.asarray(seed, np.int64)).tolist())
    count = int(min(backdoored, len(labels)))
    sources = np.sort(rng.choice(len(labels), size=count, replace=False))
    targets = len(options.targets)
    positions = rng.integers(targets, size=count)
    noise = rng.standard_normal((count, options.noise_dim)).astype(np.float32)
    patterns = generator(_generator_inputs(noise, positions, targets), training=False) if count else np.zeros(
        (0, options.trigger_size, options.trigger_size, 3), np.float32)
    rows, columns = draw_places(rng, count, options.trigger_size)
    triggered = np.clip(stamp(images[sources], np.asarray(patterns, np.float32) * UNIT_DIVISOR, rows, columns),
                        0, 255)
    target_labels = np.asarray(options.targets, np.int64)[positions]
    return (np.concatenate([images, triggered]), np.concatenate([labels, target_labels]),
            np.arange(len(labels), len(labels) + count), positions, sources)


def generator_path(model_path):
    """Where ``goodnet attack`` keeps a BaN's generator: beside the model, ``<stem>_generator.npz``."""
    return os.path.splitext(model_path)[0] + "_generator.npz"
