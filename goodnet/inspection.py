"""Training-set inspection: the detectors over one shared feature pass, their flags, figures and the cleaned set.

The orchestration ``goodnet inspect-data`` runs (and ``goodnet demo``'s data
loop and ``bench/bench_data_loop.py`` reuse), on top of the training-set
detectors of :mod:`goodnet.defenses`:

- :func:`inspect_training_set`: a classifier's last-hidden-layer features of
  every training image, computed once (:func:`goodnet.features.compute_features`,
  streamed from a lab file or taken from a :class:`goodnet.data.LabData`),
  then each chosen detector fitted on them (activation clustering, spectral
  signatures, the isolation forest); returns an :class:`Inspection` holding
  the fitted detectors, each method's flagged mask (and their union), the
  seconds of every step, and, given the ground truth
  (:class:`goodnet.data.PoisonTruth`), each method's precision, recall, F1
  and score ROC AUC;
- :meth:`Inspection.recommended`: the method whose flags a cleaned set should
  drop, chosen from the detectors' own per-class verdicts (never from a
  ground truth): see :data:`PREFERENCE`;
- :func:`cleaned_training_set`: the training images and labels without the
  flagged rows (streamed from a file; optionally transform-sanitised), with
  the kept indices; :func:`write_clean_set` writes it as a lab file carrying
  the kept rows' ground truth;
- :func:`method_summary`, :func:`score_rows`, :func:`class_rows`,
  :func:`plot_order`, :func:`plot_class_projection`, :func:`report_markdown`,
  :func:`write_inspection_outputs`: the figures, tables and files of a run.

Example:
    >>> from goodnet.data import load_h5, load_poison_truth
    >>> train = load_h5("models/badnet_train_poisoned.h5")
    >>> inspection = inspect_training_set(badnet, train, truth=load_poison_truth(train.path))
    >>> inspection.detection()["ac"]["f1"], inspection.recommended()
    >>> images, labels, kept = cleaned_training_set(train, inspection.masks[inspection.recommended()])
"""

import dataclasses
import logging
import os
import time

import numpy as np

from goodnet.defenses.activation_clustering import ActivationClusteringOptions
from goodnet.defenses.sanitisation import IsolationOptions, TransformOptions
from goodnet.defenses.spectral_signatures import SpectralOptions
from goodnet.errors import OptionError
from goodnet.features import FeatureOptions
from goodnet.options import option, validate_options

logger = logging.getLogger(__name__)

METHODS = ("ac", "spectral", "isolation")
METHOD_NAMES = {"ac": "activation clustering", "spectral": "spectral signatures", "isolation": "isolation forest"}
# The method a cleaned set drops, in this order, the first that found evidence of its own: activation clustering
# when it judged a class poisoned (a small, well-separated cluster), else spectral signatures when a class's top
# direction stands out, else the isolation forest when a class's flagged share stands out (see Inspection.recommended).
PREFERENCE = ("ac", "spectral", "isolation")
PLOT_PREFIX = "class_"
READ_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class InspectionOptions:
    """The options of every detector an inspection runs, each group's defaults written once in its own class."""

    features: FeatureOptions = option(FeatureOptions(), "which features the detectors share, and how computed")
    ac: ActivationClusteringOptions = option(ActivationClusteringOptions(), "activation clustering")
    spectral: SpectralOptions = option(SpectralOptions(), "spectral signatures")
    isolation: IsolationOptions = option(IsolationOptions(), "the isolation forest")
    transform: TransformOptions = option(TransformOptions(), "transform-based sanitisation of a cleaned set")


