"""Fine-pruning (Liu, Dolan-Gavitt and Garg, 2018): prune, then fine-tune on clean data.

The pruned channels of the chosen convolution stay pruned while fine-tuning:
their kernel and bias are multiplied by a 0/1 mask after every optimizer step.
Only clean validation data is used: it is split into a fine-tuning part and a
hold-out part; the hold-out part decides early stopping and gives the
reported validation figures. Poisoned validation files, when given, are only
measured (per epoch, for the report), never used to choose anything.
"""

import dataclasses
import logging

import numpy as np

from goodnet.errors import OptionError
from goodnet.metrics import accuracy, attack_success_rate
from goodnet.surgery import apply_masks, channel_masks, prune_model

logger = logging.getLogger(__name__)


def split_holdout(labels, holdout_fraction=0.2, seed=0):
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


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("one-cycle", "cosine", "constant")


def learning_rate_at(step, total_steps, peak, schedule="one-cycle", warmup=0.3):
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


def augment_images(images, rng, shift=3, flip=False, noise=0.0):
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


def mix_images(images, targets, rng, alpha=0.4):
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


RECIPE_DEFAULTS = {"epochs": 60, "learning_rate": 0.01, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9,
                   "schedule": "one-cycle", "warmup": 0.3, "min_epochs": None, "patience": None, "augment": True,
                   "shift": 3, "flip": False, "noise": 0.0, "clip_norm": None,
                   "distill": 0.0, "mixup": 0.4, "unlearn": 0.25, "unlearn_area": 0.05, "unlearn_steps": 10}
"""The default fine-tuning recipe of :class:`FinePruning` (and of ``goodnet fineprune`` and ``goodnet repair``)."""


