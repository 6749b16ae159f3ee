"""``goodnet inspect-data``: find the poisoned samples of a training set with the model trained on it.

    goodnet inspect-data --model MODEL --train TRAIN.h5 --out DIR [--method ac|spectral|isolation|all]
                         [--poison-rate EPS] [--write-clean CLEAN.h5 [--clean-by METHOD] [--transform]] [--json]

Computes the model's last-hidden-layer features of every training image once
(streamed from the file, optionally cached on disk: ``--cache DIR``) and
runs the training-set detectors on them: activation clustering
(:mod:`goodnet.defenses.activation_clustering`), spectral signatures
(:mod:`goodnet.defenses.spectral_signatures`) and the isolation-forest
sanitiser (:mod:`goodnet.defenses.sanitisation`). Writes in ``--out``:

- ``scores.csv``: per sample its index, label, the model's answer, each
  method's score and flag (and the ground truth when the file has it);
- ``flagged.json``: each method's flagged sample indices and their union;
- ``classes.csv``, ``classes.json``: per class, each method's figures and verdict;
- ``class_<label>.png``: for each suspicious class (at most ``--max-plots``),
  the class's features projected on their top two principal directions,
  flagged samples marked per method (and the true poison, when known);
- ``report.md`` and ``inspect.json`` (the summary ``--json`` prints); with a
  ground truth (a ``poisoned`` dataset, see :class:`goodnet.data.PoisonTruth`)
  each method's precision, recall, F1 and score ROC AUC.

``--write-clean CLEAN.h5`` writes the training file without the flagged
samples (of ``--clean-by``: the union by default, or one method), carrying
the ground truth of the kept rows; ``--transform`` also applies the
transform-based sanitisation (blur, small rotation, colour jitter) to them.
"""

import os
import time

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         positive, prepare_out_dir, print_json)

HELP = "inspect a training set for poison: activation clustering, spectral signatures, isolation forest"
METHODS = ("ac", "spectral", "isolation")
METHOD_NAMES = {"ac": "activation clustering", "spectral": "spectral signatures", "isolation": "isolation forest"}
OUTPUTS = ("scores.csv", "flagged.json", "classes.csv", "classes.json", "report.md", "inspect.json")
PLOT_PREFIX = "class_"


def add_arguments(parser):
    from goodnet.cli.options import add_options
    from goodnet.defenses.activation_clustering import ActivationClusteringOptions
    from goodnet.defenses.sanitisation import IsolationOptions, TransformOptions
    from goodnet.defenses.spectral_signatures import SpectralOptions
    from goodnet.features import FeatureOptions

    parser.add_argument("--model", required=True, metavar="MODEL", help="the model trained on --train (.h5 or .keras)")
    parser.add_argument("--train", required=True, metavar="TRAIN.h5", help="its training set, a lab-layout .h5 file")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (scores, flags, figures, report)")
    parser.add_argument("--method", choices=METHODS + ("all",), default="all",
                        help="the detector(s) to run (default all)")
    parser.add_argument("--write-clean", metavar="CLEAN.h5", default=None,
                        help="write the training file without the flagged samples (with the kept rows' ground truth)")
    parser.add_argument("--clean-by", choices=("union",) + METHODS, default="union",
                        help="whose flags --write-clean removes (default union: every method run)")
    parser.add_argument("--transform", action="store_true",
                        help="also apply the transform-based sanitisation (--transforms) to the images --write-clean "
                             "writes")
    parser.add_argument("--max-plots", type=positive, default=20,
                        help="most suspicious classes drawn as class_<label>.png (default 20)")
    parser.add_argument("--no-plots", action="store_true", help="write no class PNG")
    add_options(parser, FeatureOptions, group="features")
    add_options(parser, SpectralOptions, group="spectral signatures")
    add_options(parser, ActivationClusteringOptions, group="activation clustering")
    add_options(parser, IsolationOptions, exclude=("seed",), group="isolation forest")   # one --seed for all
    add_options(parser, TransformOptions, group="transform-based sanitisation (--transform)")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _options(args):
    from goodnet.cli.options import check_options, options_from_args
    from goodnet.defenses.activation_clustering import ActivationClusteringOptions
    from goodnet.defenses.sanitisation import IsolationOptions, TransformOptions
    from goodnet.defenses.spectral_signatures import SpectralOptions
    from goodnet.features import FeatureOptions

    options = {"features": options_from_args(args, FeatureOptions),
               "spectral": options_from_args(args, SpectralOptions),
               "ac": options_from_args(args, ActivationClusteringOptions),
               "isolation": options_from_args(args, IsolationOptions),
               "transform": options_from_args(args, TransformOptions)}
    for value in options.values():
        check_options(value)   # every flag against its rule, before any work
    return options