@dataclasses.dataclass
class Inspection:
    """What :func:`inspect_training_set` found.

    Attributes:
        features: the shared :class:`goodnet.features.Features`.
        detectors: ``{method: fitted detector}`` in the order run.
        masks: ``{method: (N,) bool flagged}``, and ``"union"`` (flagged by any method run).
        timings: seconds of ``features`` and of each method.
        truth: the :class:`goodnet.data.PoisonTruth`, or None.
    """

    features: object
    detectors: dict
    masks: dict
    timings: dict
    truth: object = None

    def suspicious(self):
        """Each method's suspicious classes (see :func:`suspicious_classes`)."""
        return suspicious_classes(self.detectors)

    def detection(self):
        """``{method or "union": figures}`` against the ground truth: precision, recall, F1 (and for a method its
        scores' ROC AUC), see :func:`goodnet.defenses._inspection.detection_figures`; None without a ground truth."""
        from goodnet.defenses._inspection import detection_figures

        if self.truth is None:
            return None
        found = {method: detection_figures(self.masks[method], self.truth.poisoned, detector.scores_)
                 for method, detector in self.detectors.items()}
        found["union"] = detection_figures(self.masks["union"], self.truth.poisoned)
        return found

    def falsely_flagged_classes(self):
        """Per method, the classes it calls suspicious (AC: poisoned) that hold no poison; None without a truth."""
        if self.truth is None:
            return None
        poisoned = set(int(label) for label in self.features.labels[self.truth.poisoned])
        return {method: sorted(set(classes) - poisoned) for method, classes in self.suspicious().items()}

    def recommended(self):
        """The method whose flags a cleaned set should drop, from the detectors' own verdicts (no ground truth).

        The first method of :data:`PREFERENCE` that ran and found evidence: activation clustering when it
        judged a class poisoned, spectral signatures or the isolation forest when a class stands out among
        the classes. None when no method found any: nothing is evidently poisoned, keep the set.
        """
        suspicious = self.suspicious()
        for method in PREFERENCE:
            if suspicious.get(method):
                return method
        return None

    def flagged(self, by):
        """(N,) booleans: the samples ``by`` flagged (a method that ran, or "union"; None: none)."""
        if by is None:
            return np.zeros(len(self.features), bool)
        if by not in self.masks:
            raise OptionError(f"clean-by: {by}: that method did not run (ran: {', '.join(self.detectors)})")
        return self.masks[by]


def flag_masks(detectors, count):
    """``{method: (count,) bool}`` of each detector's flagged samples, and their ``"union"``."""
    masks = {}
    for method, detector in detectors.items():
        mask = np.zeros(count, bool)
        mask[detector.flagged_] = True
        masks[method] = mask
    masks["union"] = np.any(list(masks.values()), axis=0) if masks else np.zeros(count, bool)
    return masks


def suspicious_classes(detectors):
    """Each method's suspicious classes: AC's poisoned verdicts, the spectral and isolation outlier classes."""
    found = {}
    for method, detector in detectors.items():
        classes = detector.poisoned_classes() if method == "ac" else detector.suspicious_classes()
        found[method] = [int(label) for label in classes]
    return found


def retrainer(classifier):
    """Exclusionary reclassification's retraining: a DeepID trained with goodnet's recipe (TrainOptions' defaults)."""
    from goodnet.models import Classifier
    from goodnet.training import train_deepid

    def retrain(images, labels):
        trained = train_deepid(images, labels, classifier.num_classes)
        return Classifier(trained.model, trained.scale, trained.num_classes, execution=classifier.execution)

    return retrain


def check_methods(methods):
    """The methods as a tuple, each one of :data:`METHODS`, at least one, none twice."""
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    if not methods or len(set(methods)) != len(methods) or any(method not in METHODS for method in methods):
        raise OptionError(f"methods: expected one or more of {', '.join(METHODS)} (each once), got {list(methods)}")
    return methods


