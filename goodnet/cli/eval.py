"""``goodnet eval`` / ``python eval.py``: score a model the way the lab's eval.py does.

Two forms:

- ``eval.py CLEAN.h5 [POISONED.h5 ...] MODEL`` prints the lab's two lines
  (``Clean Classification accuracy: <percent>`` and ``Attack Success Rate:
  <percent>``), one ASR line per further poisoned file, then detection rate
  and false rejection rate for models that can answer N ("poisoned").
- ``eval.py MODEL IMAGE.png`` prints one class in [0, N] (the CSAW
  competition interface).
"""

import os

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         print_json)

HELP = "evaluate a model: clean accuracy, attack success rate, detection and false rejection rates"


def add_arguments(parser):
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="CLEAN.h5 [POISONED.h5 ...] MODEL, or MODEL IMAGE")
    add_model_options(parser)
    parser.add_argument("--resize", action="store_true", help="resize an image of another size to 55x47")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _image_mode(args):
    from goodnet.data import load_image
    from goodnet.models import load_model

    model_path, image_path = args.files
    image = load_image(image_path, resize=args.resize)
    classifier = load_model(model_path, scale=args.scale, num_classes=args.num_classes)
    classifier.configure(execution_from_args(args))
    scores = classifier.predict_proba(image[None])[0]
    predicted = int(scores.argmax())
    if args.json:
        print_json({"model": model_path, "image": image_path, "class": predicted,
                    "confidence": float(scores[predicted]), "scale": classifier.scale,
                    "poisoned": classifier.flags_poisoned and predicted == classifier.num_classes})
    else:
        print(predicted)
    return 0


def lab_lines(figures):
    """The text report: the lab's two lines first, then the other figures (percentages)."""
    lines = []
    if "clean_accuracy" in figures:
        lines.append(f"Clean Classification accuracy: {figures['clean_accuracy'] * 100}")
    poisoned = figures.get("poisoned", [])
    for entry in poisoned:
        suffix = "" if len(poisoned) == 1 else f" ({os.path.basename(entry['file'])})"
        lines.append(f"Attack Success Rate{suffix}: {entry['attack_success_rate'] * 100}")
    if figures.get("flags_poisoned"):
        for entry in poisoned:
            suffix = "" if len(poisoned) == 1 else f" ({os.path.basename(entry['file'])})"
            lines.append(f"Detection Rate{suffix}: {entry['detection_rate'] * 100}")
        if "false_rejection_rate" in figures:
            lines.append(f"False Rejection Rate: {figures['false_rejection_rate'] * 100}")
    return lines + execution_lines({"precision_report": figures.get("precision_report")})


def _file_mode(args):
    import contextlib

    from goodnet.data import LabFile
    from goodnet.metrics import evaluate_files
    from goodnet.models import load_model

    *data_paths, model_path = args.files
    if os.path.splitext(model_path)[1].lower() not in (".h5", ".keras", ".hdf5"):
        raise CommandError(f"{model_path}: expected the model file (.h5 or .keras) last: "
                           "eval.py CLEAN.h5 [POISONED.h5 ...] MODEL")
    with contextlib.ExitStack() as stack:
        # Files are validated up front and streamed batch by batch: memory stays bounded.
        clean, *poisoned = [stack.enter_context(LabFile(path)) for path in data_paths]
        classifier = load_model(model_path, scale=args.scale, num_classes=args.num_classes, clean=clean)
        for lab in [clean] + poisoned:
            lab.check_classes(classifier.num_classes)
        _, execution_report = configure_execution(args, classifier, clean)
        progress = False if args.no_progress else None
        figures = evaluate_files(classifier, clean, poisoned, batch_size=args.batch_size, progress=progress)
        figures.update(execution_report)
    figures["scale_report"] = classifier.scale_report
    if args.json:
        print_json(figures)
    else:
        print("\n".join(lab_lines(figures)))
    return 0


def run(args):
    from goodnet.data import is_image_file

    if len(args.files) < 2:
        raise CommandError("expected CLEAN.h5 [POISONED.h5 ...] MODEL, or MODEL IMAGE")
    with execution_from_args(args).placement():   # loading and the --scale auto choice too
        if len(args.files) == 2 and is_image_file(args.files[1]):
            return _image_mode(args)
        return _file_mode(args)
