"""``goodnet cleanse``: Neural Cleanse on a model: is it backdoored, which class is the target, what is the trigger?

    goodnet cleanse MODEL --valid CLEAN.h5 [--images DIR] [--classes C ...] --out DIR [--json]

Reverse-engineers the smallest trigger (mask and pattern) that sends the clean
images to each candidate class, computes the MAD anomaly index of the masks'
L1 norms and flags the classes whose norm is abnormally small (see
:mod:`goodnet.defenses.neural_cleanse`). Clean images come from a lab-layout
file (``--valid``), a folder of PNG/JPEG images (``--images``), or both; their
labels are not used. Writes ``cleanse.json`` (per class: norm, anomaly index,
reversed-trigger success; the flagged classes and the verdict), ``norms.png``,
``triggers.png`` and ``report.md`` in ``--out``.
"""

import dataclasses
import os

from goodnet.cli import CommandError, add_model_options, execution_from_args, positive, prepare_out_dir, print_json

HELP = "Neural Cleanse: reverse-engineer a trigger per class and flag the backdoor's target (MAD anomaly index)"


def add_arguments(parser):
    from goodnet.cli.options import add_options
    from goodnet.defenses.neural_cleanse import CleanseOptions

    parser.add_argument("model", metavar="MODEL", help="the model to examine (.h5 or .keras)")
    parser.add_argument("--valid", metavar="CLEAN.h5", help="clean images: a lab-layout .h5 file (labels unused)")
    parser.add_argument("--images", metavar="DIR", help="clean images: a folder of PNG/JPEG images")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: cleanse.json, report.md, norms.png, triggers.png")
    add_options(parser, CleanseOptions, group="Neural Cleanse")
    parser.add_argument("--show", type=positive, default=6,
                        help="most suspicious classes drawn in triggers.png (default 6)")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _check_execution(args):
    """Neural Cleanse optimises on one device in float32: refuse the execution options it cannot honour."""
    if args.devices not in (None, 1) or args.strategy != "default":
        raise CommandError("--devices/--strategy: Neural Cleanse runs on one device (its classes are batched "
                           "in one call instead)")
    if args.precision != "float32":
        raise CommandError(f"--precision {args.precision}: Neural Cleanse optimises in float32 only")


def model_input_shape(path):
    """(height, width, channels) a model file's input takes, read from its config without building it.

    Weights-only files hold the lab's DeepID (55, 47, 3); so does any config
    whose input shape cannot be read (loading the model checks it anyway).
    """
    from goodnet.data import IMAGE_SHAPE
    from goodnet.models import read_model_config

    def find(node):
        if isinstance(node, dict):
            for key in ("batch_shape", "batch_input_shape"):
                shape = node.get(key)
                if isinstance(shape, (list, tuple)) and len(shape) == 4 and all(
                        isinstance(size, int) for size in shape[1:]):
                    return tuple(shape[1:])
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            return None
        for child in children:
            found = find(child)
            if found:
                return found
        return None

    return find(read_model_config(path)) or IMAGE_SHAPE


def _clean_images(args, image_shape):
    """(raw-pixel images, LabData or None, paths) from ``--valid`` and ``--images``."""
    import numpy as np

    from goodnet.data import is_image_file, load_h5, load_image

    if not args.valid and not args.images:
        raise CommandError("expected clean images: --valid CLEAN.h5, --images DIR, or both")
    parts, valid, paths = [], None, []
    if args.valid:
        valid = load_h5(args.valid, image_shape=image_shape)
        parts.append(valid.images)
        paths.append(args.valid)
    if args.images:
        if not os.path.isdir(args.images):
            raise CommandError(f"{args.images}: --images: expected a folder of PNG/JPEG images")
        names = sorted(name for name in os.listdir(args.images) if is_image_file(name))
        if not names:
            raise CommandError(f"{args.images}: --images: no PNG/JPEG images in this folder")
        parts.append(np.stack([load_image(os.path.join(args.images, name), image_shape=image_shape)
                               for name in names]))
        paths.append(args.images)
    images = np.concatenate(parts).astype(np.float32)
    if len(images) == 0:
        raise CommandError(f"{paths[0]}: expected at least one clean image")
    return images, valid, paths


def run(args):
    from goodnet.cli.options import check_options, options_from_args
    from goodnet.defenses.neural_cleanse import CleanseOptions, NeuralCleanse
    from goodnet.models import load_model
    from goodnet.reports import CLEANSE_OUTPUTS, input_paths, write_cleanse_outputs

    execution = execution_from_args(args)
    _check_execution(args)
    prepare_out_dir(args, CLEANSE_OUTPUTS)
    options = options_from_args(args, CleanseOptions)
    if options.classes is not None:
        options = dataclasses.replace(options, classes=tuple(options.classes))
    check_options(options)   # every option against its rule, before any work
    with execution.placement():
        shape = model_input_shape(args.model)
        images, valid, paths = _clean_images(args, shape)
        classifier = load_model(args.model, scale=args.scale, num_classes=args.num_classes, clean=valid,
                                image_shape=shape)
        classifier.configure(execution)
        cleanse = NeuralCleanse.from_options(options, batch_size_eval=args.batch_size, jit_compile=args.xla,
                                             progress=False if args.no_progress else None)
        cleanse.fit(classifier, images)
        summary = cleanse.summary()
        summary["inputs"] = {"model": args.model, "clean": paths, "scale": classifier.scale,
                             "scale_report": getattr(classifier, "scale_report", "")}
        summary["execution"] = execution.describe()
        files = write_cleanse_outputs(summary, cleanse.trigger_rows(images[0], args.show), args.out,
                                      protect=input_paths(protect=[args.model] + paths))
    summary["files"] = files
    if args.json:
        print_json(summary)
    else:
        print("\n".join(_lines(summary)))
    return 0


def _lines(summary):
    rows = {row["class"]: row for row in summary["classes"]}
    lines = [f"{summary['inputs']['model']}: {summary['verdict']} ({len(rows)} classes, {summary['clean_images']} "
             f"clean images, median norm {summary['median']:.2f}, MAD {summary['mad']:.2f})"]
    for target in summary["flagged"]:
        row = rows[target]
        lines.append(f"flagged class {target}: norm {row['norm']:.2f}, anomaly index {row['anomaly_index']:.2f}, "
                     f"reversed-trigger success {row['attack_success'] * 100:.1f} %")
    suspects = ", ".join(f"{target} ({rows[target]['norm']:.1f})" for target in summary["suspects"][:5])
    lines.append(f"most suspicious (norm): {suspects}")
    lines.append(f"report: {summary['files']['report.md']}")
    return lines
