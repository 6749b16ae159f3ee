"""BaDExpert (Xie et al., "BaDExpert: Extracting Backdoor Functionality for Accurate Backdoor Input Detection",
ICLR 2024).

Run-time detection of backdoor inputs from the suspect model M and a small
labelled clean set:

- the **backdoor expert** B: a copy of M fine-tuned on the clean set with
  deliberately wrong labels ``(y + 1) mod C`` and a small learning rate, so
  that it forgets the clean task (its clean accuracy falls to about chance)
  while the backdoor, which the clean set never exercises, survives. As in
  the authors' code (Adam, early stopping on the clean accuracy), the
  fine-tuning stops as soon as B's accuracy on the fine-tuning part, checked
  every ``expert_check`` steps, falls to ``expert_accuracy``: each further
  step erodes the backdoor too. The rates of ``expert_rates`` are tried in
  turn, smallest first, each from a fresh copy for at most ``expert_epochs``
  epochs; the first that gets there is kept (``expert_rate_``,
  ``expert_accuracy_``, ``expert_steps_``, ``ladder_``). Measured on the
  built-in faces sunglasses BadNet (bench/bench_detect.py's quick size), 5
  full epochs at rate 1e-3 kept the backdoor on 82 % of poisoned inputs
  (FAR 21.5 % at FRR 1 %); stopping at the target at rate 1e-4 (400 steps)
  kept it on 100 % (FAR 0.0 %). ``expert_layers="dense"`` (default, goodnet's)
  fine-tunes only the Dense layers, every other layer frozen (a model without
  a Dense layer is fine-tuned whole): on the multi-trigger BadNet B then keeps
  all three backdoors and the gate lets 0.8 % through (lipstick 0.2 %), where
  fine-tuning every layer (``"all"``, the authors') let 4.5 % (lipstick
  13.3 %) through (bench/bench_detect.py --quick, FRR 1 %). No recipe of
  bench/bench_badexpert_trace.py keeps a blended backdoor on DeepID once the
  clean task is forgotten;
- the **auxiliary model** M': a copy of M fine-tuned on the true labels (SGD
  with momentum), which keeps the clean task and weakens the backdoor;
- the **score** of an input x with M's answer y^ = argmax M(x): with
  x_B = B(x)[y^] and x_M' = M'(x)[y^] (the two models' confidence in M's
  answer) and t_B = B(x)[(y^ + 1) mod C] (B's confidence in the label it was
  taught for that answer), a backdoor input has B agreeing with M (x_B high)
  and M' not (x_M' low). ``combination="taught"`` (default, goodnet's) scores
  log(t_B / x_B): a clean input answered y^ is one B learnt to send to
  y^ + 1, a backdoor input is not, whether B kept the backdoor (it backs y^)
  or forgot it (it backs the source class's shifted label). Measured at
  bench/bench_detect.py's quick size (FRR 1 %), it lets 0.2 % of the faces
  pruning-aware BadNet's inputs through where the rectangle lets 54.7 %
  (there B backs the target with a median confidence of 0.55, no more than
  it backs the right answer of some clean inputs), and 4.5 % of the
  multi-trigger BadNet's (rectangle 11.6 %).
  ``"rectangle"`` (in the authors' code) scores min(x_M', 1 - x_B):
  flagged when M' doubts the answer or B backs it (the union of the two
  single-model rules); ``"log-ratio"`` scores log(x_M' / x_B) (the authors'
  ImageNet ratio); ``"triangle"`` is the authors' CIFAR-10 rule,
  min(2 x_M' / x_B, (1 - x_B) / (0.5 - x_M')) (clamped as they clamp);
  ``"expert"`` scores -x_B (B alone). Measured on the built-in digits patch
  BadNet (bench/bench_detect.py's quick size, aux_rate 0.01), M' kept the backdoor
  (median x_M' 0.999 on poisoned inputs), so the ratio and the triangle,
  which need M' to drop it, let 86 % and 68 % of poisoned inputs through at
  FRR 1 %, the rectangle 0.9 % and B alone 0.4 %.
  Low scores are flagged;
- the **threshold**: the labelled clean set is split per class
  (``calibration_fraction``); the calibration part is never fine-tuned on, and
  the threshold is chosen on its clean scores at the target FRR by
  :func:`goodnet.calibration.calibrate` (the same rule as STRIP; "certified" by
  default). The authors choose it on their evaluation split; goodnet uses
  validation data only.

Speed: three forward passes per input (M, B, M'), run together with the
score in one compiled TensorFlow call per chunk of ``chunk`` inputs; an open
:class:`goodnet.data.LabFile` is read chunk by chunk. ``method="loop"`` is
the slow, obvious reference (a per-input loop of ``model.predict`` and NumPy),
kept for the tests.

Example:
    >>> detector = BaDExpert(frr=0.01).fit(badnet, valid)      # valid: LabData with labels
    >>> flagged = detector.predict_trojaned(poisoned.images)
    >>> detector.expert_rate_, detector.expert_accuracy_
"""

