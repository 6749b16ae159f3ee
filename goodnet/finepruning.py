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

from goodnet.metrics import accuracy, attack_success_rate
from goodnet.pruning import prune_model

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
        raise ValueError(f"holdout_fraction: expected a value in [0, 1), got {holdout_fraction}")
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


def channel_masks(layer, channels):
    """0/1 masks (kernel mask, bias mask) that zero ``channels`` of a convolution's output."""
    kernel, bias = layer.kernel, layer.bias
    keep = np.ones(int(kernel.shape[-1]), dtype=np.float32)
    keep[list(channels)] = 0.0
    kernel_mask = np.broadcast_to(keep, tuple(kernel.shape)).astype(np.float32)
    return kernel_mask, keep if bias is not None else None


def apply_masks(layer, kernel_mask, bias_mask):
    """Multiply the layer's kernel (and bias) by the masks, in place."""
    layer.kernel.assign(layer.kernel * kernel_mask)
    if bias_mask is not None:
        layer.bias.assign(layer.bias * bias_mask)


@dataclasses.dataclass
class EpochRecord:
    """Figures logged after one fine-tuning epoch (hold-out = clean validation hold-out)."""

    epoch: int
    loss: float
    holdout_accuracy: float
    attack_success_rates: list


class FinePruning:
    """Prune channels of one convolution, then fine-tune on clean validation data.

    Args:
        layer: the convolution whose channels are pruned (``conv_3``).
        epochs: maximum fine-tuning epochs.
        learning_rate: Adam learning rate (small: the model is already trained).
        batch_size: fine-tuning batch size.
        holdout_fraction: share of the clean validation data held out for
            early stopping and reporting.
        patience: epochs without hold-out improvement before stopping.
        seed: seed of the split and of training.

    Attributes (after ``fit``):
        model_: the fine-pruned :class:`goodnet.models.Classifier` (best epoch).
        history_: list of :class:`EpochRecord`, epoch 0 being the pruned model
            before fine-tuning.
        best_epoch_: the epoch whose weights ``model_`` holds.
        tune_indices_, holdout_indices_: the split of the clean data.

    Example:
        >>> fine = FinePruning(epochs=10).fit(badnet, range(40), clean_valid, [poisoned_valid])
        >>> fine.model_.predict(images)
    """

    def __init__(self, layer="conv_3", epochs=10, learning_rate=1e-4, batch_size=64, holdout_fraction=0.2,
                 patience=3, seed=0):
        self.layer = layer
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.holdout_fraction = holdout_fraction
        self.patience = patience
        self.seed = seed

    def _measure(self, classifier, holdout, poisoned):
        holdout_accuracy = accuracy(classifier.predict(holdout.images), holdout.labels)
        rates = [attack_success_rate(classifier.predict(data.images), data.labels) for data in poisoned]
        return holdout_accuracy, rates

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
        self.tune_indices_, self.holdout_indices_ = split_holdout(clean.labels, self.holdout_fraction, self.seed)
        if len(self.holdout_indices_) == 0:
            raise ValueError(f"{clean.path}: label: too few images per class to hold any out for early stopping")
        tune, holdout = clean.subset(self.tune_indices_), clean.subset(self.holdout_indices_)
        pruned = classifier.with_model(prune_model(classifier.model, self.layer, channels, classifier.path))
        model = pruned.model
        target = model.get_layer(self.layer)
        masks = channel_masks(target, channels)

        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                      loss="sparse_categorical_crossentropy")
        keep_pruned = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: apply_masks(target, *masks))
        holdout_accuracy, rates = self._measure(pruned, holdout, poisoned)
        self.history_ = [EpochRecord(0, float("nan"), holdout_accuracy, rates)]
        best_accuracy, best_weights, self.best_epoch_ = holdout_accuracy, model.get_weights(), 0
        inputs = classifier.scale_images(tune.images)
        for epoch in range(1, self.epochs + 1):
            history = model.fit(inputs, tune.labels, batch_size=self.batch_size, epochs=1, shuffle=True,
                                verbose=1 if progress else 0, callbacks=[keep_pruned])
            pruned = pruned.with_model(model)
            holdout_accuracy, rates = self._measure(pruned, holdout, poisoned)
            self.history_.append(EpochRecord(epoch, float(history.history["loss"][-1]), holdout_accuracy, rates))
            logger.info("fine-pruning epoch %d: loss %.4f, hold-out accuracy %.4f, ASR %s", epoch,
                        self.history_[-1].loss, holdout_accuracy, [round(rate, 4) for rate in rates])
            if holdout_accuracy > best_accuracy:
                best_accuracy, best_weights, self.best_epoch_ = holdout_accuracy, model.get_weights(), epoch
            elif epoch - self.best_epoch_ >= self.patience:
                break
        model.set_weights(best_weights)
        self.model_ = pruned.with_model(model)
        self.pruned_channels_ = sorted(int(channel) for channel in channels)
        return self

    def curve_rows(self, poisoned_names=()):
        """The per-epoch log as a list of dicts (for CSV/JSON)."""
        rows = []
        for record in self.history_:
            row = {"epoch": record.epoch, "loss": record.loss, "holdout_accuracy": record.holdout_accuracy}
            for index, rate in enumerate(record.attack_success_rates):
                name = poisoned_names[index] if index < len(poisoned_names) else f"poisoned_{index}"
                row[f"asr:{name}"] = rate
            rows.append(row)
        return rows


