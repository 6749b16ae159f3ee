"""``goodnet prune`` / ``python prune.py``: the lab's pruning defense.

    prune.py --model M --valid V [--poisoned-valid BV ...] --out DIR
             [--layer conv_3] [--drops 2 4 10] [--policy first-reached|last-within]

Ranks the channels of ``--layer`` by mean clean activation (measured at the
pooling layer after it), prunes them in increasing order, records clean
accuracy and the ASR of every poisoned validation file after each channel,
and writes ``DIR/model_X=<X>.h5``, ``DIR/prune_curve.{csv,json,png}``.
The execution options (``--device``, ``--devices``, ``--precision``, ``--xla``)
govern the sweep as :class:`goodnet.defenses.pruning.PruningDefense` documents.
"""

import dataclasses
import os

from goodnet.cli import (CommandError, add_model_options, configure_execution, execution_from_args, execution_lines,
                         load_inputs, prepare_out_dir, print_json)
from goodnet.cli.options import add_options, options_from_args
from goodnet.defenses.pruning import PruneOptions

HELP = "pruning defense: prune the dormant channels of a convolution, save models at X points of accuracy lost"


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="M", help="the BadNet (.h5 or .keras)")
    parser.add_argument("--valid", required=True, metavar="V", help="clean validation data (lab .h5 layout)")
    parser.add_argument("--poisoned-valid", nargs="*", default=[], metavar="BV",
                        help="poisoned validation files (labels = attack target), any number")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_options(parser, PruneOptions)
    parser.add_argument("--format", choices=(".h5", ".keras"), default=".h5", help="saved model format (default .h5)")
    add_model_options(parser)
    parser.add_argument("--goodnet", action="store_true",
                        help="also write goodnet_X=<X>.h5 beside each model_X: answers N+1 where the pruned model "
                             "and the BadNet disagree")
    parser.add_argument("--no-plot", action="store_true", help="do not write prune_curve.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _drops(values):
    drops = []
    for value in values:
        if not value > 0:
            raise CommandError(f"--drops: expected accuracy drops above 0 points, got {value:g}")
        drops.append(int(value) if float(value).is_integer() else float(value))
    if len(set(drops)) != len(drops):
        raise CommandError("--drops: expected distinct values")
    return tuple(drops)


def table_lines(summary):
    """The short stdout table: baseline, every 5th step and the selected steps."""
    curve = summary["curve"]
    names = summary["poisoned_files"]
    selected = {step: drop for drop, step in summary["selected"].items() if step is not None}
    header = f"{'step':>4} {'channel':>7} {'pruned':>7} {'clean acc':>9}" + "".join(f" {'ASR ' + name:>14}" for name in names)
    lines = [f"{summary['model']}: {summary['layer']} measured at {summary['measured_at']}, "
             f"method {summary['method']}", header]
    last = len(curve) - 1
    for row in curve:
        step = row["step"]
        if step % 5 and step not in selected and step != last:
            continue
        text = (f"{step:>4} {row['channel']:>7} {row['fraction_pruned'] * 100:>6.1f}% "
                f"{row['clean_accuracy'] * 100:>8.3f}%")
        text += "".join(f" {row[f'attack_success_rate[{name}]'] * 100:>13.3f}%" for name in names)
        if step in selected:
            text += f"  <- model_X={selected[step]}"
        lines.append(text)
    for drop, step in summary["selected"].items():
        path = summary["models"].get(drop)
        lines.append(f"X={drop}: " + (f"step {step} -> {path}" if path else "accuracy never dropped that far; not saved"))
    return lines


def goodnet_filename(drop, extension=".h5"):
    """``goodnet_X=2.h5``: the GoodNet written beside ``model_X=2.h5``."""
    from goodnet.reports import pruned_model_filename

    return pruned_model_filename(drop, extension).replace("model_", "goodnet_", 1)


def write_goodnets(classifier, defense, out_dir, extension=".h5", protect=()):
    """Write ``goodnet_X=<X>.h5`` (BadNet + pruned model, N+1 where they disagree) for every selected X."""
    from goodnet.defenses.combine import build_goodnet
    from goodnet.models import save_model
    paths = {}
    for drop, pruned in defense.selected_classifiers().items():
        name = goodnet_filename(drop, extension)
        paths[str(drop)] = save_model(build_goodnet(classifier, pruned), os.path.join(out_dir, name), protect=protect)
    return paths


def run(args):
    from goodnet.defenses.pruning import run_pruning_defense
    from goodnet.reports import prune_output_names

    drops = _drops(args.drops)
    options = options_from_args(args, PruneOptions, drops=drops)
    goodnets = [goodnet_filename(drop, args.format) for drop in drops] if args.goodnet else []
    prepare_out_dir(args, prune_output_names(drops, args.format) + goodnets)
    with execution_from_args(args).placement():
        classifier, clean, poisoned = load_inputs(args)
        _, execution_report = configure_execution(args, classifier, clean)
        result = run_pruning_defense(classifier, clean, poisoned, args.out, **dataclasses.asdict(options),
                                     batch_size=args.batch_size, progress=False if args.no_progress else None,
                                     protect=[args.model, args.valid, *args.poisoned_valid],
                                     plot=not args.no_plot, extension=args.format)
        summary = result["summary"]
        summary.update(execution_report)
        if args.goodnet:
            summary["goodnets"] = write_goodnets(classifier, result["defense"], args.out, args.format,
                                                 protect=[args.model, args.valid, *args.poisoned_valid])
    if args.json:
        print_json(summary)
    else:
        print("\n".join(table_lines(summary) + execution_lines(summary)))
        for drop, path in summary.get("goodnets", {}).items():
            print(f"GoodNet X={drop}: {path}")
    return 0