class FinePruning:
    """Prune channels of one convolution, then fine-tune on clean validation data.

    The default recipe fine-tunes every layer with SGD, momentum and a one-cycle
    learning rate (rise to a moderate peak, cosine decay to zero) on randomly
    shifted, mixup-blended copies of the clean tune images, and unlearns the
    trigger: every epoch a :class:`goodnet.defenses.unlearning.TriggerSearch` recovers,
    from the model being tuned and clean images only, the small patch that
    most misleads it, and ``unlearn`` of the images carry that patch with their
    true labels. Clean images alone never show the trigger, so plain
    fine-tuning at a small rate (the paper's recipe) leaves a pruning-aware
    backdoor intact; mixup keeps relearning from a few hundred images from
    overfitting. The kept model is the epoch with the best hold-out accuracy
    among epochs ``min_epochs`` and later (the later epoch on ties), so an
    early epoch, before the backdoor is unlearned, is not kept just because
    its accuracy is high.

    Args:
        layer: the convolution whose channels are pruned (``conv_3``).
        epochs: fine-tuning epochs (the length of the schedule).
        learning_rate: peak learning rate.
        batch_size: fine-tuning batch size.
        holdout_fraction: share of the clean validation data held out for
            choosing the epoch and for reporting.
        patience: epochs without hold-out improvement (counted from
            ``min_epochs``) before stopping; None runs the whole schedule.
        seed: seed of the split, of augmentation and of training.
        optimizer: "sgd" (with ``momentum``) or "adam".
        momentum: SGD momentum.
        schedule: "one-cycle", "cosine" or "constant" (see :func:`learning_rate_at`).
        warmup: share of the steps the one-cycle rate rises.
        min_epochs: first epoch that may be kept (default: ``epochs // 2``;
            0 also allows the pruned model before fine-tuning).
        augment: train on augmented copies (see :func:`augment_images`), a new
            draw every epoch.
        shift, flip, noise: augmentation parameters.
        clip_norm: clip every step's gradients to this global norm (None: no clipping).
        distill: weight of the suspect model's own clean-image answers in the training
            targets (0: the labels alone; self-distillation on clean data only).
        mixup: Beta parameter of mixup (see :func:`mix_images`), applied after
            augmentation every epoch; 0 trains on unmixed images.
        unlearn: share of each epoch's tune images stamped with the trigger that
            :class:`goodnet.defenses.unlearning.TriggerSearch` recovers from the model being
            tuned, clean images only, keeping their true labels (0: off).
        unlearn_area: the largest share of the image the recovered trigger covers.
        unlearn_steps: trigger-search steps per epoch (warm-started across epochs).

    Attributes (after ``fit``):
        model_: the fine-pruned :class:`goodnet.models.Classifier` (kept epoch).
        history_: list of :class:`EpochRecord`, epoch 0 being the pruned model
            before fine-tuning.
        best_epoch_: the epoch whose weights ``model_`` holds.
        tune_indices_, holdout_indices_: the split of the clean data.

    Example:
        >>> fine = FinePruning(epochs=20).fit(badnet, range(40), clean_valid, [poisoned_valid])
        >>> fine.model_.predict(images)
    """

    def __init__(self, layer="conv_3", epochs=RECIPE_DEFAULTS["epochs"], learning_rate=RECIPE_DEFAULTS["learning_rate"],
                 batch_size=RECIPE_DEFAULTS["batch_size"], holdout_fraction=0.2, patience=RECIPE_DEFAULTS["patience"],
                 seed=0, optimizer=RECIPE_DEFAULTS["optimizer"], momentum=RECIPE_DEFAULTS["momentum"],
                 schedule=RECIPE_DEFAULTS["schedule"], warmup=RECIPE_DEFAULTS["warmup"],
                 min_epochs=RECIPE_DEFAULTS["min_epochs"], augment=RECIPE_DEFAULTS["augment"],
                 shift=RECIPE_DEFAULTS["shift"], flip=RECIPE_DEFAULTS["flip"], noise=RECIPE_DEFAULTS["noise"],
                 clip_norm=RECIPE_DEFAULTS["clip_norm"], distill=RECIPE_DEFAULTS["distill"],
                 mixup=RECIPE_DEFAULTS["mixup"], unlearn=RECIPE_DEFAULTS["unlearn"],
                 unlearn_area=RECIPE_DEFAULTS["unlearn_area"], unlearn_steps=RECIPE_DEFAULTS["unlearn_steps"]):
        if optimizer not in OPTIMIZERS:
            raise OptionError(f"optimizer: expected one of {OPTIMIZERS}, got {optimizer!r}")
        if schedule not in SCHEDULES:
            raise OptionError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        self.layer = layer
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.holdout_fraction = holdout_fraction
        self.patience = patience
        self.seed = seed
        self.optimizer = optimizer
        self.momentum = momentum
        self.schedule = schedule
        self.warmup = warmup
        self.min_epochs = min_epochs
        self.augment = augment
        self.shift = shift
        self.flip = flip
        self.noise = noise
        self.clip_norm = clip_norm
        if not 0.0 <= distill <= 1.0:
            raise OptionError(f"distill: expected a weight in [0, 1], got {distill}")
        self.distill = distill
        if not mixup >= 0.0:
            raise OptionError(f"mixup: expected a Beta parameter >= 0 (0: off), got {mixup}")
        self.mixup = mixup
        if not 0.0 <= unlearn <= 1.0:
            raise OptionError(f"unlearn: expected a share of the images in [0, 1], got {unlearn}")
        if not 0.0 < unlearn_area <= 1.0:
            raise OptionError(f"unlearn_area: expected a share of the image in (0, 1], got {unlearn_area}")
        self.unlearn = unlearn
        self.unlearn_area = unlearn_area
        self.unlearn_steps = unlearn_steps

    def recipe(self):
        """The fine-tuning options as a JSON-ready dict (for reports)."""
        return {**{name: getattr(self, name) for name in RECIPE_DEFAULTS}, "min_epochs": self.first_kept_epoch}

    @property
    def first_kept_epoch(self):
        """The first epoch ``fit`` may keep (``min_epochs``, default half the schedule)."""
        first = self.epochs // 2 if self.min_epochs is None else int(self.min_epochs)
        return min(max(0, first), self.epochs)

    def _measure(self, classifier, holdout, poisoned):
        holdout_accuracy = accuracy(classifier.predict(holdout.images), holdout.labels)
        rates = [attack_success_rate(classifier.predict(data.images), data.labels) for data in poisoned]
        return holdout_accuracy, rates

    def _optimizer(self):
        import keras

        if self.optimizer == "adam":
            return keras.optimizers.Adam(self.learning_rate, global_clipnorm=self.clip_norm)
        return keras.optimizers.SGD(self.learning_rate, momentum=self.momentum, global_clipnorm=self.clip_norm)

    def fit(self, classifier, channels, clean, poisoned=(), progress=None):
        """Prune ``channels`` of ``self.layer`` and fine-tune on ``clean``.

        Args:
            classifier: the suspect model (:class:`goodnet.models.Classifier`).
            channels: channel indices to prune (e.g. the first K of the pruning ranking).
            clean: :class:`goodnet.data.LabData`, clean validation data.
            poisoned: poisoned validation LabData, measured per epoch for the report only.
            progress: show Keras's per-epoch progress (None: quiet).

        Returns:
            FinePruning: self.
        """
        import keras

        keras.utils.set_random_seed(self.seed)
        rng = np.random.default_rng([self.seed, 6])
        self.tune_indices_, self.holdout_indices_ = split_holdout(clean.labels, self.holdout_fraction, self.seed)
        if len(self.holdout_indices_) == 0:
            raise OptionError(f"{clean.path}: label: too few images per class to hold any out for early stopping")
        tune, holdout = clean.subset(self.tune_indices_), clean.subset(self.holdout_indices_)
        pruned = classifier.with_model(prune_model(classifier.model, self.layer, channels, classifier.path))
        model = pruned.model
        target = model.get_layer(self.layer)
        masks = channel_masks(target, channels)

        steps_per_epoch = int(np.ceil(len(tune.labels) / self.batch_size))
        total_steps = steps_per_epoch * self.epochs
        optimizer = self._optimizer()
        model.compile(optimizer=optimizer, loss="categorical_crossentropy" if self._soft_targets() else
                      "sparse_categorical_crossentropy")
        done = [0]   # optimizer steps taken

        def set_rate(batch, logs):
            optimizer.learning_rate.assign(learning_rate_at(done[0], total_steps, self.learning_rate, self.schedule,
                                                            self.warmup))

        def after_step(batch, logs):
            done[0] += 1
            apply_masks(target, *masks)

        keep_pruned = keras.callbacks.LambdaCallback(on_train_batch_begin=set_rate, on_train_batch_end=after_step)
        holdout_accuracy, rates = self._measure(pruned, holdout, poisoned)
        self.history_ = [EpochRecord(0, float("nan"), holdout_accuracy, rates)]
        first_kept = self.first_kept_epoch
        best_accuracy, best_weights, self.best_epoch_ = -1.0, None, None
        if first_kept == 0:
            best_accuracy, best_weights, self.best_epoch_ = holdout_accuracy, model.get_weights(), 0
        search = None
        if self.unlearn:
            from goodnet.defenses.unlearning import TriggerSearch

            search = TriggerSearch(self.unlearn_area, self.unlearn_steps, seed=self.seed)
        for epoch in range(1, self.epochs + 1):
            images, targets = self._epoch_data(classifier, tune, rng, model, search)
            history = model.fit(classifier.scale_images(images), targets, batch_size=self.batch_size, epochs=1,
                                shuffle=True, verbose=1 if progress else 0, callbacks=[keep_pruned])
            pruned = pruned.with_model(model)
            holdout_accuracy, rates = self._measure(pruned, holdout, poisoned)
            rate = learning_rate_at(epoch * steps_per_epoch - 1, total_steps, self.learning_rate, self.schedule,
                                    self.warmup)
            self.history_.append(EpochRecord(epoch, float(history.history["loss"][-1]), holdout_accuracy, rates,
                                             rate, search.loss_ if search is not None else float("nan")))
            logger.info("fine-pruning epoch %d: lr %.2g, loss %.4f, hold-out accuracy %.4f, ASR %s", epoch, rate,
                        self.history_[-1].loss, holdout_accuracy, [round(value, 4) for value in rates])
            if epoch < first_kept:
                continue
            if holdout_accuracy >= best_accuracy:   # ties: the later, more converged epoch
                best_accuracy, best_weights, self.best_epoch_ = holdout_accuracy, model.get_weights(), epoch
            elif self.patience is not None and epoch - max(self.best_epoch_, first_kept) >= self.patience:
                break
        # An uncompiled copy: the saved file carries no optimizer or schedule state.
        kept = keras.models.clone_model(model)
        kept.set_weights(best_weights)
        self.model_ = pruned.with_model(kept)
        self.pruned_channels_ = sorted(int(channel) for channel in channels)
        return self

    def _soft_targets(self):
        """Whether training targets are distributions (distillation or mixup) rather than labels."""
        return bool(self.distill) or bool(self.mixup)

    def _epoch_data(self, classifier, tune, rng, model=None, search=None):
        """One epoch's training images and targets: labels, or soft targets when distilling or mixing.

        With ``search`` (a :class:`goodnet.defenses.unlearning.TriggerSearch`), the trigger it
        recovers from ``model`` (the model being tuned) is stamped on ``unlearn`` of the
        (augmented) images, which keep their targets: the true labels, mixed, when
        distilling, with the suspect model's answers on the unstamped images.
        """
        images = tune.images
        if self.augment:
            images = augment_images(images, rng, self.shift, self.flip, self.noise)
        targets = tune.labels
        if self._soft_targets():
            targets = np.eye(classifier.output_size, dtype=np.float32)[tune.labels]
        if self.distill:
            # The labels mixed with the suspect model's own answers on these clean images.
            targets = (1.0 - self.distill) * targets + self.distill * classifier.predict_proba(images).astype(
                np.float32)
        if search is not None:
            from goodnet.defenses.unlearning import stamp

            search.fit(model, images, tune.labels, classifier.divisor)
            images = np.array(images, np.float32)
            chosen = rng.random(len(images)) < self.unlearn
            images[chosen] = stamp(images[chosen], search.mask_, search.pattern_)
        if self.mixup:
            images, targets = mix_images(images, targets, rng, self.mixup)
        return images, targets

    def curve_rows(self, poisoned_names=()):
        """The per-epoch log as a list of dicts (for CSV/JSON)."""
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


