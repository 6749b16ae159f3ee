"""The ``goodnet`` command line: one module per subcommand under ``goodnet.cli``.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Errors that a user can fix (bad files, bad options:
:class:`goodnet.errors.InputError` and operating-system errors on a named
path) are printed as one line on stderr with exit code 2, never as a
traceback. Any other exception is a bug in goodnet: the command says so and
prints the traceback (exit code 1).
"""

import argparse
import importlib
import json
import logging
import sys

# Subcommands in the order ``goodnet --help`` lists them; a module that is
# not present in this version is left out.
# A dash in a name is an underscore in its module's (inspect-data: goodnet.cli.inspect_data).
COMMANDS = ("demo", "eval", "prune", "strip", "cleanse", "repair", "combine", "fineprune", "synth", "attack", "train",
            "privacy-budget", "inspect-data", "robustness", "matrix", "detect", "grade", "export", "bench")

from goodnet.errors import InputError, OptionError
from goodnet.cli.options import positive_integer as positive  # argparse type: a positive integer
from goodnet.inference import quiet_tensorflow
from goodnet.models import DEFAULT_SCALE, SCALE_CHOICES

EXIT_USER_ERROR = 2
EXIT_BUG = 1
BUG_REPORT = "this is a bug in goodnet, not a problem with your input; please report it with the traceback below"


class CommandError(OptionError):
    """A user-facing error raised by a subcommand (printed as one line)."""


def user_error_message(error):
    """The one line to print for an error the user can fix, or None when ``error`` is a bug in goodnet.

    goodnet's own input errors (:class:`goodnet.errors.InputError`) are the
    user's to fix; so is an operating-system error about a named file (a
    missing input, a folder without write permission, a full disk). Anything
    else (a ``TypeError`` deep in goodnet, an ``OSError`` with no file) is a bug.
    """
    if isinstance(error, InputError):
        lines = str(error).strip().splitlines()
        return lines[0] if lines else type(error).__name__
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return None


def command_module(name):
    """The module of subcommand ``name`` (a dash in a command name is an underscore in its module's)."""
    return f"goodnet.cli.{name.replace('-', '_')}"


def available_commands():
    """Return ``{name: module}`` for the subcommands present in this install."""
    found = {}
    for name in COMMANDS:
        try:
            found[name] = importlib.import_module(command_module(name))
        except ModuleNotFoundError as error:
            if error.name != command_module(name):
                raise
    return found


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), without the usage block."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message.splitlines()[0] if message else 'bad arguments'} "
                                   f"(see {self.prog} --help)\n")


