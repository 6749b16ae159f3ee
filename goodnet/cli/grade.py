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
"""

import os

from goodnet.cli import CommandError, add_execution_options, execution_from_args, positive, prepare_out_dir, print_json

# The parent only schedules isolated subprocesses; it never imports TensorFlow.
NEEDS_TENSORFLOW = False

HELP = "score a folder of submitted models in isolated processes and write a scoreboard"


def _positive_float(value):
    import argparse

    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return number


def add_arguments(parser):
    parser.add_argument("submissions", metavar="SUBMISSIONS", help="folder of submitted model files")
    parser.add_argument("--clean", required=True, metavar="TEST.h5", help="clean test data (lab layout)")
    parser.add_argument("--poisoned", required=True, action="append", metavar="BD_TEST.h5",
                        help="poisoned test data, labels = attack target (repeat for several files)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the scoreboard and the cache")
    parser.add_argument("--baseline", metavar="MODEL",
                        help="the BadNet before defense; the score is then BackdoorBench's DER against it")
    parser.add_argument("--validation", metavar="VALID.h5",
                        help="clean data used only to pick the input scaling of models that do not store it")
    parser.add_argument("--scale", choices=("auto", "raw", "unit"), default="auto",
                        help="input scaling of every model (auto: stored in the file, else chosen on "
                             "--validation, else raw)")
    parser.add_argument("--num-classes", type=positive, default=None,
                        help="number N of real classes; models need N or N+1 outputs (default 1283, the lab's)")
    parser.add_argument("--workers", type=positive, default=2, help="submissions scored in parallel (default 2)")
    parser.add_argument("--time-limit", type=_positive_float, default=600.0, metavar="SECONDS",
                        help="wall-time limit per submission (default 600)")
    parser.add_argument("--memory-mb", type=positive, default=4096,
                        help="memory limit per submission in MiB (default 4096)")
    parser.add_argument("--batch-size", type=positive, default=256, help="images per inference call (default 256)")
    parser.add_argument("--threads", type=positive, default=None,
                        help="TensorFlow threads per submission (default: cores / workers)")
    parser.add_argument("--isolation", choices=("forkserver", "spawn"), default="forkserver",
                        help="forkserver: fork each submission's process from a server that preloaded "
                             "TensorFlow (fast); spawn: a fresh interpreter per submission")
    add_execution_options(parser)
    parser.add_argument("--no-cache", action="store_true", help="score every file again, ignoring the cache")
    parser.add_argument("--json", action="store_true", help="print the scoreboard as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def run(args):
    from goodnet.grading import STATUSES, Grader, Limits
    from goodnet.models import LAB_CLASSES

    for path in [args.clean, *args.poisoned] + [path for path in (args.validation, args.baseline) if path]:
        if not os.path.isfile(path):
            raise CommandError(f"{path}: file not found")
    if not os.path.isdir(args.submissions):
        raise CommandError(f"{args.submissions}: expected a folder of submitted model files")
    prepare_out_dir(args)
    grader = Grader(args.clean, args.poisoned, validation=args.validation, baseline=args.baseline,
                    scale=args.scale, num_classes=args.num_classes or LAB_CLASSES,
                    limits=Limits(seconds=args.time_limit, memory_mb=args.memory_mb), workers=args.workers,
                    isolation=args.isolation, batch_size=args.batch_size, threads=args.threads,
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
