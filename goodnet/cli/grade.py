"""``goodnet grade``: score a folder of submitted models safely and write a scoreboard.

Example::

    goodnet grade submissions/ --clean data/test.h5 --poisoned data/bd_test.h5 \\
        --baseline models/bd_net.h5 --validation data/valid.h5 --out grades/

Each model file (``.h5``, ``.hdf5``, ``.keras`` directly in the folder) is
scored in its own process under ``--time-limit`` and ``--memory-mb``, with
Keras safe mode on; refused, broken, too slow or too large submissions are
reported in the scoreboard with their reason. ``DIR`` receives
``scoreboard.csv``, ``.json``, ``.md`` and ``.html`` and a ``cache/`` of
results keyed by the SHA-256 of each file and of the data, so a re-run only
scores new or changed files. See :mod:`goodnet.grading.scoreboard` for the score.
The execution options (``--device``, ``--devices``/``--strategy``,
``--precision``, ``--xla``) are handed to every submission's process.
With ``--scheduler tcp://host:port`` every submission is one job on that Dask
cluster, scored there in its own process under the same limits (see
:func:`goodnet.grading.runner.run_jobs_on_cluster`); this process writes the
cache and the scoreboard. The data files and the submissions must be on
storage the workers share, under the same paths; ``--out`` need not be.
The limits' and the scheduling's flags, defaults and help come from
:class:`goodnet.grading.runner.Limits` and :class:`goodnet.grading.runner.GradeOptions`.
"""

import os

from goodnet.cli import CommandError, add_execution_options, execution_from_args, positive, prepare_out_dir, print_json
from goodnet.cli.options import add_options, options_from_args

# The parent only schedules isolated subprocesses; it never imports TensorFlow.
NEEDS_TENSORFLOW = False

HELP = "score a folder of submitted models in isolated processes and write a scoreboard"


def add_arguments(parser):
    from goodnet.grading.runner import GradeOptions, Limits
    from goodnet.models import LAB_CLASSES

    parser.add_argument("submissions", metavar="SUBMISSIONS", help="folder of submitted model files")
    parser.add_argument("--clean", required=True, metavar="TEST.h5", help="clean test data (lab layout)")
    parser.add_argument("--poisoned", required=True, action="append", metavar="BD_TEST.h5",
                        help="poisoned test data, labels = attack target (repeat for several files)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the scoreboard and the cache")
    parser.add_argument("--baseline", metavar="MODEL",
                        help="the BadNet before defense; the score is then BackdoorBench's DER against it")
    parser.add_argument("--validation", metavar="VALID.h5",
                        help="clean data used only to pick the input scaling of models that do not store it")
    add_options(parser, GradeOptions, only=("scale",))
    parser.add_argument("--num-classes", type=positive, default=None,
                        help=f"number N of real classes; models need N or N+1 outputs "
                             f"(default {LAB_CLASSES}, the lab's)")
    add_options(parser, GradeOptions, only=("workers",))
    add_options(parser, Limits)
    add_options(parser, GradeOptions, exclude=("scale", "workers"))
    add_execution_options(parser)
    parser.add_argument("--no-cache", action="store_true", help="score every file again, ignoring the cache")
    parser.add_argument("--json", action="store_true", help="print the scoreboard as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def run(args):
    import dataclasses

    from goodnet.grading import STATUSES, Grader, Limits
    from goodnet.grading.runner import GradeOptions
    from goodnet.models import LAB_CLASSES

    for path in [args.clean, *args.poisoned] + [path for path in (args.validation, args.baseline) if path]:
        if not os.path.isfile(path):
            raise CommandError(f"{path}: file not found")
    if not os.path.isdir(args.submissions):
        raise CommandError(f"{args.submissions}: expected a folder of submitted model files")
    prepare_out_dir(args)
    grader = Grader(args.clean, args.poisoned, validation=args.validation, baseline=args.baseline,
                    num_classes=args.num_classes or LAB_CLASSES, limits=options_from_args(args, Limits),
                    **dataclasses.asdict(options_from_args(args, GradeOptions)),
                    use_cache=not args.no_cache, progress=False if args.no_progress else None,
                    execution=execution_from_args(args))
    board = grader.grade(args.submissions, args.out)
    if args.json:
        print_json(dict(board.to_json(), files=board.paths))
        return 0
    print(board.to_markdown(), end="")
    executions = sorted({row["execution"] for row in board.rows if row.get("execution")})
    if executions:
        print(f"\nExecution: {'; '.join(executions)}")
    if args.precision != "float32":
        agreement = ", ".join(f"{row['submission']} {row['precision_report']['top1_agreement'] * 100:.2f}%"
                              for row in board.rows if row.get("precision_report"))
        print(f"Precision {args.precision}: top-1 agreement with float32 on a clean sample: {agreement}")
    # Every row counts, the entries refused before any worker included.
    failed = [row["status"] for row in board.rows if row["status"] != "ok"]
    why = ", ".join(f"{failed.count(status)} {status}" for status in STATUSES if status in failed)
    cached = sum(bool(row["cached"]) for row in board.rows)
    print(f"\n{len(board.rows)} submissions: {len(board.rows) - len(failed)} scored, {len(failed)} failed"
          + (f" ({why})" if why else "") + f", {cached} from the cache; score: {board.score_name}")
    print("written: " + ", ".join(board.paths[kind] for kind in ("csv", "json", "md", "html")))
    return 0