def detect(features, methods=METHODS, options=None, images=None, classifier=None, progress=None, timings=None):
    """Fit each detector of ``methods`` on the shared ``features``; return ``{method: fitted detector}``.

    Args:
        features: :class:`goodnet.features.Features` of the training set.
        methods: some of :data:`METHODS`, run in that order.
        options: :class:`InspectionOptions` (the isolation forest's seed is used as given).
        images: the training images (a LabFile or LabData); needed only for AC's exclusionary reclassification.
        classifier: the model, for exclusionary reclassification's retraining (:func:`retrainer`).
        progress: progress bars (None: after a few seconds; False: never).
        timings: a dict that receives each method's seconds.
    """
    from goodnet.defenses.activation_clustering import ActivationClustering
    from goodnet.defenses.sanitisation import IsolationSanitiser
    from goodnet.defenses.spectral_signatures import SpectralSignatures

    options = options or InspectionOptions()
    timings = {} if timings is None else timings
    detectors = {}
    for method in check_methods(methods):
        start = time.perf_counter()
        if method == "ac":
            detector = ActivationClustering.from_options(options.ac, progress=progress)
            retrain = retrainer(classifier) if options.ac.exclusionary else None
            if retrain is not None and images is None:
                raise OptionError("ac.exclusionary: expected the training images to retrain without the clusters")
            detector.fit(features, images=images if retrain else None, retrain=retrain)
        elif method == "spectral":
            detector = SpectralSignatures.from_options(options.spectral, progress=progress).fit(features)
        else:
            detector = IsolationSanitiser.from_options(options.isolation, progress=progress).fit(features)
        timings[method] = time.perf_counter() - start
        detectors[method] = detector
    return detectors


def inspect_training_set(classifier, data, truth=None, methods=METHODS, options=None, batch_size=None,
                         progress=None):
    """Run the training-set detectors on ``data`` with the model trained on it.

    Args:
        classifier: the suspect :class:`goodnet.models.Classifier`.
        data: its training set: a :class:`goodnet.data.LabData`, an open :class:`goodnet.data.LabFile` or a path
            (a file is streamed in ``options.features.chunk`` images).
        truth: the set's :class:`goodnet.data.PoisonTruth` (for the figures only; nothing is chosen with it).
        methods: some of :data:`METHODS`.
        options: :class:`InspectionOptions`.
        batch_size: images per network call (default :data:`goodnet.inference.DEFAULT_BATCH`).
        progress: progress bars (None: after a few seconds; False: never).

    Returns:
        Inspection

    Example:
        >>> inspection = inspect_training_set(badnet, train, truth)
        >>> inspection.masks["spectral"].sum(), inspection.detection()["spectral"]["f1"]
    """
    from goodnet.features import compute_features
    from goodnet.inference import DEFAULT_BATCH

    methods = check_methods(methods)
    options = validate_options(options or InspectionOptions())
    start = time.perf_counter()
    features = compute_features(classifier, data, layer=options.features.layer,
                                batch_size=batch_size or DEFAULT_BATCH, chunk=options.features.chunk,
                                cache=options.features.cache, progress=progress)
    if truth is not None and len(truth) != len(features):
        raise OptionError(f"truth: expected the ground truth of {len(features)} images, got {len(truth)}")
    timings = {"features": time.perf_counter() - start}
    detectors = detect(features, methods, options, images=data, classifier=classifier, progress=progress,
                       timings=timings)
    return Inspection(features, detectors, flag_masks(detectors, len(features)), timings, truth)


# -- the cleaned set ---------------------------------------------------------------------------------------------


def _read(data, start, stop):
    if hasattr(data, "read_images"):
        return data.read_images(start, stop)
    return np.asarray(data.images[start:stop], np.float32)


def cleaned_training_set(data, flagged, transform=None, seed=0, where="clean set"):
    """The training set without the ``flagged`` rows: ``(images, labels, kept indices)``.

    Args:
        data: the training set (LabData or an open LabFile, read ``READ_CHUNK`` images at a time).
        flagged: (N,) booleans (e.g. ``inspection.masks["ac"]``) or flagged sample indices.
        transform: :class:`goodnet.defenses.sanitisation.TransformOptions` to apply the transform-based
            sanitisation to the kept images (draws from ``seed``), or None.
        seed: seed of the transforms' draws.
        where: what the errors name.

    Raises:
        DataError: every sample is flagged, or the kept images would not fit in memory.
    """
    from goodnet.data import check_fits
    from goodnet.defenses.sanitisation import sanitise_images, transform_parameters
    from goodnet.errors import DataError

    count = len(data)
    flagged = np.asarray(flagged)
    if flagged.dtype != bool:
        mask = np.zeros(count, bool)
        mask[flagged.astype(np.int64)] = True
        flagged = mask
    if flagged.shape != (count,):
        raise OptionError(f"flagged: expected {count} booleans (one per sample), got shape {flagged.shape}")
    kept = np.flatnonzero(~flagged)
    if kept.size == 0:
        raise DataError(f"{where}: every sample is flagged; nothing to write")
    image_shape = tuple(getattr(data, "image_shape", None) or np.shape(data.images)[1:])
    check_fits(getattr(data, "path", "") or "training set", "data", f"writing its {kept.size:,} kept images",
               kept.size * int(np.prod(image_shape)) * 4)
    images = np.empty((kept.size,) + image_shape, np.float32)
    parameters = transform_parameters(kept.size, transform, seed) if transform is not None else None
    filled = 0
    for start in range(0, count, READ_CHUNK):
        stop = min(start + READ_CHUNK, count)
        wanted = kept[(kept >= start) & (kept < stop)]
        if wanted.size == 0:
            continue
        block = _read(data, start, stop)[wanted - start]
        if parameters is not None:
            block = sanitise_images(block, transform, parameters={key: value[filled:filled + len(block)]
                                                                  for key, value in parameters.items()})
        images[filled:filled + len(block)] = block
        filled += len(block)
    return images, np.asarray(data.labels)[kept], kept