def channels_to_prune(defense, drop=None, count=None):
    """How many (and which) channels to prune: the first ``count`` of the ranking, or the sweep's X-point step.

    Args:
        defense: a fitted :class:`goodnet.pruning.PruningDefense`.
        drop: accuracy drop X in points; the step the defense selected for it
            (the lab's rule). Ignored when ``count`` is given.
        count: an explicit number of channels.

    Returns:
        np.ndarray: channel indices in pruning order.
    """
    if count is None:
        from goodnet.pruning import select_steps

        step = select_steps(defense.curve_.clean_accuracy, (drop,), defense.policy)[drop]
        count = step if step is not None else len(defense.ranking_)
        if step is None:
            logger.warning("accuracy never dropped by %s points: pruning every channel", drop)
    if not 0 <= count <= len(defense.ranking_):
        raise ValueError(f"channels: expected 0..{len(defense.ranking_)} channels to prune, got {count}")
    return defense.ranking_[:count]


def run_fine_pruning(classifier, clean, poisoned, out_dir, layer="conv_3", drop=4, count=None, epochs=10,
                     learning_rate=1e-4, holdout_fraction=0.2, patience=3, seed=0, protect=(), plot=True,
                     progress=None):
    """Rank, prune and fine-tune, then write ``model_fp.h5`` and the fine-tuning curve into ``out_dir``.

    Args:
        classifier: the suspect model.
        clean: clean validation LabData (ranking, fine-tuning, hold-out).
        poisoned: poisoned validation LabData (reported only).
        out_dir: output folder.
        layer: the convolution to prune.
        drop: prune up to the sweep's X-point step (the lab's rule) ...
        count: ... or exactly this many channels.
        epochs, learning_rate, holdout_fraction, patience, seed: see :class:`FinePruning`.
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
    from goodnet.pruning import PruningDefense

    defense = PruningDefense(classifier, layer, progress=progress).fit(clean, poisoned)
    channels = channels_to_prune(defense, drop, count)
    fine = FinePruning(layer, epochs, learning_rate, holdout_fraction=holdout_fraction, patience=patience,
                       seed=seed).fit(classifier, channels, clean, poisoned)
    os.makedirs(out_dir, exist_ok=True)
    protect = tuple(protect) + tuple(data.path for data in [clean, *poisoned] if data.path)
    names = [os.path.basename(data.path) or f"poisoned_{index}" for index, data in enumerate(poisoned)]
    rows = fine.curve_rows(names)
    files = {"model": save_model(fine.model_, os.path.join(out_dir, "model_fp.h5"), protect=protect),
             "csv": os.path.join(out_dir, "fineprune_curve.csv"),
             "json": os.path.join(out_dir, "fineprune_curve.json")}
    write_text(files["csv"], _csv_text(rows), protect=protect)
    if plot:
        from goodnet.plots import plot_fineprune_curve

        files["png"] = plot_fineprune_curve(rows, os.path.join(out_dir, "fineprune_curve.png"),
                                            title=f"fine-pruning {layer}: {len(channels)} channels pruned")
    summary = {"model": classifier.path, "layer": layer, "channels_pruned": [int(c) for c in channels],
               "drop": drop if count is None else None, "epochs_run": len(rows) - 1, "best_epoch": fine.best_epoch_,
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