OUTPUT_FILES = {"model": "model_fp.h5", "csv": "fineprune_curve.csv", "json": "fineprune_curve.json",
                "png": "fineprune_curve.png"}

def run_fine_pruning(classifier, clean, poisoned, out_dir, layer="conv_3", drop=4, count=None, epochs=None,
                     learning_rate=None, holdout_fraction=0.2, patience=None, seed=0, protect=(), plot=True,
                     progress=None, **recipe):
    """Rank, prune and fine-tune, then write ``model_fp.h5`` and the fine-tuning curve into ``out_dir``.

    Args:
        classifier: the suspect model.
        clean: clean validation LabData (ranking, fine-tuning, hold-out).
        poisoned: poisoned validation LabData (reported only).
        out_dir: output folder.
        layer: the convolution to prune.
        drop: prune up to the sweep's X-point step (the lab's rule) ...
        count: ... or exactly this many channels.
        epochs, learning_rate, holdout_fraction, patience, seed: see :class:`FinePruning`
            (None: its defaults).
        recipe: further :class:`FinePruning` options (optimizer, momentum, schedule, warmup,
            min_epochs, augment, shift, flip, noise, batch_size).
        protect: input paths never to overwrite.
        plot: write ``fineprune_curve.png``.
        progress: progress bars.

    Returns:
        dict: ``fine_pruning`` (the fitted estimator), ``defense`` (the sweep),
        ``summary`` (JSON-ready) and ``files``.
    """
    import json
    import os

    from goodnet.files import write_text
    from goodnet.models import save_model
    from goodnet.defenses.pruning import PruningDefense

    defense = PruningDefense(layer, progress=progress).fit(classifier, clean, poisoned)
    channels = channels_to_prune(defense, drop, count)
    if epochs is not None:
        recipe["epochs"] = epochs
    if learning_rate is not None:
        recipe["learning_rate"] = learning_rate
    fine = FinePruning(layer, holdout_fraction=holdout_fraction, patience=patience, seed=seed, **recipe).fit(
        classifier, channels, clean, poisoned)
    os.makedirs(out_dir, exist_ok=True)
    protect = tuple(protect) + tuple(data.path for data in [clean, *poisoned] if data.path)
    names = [os.path.basename(data.path) or f"poisoned_{index}" for index, data in enumerate(poisoned)]
    rows = fine.curve_rows(names)
    files = {"model": save_model(fine.model_, os.path.join(out_dir, OUTPUT_FILES["model"]), protect=protect),
             "csv": os.path.join(out_dir, OUTPUT_FILES["csv"]),
             "json": os.path.join(out_dir, OUTPUT_FILES["json"])}
    write_text(files["csv"], _csv_text(rows), protect=protect)
    if plot:
        from goodnet.plots import plot_fineprune_curve

        files["png"] = plot_fineprune_curve(rows, os.path.join(out_dir, OUTPUT_FILES["png"]),
                                            title=f"fine-pruning {layer}: {len(channels)} channels pruned")
    summary = {"model": classifier.path, "layer": layer, "channels_pruned": [int(c) for c in channels],
               "drop": drop if count is None else None, "recipe": fine.recipe(), "epochs_run": len(rows) - 1, "best_epoch": fine.best_epoch_,
               "fine_tuning_images": int(len(fine.tune_indices_)), "holdout_images": int(len(fine.holdout_indices_)),
               "baseline_holdout_accuracy": float(np.mean(classifier.predict(clean.images[fine.holdout_indices_])
                                                          == clean.labels[fine.holdout_indices_])),
               "holdout_accuracy": rows[fine.best_epoch_]["holdout_accuracy"],
               "attack_success_rates": {name: rows[fine.best_epoch_][f"asr:{name}"] for name in names},
               "curve": rows, "files": files}
    write_text(files["json"], json.dumps(summary, indent=2, default=float) + "\n", protect=protect)
    return {"fine_pruning": fine, "defense": defense, "summary": summary, "files": files}


def _csv_text(rows):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