def write_clean_set(path, data, inspection, by="union", transform=None, seed=0, overwrite=False, where=None):
    """Write the training set without the samples ``by`` flagged as a lab file, with the kept rows' ground truth.

    Args:
        path: the .h5 file to write (atomically; an existing one only with ``overwrite``).
        data: the training set the inspection ran on.
        inspection: an :class:`Inspection`.
        by: a method that ran, or "union".
        transform: TransformOptions to transform-sanitise the kept images, or None.
        seed: seed of the transforms' draws.
        overwrite: passed to :func:`goodnet.data.save_h5`.
        where: what the errors name (default ``path``).

    Returns:
        dict: ``path``, ``by``, ``kept``, ``removed``, ``transformed`` (``transforms``), and with a ground truth
        ``poisoned_kept`` and ``poisoned_removed``.
    """
    from goodnet.data import save_h5

    images, labels, kept = cleaned_training_set(data, inspection.flagged(by), transform, seed,
                                                where=where or path)
    truth = inspection.truth
    extra = truth.subset(kept).datasets() if truth is not None else {}
    save_h5(path, images, labels, overwrite=bool(overwrite), **extra)
    result = {"path": path, "by": by, "kept": int(kept.size), "removed": int(len(data) - kept.size),
              "transformed": transform is not None}
    if transform is not None:
        result["transforms"] = list(transform.transforms)
    if truth is not None:
        result["poisoned_kept"] = int(truth.poisoned[kept].sum())
        result["poisoned_removed"] = int(truth.poisoned.sum() - truth.poisoned[kept].sum())
    return result


# -- figures, tables and files ---------------------------------------------------------------------------------


def method_summary(inspection):
    """The methods' part of a run's summary: ``methods`` (per method), ``union``, and with a truth ``truth``."""
    suspicious = inspection.suspicious()
    detection = inspection.detection()
    summary = {"methods": {}}
    for method, detector in inspection.detectors.items():
        entry = {"name": METHOD_NAMES[method], "flagged": int(inspection.masks[method].sum()),
                 "suspicious_classes": suspicious[method], "params": detector.summary()["params"]}
        if method == "ac":
            entry["reductions"] = detector.summary()["reductions"]
        if detection is not None:
            entry["detection"] = detection[method]
        summary["methods"][method] = entry
    summary["union"] = {"flagged": int(inspection.masks["union"].sum())}
    if detection is not None:
        summary["union"]["detection"] = detection["union"]
        summary["truth"] = inspection.truth.counts()
        summary["truth"]["poisoned_classes"] = sorted(
            {int(label) for label in inspection.features.labels[inspection.truth.poisoned]})
    return summary


def plot_order(detectors, limit):
    """The classes drawn: AC's poisoned first (highest silhouette first), then the spectral and isolation outliers."""
    ordered = []
    for method in METHODS:
        detector = detectors.get(method)
        if detector is None:
            continue
        if method == "ac":
            chosen = np.flatnonzero(detector.poisoned_)
            key = -np.nan_to_num(detector.silhouette_[chosen], nan=-1.0)
        else:
            chosen = np.flatnonzero(detector.suspicious_)
            key = -np.nan_to_num(detector.anomaly_index_[chosen], nan=0.0, posinf=1e300)
        for position in chosen[np.argsort(key, kind="stable")]:
            label = int(detector.classes_[position])
            if label not in ordered:
                ordered.append(label)
    return ordered[:limit]