def _check_outputs(args, methods):
    """Refuse, before any work, outputs that cannot be written."""
    from goodnet.files import check_replaceable, same_file

    if args.clean_by != "union" and args.clean_by not in methods:
        raise CommandError(f"--clean-by {args.clean_by}: that method does not run (--method {args.method})")
    if args.transform and not args.write_clean:
        raise CommandError("--transform: transforms the images --write-clean writes; add --write-clean CLEAN.h5")
    if args.write_clean:
        path = args.write_clean
        if not path.endswith(".h5"):
            raise CommandError(f"{path}: --write-clean: expected a file name ending in .h5")
        for given, option in ((args.train, "--train"), (args.model, "--model")):
            if same_file(path, given) or os.path.abspath(path) == os.path.abspath(given):
                raise CommandError(f"{path}: --write-clean: refusing to write over the {option} file")
        if os.path.lexists(path) and not args.overwrite:
            raise CommandError(f"{path}: --write-clean: file exists; pass --overwrite to replace it")
        check_replaceable(path, True if args.overwrite else None, "--write-clean")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise CommandError(f"{path}: --write-clean: folder {parent} does not exist")
    existing = []
    if os.path.isdir(args.out):
        existing = [name for name in os.listdir(args.out) if name.startswith(PLOT_PREFIX) and name.endswith(".png")]
    prepare_out_dir(args, OUTPUTS + tuple(existing))


def run(args):
    from goodnet.data import LabFile, load_poison_truth
    from goodnet.features import compute_features
    from goodnet.models import load_model

    methods = METHODS if args.method == "all" else (args.method,)
    options = _options(args)
    _check_outputs(args, methods)
    progress = False if args.no_progress else None
    with execution_from_args(args).placement(), LabFile(args.train) as lab:
        truth = load_poison_truth(args.train)
        classifier = load_model(args.model, scale=args.scale, num_classes=args.num_classes, clean=lab)
        lab.check_classes(classifier.num_classes)
        _, execution_report = configure_execution(args, classifier, lab)
        start = time.perf_counter()
        features = compute_features(classifier, lab, layer=options["features"].layer, batch_size=args.batch_size,
                                    chunk=options["features"].chunk, cache=options["features"].cache,
                                    progress=progress)
        timings = {"features": time.perf_counter() - start}
        detectors = _detect(methods, options, features, lab, classifier, timings, progress)
        summary = _summary(args, classifier, features, detectors, truth, timings, execution_report)
        if args.write_clean:
            summary["clean"] = _write_clean(args, lab, detectors, truth, options["transform"])
        files = _write_outputs(args, features, detectors, truth, summary)
        if args.write_clean:
            files["clean"] = args.write_clean
    summary["files"] = files
    from goodnet.reports import write_json

    write_json(os.path.join(args.out, "inspect.json"), summary, protect=(args.train, args.model))
    if args.json:
        print_json(summary)
    else:
        print("\n".join(_lines(summary)))
    return 0


def _detect(methods, options, features, lab, classifier, timings, progress):
    """Fit each detector on the shared features; return {method: fitted detector}."""
    from goodnet.defenses.activation_clustering import ActivationClustering
    from goodnet.defenses.sanitisation import IsolationSanitiser
    from goodnet.defenses.spectral_signatures import SpectralSignatures

    detectors = {}
    for method in methods:
        start = time.perf_counter()
        if method == "ac":
            detector = ActivationClustering.from_options(options["ac"], progress=progress)
            retrain = _retrainer(classifier) if options["ac"].exclusionary else None
            detector.fit(features, images=lab if retrain else None, retrain=retrain)
        elif method == "spectral":
            detector = SpectralSignatures.from_options(options["spectral"], progress=progress).fit(features)
        else:
            detector = IsolationSanitiser.from_options(options["isolation"], progress=progress).fit(features)
        timings[method] = time.perf_counter() - start
        detectors[method] = detector
    return detectors