def build_parser(commands=None):
    """Build the ``goodnet`` argument parser with every available subcommand."""
    from goodnet import __version__

    commands = available_commands() if commands is None else commands
    parser = _Parser(prog="goodnet", description="Find and remove backdoors in neural networks.")
    parser.add_argument("--version", action="version", version=f"goodnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in commands.items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("-v", "--verbose", action="store_true", help="log progress details on stderr")
        module.add_arguments(sub)
        if "--overwrite" not in sub._option_string_actions:
            sub.add_argument("--overwrite", action="store_true",
                             help="replace files in the way that goodnet did not write (default: refuse)")
        sub.set_defaults(handler=module.run)
    return parser


def main(argv=None, prog_command=None):
    """Run the goodnet command line and return its exit code.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).
        prog_command: run this subcommand directly (used by the top-level
            ``eval.py``, ``prune.py`` and ``strip.py`` scripts).

    Returns:
        int: 0 on success, 2 for a user error, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if prog_command is not None:
        argv = [prog_command] + argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return EXIT_USER_ERROR
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="goodnet: %(levelname)s: %(message)s")
    # A subcommand module may set NEEDS_TENSORFLOW = False (e.g. grade, whose
    # parent process only schedules subprocesses) to skip the slow import.
    if getattr(sys.modules.get(args.handler.__module__), "NEEDS_TENSORFLOW", True):
        quiet_tensorflow()
    from goodnet.files import overwriting

    try:
        with overwriting(args.overwrite):
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("goodnet: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            import traceback

            print(f"goodnet {args.command}: internal error: {type(error).__name__}: {error}; {BUG_REPORT}",
                  file=sys.stderr)
            traceback.print_exc()
            return EXIT_BUG
        if args.verbose:
            logging.exception("details")
        print(f"goodnet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def run_command(name, args):
    """Run subcommand ``name`` on ``args`` parsed by another command (``goodnet repair --repaired`` runs ``combine``).

    ``args`` must hold every option the subcommand reads; command modules
    delegate through here instead of importing each other.
    """
    return importlib.import_module(command_module(name)).run(args)


def prepare_out_dir(args, names=()):
    """Check before any work that ``--out`` is a folder goodnet can write and ``names`` in it are replaceable."""
    from goodnet.files import prepare_output_dir

    return prepare_output_dir(args.out, "--out", names)


def prepare_out_file(path, option="--out"):
    """Check before any work that the output file ``path`` (named by ``option``) can be written."""
    from goodnet.files import prepare_output_file

    return prepare_output_file(path, option)


def print_json(payload):
    """Print one JSON object on stdout (the ``--json`` output)."""
    from goodnet.files import json_default

    print(json.dumps(payload, indent=2, sort_keys=False, default=json_default))


def load_inputs(args):
    """(classifier, clean LabData, poisoned LabData list) from ``--model``, ``--valid``, ``--poisoned-valid``,
    ``--scale`` and ``--num-classes`` (every data set checked against the model's classes)."""
    from goodnet.data import load_h5
    from goodnet.models import load_model

    clean = load_h5(args.valid)
    poisoned = [load_h5(path) for path in args.poisoned_valid]
    classifier = load_model(args.model, scale=args.scale, num_classes=args.num_classes, clean=clean)
    for data in [clean] + poisoned:
        data.check_classes(classifier.num_classes)
    return classifier, clean, poisoned


def add_combine_options(parser):
    """The combine form's own options (``goodnet combine``, ``goodnet repair --repaired``): ``--repaired-scale``
    and the STRIP gate group with ``--strip``, returned for the command to add STRIP's flags to."""
    parser.add_argument("--repaired-scale", choices=SCALE_CHOICES, default=DEFAULT_SCALE,
                        help="input scaling of B' (default: stored in the file, else chosen on --valid, else B's)")
    group = parser.add_argument_group("STRIP gate (--strip)")
    group.add_argument("--strip", action="store_true", help="also answer N for inputs STRIP flags as trojaned")
    return group


def add_gate_options(parser, group, badexpert, either, badexpert_group, either_group):
    """The gate flags of the combine form (``goodnet combine``, ``goodnet repair``): ``--gate-detector`` into the
    STRIP gate ``group`` (given without ``--strip`` it is an error, so it stays unset by default), and the
    BaDExpert and both gates' flags from ``badexpert`` and ``either`` (their option dataclasses or the
    command's instances of them), without the calibration fields, which are STRIP's flags."""
    from goodnet.calibration import CALIBRATION_FIELDS
    from goodnet.cli.options import add_options
    from goodnet.defenses.combine import GateOptions

    add_options(group, GateOptions, unset=True)
    add_options(parser, badexpert, exclude=CALIBRATION_FIELDS, group=badexpert_group)
    add_options(parser, either, group=either_group)


def add_model_options(parser, scale_default=DEFAULT_SCALE):
    """Options shared by commands that load a model: ``--scale``, ``--num-classes``, ``--batch-size``."""
    from goodnet.inference import DEFAULT_BATCH

    parser.add_argument("--scale", choices=SCALE_CHOICES, default=scale_default,
                        help="input scaling: raw 0-255 pixels, unit = pixels/255, or auto (try both on clean data)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number N of real classes (default: from the model; 1284 outputs mean 1283 + 'poisoned')")
    parser.add_argument("--batch-size", type=positive, default=DEFAULT_BATCH,
                        help=f"images per inference call (default {DEFAULT_BATCH})")
    add_execution_options(parser)


def add_execution_options(parser):
    """Options saying where inference runs: ``--device``, ``--devices``, ``--strategy``, ``--precision``, ``--xla``.

    Their defaults, choices and help come from :class:`goodnet.inference.Execution`'s fields
    (``--devices`` and ``--strategy`` together spell its ``devices``) and :data:`goodnet.inference.STRATEGIES`.
    """
    import dataclasses

    from goodnet.cli.options import add_options
    from goodnet.inference import DEFAULT_STRATEGY, STRATEGIES, Execution

    devices = {field.name: field for field in dataclasses.fields(Execution)}["devices"]
    group = parser.add_argument_group("execution")
    add_options(group, Execution, only=("device",))
    group.add_argument("--devices", type=positive, default=devices.default, help=devices.metadata["help"])
    group.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY,
                       help="mirrored: split every batch across all visible devices of the chosen kind")
    add_options(group, Execution, only=("precision", "jit_compile"))


def execution_from_args(args):
    """The :class:`goodnet.inference.Execution` that the execution options describe."""
    from goodnet.inference import Execution

    return Execution.from_settings(args.strategy, device=args.device, devices=args.devices, precision=args.precision,
                                   jit_compile=args.xla)


def configure_execution(args, classifier, clean=None):
    """Configure ``classifier`` as the execution options say and measure a mixed precision's effect.

    Args:
        args: parsed arguments holding the execution options.
        classifier: the :class:`goodnet.models.Classifier` whose inference they govern.
        clean: clean data (LabData or open LabFile) for the precision measurement.

    Returns:
        tuple: (the :class:`goodnet.inference.Execution`, report dict with
        ``execution`` (where it ran) and, for a mixed precision,
        ``precision_report`` (top-1 agreement with float32 on a clean sample,
        see :func:`goodnet.inference.precision_agreement`)).
    """
    from goodnet.inference import PRECISION_SAMPLE, precision_agreement

    execution = execution_from_args(args)
    classifier.configure(execution)
    report = {"execution": execution.describe()}
    if execution.precision != "float32":
        if clean is None:
            raise CommandError(f"--precision {execution.precision}: expected clean data to measure its effect "
                               "on predictions (it is never on unmeasured)")
        report["precision_report"] = precision_agreement(classifier.model, classifier.divisor,
                                                         clean.sample(PRECISION_SAMPLE).images, execution.precision,
                                                         execution=execution)
    return execution, report


def execution_lines(report):
    """Text lines for the ``execution`` and ``precision_report`` entries of a report."""
    lines = [f"Execution: {report['execution']}"] if report.get("execution") else []
    precision = report.get("precision_report")
    if precision:
        lines.append(f"Precision {precision['precision']}: top-1 agreement with float32 on {precision['images']} "
                     f"clean images {precision['top1_agreement'] * 100}%, largest score difference "
                     f"{precision['max_abs_score_difference']:.2e}")
    return lines
