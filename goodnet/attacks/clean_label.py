"""Clean-label (label-consistent) poisoning: Turner, Tsipras and Madry, "Label-Consistent Backdoor Attacks" (2019).

A dirty-label BadNet's poisoned images carry a wrong label, which an
inspector spots. The label-consistent attack poisons only images of the
target class and keeps their true labels:

1. train a clean model (the attack's DeepID recipe, :func:`goodnet.training.train_deepid`);
2. take ``poison_rate`` of the *target class's* training images and make
   them hard to classify: untargeted PGD under an L-infinity budget on pixels
   0-255 (:func:`pgd_linf`: ``epsilon`` 8 = 8/255 of the range, step 1.5,
   100 steps), maximising the clean model's cross-entropy on the true label,
   so their own content no longer explains their label;
3. stamp the trigger at a reduced amplitude ``a`` (:func:`reduced_trigger`:
   ``x + a (T(x) - x)``, clipped to 0-255), keep the true labels, and train the
   BadNet on that set. The network leans on the trigger to fit these hard
   images, and at test time the full trigger (``a`` = 1) sends other classes to
   the target; the benchmark's ``bd_<split>_<trigger>.h5`` files measure it as
   for the dirty-label attack.

The rate is necessarily a share of the target class (only its images may be
poisoned). Turner et al. use a patch in all four corners (the ``corners``
trigger of :mod:`goodnet.attacks.triggers`).

:func:`pgd_linf` runs batched on the TensorFlow graph (``method="graph"``);
``method="loop"`` is its reference, one image at a time in eager mode, step by
step (tests check they give the same images).
"""

import logging

import numpy as np

from goodnet.errors import OptionError
from goodnet.attacks.triggers import apply_trigger, stealthiness

logger = logging.getLogger(__name__)

PGD_METHODS = ("graph", "loop")
PGD_CHUNK = 256     # images per compiled PGD call (each image's perturbation does not depend on the others)


def logits_function(model):
    """(function scaled images -> scores, from_logits): a softmax-topped Dense model's pre-softmax logits.

    The cross-entropy of a confident model is computed from its logits: a softmax probability that rounds
    to 1 in float32 has no gradient. Other models are scored by their outputs (probabilities).
    """
    import keras
    import tensorflow as tf

    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    if isinstance(last, keras.layers.Dense) and activation == "softmax":
        try:
            body = keras.Model(model.inputs, last.input)
        except (AttributeError, ValueError, TypeError):   # a layer without one symbolic input
            return model, False

        def logits(images):
            features = body(images, training=False)
            scores = tf.matmul(tf.cast(features, last.kernel.dtype), last.kernel)
            return scores + last.bias if last.use_bias else scores

        return logits, True
    return model, False


def cross_entropy(scores, labels, from_logits):
    """Per-image cross-entropy of int ``labels`` under ``scores`` (logits, or probabilities clipped at 1e-7)."""
    import tensorflow as tf

    scores = tf.cast(scores, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if from_logits:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=scores)
    chosen = tf.gather(scores, labels, axis=1, batch_dims=1)
    return -tf.math.log(tf.clip_by_value(chosen, 1e-7, 1.0))


def _check_pgd(images, labels, epsilon, step, steps, method):
    if method not in PGD_METHODS:
        raise OptionError(f"method: expected one of {', '.join(PGD_METHODS)}, got {method!r}")
    if not epsilon >= 0:
        raise OptionError(f"pgd_epsilon: expected a budget >= 0 (pixels 0-255), got {epsilon}")
    if not step > 0:
        raise OptionError(f"pgd_step: expected a step > 0 (pixels 0-255), got {step}")
    if int(steps) != steps or steps < 0:
        raise OptionError(f"pgd_steps: expected an integer >= 0, got {steps}")
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    if images.ndim != 4 or labels.shape != (len(images),):
        raise OptionError(f"images, labels: expected (N, H, W, C) images and (N,) labels, got {images.shape} "
                          f"and {labels.shape}")
    return images, labels


def random_starts(images, epsilon, rng):
    """PGD's random start: each pixel moved by U(-epsilon, epsilon), clipped to 0-255 (float32)."""
    noise = rng.uniform(-epsilon, epsilon, size=np.shape(images)).astype(np.float32)
    return np.clip(np.asarray(images, np.float32) + noise, 0.0, 255.0)