def _retrainer(classifier):
    """Exclusionary reclassification's retraining: a DeepID trained with goodnet's recipe (TrainOptions' defaults)."""
    from goodnet.models import Classifier
    from goodnet.training import train_deepid

    def retrain(images, labels):
        trained = train_deepid(images, labels, classifier.num_classes)
        return Classifier(trained.model, trained.scale, trained.num_classes, execution=classifier.execution)

    return retrain


def _flag_masks(detectors, count):
    import numpy as np

    masks = {}
    for method, detector in detectors.items():
        mask = np.zeros(count, bool)
        mask[detector.flagged_] = True
        masks[method] = mask
    masks["union"] = np.any(list(masks.values()), axis=0) if masks else np.zeros(count, bool)
    return masks


def _suspicious(detectors):
    """Each method's suspicious classes: AC's poisoned verdicts, the spectral and isolation outlier classes."""
    found = {}
    for method, detector in detectors.items():
        classes = detector.poisoned_classes() if method == "ac" else detector.suspicious_classes()
        found[method] = [int(label) for label in classes]
    return found


def _plot_order(detectors, limit):
    """The classes drawn: AC's poisoned first (highest silhouette first), then the spectral and isolation outliers."""
    import numpy as np

    ordered = []
    for method in ("ac", "spectral", "isolation"):
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


def _summary(args, classifier, features, detectors, truth, timings, execution_report):
    from goodnet.defenses._inspection import detection_figures

    masks = _flag_masks(detectors, len(features))
    suspicious = _suspicious(detectors)
    summary = {"inputs": {"model": args.model, "train": args.train, "scale": classifier.scale,
                          "scale_report": getattr(classifier, "scale_report", ""), "samples": len(features),
                          "classes": int(len(features.groups()))},
               "features": {"layer": features.layer, "dimensions": features.dim,
                            "cache": getattr(args, "cache", None)},
               "methods": {}, "timings_seconds": timings, "ground_truth": truth is not None}
    for method, detector in detectors.items():
        entry = {"name": METHOD_NAMES[method], "flagged": int(masks[method].sum()),
                 "suspicious_classes": suspicious[method], "params": detector.summary()["params"]}
        if method == "ac":
            entry["reductions"] = detector.summary()["reductions"]
        if truth is not None:
            entry["detection"] = detection_figures(masks[method], truth.poisoned, detector.scores_)
        summary["methods"][method] = entry
    summary["union"] = {"flagged": int(masks["union"].sum())}
    if truth is not None:
        summary["union"]["detection"] = detection_figures(masks["union"], truth.poisoned)
        summary["truth"] = truth.counts()
        summary["truth"]["poisoned_classes"] = sorted({int(label) for label in features.labels[truth.poisoned]})
    summary.update(execution_report)
    return summary


def _score_rows(features, detectors, truth):
    import numpy as np

    masks = _flag_masks(detectors, len(features))
    columns = {"index": np.arange(len(features)), "label": features.labels}
    if features.predictions is not None:
        columns["prediction"] = features.predictions
    if truth is not None:
        columns["poisoned"] = truth.poisoned.astype(int)
        columns["clean_label"] = truth.clean_labels
    for method, detector in detectors.items():
        columns[f"{method}_score"] = detector.scores_
        columns[f"{method}_flagged"] = masks[method].astype(int)
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


def _class_rows(features, detectors, truth):
    import numpy as np

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
        for method, detector in detectors.items():
            verdict = detector.class_verdict_[position]
            for key, value in verdict.items():
                if key in ("class", "samples", "reason", "exclusionary"):
                    continue
                row[f"{method}_{key}"] = "" if value is None else value
        rows.append(row)
    return rows


