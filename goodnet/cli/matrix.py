"""``goodnet matrix``: every attack's BadNet on the built-in benchmark against every defense.

    goodnet matrix --dataset digits|faces --out DIR [--attacks patch blend ...] [--defenses pruning strip ...]
                   [--scheduler tcp://host:port] [--workers N] [--quick] [--json]

Writes DIR/matrix.csv, matrix.json, matrix.md, matrix.html (self-contained) and the heatmaps
matrix_der.png and matrix_asr.png (defense x attack); DIR/cache keeps the benchmark, the BadNets and every
finished cell, keyed by their inputs, so a re-run computes only what changed. The flags, defaults and help
come from :class:`goodnet.matrix.MatrixOptions`; see :mod:`goodnet.matrix`.
"""

from goodnet.cli import CommandError, prepare_out_dir, print_json

HELP = "the attack x defense matrix: clean accuracy, ASR, detection, FRR and DER of every defense against every attack"


def add_arguments(parser):
    from goodnet.cli.options import add_options
    from goodnet.matrix import MatrixOptions

    add_options(parser, MatrixOptions)
    parser.add_argument("--json", action="store_true", help="print the result (matrix.json) as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")


def run(args):
    from goodnet.cli.options import check_options, options_from_args
    from goodnet.matrix import OUTPUT_NAMES, MatrixOptions, markdown, run_matrix

    options = check_options(options_from_args(args, MatrixOptions))
    if not options.out_dir:
        raise CommandError("--out: expected a results folder, got none")
    prepare_out_dir(args, OUTPUT_NAMES)
    result = run_matrix(options, progress=False if args.no_progress else True)
    if args.json:
        print_json(result)
    else:
        print(markdown(result), end="")
        print(f"Written to {options.out_dir}: {', '.join(OUTPUT_NAMES)}")
    failed = [cell for cell in result["cells"] if cell["status"] not in ("ok", "n/a")]
    return 1 if failed and len(failed) == len(result["cells"]) else 0
