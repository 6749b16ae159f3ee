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

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         positive, prepare_out_dir, print_json)

HELP = "inspect a training set for poison: activation clustering, spectral signatures, isolation forest"
OUTPUTS = ("scores.csv", "flagged.json", "classes.csv", "classes.json", "report.md", "inspect.json")


def add_arguments(parser):
    from goodnet.cli.options import add_options
    from goodnet.defenses.activation_clustering import ActivationClusteringOptions
    from goodnet.defenses.sanitisation import IsolationOptions, TransformOptions
    from goodnet.defenses.spectral_signatures import SpectralOptions
    from goodnet.features import FeatureOptions
    from goodnet.inspection import METHODS

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
    from goodnet.inspection import PLOT_PREFIX

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
    from goodnet.inspection import (METHODS, InspectionOptions, inspect_training_set, write_clean_set,
                                    write_inspection_outputs)
    from goodnet.models import load_model
    from goodnet.reports import write_json

    methods = METHODS if args.method == "all" else (args.method,)
    options = InspectionOptions(**_options(args))
    _check_outputs(args, methods)
    progress = False if args.no_progress else None
    protect = (args.train, args.model)
    with execution_from_args(args).placement(), LabFile(args.train) as lab:
        truth = load_poison_truth(args.train)
        classifier = load_model(args.model, scale=args.scale, num_classes=args.num_classes, clean=lab)
        lab.check_classes(classifier.num_classes)
        _, execution_report = configure_execution(args, classifier, lab)
        inspection = inspect_training_set(classifier, lab, truth, methods, options, batch_size=args.batch_size,
                                          progress=progress)
        summary = _summary(args, classifier, inspection, execution_report)
        if args.write_clean:
            summary["clean"] = write_clean_set(args.write_clean, lab, inspection, args.clean_by,
                                               options.transform if args.transform else None, args.seed,
                                               overwrite=args.overwrite, where=f"{args.write_clean}: --write-clean")
        files = write_inspection_outputs(args.out, inspection, summary, args.max_plots, not args.no_plots, protect)
        if args.write_clean:
            files["clean"] = args.write_clean
    summary["files"] = files
    write_json(os.path.join(args.out, "inspect.json"), summary, protect=protect)
    if args.json:
        print_json(summary)
    else:
        print("\n".join(_lines(summary)))
    return 0


def _summary(args, classifier, inspection, execution_report):
    from goodnet.inspection import method_summary

    features = inspection.features
    summary = {"inputs": {"model": args.model, "train": args.train, "scale": classifier.scale,
                          "scale_report": getattr(classifier, "scale_report", ""), "samples": len(features),
                          "classes": int(len(features.groups()))},
               "features": {"layer": features.layer, "dimensions": features.dim,
                            "cache": getattr(args, "cache", None)},
               "methods": None, "timings_seconds": inspection.timings, "ground_truth": inspection.truth is not None}
    summary.update(method_summary(inspection))       # methods, union and (with a ground truth) truth
    summary.update(execution_report)
    return summary


def _figure(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


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