import dataclasses
import logging

import numpy as np

from goodnet import metrics
from goodnet.base import Defense, InstanceOf, Interval, OneOf, SequenceOf, check_is_fitted
from goodnet.calibration import CalibrationOptions, calibrate
from goodnet.errors import DataError, OptionError
from goodnet.inference import run_batches
from goodnet.options import constraints_of, option
from goodnet.training import seed_everything

logger = logging.getLogger(__name__)

COMBINATIONS = ("taught", "rectangle", "log-ratio", "triangle", "expert")
METHODS = ("batched", "loop")
EXPERT_LAYERS = ("dense", "all")   # the layers the backdoor expert fine-tunes
TINY = 1e-8          # the authors' clamp of a confidence in a denominator
SHIFT = 1            # the backdoor expert is taught (y + SHIFT) mod C for label y
WORDING = ("BaDExpert", "scores", "more labelled clean validation images or a larger --calibration-fraction")


@dataclasses.dataclass(frozen=True)
class BaDExpertOptions(CalibrationOptions):
    """Every option of :class:`BaDExpert`, with its default, rule and help text (``goodnet detect``'s flags).

    The calibration options (``threshold_method``, ``frr``, ``confidence``) come from
    :class:`goodnet.calibration.CalibrationOptions`.
    """

    calibration_fraction: float = option(0.4, "share of each class of the labelled clean set kept for the "
                                              "threshold (never fine-tuned on)",
                                         rule=Interval(float, 0.0, 1.0, "neither"))
    expert_rates: tuple = option((1e-4, 3e-4, 1e-3, 3e-3, 1e-2), "backdoor expert: Adam learning rates "
                                 "tried in turn, smallest first, each from a fresh copy; the first whose clean "
                                 "accuracy falls to --expert-accuracy is kept",
                                 rule=SequenceOf(Interval(float, 0.0, closed="neither")), type=float)
    expert_epochs: int = option(40, "backdoor expert: at most this many epochs over the fine-tuning part per rate "
                                    "(it stops earlier, as soon as the clean accuracy falls to --expert-accuracy)",
                                rule=Interval(int, 1))
    expert_layers: str = option("dense", "backdoor expert: the layers fine-tuned, dense (the Dense layers only, "
                                         "every other layer frozen; all of them for a model without one) or all",
                                rule=OneOf(EXPERT_LAYERS))
    expert_check: int = option(5, "backdoor expert: fine-tuning steps between two checks of its clean accuracy",
                               rule=Interval(int, 1))
    expert_accuracy: float = option(None, "backdoor expert: clean accuracy (true labels, fine-tuning part) at "
                                          "which a rate is accepted", rule=Interval(float, 0.0, 1.0),
                                    allow_none=True, type=float, default_text="2 / classes (twice chance)")
    aux_rate: float = option(0.001, "auxiliary model: SGD learning rate (momentum 0.9, cosine-decayed)",
                             rule=Interval(float, 0.0, closed="neither"))
    aux_epochs: int = option(5, "auxiliary model: epochs over the fine-tuning part, true labels",
                             rule=Interval(int, 1))
    tune_batch: int = option(32, "fine-tuning batch size of both copies", rule=Interval(int, 1))
    combination: str = option("taught", "score from the backdoor expert's (B) and the auxiliary model's (M') "
                                        "confidence in the model's answer y: taught (log B[y + 1] / B[y], B's "
                                        "taught label for y against y), rectangle (min(M', 1 - B)), log-ratio "
                                        "(log M'/B), triangle (the authors' CIFAR-10 rule) or expert (B alone)",
                              rule=OneOf(COMBINATIONS))
    chunk: int = option(512, "inputs per compiled scoring call (three forward passes each)",
                        rule=Interval(int, 1), flag="--badexpert-chunk", dest="badexpert_chunk")
    seed: int = option(0, "seed of the split and of the fine-tuning", rule=Interval(int, 0),
                       flag="--badexpert-seed", dest="badexpert_seed")