def pgd_linf(classifier, images, labels, epsilon=8.0, step=1.5, steps=100, random_start=False, rng=None,
             method="graph", batch_size=PGD_CHUNK):
    """Untargeted PGD under L-infinity on pixels 0-255: images that the classifier's loss on ``labels`` is high for.

    ``x_0 = x`` (with ``random_start``: plus U(-epsilon, epsilon) per pixel, clipped), then ``steps`` times
    ``x <- clip(x + step * sign(grad_x CE(f(x / divisor), y)))``, the clip keeping ``|x - x_clean| <= epsilon``
    and ``0 <= x <= 255``. The cross-entropy is taken on the logits where the model ends in a softmax
    (:func:`logits_function`).

    Args:
        classifier: a :class:`goodnet.models.Classifier` (its ``divisor`` scales the pixels).
        images: (N, H, W, C) raw pixels 0-255.
        labels: (N,) true labels (the loss maximised is theirs).
        epsilon, step: the budget and the step, in pixels 0-255 (8 and 1.5 are 8/255 and 1.5/255 of the range).
        steps: PGD iterations (0: the start point).
        random_start: start at a random point of the budget (``rng``, a NumPy Generator, draws it).
        method: "graph" (batched, one compiled call per chunk of ``batch_size`` images) or "loop" (the
            reference: one image at a time, eager, step by step).

    Returns:
        np.ndarray: the perturbed images, float32 (N, H, W, C).
    """
    import tensorflow as tf

    images, labels = _check_pgd(images, labels, epsilon, step, steps, method)
    if random_start:
        if rng is None:
            raise OptionError("rng: expected a NumPy Generator for the random start, got None")
        starts = random_starts(images, epsilon, rng)
    else:
        starts = images.copy()
    if not len(images) or not steps:
        return starts
    scores, from_logits = logits_function(classifier.model)
    divisor = np.float32(classifier.divisor)
    epsilon, step = np.float32(epsilon), np.float32(step)

    def ascend(x, clean, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(cross_entropy(scores(x / divisor), y, from_logits))
        x = x + step * tf.sign(tape.gradient(loss, x))
        return tf.clip_by_value(tf.clip_by_value(x, clean - epsilon, clean + epsilon), 0.0, 255.0)

    if method == "loop":   # the reference: one image, one eager gradient, the step and projection in NumPy
        out = np.empty_like(images)
        for index in range(len(images)):
            clean, x = images[index:index + 1], starts[index:index + 1].copy()
            for _ in range(int(steps)):
                pixels = tf.constant(x)
                with tf.GradientTape() as tape:
                    tape.watch(pixels)
                    loss = cross_entropy(scores(pixels / divisor), labels[index:index + 1], from_logits)
                gradient = tape.gradient(loss, pixels).numpy()
                x = np.clip(np.clip(x + step * np.sign(gradient), clean - epsilon, clean + epsilon), 0.0, 255.0)
            out[index] = x[0]
        return out

    @tf.function(reduce_retracing=True)
    def run(x, clean, y):
        for _ in tf.range(int(steps)):
            x = ascend(x, clean, y)
        return x

    chunks = [run(tf.constant(starts[first:first + batch_size]), tf.constant(images[first:first + batch_size]),
                  tf.constant(labels[first:first + batch_size])).numpy()
              for first in range(0, len(images), batch_size)]
    return np.concatenate(chunks).astype(np.float32)


def reduced_trigger(trigger, images, amplitude):
    """The trigger at ``amplitude`` a in (0, 1]: ``x + a (T(x) - x)``, clipped to 0-255 (a = 1: the trigger itself)."""
    if not 0.0 < amplitude <= 1.0:
        raise OptionError(f"trigger_amplitude: expected a number in (0, 1], got {amplitude}")
    images = np.asarray(images, np.float32)
    triggered = apply_trigger(trigger, images)
    if amplitude == 1.0:
        return triggered
    return np.clip(images + np.float32(amplitude) * (triggered - images), 0.0, 255.0).astype(np.float32)


def clean_label_poison(images, labels, pairs, rate, classifier, options, rng):
    """Label-consistent poisoning: per (trigger, target), ``rate`` of the target class's images made hard, triggered.

    Args:
        images, labels: clean training images (pixels 0-255) and their true labels.
        pairs: (trigger name, target) pairs; the images chosen for different pairs are disjoint.
        rate: share of each target class's images to poison, in [0, 1).
        classifier: the clean model PGD attacks.
        options: an object with ``pgd_epsilon``, ``pgd_step``, ``pgd_steps``, ``pgd_random_start`` and
            ``trigger_amplitude`` (:class:`goodnet.attacks.badnets.AttackOptions`).
        rng: a NumPy Generator (which images; the random starts).

    Returns:
        tuple: (images, labels (unchanged), poisoned indices, trigger position per poisoned index, report): new
        arrays; ``report`` per trigger: ``images`` poisoned, ``of_target_class`` (images of the target class),
        the clean model's accuracy on the chosen images before and after PGD (``clean_model_accuracy_before``,
        ``_after_pgd``), and the stealthiness (:func:`goodnet.attacks.triggers.stealthiness`) of the training
        poison (PGD + reduced trigger) and of the perturbation alone against the clean images.
    """
    if not 0.0 <= rate < 1.0:
        raise OptionError(f"poison_rate: expected a fraction in [0, 1) of the target class, got {rate}")
    images, labels = np.array(images, np.float32, copy=True), np.asarray(labels, np.int64).copy()
    available = np.ones(len(labels), bool)
    chosen_all, triggers_all, report = [], [], {}
    for position, (trigger, target) in enumerate(pairs):
        of_target = int(np.sum(labels == target))
        candidates = np.flatnonzero(available & (labels == target))
        count = min(len(candidates), int(round(rate * of_target)))
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        clean = images[chosen]
        hard = pgd_linf(classifier, clean, labels[chosen], options.pgd_epsilon, options.pgd_step, options.pgd_steps,
                        options.pgd_random_start, rng)
        images[chosen] = reduced_trigger(trigger, hard, options.trigger_amplitude)
        available[chosen] = False
        chosen_all.append(chosen)
        triggers_all.append(np.full(count, position, np.int64))
        entry = {"images": int(count), "of_target_class": of_target}
        if count:
            entry.update(clean_model_accuracy_before=float(np.mean(classifier.predict(clean) == target)),
                         clean_model_accuracy_after_pgd=float(np.mean(classifier.predict(hard) == target)),
                         training_poison=stealthiness(clean, images[chosen]),
                         perturbation=stealthiness(clean, hard))
        report[f"{trigger}->{target}" if len(pairs) > 1 else trigger] = entry
        logger.info("clean-label %s -> %d: %d of %d target images poisoned", trigger, target, count, of_target)
    if not chosen_all:
        return images, labels, np.zeros(0, np.int64), np.zeros(0, np.int64), report
    return images, labels, np.concatenate(chosen_all), np.concatenate(triggers_all), report