def score_rows(inspection):
    """``(rows, column names)`` of ``scores.csv``: per sample its index, label, answer, truth, scores and flags."""
    features, truth = inspection.features, inspection.truth
    columns = {"index": np.arange(len(features)), "label": features.labels}
    if features.predictions is not None:
        columns["prediction"] = features.predictions
    if truth is not None:
        columns["poisoned"] = truth.poisoned.astype(int)
        columns["clean_label"] = truth.clean_labels
    for method, detector in inspection.detectors.items():
        columns[f"{method}_score"] = detector.scores_
        columns[f"{method}_flagged"] = inspection.masks[method].astype(int)
        if method == "ac":
            columns["ac_cluster"] = detector.clusters_
    names = list(columns)
    values = [columns[name].tolist() for name in names]
    rows = []
    for entries in zip(*values):
        rows.append({name: ("" if isinstance(entry, float) and entry != entry else
                            (f"{entry:.6g}" if isinstance(entry, float) else entry))
                     for name, entry in zip(names, entries)})
    return rows, names


def class_rows(inspection):
    """Rows of ``classes.csv``: per class its samples, true poison and each method's verdict figures."""
    features, truth = inspection.features, inspection.truth
    groups = features.groups()
    rows = []
    poisoned_counts = None
    if truth is not None:
        poisoned_counts = np.bincount(np.searchsorted(groups.classes, features.labels[truth.poisoned]),
                                      minlength=len(groups))
    for position, label in enumerate(groups.classes):
        row = {"class": int(label), "samples": int(groups.counts[position])}
        if poisoned_counts is not None:
            row["poisoned"] = int(poisoned_counts[position])
        for method, detector in inspection.detectors.items():
            verdict = detector.class_verdict_[position]
            for key, value in verdict.items():
                if key in ("class", "samples", "reason", "exclusionary"):
                    continue
                row[f"{method}_{key}"] = "" if value is None else value
        rows.append(row)
    return rows


def plot_class_projection(features, label, detectors, truth, path):
    """One class's features on their top two principal directions, flagged samples marked per method (PNG)."""
    from goodnet.defenses._inspection import centred_svd_reference
    from goodnet.plots import new_figure, save_figure

    groups = features.groups()
    position = groups.position(label)
    indices = groups.indices(position)
    _, centred, _, vectors = centred_svd_reference(features.rows(indices))
    directions = np.zeros((2, features.dim))
    directions[:min(2, len(vectors))] = vectors[:2]
    points = centred @ directions.T
    figure, axes = new_figure(width=6.5, height=5.0)
    if truth is not None:
        poison = truth.poisoned[indices]
        axes.scatter(points[~poison, 0], points[~poison, 1], s=9, color="lightgrey",
                     label=f"clean ({int((~poison).sum())})")
        axes.scatter(points[poison, 0], points[poison, 1], s=9, color="tab:orange",
                     label=f"poisoned, true ({int(poison.sum())})")
    else:
        axes.scatter(points[:, 0], points[:, 1], s=9, color="grey", label=f"samples ({len(indices)})")
    styles = {"ac": dict(s=46, facecolors="none", edgecolors="tab:red", linewidths=0.9),
              "spectral": dict(s=22, marker="x", color="tab:blue", linewidths=0.8),
              "isolation": dict(s=30, marker="+", color="tab:green", linewidths=0.8)}
    verdicts = []
    for method, detector in detectors.items():
        chosen = np.isin(indices, detector.flagged_)
        if chosen.any():
            axes.scatter(points[chosen, 0], points[chosen, 1], label=f"{METHOD_NAMES[method]} ({int(chosen.sum())})",
                         **styles[method])
        verdict = detector.class_verdict_[position]
        if method == "ac" and verdict["clustered"]:
            verdicts.append(f"AC {'poisoned' if verdict['poisoned'] else 'clean'} (size "
                            f"{verdict['relative_size'] * 100:.0f} %, silhouette {verdict['silhouette']:.2f})")
        elif method != "ac" and verdict.get("anomaly_index") is not None:
            verdicts.append(f"{method} index {verdict['anomaly_index']:.1f}")
    axes.set_xlabel("first principal direction")
    axes.set_ylabel("second principal direction")
    axes.set_title(f"class {label}: {len(indices)} samples, {features.layer}\n" + "; ".join(verdicts), fontsize=8)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return save_figure(figure, path)