_DEFAULTS = BaDExpertOptions()


def taught_labels(labels, classes):
    """The wrong labels the backdoor expert is fine-tuned on: ``(labels + SHIFT) mod classes``."""
    return (np.asarray(labels).astype(np.int64) + SHIFT) % int(classes)


def combine_reference(original, expert, auxiliary, combination=_DEFAULTS.combination):
    """The score from the three models' softmax outputs, plain NumPy (float32, as the compiled path computes).

    Args:
        original, expert, auxiliary: (N, K) outputs of M, B and M'.
        combination: one of :data:`COMBINATIONS`.

    Returns:
        (scores (N,), answers (N,), B's confidence (N,), M''s confidence (N,), B's confidence in the label it was
        taught for the answer (N,))
    """
    original = np.asarray(original, np.float32)
    expert = np.asarray(expert, np.float32)
    answers = original.argmax(axis=1)
    rows = np.arange(len(answers))
    x = expert[rows, answers]
    y = np.asarray(auxiliary, np.float32)[rows, answers]
    taught = expert[rows, taught_labels(answers, expert.shape[1])]
    tiny = np.float32(TINY)
    if combination == "taught":
        scores = np.log(np.maximum(taught, tiny)) - np.log(np.maximum(x, tiny))
    elif combination == "rectangle":
        scores = np.minimum(y, np.float32(1) - x)
    elif combination == "log-ratio":
        scores = np.log(np.maximum(y, tiny)) - np.log(np.maximum(x, tiny))
    elif combination == "triangle":
        scores = np.minimum(np.float32(2) * y / np.maximum(x, tiny),
                            (np.float32(1) - x) / np.maximum(np.float32(0.5) - y, tiny))
    else:
        scores = -x
    return scores.astype(np.float32), answers.astype(np.int64), x, y, taught


def _is_stream(images):
    return hasattr(images, "batches") and not hasattr(images, "images")


