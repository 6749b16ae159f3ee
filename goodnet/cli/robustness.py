"""``goodnet robustness``: how much of a backdoor survives blur, rotation, brightness, JPEG and noise.

    goodnet robustness MODEL --poisoned BD.h5 [BD2.h5 ...] --target T [--valid CLEAN.h5] [--out DIR] [--json]
                       [--transforms blur rotation ...] [--blur 0 1 2] [--rotation 0 10] [--brightness -0.2 0 0.2]
                       [--brightness-mode multiply|add] [--jpeg 100 50 10] [--jpeg-subsampling 4:4:4|4:2:0]
                       [--noise 0 8 16] [--seed S]

Prints the table (transform x strength -> ASR % per poisoned file, clean
accuracy % and the clean images sent to the target with --valid) and each
file's robustness score (see :mod:`goodnet.robustness`); ``--json`` prints the
result as one JSON object instead. With ``--out DIR``: robustness.json,
robustness.md, robustness.csv and robustness.png there. The files are read
chunk by chunk. The transformation flags, defaults and help come from
:class:`goodnet.robustness.RobustnessOptions`.
"""

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, prepare_out_dir,
                         print_json)

HELP = "trigger robustness: the attack success rate under blur, rotation, brightness, JPEG and noise"


def add_arguments(parser):
    from goodnet.cli.options import add_options
    from goodnet.robustness import RobustnessOptions

    parser.add_argument("model", metavar="MODEL", help="the model (the BadNet), .h5 or .keras")
    parser.add_argument("--poisoned", nargs="+", action="extend", required=True, metavar="BD.h5",
                        help="poisoned file(s): images with the trigger")
    parser.add_argument("--target", type=int, required=True, metavar="T", help="the attack's target class")
    parser.add_argument("--valid", metavar="CLEAN.h5", default=None,
                        help="clean file: clean accuracy under each transformation (default: none)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="folder for robustness.json, .md, .csv and .png (default: none written)")
    add_options(parser, RobustnessOptions, group="transformations")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def run(args):
    import contextlib

    from goodnet.cli.options import check_options, options_from_args
    from goodnet.data import LabFile
    from goodnet.models import load_model
    from goodnet.robustness import OUTPUT_NAMES, RobustnessOptions, check_target, measure_robustness, text_lines
    from goodnet.robustness import check_poisoned_labels, write_outputs

    options = check_options(options_from_args(args, RobustnessOptions)).check(flags=True)
    if args.target < 0:
        raise CommandError(f"--target: expected a class >= 0, got {args.target}")
    if args.out is not None:
        prepare_out_dir(args, OUTPUT_NAMES)
    with execution_from_args(args).placement(), contextlib.ExitStack() as stack:
        # every file validated up front, then streamed chunk by chunk: memory stays bounded
        poisoned = [stack.enter_context(LabFile(path)) for path in args.poisoned]
        clean = stack.enter_context(LabFile(args.valid)) if args.valid else None
        classifier = load_model(args.model, scale=args.scale, num_classes=args.num_classes, clean=clean)
        check_target(args.target, classifier.num_classes, "--target")
        for lab in poisoned + ([clean] if clean is not None else []):
            lab.check_classes(classifier.num_classes)
        for lab in poisoned:
            check_poisoned_labels(lab, args.target, "--target")
        _, execution_report = configure_execution(args, classifier, clean)
        result = measure_robustness(classifier, poisoned, args.target, clean, options, batch_size=args.batch_size,
                                    progress=False if args.no_progress else None)
    result.update(execution_report)
    if args.out is not None:
        write_outputs(result, args.out)   # robustness.json is what --json prints
    if args.json:
        print_json(result)
    else:
        lines = text_lines(result)
        if args.out is not None:
            lines.append(f"Written to {args.out}: {', '.join(OUTPUT_NAMES)}")
        print("\n".join(lines))
    return 0
