"""Backdoor metrics and lab-compatible evaluation.

Definitions (all fractions in [0, 1]; the CLI prints percentages):

- clean accuracy: clean images answered with their label. For models that can
  answer N ("poisoned", class N+1 in the lab's 1-based wording) that answer
  counts as wrong.
- attack success rate (ASR): poisoned images answered with the file's label,
  the attacker's target.
- detection rate: poisoned images answered N.
- false rejection rate (FRR): clean images answered N.
- defense-effectiveness rating (BackdoorBench):
  DER = (max(0, ASR_before - ASR_after) - max(0, ACC_before - ACC_after) + 1) / 2.
"""

import logging

import numpy as np

from goodnet.errors import OptionError

logger = logging.getLogger(__name__)


def _as_labels(values, name):
    values = np.asarray(values)
    if values.ndim != 1:
        raise OptionError(f"{name}: expected a 1-D array of class labels, got shape {values.shape}")
    return values.astype(np.int64)


def _pair(predictions, labels):
    predictions = _as_labels(predictions, "predictions")
    labels = _as_labels(labels, "labels")
    if predictions.shape != labels.shape:
        raise OptionError(f"labels: expected {len(predictions)} labels (one per prediction), got {len(labels)}")
    if len(labels) == 0:
        raise OptionError("labels: expected at least one image, got none")
    return predictions, labels


def accuracy(predictions, labels):
    """Fraction of predictions equal to the labels (an N answer is wrong).

    Example:
        >>> accuracy([1, 2, 3], [1, 2, 0])
        0.6666666666666666
    """
    predictions, labels = _pair(predictions, labels)
    return float(np.mean(predictions == labels))


def attack_success_rate(predictions, targets):
    """Fraction of poisoned images answered with their target label.

    Args:
        predictions: predicted classes of the poisoned images.
        targets: the poisoned file's labels (the attacker's target).

    Returns:
        float: the ASR.
    """
    return accuracy(predictions, targets)


def rejection_rate(predictions, poisoned_class):
    """Fraction of predictions equal to ``poisoned_class`` (N).

    On poisoned images this is the detection rate; on clean images the false
    rejection rate.
    """
    predictions = _as_labels(predictions, "predictions")
    if len(predictions) == 0:
        raise OptionError("predictions: expected at least one image, got none")
    return float(np.mean(predictions == poisoned_class))


def defense_effectiveness_rating(accuracy_before, asr_before, accuracy_after, asr_after):
    """BackdoorBench's DER in [0, 1]; 0.5 means no change, higher is better."""
    gain = max(0.0, asr_before - asr_after)
    loss = max(0.0, accuracy_before - accuracy_after)
    return (gain - loss + 1.0) / 2.0


def score_predictions(clean_predictions, clean_labels, poisoned=(), num_classes=None, flags_poisoned=False):
    """Compute every applicable figure from predictions.

    Args:
        clean_predictions: predicted classes on the clean file (or None).
        clean_labels: its labels.
        poisoned: sequence of (name, predictions, target labels) per poisoned file.
        num_classes: N; needed when ``flags_poisoned``.
        flags_poisoned: whether the model can answer N ("poisoned").

    Returns:
        dict: ``clean_accuracy``; ``attack_success_rate`` (the first poisoned
        file's, for the lab's two-line output) and ``poisoned`` (per file:
        ``attack_success_rate`` and, where it applies, ``detection_rate``);
        ``false_rejection_rate`` and ``detection_rate`` where they apply.
    """
    result = {}
    if clean_predictions is not None:
        result["clean_accuracy"] = accuracy(clean_predictions, clean_labels)
        result["clean_images"] = int(len(clean_labels))
        if flags_poisoned:
            result["false_rejection_rate"] = rejection_rate(clean_predictions, num_classes)
    per_file = []
    for name, predictions, targets in poisoned:
        entry = {"file": name, "images": int(len(targets)),
                 "attack_success_rate": attack_success_rate(predictions, targets)}
        if flags_poisoned:
            entry["detection_rate"] = rejection_rate(predictions, num_classes)
        per_file.append(entry)
    if per_file:
        result["poisoned"] = per_file
        result["attack_success_rate"] = per_file[0]["attack_success_rate"]
        if flags_poisoned:
            detected = sum(entry["detection_rate"] * entry["images"] for entry in per_file)
            result["detection_rate"] = detected / sum(entry["images"] for entry in per_file)
    return result


