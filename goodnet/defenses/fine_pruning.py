"""Fine-pruning (Liu, Dolan-Gavitt and Garg, 2018): prune, then fine-tune on clean data.

The pruned channels of the chosen convolution stay pruned while fine-tuning:
their kernel and bias are multiplied by a 0/1 mask after every optimizer step.
Only clean validation data is used: it is split into a fine-tuning part and a
hold-out part; the hold-out part decides early stopping and gives the
reported validation figures. Poisoned validation files, when given, are only
measured (per epoch, for the report), never used to choose anything.

- :class:`FineTuneRecipe`: how to fine-tune (every option's default, rule and
  help once; ``goodnet fineprune``'s and ``goodnet repair``'s flags);
- :class:`FinePruning`: the estimator (:mod:`goodnet.base` contract),
  ``FinePruning(layer, channels, recipe, holdout_fraction, seed).fit(classifier, clean, poisoned=(), holdout=None)``;
- :func:`run_fine_pruning`: rank, choose the channels, fine-tune (what
  ``goodnet fineprune`` computes; :func:`goodnet.reports.write_fineprune_outputs`
  writes its files).
"""

import dataclasses
import logging

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, OneOf, SequenceOf, check_is_fitted
from goodnet.defenses.pruning import PruneOptions
from goodnet.errors import OptionError
from goodnet.metrics import accuracy, attack_success_rate
from goodnet.options import constraints_of, option, validate_options
from goodnet.training import seed_everything
from goodnet.defenses.unlearning import stamp
from goodnet.surgery import apply_masks, channel_masks, prune_model

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("one-cycle", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class FineTuneRecipe:
    """How :class:`FinePruning` fine-tunes: every option with its default, rule and help text (written once).

    The fields are ``goodnet fineprune``'s and ``goodnet repair``'s recipe
    flags (:func:`goodnet.cli.options.add_options`) and
    :attr:`goodnet.repair.RepairOptions.recipe`.

    Example:
        >>> FinePruning(channels=(0, 5), recipe=FineTuneRecipe(epochs=20, optimizer="adam"))
    """

    epochs: int = option(60, "fine-tuning epochs: the length of the schedule", rule=Interval(int, 1))
    learning_rate: float = option(0.01, "peak learning rate", rule=Interval(float, 0))
    batch_size: int = option(32, "fine-tuning batch size", rule=Interval(int, 1), flag="--tune-batch-size",
                             dest="tune_batch_size")
    optimizer: str = option("sgd", "optimizer: sgd (with --momentum) or adam", rule=OneOf(OPTIMIZERS))
    momentum: float = option(0.9, "SGD momentum", rule=Interval(float, 0, 1))
    schedule: str = option("one-cycle", "learning-rate schedule (one-cycle: rise from peak/25 to the peak over "
                                        "--warmup of the steps, then cosine decay to 0)", rule=OneOf(SCHEDULES))
    warmup: float = option(0.3, "share of the steps the one-cycle rate rises", rule=Interval(float, 0, 1))
    min_epochs: int = option(None, "first epoch that may be kept: the kept model has the best hold-out accuracy "
                                   "among epochs K..end (0 allows the untuned pruned model)",
                             rule=Interval(int, 0), allow_none=True, type=int, metavar="K",
                             default_text="half the epochs")
    patience: int = option(None, "stop after this many epochs without hold-out gain, counted from --min-epochs",
                           rule=Interval(int, 1), allow_none=True, default_text="run the whole schedule")
    augment: bool = option(True, "augmentation: fine-tune on randomly shifted copies of the clean images",
                           rule=InstanceOf(bool))
    shift: int = option(3, "augmentation: largest random shift in pixels", rule=Interval(int, 0))
    flip: bool = option(False, "augmentation: also mirror half the images", rule=InstanceOf(bool))
    noise: float = option(0.0, "augmentation: Gaussian pixel noise, 0-255 scale", rule=Interval(float, 0))
    clip_norm: float = option(None, "clip each step's gradients to this global norm",
                              rule=Interval(float, 0, closed="neither"), allow_none=True, type=float,
                              metavar="NORM", default_text="no clipping")
    distill: float = option(0.0, "weight of the suspect model's own answers on the clean tune images in the "
                                 "training targets, 0-1 (0: labels only)", rule=Interval(float, 0, 1), metavar="W")
    mixup: float = option(0.4, "mixup: train on pairs of tune images blended with Beta(ALPHA, ALPHA) weights, and "
                               "their targets likewise (0: off)", rule=Interval(float, 0), metavar="ALPHA")
    unlearn: float = option(0.25, "trigger unlearning: each epoch, recover the patch (mask and pattern) that most "
                                  "hurts the model on clean tune images and stamp it on this share of them, true "
                                  "labels kept (0: off)", rule=Interval(float, 0, 1), metavar="SHARE")
    unlearn_area: float = option(0.05, "largest share of the image the recovered patch covers",
                                 rule=Interval(float, 0, 1, "right"), metavar="SHARE")
    unlearn_steps: int = option(10, "patch-search steps per epoch", rule=Interval(int, 1))


@dataclasses.dataclass(frozen=True)
class FinePruneOptions:
    """What ``goodnet fineprune`` runs (:func:`run_fine_pruning`): which channels, the split, the recipe.

    ``layer``, ``holdout_fraction`` and ``seed`` are also :class:`FinePruning`'s
    defaults; ``drop`` chooses the channels from the pruning sweep.
    """

    layer: str = option(PruneOptions.layer, "convolution to prune", rule=InstanceOf(str))
    drop: float = option(4, "prune up to the first step at least X points below the unpruned accuracy",
                         rule=Interval(float, 0, closed="neither"), type=float, metavar="X")
    recipe: FineTuneRecipe = option(FineTuneRecipe(), "the fine-tuning recipe")
    holdout_fraction: float = option(0.2, "share of each class held out", rule=Interval(float, 0, 1, "left"),
                                     flag="--holdout", metavar="SHARE")
    seed: int = option(0, "seed of the split and of training", rule=Interval(int, 0))


def split_holdout(labels, holdout_fraction=FinePruneOptions.holdout_fraction, seed=FinePruneOptions.seed):
    """Split indices into a fine-tuning part and a hold-out part, per class.

    Every class keeps at least one image for fine-tuning; a class with two or
    more images also gives about ``holdout_fraction`` of them to the hold-out
    part (at least one when the fraction is positive).

    Args:
        labels: int array (N,) of clean labels.
        holdout_fraction: share of each class held out, in [0, 1).
        seed: random seed.

    Returns:
        tuple: (fine-tuning indices, hold-out indices), both sorted.

    Example:
        >>> tune, hold = split_holdout(np.repeat(np.arange(3), 10), 0.2)
        >>> len(tune), len(hold)
        (24, 6)
    """
    if not 0 <= holdout_fraction < 1:
        raise OptionError(f"holdout_fraction: expected a value in [0, 1), got {holdout_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    tune, hold = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = 0
        if len(members) >= 2 and holdout_fraction > 0:
            count = min(len(members) - 1, max(1, int(round(holdout_fraction * len(members)))))
        hold.extend(members[:count])
        tune.extend(members[count:])
    return np.sort(np.array(tune, dtype=np.int64)), np.sort(np.array(hold, dtype=np.int64))


@dataclasses.dataclass
class EpochRecord:
    """Figures logged after one fine-tuning epoch (hold-out = clean validation hold-out)."""

    epoch: int
    loss: float
    holdout_accuracy: float
    attack_success_rates: list
    learning_rate: float = float("nan")
    trigger_loss: float = float("nan")


def learning_rate_at(step, total_steps, peak, schedule=FineTuneRecipe.schedule, warmup=FineTuneRecipe.warmup):
    """The learning rate of ``schedule`` at optimizer ``step`` (0-based) of ``total_steps``.

    - ``constant``: ``peak`` throughout;
    - ``cosine``: cosine decay from ``peak`` to 0 over the steps;
    - ``one-cycle``: linear rise from ``peak / 25`` to ``peak`` over the first
      ``warmup`` share of the steps, then cosine decay to 0 (Smith's one-cycle
      policy, the shape super-fine-tuning uses to erase backdoors).

    Example:
        >>> round(learning_rate_at(30, 100, 0.01), 6), learning_rate_at(100, 100, 0.01)
        (0.01, 0.0)
    """
    if schedule not in SCHEDULES:
        raise OptionError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return float(peak)
    total = max(1, int(total_steps))
    step = min(max(0, int(step)), total)
    rise = int(round(warmup * total)) if schedule == "one-cycle" else 0
    if step < rise:
        start = peak / 25.0
        return float(start + (peak - start) * step / rise)
    progress = (step - rise) / max(1, total - rise)
    return float(0.5 * peak * (1.0 + np.cos(np.pi * progress)))


def augment_images(images, rng, shift=FineTuneRecipe.shift, flip=FineTuneRecipe.flip, noise=FineTuneRecipe.noise):
    """Randomly shifted (edge-padded, up to ``shift`` pixels each way), optionally mirrored and noised copies.

    Args:
        images: raw-pixel images (N, H, W, C).
        rng: a ``numpy.random.Generator`` (the same seed gives the same copies).
        shift: largest shift in pixels along each axis.
        flip: mirror half of the images left-right.
        noise: standard deviation of Gaussian pixel noise (0-255 scale).

    Returns:
        np.ndarray: float32 images in 0-255, same shape.
    """
    images = np.asarray(images, np.float32)
    count, height, width = images.shape[:3]
    out = np.empty_like(images)
    if shift:
        padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
        offsets = rng.integers(0, 2 * shift + 1, size=(count, 2))
        for index, (top, left) in enumerate(offsets):
            out[index] = padded[index, top:top + height, left:left + width]
    else:
        out[...] = images
    if flip:
        mirrored = rng.random(count) < 0.5
        out[mirrored] = out[mirrored, :, ::-1]
    if noise:
        out += rng.normal(0.0, noise, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 255.0)


def mix_images(images, targets, rng, alpha=FineTuneRecipe.mixup):
    """Mixup (Zhang et al. 2018): each image blended with a random partner, and its target likewise.

    Image ``i`` becomes ``w_i * images[i] + (1 - w_i) * images[p_i]`` and its
    target ``w_i * targets[i] + (1 - w_i) * targets[p_i]``, where ``p`` is a
    random permutation and ``w_i ~ Beta(alpha, alpha)``, drawn per image and
    folded to ``max(w, 1 - w)`` so each image stays the larger part of its blend.

    Args:
        images: raw-pixel images (N, H, W, C).
        targets: float targets (N, K) (one-hot labels or soft targets).
        rng: a ``numpy.random.Generator`` (the same seed gives the same blends).
        alpha: the Beta distribution's parameter, > 0 (small: blends close to
            the original images).

    Returns:
        tuple: (float32 images, float32 targets), the same shapes.

    Example:
        >>> mixed, soft = mix_images(images, np.eye(10)[labels], np.random.default_rng(0), 0.4)
    """
    if not alpha > 0:
        raise OptionError(f"mixup: expected a Beta parameter > 0, got {alpha}")
    images = np.asarray(images, np.float32)
    targets = np.asarray(targets, np.float32)
    if len(images) != len(targets):
        raise OptionError(f"targets: expected one row per image ({len(images)}), got {len(targets)}")
    partners = rng.permutation(len(images))
    weights = rng.beta(alpha, alpha, size=len(images)).astype(np.float32)
    weights = np.maximum(weights, 1.0 - weights)
    image_weights = weights.reshape((-1,) + (1,) * (images.ndim - 1))
    mixed = image_weights * images + (1.0 - image_weights) * images[partners]
    soft = weights[:, None] * targets + (1.0 - weights[:, None]) * targets[partners]
    return mixed, soft


class FinePruning(Defense):
    """Prune channels of one convolution, then fine-tune on clean validation data.

    The default recipe (:class:`FineTuneRecipe`) fine-tunes every layer with
    SGD, momentum and a one-cycle learning rate (rise to a moderate peak,
    cosine decay to zero) on randomly shifted, mixup-blended copies of the clean
    tune images, and unlearns the trigger: every epoch a
    :class:`goodnet.defenses.unlearning.TriggerSearch` recovers, from the model
    being tuned and clean images only, the small patch that most misleads it,
    and ``unlearn`` of the images carry that patch with their true labels. Clean
    images alone never show the trigger, so plain fine-tuning at a small rate
    (the paper's recipe) leaves a pruning-aware backdoor intact; mixup keeps
    relearning from a few hundred images from overfitting. The kept model is the
    epoch with the best hold-out accuracy among epochs ``min_epochs`` and later
    (the later epoch on ties), so an early epoch, before the backdoor is
    unlearned, is not kept just because its accuracy is high.

    Args:
        layer: the convolution whose channels are pruned (``conv_3``; unused when ``channels`` is empty).
        channels: channel indices to prune (e.g. the first K of the pruning
            ranking, see :func:`channels_to_prune`).
        recipe: the fine-tuning recipe, a :class:`FineTuneRecipe`.
        holdout_fraction: share of each class of the clean data held out for
            choosing the epoch and for reporting (when ``fit`` splits it).
        seed: seed of the split, of augmentation and of training.
        triggers: reversed triggers to unlearn, ``(masks, patterns)`` with
            masks (T, H, W, 1) in [0, 1] and patterns (T, H, W, C) in raw pixels
            (for example :meth:`goodnet.defenses.neural_cleanse.NeuralCleanse.flagged_triggers`),
            or None. When given, the ``recipe.unlearn`` share of each epoch's
            images is stamped with one of them (chosen at random per image),
            true labels kept, instead of the patch a ``TriggerSearch`` recovers:
            Neural Cleanse's unlearning, in fine-pruning's loop and hold-out rule.

    Attributes (after ``fit``):
        model_: the fine-pruned :class:`goodnet.models.Classifier` (kept epoch).
        history_: list of :class:`EpochRecord`, epoch 0 being the pruned model
            before fine-tuning.
        best_epoch_: the epoch whose weights ``model_`` holds.
        pruned_channels_: the pruned channels, sorted.
        classifier_: the suspect model ``fit`` started from.
        tune_indices_, holdout_indices_: the split of ``clean`` (None when
            ``fit`` was given its hold-out part).

    Example:
        >>> fine = FinePruning(channels=tuple(range(40)), recipe=FineTuneRecipe(epochs=20)).fit(
        ...     badnet, clean_valid, [poisoned_valid])
        >>> fine.predict(images)
    """

    _parameter_constraints = {**{name: rules for name, rules in constraints_of(FinePruneOptions).items()
                                 if name in ("layer", "holdout_fraction", "seed")},
                              "channels": [SequenceOf(Interval(int, 0), allow_empty=True),
                                           InstanceOf(np.ndarray, "an array of channel indices")],
                              "recipe": [InstanceOf(FineTuneRecipe)],
                              "triggers": [None, InstanceOf(tuple, "a (masks, patterns) pair")]}

    def __init__(self, layer=FinePruneOptions.layer, channels=(), recipe=FinePruneOptions.recipe,
                 holdout_fraction=FinePruneOptions.holdout_fraction, seed=FinePruneOptions.seed, triggers=None):
        self.layer = layer
        self.channels = channels
        self.recipe = recipe
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.triggers = triggers

    def _checked_triggers(self, image_shape):
        """``triggers`` as float32 (masks (T, H, W, 1), patterns (T, H, W, C)) after checking their shapes, or None."""
        if self.triggers is None:
            return None
        if len(self.triggers) != 2:
            raise OptionError(f"triggers: expected a (masks, patterns) pair, got {len(self.triggers)} items")
        masks, patterns = (np.asarray(value, np.float32) for value in self.triggers)
        if masks.ndim == 3:
            masks, patterns = masks[None], patterns[None]
        height, width, channels = image_shape
        if (masks.ndim != 4 or masks.shape[1:] != (height, width, 1) or len(masks) == 0
                or patterns.shape != (len(masks), height, width, channels)):
            raise OptionError(f"triggers: expected masks (T, {height}, {width}, 1) and patterns (T, {height}, "
                              f"{width}, {channels}) for images {tuple(image_shape)}, got {masks.shape} and "
                              f"{patterns.shape}")
        if not self.recipe.unlearn:
            raise OptionError("triggers: given, but recipe.unlearn is 0, so no image would carry them")
        return masks, patterns

    def resolved_recipe(self):
        """The recipe as a JSON-ready dict, ``min_epochs`` resolved (for reports)."""
        return {**dataclasses.asdict(self.recipe), "min_epochs": self.first_kept_epoch}

    @property
    def first_kept_epoch(self):
        """The first epoch ``fit`` may keep (``recipe.min_epochs``, default half the schedule)."""
        epochs, min_epochs = self.recipe.epochs, self.recipe.min_epochs
        first = epochs // 2 if min_epochs is None else int(min_epochs)
        return min(max(0, first), epochs)

    def _measure(self, classifier, holdout, poisoned):
        holdout_accuracy = accuracy(classifier.predict(holdout.images), holdout.labels)
        rates = [attack_success_rate(classifier.predict(data.images), data.labels) for data in poisoned]
        return holdout_accuracy, rates

    def _optimizer(self):
        import keras

        recipe = self.recipe
        if recipe.optimizer == "adam":
            return keras.optimizers.Adam(recipe.learning_rate, global_clipnorm=recipe.clip_norm)
        return keras.optimizers.SGD(recipe.learning_rate, momentum=recipe.momentum, global_clipnorm=recipe.clip_norm)

    def _split(self, clean, holdout):
        """(tune, holdout) LabData: ``clean`` split per class, or ``clean`` itself when ``holdout`` is given."""
        if holdout is None:
            self.tune_indices_, self.holdout_indices_ = split_holdout(clean.labels, self.holdout_fraction, self.seed)
            tune, holdout = clean.subset(self.tune_indices_), clean.subset(self.holdout_indices_)
        else:
            self.tune_indices_ = self.holdout_indices_ = None
            tune = clean
        if len(holdout.labels) == 0:
            raise OptionError(f"{clean.path}: label: too few images per class to hold any out for early stopping")
        return tune, holdout

    def fit(self, classifier, clean, poisoned=(), holdout=None, progress=None):
        """Prune ``channels`` of ``layer`` and fine-tune on ``clean``.

        Args:
            classifier: the suspect model (:class:`goodnet.models.Classifier`).
            clean: :class:`goodnet.data.LabData`, clean validation data; split
                per class into a tune and a hold-out part (``holdout_fraction``,
                ``seed``), unless ``holdout`` is given.
            poisoned: poisoned validation LabData, measured per epoch for the report only.
            holdout: the clean hold-out LabData that decides the kept epoch; then
                ``clean`` is the tune part as it is (``goodnet.repair`` passes its own split).
            progress: show Keras's per-epoch progress (None: quiet).

        Returns:
            FinePruning: self.
        """
        import keras

        self._validate_params()
        validate_options(self.recipe, f"{type(self).__name__}.recipe")
        recipe = self.recipe
        seed_everything(self.seed)
        rng = np.random.default_rng([self.seed, 6])
        tune, holdout = self._split(clean, holdout)
        triggers = self._checked_triggers(tune.images.shape[1:])
        channels = [int(channel) for channel in self.channels]
        self.classifier_ = classifier
        if channels:
            pruned = classifier.with_model(prune_model(classifier.model, self.layer, channels, classifier.path))
            target = pruned.model.get_layer(self.layer)
            masks = channel_masks(target, channels)
        else:   # nothing to prune (unlearning only): a copy to tune, whatever the model's layers
            copy = keras.models.clone_model(classifier.model)
            copy.set_weights(classifier.model.get_weights())
            pruned, target = classifier.with_model(copy), None
        model = pruned.model

        steps_per_epoch = int(np.ceil(len(tune.labels) / recipe.batch_size))
        total_steps = steps_per_epoch * recipe.epochs
        optimizer = self._optimizer()
        model.compile(optimizer=optimizer, loss="categorical_crossentropy" if self._soft_targets() else
                      "sparse_categorical_crossentropy")
        done = [0]   # optimizer steps taken

        def set_rate(batch, logs):
            optimizer.learning_rate.assign(learning_rate_at(done[0], total_steps, recipe.learning_rate,
                                                            recipe.schedule, recipe.warmup))

        def after_step(batch, logs):
            done[0] += 1
            if target is not None:
                apply_masks(target, *masks)

        keep_pruned = keras.callbacks.LambdaCallback(on_train_batch_begin=set_rate, on_train_batch_end=after_step)
        holdout_accuracy, rates = self._measure(pruned, holdout, poisoned)
        self.history_ = [EpochRecord(0, float("nan"), holdout_accuracy, rates)]
        first_kept = self.first_kept_epoch
        best_accuracy, best_weights, self.best_epoch_ = -1.0, None, None
        if first_kept == 0:
            best_accuracy, best_weights, self.best_epoch_ = holdout_accuracy, model.get_weights(), 0
        search = None
        if recipe.unlearn and triggers is None:
            from goodnet.defenses.unlearning import TriggerSearch

            search = TriggerSearch(area=recipe.unlearn_area, steps=recipe.unlearn_steps, seed=self.seed)
        for epoch in range(1, recipe.epochs + 1):
            images, targets = self._epoch_data(classifier, tune, rng, model, search, triggers)
            history = model.fit(classifier.scale_images(images), targets, batch_size=recipe.batch_size, epochs=1,
                                shuffle=True, verbose=1 if progress else 0, callbacks=[keep_pruned])
            pruned = pruned.with_model(model)
            holdout_accuracy, rates = self._measure(pruned, holdout, poisoned)
            rate = learning_rate_at(epoch * steps_per_epoch - 1, total_steps, recipe.learning_rate, recipe.schedule,
                                    recipe.warmup)
            self.history_.append(EpochRecord(epoch, float(history.history["loss"][-1]), holdout_accuracy, rates,
                                             rate, search.loss_ if search is not None else float("nan")))
            logger.info("fine-pruning epoch %d: lr %.2g, loss %.4f, hold-out accuracy %.4f, ASR %s", epoch, rate,
                        self.history_[-1].loss, holdout_accuracy, [round(value, 4) for value in rates])
            if epoch < first_kept:
                continue
            if holdout_accuracy >= best_accuracy:   # ties: the later, more converged epoch
                best_accuracy, best_weights, self.best_epoch_ = holdout_accuracy, model.get_weights(), epoch
            elif recipe.patience is not None and epoch - max(self.best_epoch_, first_kept) >= recipe.patience:
                break
        # An uncompiled copy: the saved file carries no optimizer or schedule state.
        kept = keras.models.clone_model(model)
        kept.set_weights(best_weights)
        self.model_ = pruned.with_model(kept)
        self.pruned_channels_ = sorted(channels)
        return self

    def predict(self, images, **kwargs):
        """Class predictions of the fine-pruned model (``model_.predict``)."""
        check_is_fitted(self)
        return self.model_.predict(images, **kwargs)

    def summary(self):
        """Parameters and, once fitted, the kept epoch, the pruned channels and the resolved recipe (JSON-ready)."""
        summary = super().summary()
        if hasattr(self, "model_"):
            summary.update({"best_epoch": self.best_epoch_, "pruned_channels": list(self.pruned_channels_),
                            "epochs_run": len(self.history_) - 1, "recipe": self.resolved_recipe()})
        return summary

    def _soft_targets(self):
        """Whether training targets are distributions (distillation or mixup) rather than labels."""
        return bool(self.recipe.distill) or bool(self.recipe.mixup)

    def _epoch_data(self, classifier, tune, rng, model=None, search=None, triggers=None):
        """One epoch's training images and targets: labels, or soft targets when distilling or mixing.

        With ``search`` (a :class:`goodnet.defenses.unlearning.TriggerSearch`), the trigger it
        recovers from ``model`` (the model being tuned) is stamped on ``unlearn`` of the
        (augmented) images, which keep their targets: the true labels, mixed, when
        distilling, with the suspect model's answers on the unstamped images. With
        ``triggers`` (masks, patterns), each of those images gets one of them instead.
        """
        recipe = self.recipe
        images = tune.images
        if recipe.augment:
            images = augment_images(images, rng, recipe.shift, recipe.flip, recipe.noise)
        targets = tune.labels
        if self._soft_targets():
            targets = np.eye(classifier.output_size, dtype=np.float32)[tune.labels]
        if recipe.distill:
            # The labels mixed with the suspect model's own answers on these clean images.
            targets = (1.0 - recipe.distill) * targets + recipe.distill * classifier.predict_proba(images).astype(
                np.float32)
        if search is not None:
            search.fit(model, images, tune.labels, classifier.divisor)
            images = np.array(images, np.float32)
            chosen = rng.random(len(images)) < recipe.unlearn
            images[chosen] = search.stamped(images[chosen])
        elif triggers is not None:
            images = np.array(images, np.float32)
            chosen = np.flatnonzero(rng.random(len(images)) < recipe.unlearn)
            which = rng.integers(len(triggers[0]), size=len(chosen))
            images[chosen] = stamp(images[chosen], triggers[0][which], triggers[1][which])
        if recipe.mixup:
            images, targets = mix_images(images, targets, rng, recipe.mixup)
        return images, targets

    def curve_rows(self, poisoned_names=()):
        """The per-epoch log as a list of dicts (for CSV/JSON)."""
        check_is_fitted(self)
        rows = []
        for record in self.history_:
            row = {"epoch": record.epoch, "learning_rate": record.learning_rate, "loss": record.loss,
                   "holdout_accuracy": record.holdout_accuracy, "trigger_loss": record.trigger_loss}
            for index, rate in enumerate(record.attack_success_rates):
                name = poisoned_names[index] if index < len(poisoned_names) else f"poisoned_{index}"
                row[f"asr:{name}"] = rate
            rows.append(row)
        return rows


def channels_to_prune(defense, drop=None, count=None):
    """How many (and which) channels to prune: the first ``count`` of the ranking, or the sweep's X-point step.

    Args:
        defense: a fitted :class:`goodnet.defenses.pruning.PruningDefense`.
        drop: accuracy drop X in points; the step the defense selected for it
            (the lab's rule). Ignored when ``count`` is given.
        count: an explicit number of channels.

    Returns:
        np.ndarray: channel indices in pruning order.
    """
    if count is None:
        from goodnet.defenses.pruning import select_steps

        step = select_steps(defense.curve_.clean_accuracy, (drop,), defense.policy)[drop]
        count = step if step is not None else len(defense.ranking_)
        if step is None:
            logger.warning("accuracy never dropped by %s points: pruning every channel", drop)
    if not 0 <= count <= len(defense.ranking_):
        raise OptionError(f"channels: expected 0..{len(defense.ranking_)} channels to prune, got {count}")
    return defense.ranking_[:count]


def run_fine_pruning(classifier, clean, poisoned=(), options=None, count=None, progress=None):
    """Rank the channels on ``clean``, prune the first ones, fine-tune: what ``goodnet fineprune`` computes.

    Nothing is written here: :func:`goodnet.reports.write_fineprune_outputs`
    writes ``model_fp.h5`` and the fine-tuning curve.

    Args:
        classifier: the suspect model.
        clean: clean validation LabData (ranking, fine-tuning, hold-out).
        poisoned: poisoned validation LabData (reported only).
        options: :class:`FinePruneOptions` (layer, the sweep's X-point step
            ``drop``, recipe, split, seed).
        count: prune exactly this many channels instead of the ``drop`` step.
        progress: progress bars of the sweep.

    Returns:
        dict: ``fine_pruning`` (the fitted :class:`FinePruning`), ``defense``
        (the fitted sweep) and ``summary`` (JSON-ready, what
        ``fineprune_curve.json`` holds but its ``files``).
    """
    from goodnet.defenses.pruning import PruningDefense
    from goodnet.reports import dataset_names

    options = validate_options(options or FinePruneOptions())
    defense = PruningDefense(options.layer, progress=progress).fit(classifier, clean, poisoned)
    channels = tuple(int(channel) for channel in channels_to_prune(defense, options.drop, count))
    fine = FinePruning(options.layer, channels, options.recipe, options.holdout_fraction, options.seed).fit(
        classifier, clean, poisoned)
    names = dataset_names(poisoned)
    rows = fine.curve_rows(names)
    holdout = fine.holdout_indices_
    summary = {"model": classifier.path, "layer": options.layer, "channels_pruned": list(channels),
               "drop": options.drop if count is None else None, "recipe": fine.resolved_recipe(),
               "epochs_run": len(rows) - 1, "best_epoch": fine.best_epoch_,
               "fine_tuning_images": int(len(fine.tune_indices_)), "holdout_images": int(len(holdout)),
               "baseline_holdout_accuracy": float(np.mean(classifier.predict(clean.images[holdout])
                                                          == clean.labels[holdout])),
               "holdout_accuracy": rows[fine.best_epoch_]["holdout_accuracy"],
               "attack_success_rates": {name: rows[fine.best_epoch_][f"asr:{name}"] for name in names},
               "curve": rows}
    return {"fine_pruning": fine, "defense": defense, "summary": summary}