def write_inspection_outputs(out_dir, inspection, summary, max_plots=20, plots=True, protect=()):
    """Write ``scores.csv``, ``flagged.json``, ``classes.csv``, ``classes.json``, the class PNGs and ``report.md``.

    Args:
        out_dir: the folder (created if missing).
        inspection: an :class:`Inspection`.
        summary: the run's summary (:func:`method_summary` plus ``inputs``, ``features``, ``timings_seconds``,
            ``ground_truth``, optionally ``clean``); ``plotted_classes`` is added to it.
        max_plots: most class PNGs.
        plots: False: no PNG.
        protect: paths no output may replace (the input files).

    Returns:
        dict: the files written (``inspect.json``'s path included, for the caller to write it last).
    """
    from goodnet.files import write_text
    from goodnet.reports import write_csv, write_json

    os.makedirs(out_dir, exist_ok=True)
    files = {}
    rows, names = score_rows(inspection)
    files["scores.csv"] = os.path.join(out_dir, "scores.csv")
    write_csv(files["scores.csv"], rows, names, protect=protect)
    flagged = {method: np.flatnonzero(mask).tolist() for method, mask in inspection.masks.items()}
    files["flagged.json"] = os.path.join(out_dir, "flagged.json")
    write_json(files["flagged.json"], flagged, protect=protect)
    table = class_rows(inspection)
    files["classes.csv"] = os.path.join(out_dir, "classes.csv")
    write_csv(files["classes.csv"], table, list(table[0]) if table else ["class"], protect=protect)
    files["classes.json"] = os.path.join(out_dir, "classes.json")
    write_json(files["classes.json"], {method: detector.class_verdict_
                                       for method, detector in inspection.detectors.items()}, protect=protect)
    drawn = plot_order(inspection.detectors, max_plots) if plots else []
    files["plots"] = []
    for label in drawn:
        path = os.path.join(out_dir, f"{PLOT_PREFIX}{label}.png")
        plot_class_projection(inspection.features, label, inspection.detectors, inspection.truth, path)
        files["plots"].append(path)
    summary["plotted_classes"] = drawn
    files["report.md"] = os.path.join(out_dir, "report.md")
    write_text(files["report.md"], report_markdown(summary, inspection.detectors, drawn), protect=protect)
    files["inspect.json"] = os.path.join(out_dir, "inspect.json")
    return files