def evaluate(classifier, clean=None, poisoned=(), batch_size=1024, progress=None):
    """Evaluate a classifier on a clean file and any number of poisoned files.

    Args:
        classifier: a :class:`goodnet.models.Classifier`.
        clean: a :class:`goodnet.data.LabData` of clean images, or None.
        poisoned: LabData of poisoned images (labels = attack targets).
        batch_size: images per inference call.
        progress: show a progress bar (None: only for large inputs).

    Returns:
        dict: see :func:`score_predictions`; also ``model``, ``scale``,
        ``num_classes`` and ``flags_poisoned``.

    Example:
        >>> figures = evaluate(classifier, load_h5("test.h5"), [load_h5("bd_test.h5")])
        >>> figures["clean_accuracy"], figures["attack_success_rate"]
    """
    clean_predictions = None
    if clean is not None:
        clean_predictions = classifier.predict(clean.images, batch_size, progress)
    poisoned_scores = [(data.path, classifier.predict(data.images, batch_size, progress), data.labels)
                       for data in poisoned]
    return _classifier_figures(classifier, clean_predictions, None if clean is None else clean.labels,
                               poisoned_scores)


def _classifier_figures(classifier, clean_predictions, clean_labels, poisoned_scores):
    """The evaluation dict: the classifier's description plus :func:`score_predictions`."""
    result = {"model": classifier.path, "scale": classifier.scale, "num_classes": classifier.num_classes,
              "flags_poisoned": classifier.flags_poisoned}
    result.update(score_predictions(clean_predictions, clean_labels, poisoned_scores, classifier.num_classes,
                                    classifier.flags_poisoned))
    return result


def predict_file(classifier, lab_file, batch_size=1024, progress=None):
    """Predicted classes for every image of an open :class:`goodnet.data.LabFile`, streamed.

    Memory stays bounded by one batch, whatever the file's size.
    """
    from goodnet.inference import progress_bar

    forward = classifier.forward()
    replicas = getattr(forward, "replicas", 1)   # several devices: one batch of batch_size per device per call
    predictions = np.empty(len(lab_file), dtype=np.int64)
    name = lab_file.path.rsplit("/", 1)[-1]
    with progress_bar(len(lab_file), f"predict {name}", progress) as bar:
        start = 0
        for images, _ in lab_file.batches(batch_size * replicas):
            scores = forward(images, part_size=batch_size) if replicas > 1 else forward(images)
            predictions[start:start + len(images)] = np.asarray(scores).argmax(axis=1)
            start += len(images)
            bar.update(len(images))
    return predictions


def evaluate_files(classifier, clean_file=None, poisoned_files=(), batch_size=1024, progress=None):
    """Like :func:`evaluate`, but streams open LabFiles batch by batch (bounded memory).

    Args:
        classifier: a :class:`goodnet.models.Classifier`.
        clean_file: an open :class:`goodnet.data.LabFile` of clean images, or None.
        poisoned_files: open LabFiles of poisoned images.
        batch_size: images read and predicted at a time.
        progress: show progress bars (None: only for long work).

    Returns:
        dict: the same figures as :func:`evaluate`.

    Example:
        >>> with LabFile("test.h5") as clean, LabFile("bd_test.h5") as poisoned:
        ...     figures = evaluate_files(classifier, clean, [poisoned])
    """
    clean_predictions = None
    if clean_file is not None:
        clean_predictions = predict_file(classifier, clean_file, batch_size, progress)
    poisoned_scores = [(lab.path, predict_file(classifier, lab, batch_size, progress), lab.labels)
                       for lab in poisoned_files]
    return _classifier_figures(classifier, clean_predictions, None if clean_file is None else clean_file.labels,
                               poisoned_scores)