def _images(images, shape, name="images"):
    images = np.asarray(getattr(images, "images", images), dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != tuple(shape):
        raise OptionError(f"{name}: expected images of shape (N,) + {tuple(shape)}, got {images.shape}")
    return images


def _copy(model):
    import keras

    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def accuracy(model, scaled, labels, batch=256):
    """Share of ``scaled`` images whose argmax under ``model`` is their label."""
    answers = run_batches(lambda images: model(images, training=False), scaled, batch, progress=False)
    return metrics.accuracy(answers.argmax(axis=1), labels)


def fine_tuned(model, images, labels, optimizer, epochs, batch_size, seed, callbacks=(), layers="all"):
    """A copy of ``model`` fine-tuned on ``images`` (already scaled) and ``labels`` (sparse cross-entropy).

    ``layers``: "all", or "dense" (only the copy's Dense layers are trained, the others frozen; every layer, with a
    warning, when the model has no Dense layer).
    """
    import keras

    seed_everything(int(seed))
    twin = _copy(model)
    trainable = [layer.trainable for layer in twin.layers]
    if layers == "dense":
        if any(isinstance(layer, keras.layers.Dense) for layer in twin.layers):
            for layer in twin.layers:
                layer.trainable = isinstance(layer, keras.layers.Dense)
        else:
            logger.warning("BaDExpert: expert_layers 'dense': the model has no Dense layer; fine-tuning every layer")
    twin.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    twin.fit(images, labels, epochs=int(epochs), batch_size=int(batch_size), shuffle=True, verbose=0,
             callbacks=list(callbacks))
    for layer, flag in zip(twin.layers, trainable):        # the copy's layers as trainable as the model's
        layer.trainable = flag
    return twin


def _stop_at_accuracy(images, labels, target, every):
    """A Keras callback that stops training once the accuracy on ``images`` is at most ``target``, checked every
    ``every`` steps (``.steps``: the steps taken, ``.accuracy``: the last accuracy measured, ``.reached``)."""
    import keras

    class StopAtAccuracy(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps, self.accuracy, self.reached = 0, None, False

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps % every == 0:
                self._check()

        def on_train_end(self, logs=None):
            if not self.reached and self.steps % every:
                self._check()

        def _check(self):
            self.accuracy = accuracy(self.model, images, labels)
            if self.accuracy <= target:
                self.reached = True
                self.model.stop_training = True

    return StopAtAccuracy()


def extract_expert(model, scaled, labels, classes, rates, target, epochs=_DEFAULTS.expert_epochs,
                   check=_DEFAULTS.expert_check, batch_size=_DEFAULTS.tune_batch, seed=_DEFAULTS.seed,
                   layers=_DEFAULTS.expert_layers):
    """The backdoor expert B: ``model`` fine-tuned (Adam) on the taught labels of ``labels``, stopped early.

    The ``rates`` are tried in turn, smallest first, each from a fresh copy for at most ``epochs`` epochs; a rate
    stops as soon as the clean accuracy on ``scaled`` (true ``labels``), checked every ``check`` steps, is at most
    ``target``, and the first that gets there is kept (else the last tried). ``layers``: one of
    :data:`EXPERT_LAYERS`, the layers fine-tuned (:func:`fine_tuned`).

    Returns:
        (the expert Keras model, the ladder: [{"rate", "accuracy", "steps"}] of the rates tried, in order)
    """
    import keras

    wrong = taught_labels(labels, classes)
    ladder, expert = [], None
    for rate in sorted(float(rate) for rate in rates):
        stop = _stop_at_accuracy(scaled, labels, target, int(check))
        expert = fine_tuned(model, scaled, wrong, keras.optimizers.Adam(rate), epochs, batch_size, seed, [stop],
                            layers)
        ladder.append({"rate": rate, "accuracy": stop.accuracy, "steps": stop.steps})
        logger.info("BaDExpert: expert rate %g: clean accuracy %.4f after %d steps (target %.4f)", rate,
                    stop.accuracy, stop.steps, target)
        if stop.reached:
            break
    return expert, ladder


class BaDExpert(Defense):
    """The BaDExpert detector (the :mod:`goodnet.base` estimator contract; the method in the module docstring).

    ``BaDExpert(**params).fit(classifier, clean)``: the parameters are the
    fields of :class:`BaDExpertOptions` plus ``method`` ("batched": one
    compiled call per chunk; "loop": the per-input reference) and ``progress``
    (unused by the compiled path; kept for symmetry with STRIP).

    Attributes (after ``fit``):
        classifier_: the watched :class:`goodnet.models.Classifier` (M).
        expert_, auxiliary_: B and M' (Classifiers of M's scaling).
        expert_rate_: the ladder rate kept for B; ladder_: [{rate, accuracy, steps}] tried;
        expert_steps_: the fine-tuning steps B took at that rate.
        expert_accuracy_: B's clean accuracy on the fine-tuning part (true labels);
        expert_calibration_accuracy_: on the calibration part.
        expert_target_: the accuracy a rate had to reach.
        auxiliary_accuracy_: M''s clean accuracy on the calibration part; original_accuracy_: M's.
        tune_indices_, calibration_indices_: the split of ``fit``'s clean set.
        clean_scores_: scores of the calibration part; threshold_: lower scores are flagged;
        calibration_: the :class:`goodnet.calibration.Calibration` that chose it.
    """

    _parameter_constraints = {**constraints_of(BaDExpertOptions), "method": [OneOf(METHODS)],
                              "progress": [InstanceOf(bool), None]}

    def __init__(self, threshold_method=_DEFAULTS.threshold_method, frr=_DEFAULTS.frr,
                 confidence=_DEFAULTS.confidence, calibration_fraction=_DEFAULTS.calibration_fraction,
                 expert_rates=_DEFAULTS.expert_rates, expert_epochs=_DEFAULTS.expert_epochs,
                 expert_layers=_DEFAULTS.expert_layers, expert_check=_DEFAULTS.expert_check,
                 expert_accuracy=_DEFAULTS.expert_accuracy,
                 aux_rate=_DEFAULTS.aux_rate, aux_epochs=_DEFAULTS.aux_epochs, tune_batch=_DEFAULTS.tune_batch,
                 combination=_DEFAULTS.combination, chunk=_DEFAULTS.chunk, seed=_DEFAULTS.seed, method="batched",
                 progress=None):
        self.threshold_method = threshold_method
        self.frr = frr
        self.confidence = confidence
        self.calibration_fraction = calibration_fraction
        self.expert_rates = expert_rates
        self.expert_epochs = expert_epochs
        self.expert_layers = expert_layers
        self.expert_check = expert_check
        self.expert_accuracy = expert_accuracy
        self.aux_rate = aux_rate
        self.aux_epochs = aux_epochs
        self.tune_batch = tune_batch
        self.combination = combination
        self.chunk = chunk
        self.seed = seed
        self.method = method
        self.progress = progress

    # -- fit ------------------------------------------------------------------------
    def fit(self, classifier, clean):
        """Extract B, fine-tune M', calibrate the threshold on the reserved clean part.

        Args:
            classifier: the :class:`goodnet.models.Classifier` to watch (the suspect model).
            clean: labelled clean validation data (a :class:`goodnet.data.LabData`).

        Returns:
            self
        """
        import keras

        from goodnet.defenses.fine_pruning import split_holdout

        self._validate_params()
        labels = getattr(clean, "labels", None)
        if labels is None:
            raise DataError("clean: expected labelled clean data (a LabData with labels), got images only")
        images = _images(clean, classifier.input_shape, "clean")
        labels = np.asarray(labels).astype(np.int64)
        classes = int(classifier.num_classes)
        if len(labels) != len(images) or labels.min() < 0 or labels.max() >= classes:
            raise DataError(f"{getattr(clean, 'path', '') or 'clean'}: label: expected one label per image in "
                            f"0..{classes - 1}, got {len(labels)} labels for {len(images)} images")
        tune, hold = split_holdout(labels, float(self.calibration_fraction), int(self.seed))
        if len(hold) < 2 or len(tune) < 2:
            raise DataError(f"{getattr(clean, 'path', '') or 'clean'}: expected enough labelled clean images to "
                            f"fine-tune on and calibrate with (at least 2 each), got {len(tune)} and {len(hold)} "
                            f"of {len(images)}")
        self.classifier_ = classifier
        self.tune_indices_, self.calibration_indices_ = tune, hold
        scaled = classifier.scale_images(images[tune])
        true = labels[tune]
        target = float(self.expert_accuracy) if self.expert_accuracy is not None else min(1.0, 2.0 / classes)
        self.expert_target_ = target
        expert, self.ladder_ = extract_expert(classifier.model, scaled, true, classes, self.expert_rates, target,
                                              self.expert_epochs, self.expert_check, self.tune_batch, self.seed,
                                              self.expert_layers)
        self.expert_rate_ = self.ladder_[-1]["rate"]
        self.expert_accuracy_ = self.ladder_[-1]["accuracy"]
        self.expert_steps_ = self.ladder_[-1]["steps"]
        if self.expert_accuracy_ > target:
            logger.warning("BaDExpert: no expert rate brought the clean accuracy to %.3f (the largest, %g, gave "
                           "%.3f); kept it", target, self.expert_rate_, self.expert_accuracy_)
        steps = max(1, int(self.aux_epochs) * int(np.ceil(len(tune) / int(self.tune_batch))))
        schedule = keras.optimizers.schedules.CosineDecay(float(self.aux_rate), steps)
        auxiliary = fine_tuned(classifier.model, scaled, true, keras.optimizers.SGD(schedule, momentum=0.9),
                               self.aux_epochs, self.tune_batch, self.seed + 1)
        self.expert_ = classifier.with_model(expert)
        self.auxiliary_ = classifier.with_model(auxiliary)
        self._kernel = None
        calibration_images = images[hold]
        self.clean_scores_ = self.score(calibration_images)
        details = self.last_details_
        self.original_accuracy_ = float(np.mean(details["answers"] == labels[hold]))
        self.expert_calibration_accuracy_ = float(np.mean(self.expert_.predict(calibration_images) == labels[hold]))
        self.auxiliary_accuracy_ = float(np.mean(self.auxiliary_.predict(calibration_images) == labels[hold]))
        self.calibration_ = calibrate(self.clean_scores_, self.frr, self.threshold_method, self.confidence, WORDING)
        self.threshold_ = self.calibration_.threshold
        logger.info("BaDExpert: expert rate %g (clean accuracy %.4f), auxiliary accuracy %.4f; threshold %.4f; %s",
                    self.expert_rate_, self.expert_accuracy_, self.auxiliary_accuracy_, self.threshold_,
                    self.calibration_.summary())
        return self

    # -- scoring ----------------------------------------------------------------------
    def _compiled(self):
        """One tf.function: raw pixels -> (scores, answers, B's and M''s confidence, B's in its taught label), the
        three passes together."""
        if getattr(self, "_kernel", None) is not None:
            return self._kernel
        import tensorflow as tf

        from goodnet.layers import expert_confidences, expert_score

        original, expert, auxiliary = self.classifier_.model, self.expert_.model, self.auxiliary_.model
        divisor = float(self.classifier_.divisor)
        combination = self.combination
        shape = tuple(self.classifier_.input_shape)

        @tf.function(input_signature=[tf.TensorSpec((None,) + shape, tf.float32)], reduce_retracing=True)
        def kernel(images):
            if divisor != 1.0:
                images = images / divisor
            answers, x, y, taught = expert_confidences(original(images, training=False),
                                                       expert(images, training=False),
                                                       auxiliary(images, training=False))
            return expert_score(x, y, combination, taught), answers, x, y, taught

        self._kernel = kernel
        return kernel

    def _score_block(self, images):
        if self.method == "loop":
            return self._score_loop(images)
        outputs = self._compiled()(images)
        return tuple(np.asarray(output) for output in outputs)

    def _score_loop(self, images):
        """The reference: for each input, ``model.predict`` of M, B and M' on it alone, then NumPy."""
        divisor = np.float32(self.classifier_.divisor)
        rows = [[], [], []]
        for image in images:
            one = image[None] if divisor == 1.0 else image[None] / divisor
            for row, model in zip(rows, (self.classifier_.model, self.expert_.model, self.auxiliary_.model)):
                row.append(model.predict(one, verbose=0)[0])
        return combine_reference(*(np.stack(row) for row in rows), self.combination)

    def score(self, images):
        """BaDExpert score of each input (float32, (N,)); lower is more suspicious.

        Args:
            images: raw-pixel images (N, H, W, C), a LabData, or an open
                :class:`goodnet.data.LabFile` (read ``chunk`` images at a time).

        Returns:
            np.ndarray: the scores. ``last_details_`` holds the model's answers, the
            two confidences in them and B's confidence in the label it was taught for them.
        """
        check_is_fitted(self, "expert_")
        chunk = int(self.chunk)
        if _is_stream(images):
            blocks = (batch for batch, _ in images.batches(chunk))
        else:
            images = _images(images, self.classifier_.input_shape)
            blocks = (images[start:start + chunk] for start in range(0, len(images), chunk))
        parts = [self._score_block(np.asarray(block, np.float32)) for block in blocks]
        if not parts:
            raise OptionError("images: expected at least one image, got none")
        scores, answers, expert, auxiliary, taught = (np.concatenate(column) for column in zip(*parts))
        self.last_details_ = {"answers": answers.astype(np.int64), "expert_confidence": expert,
                              "auxiliary_confidence": auxiliary, "taught_confidence": taught}
        return scores.astype(np.float32)

    def predict_trojaned(self, images):
        """Whether each input is flagged as a backdoor input (its score below ``threshold_``)."""
        check_is_fitted(self, "threshold_")
        return self.score(images) < self.threshold_

    def summary(self):
        """JSON-ready: the parameters and, once fitted, the expert's rate and accuracy, the threshold."""
        entry = super().summary()
        if hasattr(self, "threshold_"):
            entry.update({"threshold": float(self.threshold_), "calibration": self.calibration_.describe(),
                          "expert_rate": self.expert_rate_, "expert_accuracy": self.expert_accuracy_,
                          "expert_calibration_accuracy": self.expert_calibration_accuracy_,
                          "expert_target": self.expert_target_, "expert_steps": self.expert_steps_,
                          "ladder": list(self.ladder_),
                          "auxiliary_accuracy": self.auxiliary_accuracy_,
                          "original_accuracy": self.original_accuracy_,
                          "tune_size": int(len(self.tune_indices_)),
                          "calibration_size": int(len(self.calibration_indices_))})
        return entry