def _figure(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def report_markdown(summary, detectors, plots):
    """``report.md`` of an inspection."""
    inputs = summary["inputs"]
    lines = ["# Training-set inspection", "",
             f"- model: `{inputs['model']}` ({inputs['scale_report'] or 'scale ' + inputs['scale']})",
             f"- training set: `{inputs['train']}`: {inputs['samples']} samples, {inputs['classes']} classes",
             f"- features: layer `{summary['features']['layer']}`, {summary['features']['dimensions']} dimensions, "
             f"computed once in {summary['timings_seconds']['features']:.1f} s and shared by every method"]
    if summary.get("truth"):
        truth = summary["truth"]
        lines.append(f"- ground truth in the file: {truth['poisoned']} poisoned images "
                     f"(classes {', '.join(map(str, truth['poisoned_classes'])) or 'none'}), "
                     f"{truth['flipped']} flipped")
    lines += ["", "## Methods", "", "| method | flagged | suspicious classes | seconds |"
              + (" precision | recall | F1 | score AUC |" if summary["ground_truth"] else ""),
              "|---|---:|---|---:|" + ("---:|---:|---:|---:|" if summary["ground_truth"] else "")]
    for method, entry in summary["methods"].items():
        classes = ", ".join(map(str, entry["suspicious_classes"][:12])) or "none"
        if len(entry["suspicious_classes"]) > 12:
            classes += f" (+{len(entry['suspicious_classes']) - 12})"
        row = f"| {entry['name']} | {entry['flagged']} | {classes} | {summary['timings_seconds'][method]:.2f} |"
        if summary["ground_truth"]:
            detection = entry["detection"]
            row += (f" {_figure(detection['precision'])} | {_figure(detection['recall'])} | "
                    f"{_figure(detection['f1'])} | {_figure(detection.get('auc'))} |")
        lines.append(row)
    union = summary["union"]
    lines += ["", f"Union of the methods: {union['flagged']} samples flagged" + (
        f" (precision {_figure(union['detection']['precision'])}, recall {_figure(union['detection']['recall'])}, "
        f"F1 {_figure(union['detection']['f1'])})." if "detection" in union else "."), ""]
    lines += ["How each method decides:", "",
              "- activation clustering: per class, ICA (classes of at least 100 samples) or PCA of the activations to "
              "10 dimensions, k-means with k = 2; a class is poisoned when its smaller cluster is small and the "
              "clusters separated (relative size, and silhouette in the PCA or the ICA coordinates); only the "
              "smaller clusters of poisoned classes are flagged;",
              "- spectral signatures: per class, score ((r - mean) . v)^2 on the centred representations (v: top "
              "singular vector); the 1.5 x epsilon x n highest of each class are flagged; a class is suspicious when "
              "sigma_1^2 / sigma_2^2 stands out (MAD anomaly index);",
              "- isolation forest: anomalies of an isolation forest on the features; a class is suspicious when its "
              "flagged share stands out.", ""]
    if "ac" in detectors:
        poisoned = [row for row in detectors["ac"].class_verdict_ if row["poisoned"]]
        lines += ["## Activation clustering: classes judged poisoned", ""]
        if poisoned:
            lines += ["| class | samples | smaller cluster | relative size | reduction | silhouette (PCA) | "
                      "silhouette (ICA) |", "|---:|---:|---:|---:|---|---:|---:|"]
            for row in poisoned:
                lines.append(f"| {row['class']} | {row['samples']} | {row['smaller_cluster']} | "
                             f"{row['relative_size'] * 100:.1f} % | {row['reduction']} | {row['silhouette']:.3f} | "
                             f"{_figure(row['ica_silhouette'])} |")
        else:
            lines.append("None: no class has a small, well-separated cluster.")
        lines.append("")
    if summary.get("clean"):
        clean = summary["clean"]
        lines += ["## Cleaned training set", "",
                  f"`{clean['path']}`: {clean['kept']} samples kept, {clean['removed']} removed ({clean['by']})"
                  + (f", transformed ({', '.join(clean['transforms'])})" if clean["transformed"] else "")
                  + (f"; {clean['poisoned_kept']} poisoned samples remain" if "poisoned_kept" in clean else "")
                  + ".", ""]
    if plots:
        lines += ["## Suspicious classes", ""]
        lines += [f"![class {label}](class_{label}.png)" for label in plots]
        lines.append("")
    return "\n".join(lines)


# -- the whole loop ----------------------------------------------------------------------------------------------


def _model_figures(classifier, test, poisoned_test, progress=None):
    from goodnet.metrics import evaluate

    figures = evaluate(classifier, test, list(poisoned_test), progress=progress)
    return {"clean_accuracy": figures["clean_accuracy"], "attack_success_rate": figures.get("attack_success_rate")}


def clean_and_retrain(badnet, training_set, num_classes, test, poisoned_test=(), truth=None, clean_training=None,
                      recipe=None, methods=METHODS, options=None, by="recommended", clean_model=None,
                      progress=None):
    """The loop poisoned data -> inspection -> cleaned set -> retrained model -> evaluation.

    Inspects ``training_set`` with the BadNet trained on it (:func:`inspect_training_set`), drops the samples
    of method ``by`` (default the :meth:`Inspection.recommended` one, chosen from the detectors' verdicts
    only), retrains a DeepID on the rest with ``recipe`` (:func:`goodnet.training.train_deepid`, the attack's
    recipe) and measures the BadNet, the retrained model and a model trained on ``clean_training`` (the truly
    clean set) on the same clean test set and poisoned test sets.

    Args:
        badnet: the :class:`goodnet.models.Classifier` trained on ``training_set``.
        training_set: the poisoned training set (LabData or an open LabFile).
        num_classes: classes of the task.
        test: clean test :class:`goodnet.data.LabData` (true labels).
        poisoned_test: LabData per trigger (triggered non-target images labelled with the target): the ASR.
        truth: the training set's :class:`goodnet.data.PoisonTruth` (figures only).
        clean_training: the truly clean training set (LabData), or None (no clean-trained model; or pass
            ``clean_model``).
        recipe: :class:`goodnet.training.TrainOptions` of both retrainings (default its defaults).
        methods, options, progress: see :func:`inspect_training_set`.
        by: "recommended", a method that ran, "union", or None (retrain on everything).
        clean_model: an already trained clean model (reused instead of training on ``clean_training``).

    Returns:
        tuple: (figures dict, :class:`Inspection`, retrained Classifier, clean Classifier or None). The figures:
        ``by`` (the method used, None when nothing was dropped), ``recommended``, ``methods`` (per method: flagged,
        suspicious classes, seconds, and with a truth precision, recall, F1, classes falsely flagged),
        ``features_seconds``, ``training_images``, ``kept``, ``removed`` (and ``poisoned_kept``), ``models``
        (``badnet``, ``retrained``, ``clean``: clean accuracy and ASR) and ``seconds``.

    Example:
        >>> figures, inspection, retrained, _ = clean_and_retrain(badnet, info["training_set"], 10, test, [bad_test],
        ...                                                       truth=info["truth"], clean_training=train)
        >>> figures["models"]["retrained"]["attack_success_rate"]
    """
    from goodnet.training import TrainOptions, train_deepid

    recipe = recipe or TrainOptions()
    started = time.perf_counter()
    inspection = inspect_training_set(badnet, training_set, truth, methods, options, progress=progress)
    inspected = time.perf_counter()
    recommended = inspection.recommended()
    chosen = recommended if by == "recommended" else by
    images, labels, kept = cleaned_training_set(training_set, inspection.flagged(chosen), where="cleaned set")
    retrained = train_deepid(images, labels, num_classes, recipe)
    retrained_at = time.perf_counter()
    if clean_model is None and clean_training is not None:
        clean_model = train_deepid(clean_training.images, clean_training.labels, num_classes, recipe)
    cleaned_at = time.perf_counter()
    detection = inspection.detection()
    false = inspection.falsely_flagged_classes()
    suspicious = inspection.suspicious()
    per_method = {}
    for method in inspection.detectors:
        entry = {"flagged": int(inspection.masks[method].sum()), "suspicious_classes": suspicious[method],
                 "seconds": inspection.timings[method]}
        if detection is not None:
            entry.update({key: detection[method][key] for key in ("precision", "recall", "f1", "auc")})
            entry["falsely_flagged_classes"] = false[method]
        per_method[method] = entry
    figures = {"by": chosen, "recommended": recommended, "methods": per_method,
               "features_seconds": inspection.timings["features"], "training_images": len(training_set),
               "kept": int(kept.size), "removed": int(len(training_set) - kept.size),
               "models": {"badnet": _model_figures(badnet, test, poisoned_test, progress),
                          "retrained": _model_figures(retrained, test, poisoned_test, progress)}}
    if truth is not None:
        figures["poisoned"] = int(truth.poisoned.sum())
        figures["poisoned_kept"] = int(truth.poisoned[kept].sum())
        if detection is not None and "union" in detection:
            figures["union"] = {key: detection["union"][key] for key in ("precision", "recall", "f1")}
    if clean_model is not None:
        figures["models"]["clean"] = _model_figures(clean_model, test, poisoned_test, progress)
    figures["seconds"] = {"inspect": round(inspected - started, 2), "retrain": round(retrained_at - inspected, 2),
                          "clean_train": round(cleaned_at - retrained_at, 2),
                          "total": round(time.perf_counter() - started, 2)}
    return figures, inspection, retrained, clean_model