def _write_outputs(args, features, detectors, truth, summary):
    import numpy as np

    from goodnet.reports import write_csv, write_json

    protect = (args.train, args.model)
    os.makedirs(args.out, exist_ok=True)
    files = {}
    rows, names = _score_rows(features, detectors, truth)
    files["scores.csv"] = os.path.join(args.out, "scores.csv")
    write_csv(files["scores.csv"], rows, names, protect=protect)
    masks = _flag_masks(detectors, len(features))
    flagged = {method: np.flatnonzero(mask).tolist() for method, mask in masks.items()}
    files["flagged.json"] = os.path.join(args.out, "flagged.json")
    write_json(files["flagged.json"], flagged, protect=protect)
    class_rows = _class_rows(features, detectors, truth)
    files["classes.csv"] = os.path.join(args.out, "classes.csv")
    write_csv(files["classes.csv"], class_rows, list(class_rows[0]) if class_rows else ["class"], protect=protect)
    files["classes.json"] = os.path.join(args.out, "classes.json")
    write_json(files["classes.json"], {method: detector.class_verdict_ for method, detector in detectors.items()},
               protect=protect)
    plots = [] if args.no_plots else _plot_order(detectors, args.max_plots)
    files["plots"] = []
    for label in plots:
        path = os.path.join(args.out, f"{PLOT_PREFIX}{label}.png")
        plot_class_projection(features, label, detectors, truth, path)
        files["plots"].append(path)
    summary["plotted_classes"] = plots
    files["report.md"] = os.path.join(args.out, "report.md")
    from goodnet.files import write_text

    write_text(files["report.md"], _markdown(summary, detectors, plots), protect=protect)
    files["inspect.json"] = os.path.join(args.out, "inspect.json")
    return files


def plot_class_projection(features, label, detectors, truth, path):
    """One class's features on their top two principal directions, flagged samples marked per method (PNG)."""
    import numpy as np

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


def _write_clean(args, lab, detectors, truth, transform_options):
    """Write the training file without the flagged rows (streamed read; the kept rows in memory)."""
    import numpy as np

    from goodnet.data import check_fits, save_h5
    from goodnet.defenses.sanitisation import sanitise_images, transform_parameters

    masks = _flag_masks(detectors, len(lab))
    kept = np.flatnonzero(~masks[args.clean_by])
    if kept.size == 0:
        raise CommandError(f"{args.write_clean}: --write-clean: every sample is flagged; nothing to write")
    check_fits(args.train, "data", f"writing its {kept.size:,} kept images",
               kept.size * int(np.prod(lab.image_shape)) * 4)
    images = np.empty((kept.size,) + lab.image_shape, np.float32)
    parameters = transform_parameters(kept.size, transform_options, args.seed) if args.transform else None
    chunk = 2048
    filled = 0
    for start in range(0, len(lab), chunk):
        stop = min(start + chunk, len(lab))
        wanted = kept[(kept >= start) & (kept < stop)]
        if wanted.size == 0:
            continue
        block = lab.read_images(start, stop)[wanted - start]
        if parameters is not None:
            block = sanitise_images(block, transform_options,
                                    parameters={key: value[filled:filled + len(block)]
                                                for key, value in parameters.items()})
        images[filled:filled + len(block)] = block
        filled += len(block)
    extra = truth.subset(kept).datasets() if truth is not None else {}
    save_h5(args.write_clean, images, lab.labels[kept], overwrite=bool(args.overwrite), **extra)
    result = {"path": args.write_clean, "by": args.clean_by, "kept": int(kept.size),
              "removed": int(len(lab) - kept.size), "transformed": bool(args.transform)}
    if args.transform:
        result["transforms"] = list(transform_options.transforms)
    if truth is not None:
        result["poisoned_kept"] = int(truth.poisoned[kept].sum())
        result["poisoned_removed"] = int(truth.poisoned.sum() - truth.poisoned[kept].sum())
    return result


def _figure(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(summary, detectors, plots):
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


def _lines(summary):
    lines = [f"{summary['inputs']['train']}: {summary['inputs']['samples']} samples, {summary['inputs']['classes']} "
             f"classes; features {summary['features']['layer']} ({summary['features']['dimensions']} dimensions)"]
    for method, entry in summary["methods"].items():
        text = (f"{entry['name']}: {entry['flagged']} flagged, suspicious classes "
                f"{', '.join(map(str, entry['suspicious_classes'][:10])) or 'none'}")
        if "detection" in entry:
            detection = entry["detection"]
            text += (f"; precision {_figure(detection['precision'])}, recall {_figure(detection['recall'])}, "
                     f"F1 {_figure(detection['f1'])}")
        lines.append(text)
    if summary.get("clean"):
        clean = summary["clean"]
        lines.append(f"cleaned set: {clean['path']} ({clean['kept']} kept, {clean['removed']} removed)")
    lines.append(f"report: {summary['files']['report.md']}")
    return lines + execution_lines(summary)
