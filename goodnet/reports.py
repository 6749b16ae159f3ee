"""Every file a run writes: CSV tables, JSON summaries, Markdown reports and plots.

Defense modules compute; this module (and :mod:`goodnet.plots` for the
figures) writes. Every write goes through :func:`goodnet.files.write_text`
(temporary file, then rename; the umask's mode; only goodnet's own files
are replaced) and never replaces an input: pass the run's input files as
``protect`` (:func:`input_paths`).
"""

import csv
import io
import json
import os

from goodnet.files import json_default, write_text


def percent(value, digits=2, missing=""):
    """A rate in [0, 1] as a percentage string (``0.1234`` -> ``"12.34"``); ``missing`` for None."""
    return missing if value is None else f"{value * 100:.{digits}f}"


def csv_text(rows, columns=None):
    """CSV text of ``rows`` (dicts; header from ``columns`` or the first row's keys), one line per row."""
    rows = list(rows)
    columns = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def json_text(payload):
    """Indented JSON text with goodnet's conversions (NumPy numbers, paths), ending in a newline."""
    return json.dumps(payload, indent=2, default=json_default) + "\n"


def write_csv(path, rows, columns=None, protect=()):
    """Write ``rows`` as CSV to ``path`` (see :func:`csv_text`)."""
    write_text(path, csv_text(rows, columns), protect=protect)


def write_json(path, payload, protect=()):
    """Write ``payload`` as indented JSON to ``path``."""
    write_text(path, json_text(payload), protect=protect)


def dataset_name(data, index):
    """How reports name poisoned data set ``index``: its file name, or ``poisoned_<index>`` when it has none."""
    path = getattr(data, "path", "") or ""
    return os.path.basename(os.fspath(path)) if path else f"poisoned_{index}"


def dataset_names(datasets):
    """Report names of poisoned data sets: file names, or whole paths when two file names clash."""
    names = [dataset_name(data, index) for index, data in enumerate(datasets)]
    if len(set(names)) != len(names):
        names = [os.fspath(data.path) if getattr(data, "path", "") else name for data, name in zip(datasets, names)]
    return names


def input_paths(*datasets, protect=()):
    """The files a run read (data sets' and classifiers' ``path``), which its outputs must never replace."""
    paths = list(protect)
    for data in datasets:
        if data is None:
            continue
        path = getattr(data, "path", "")
        if path:
            paths.append(os.fspath(path))
    return tuple(paths)


# -- the pruning defense (goodnet prune, the demo) ---------------------------------------------------------------

PRUNE_FILES = {"csv": "prune_curve.csv", "json": "prune_curve.json", "png": "prune_curve.png"}


def pruned_model_filename(drop, extension=".h5"):
    """``model_X=2.h5`` for drop 2 (integers without a decimal point)."""
    text = f"{drop:g}" if isinstance(drop, float) else str(drop)
    return f"model_X={text}{extension}"


def prune_output_names(drops, extension=".h5"):
    """Every file name :func:`write_prune_outputs` may write for these drops."""
    return [pruned_model_filename(drop, extension) for drop in drops] + list(PRUNE_FILES.values())


def write_prune_outputs(defense, out_dir, protect=(), plot=True, extension=".h5"):
    """Write a fitted pruning sweep's files into ``out_dir`` (created).

    ``model_X=<X>.h5`` for every selected X (a warning for an X never
    reached), ``prune_curve.csv`` (one row per step), ``prune_curve.png``
    (unless ``plot`` is False) and ``prune_curve.json`` (the defense's
    summary plus ``models`` and ``files``).

    Args:
        defense: a fitted :class:`goodnet.defenses.pruning.PruningDefense`.
        out_dir: the output folder.
        protect: input paths never to overwrite (:func:`input_paths`).
        plot: write the PNG.
        extension: ".h5" (legacy, opens in plain Keras) or ".keras".

    Returns:
        dict: ``summary`` (what ``prune_curve.json`` holds) and ``models`` ({X: path}).
    """
    import logging

    from goodnet.models import save_model

    os.makedirs(out_dir, exist_ok=True)
    models = {}
    for drop, step in defense.selected_.items():
        if step is None:
            logging.getLogger(__name__).warning(
                "accuracy never dropped by %s points: no %s", drop, pruned_model_filename(drop, extension))
            continue
        path = os.path.join(out_dir, pruned_model_filename(drop, extension))
        save_model(defense.pruned_classifier(step), path, protect=protect)
        models[drop] = path
    summary = defense.summary()
    files = {kind: os.path.join(out_dir, PRUNE_FILES[kind]) for kind in ("csv", "json")}
    write_csv(files["csv"], defense.curve_.rows(), protect=protect)
    if plot:
        from goodnet.plots import plot_prune_curve

        name = os.path.basename(defense.classifier_.path) or "model"
        files["png"] = plot_prune_curve(defense.curve_, defense.selected_, os.path.join(out_dir, PRUNE_FILES["png"]),
                                        title=f"pruning {defense.layer} of {name}")
    summary["models"] = {str(drop): path for drop, path in models.items()}
    summary["files"] = dict(files)
    write_json(files["json"], summary, protect=protect)
    return {"summary": summary, "models": models}


# -- fine-pruning (goodnet fineprune) ----------------------------------------------------------------------------

FINEPRUNE_FILES = {"model": "model_fp.h5", "csv": "fineprune_curve.csv", "json": "fineprune_curve.json",
                   "png": "fineprune_curve.png"}


def write_fineprune_outputs(result, out_dir, protect=(), plot=True):
    """Write a fine-pruning run's files into ``out_dir`` (created).

    ``model_fp.h5`` (the kept model, plain Keras), ``fineprune_curve.csv``
    (one row per epoch), ``fineprune_curve.png`` (unless ``plot`` is False)
    and ``fineprune_curve.json`` (the run's summary plus ``files``).

    Args:
        result: what :func:`goodnet.defenses.fine_pruning.run_fine_pruning` returns;
            its ``summary`` gains ``files``.
        out_dir: the output folder.
        protect: input paths never to overwrite (:func:`input_paths`).
        plot: write the PNG.

    Returns:
        dict: ``{kind: path}`` of the files written.
    """
    from goodnet.models import save_model

    summary = result["summary"]
    rows = summary["curve"]
    os.makedirs(out_dir, exist_ok=True)
    files = {"model": save_model(result["fine_pruning"].model_, os.path.join(out_dir, FINEPRUNE_FILES["model"]),
                                 protect=protect),
             "csv": os.path.join(out_dir, FINEPRUNE_FILES["csv"]),
             "json": os.path.join(out_dir, FINEPRUNE_FILES["json"])}
    write_csv(files["csv"], rows, protect=protect)
    if plot:
        from goodnet.plots import plot_fineprune_curve

        files["png"] = plot_fineprune_curve(rows, os.path.join(out_dir, FINEPRUNE_FILES["png"]),
                                            title=f"fine-pruning {summary['layer']}: "
                                                  f"{len(summary['channels_pruned'])} channels pruned")
    summary["files"] = files
    write_json(files["json"], summary, protect=protect)
    return files


# -- the end-to-end repair (goodnet repair, the demo) ------------------------------------------------------------

def write_repair_models(models, chosen, out_dir, protect=()):
    """Save every repair candidate as ``out_dir/candidates/<name>.h5`` and the chosen one as ``out_dir/repaired.h5``.

    Args:
        models: ``(name, Classifier)`` pairs in the report's order (an iterator
            is fine: each model is saved before the next is built).
        chosen: the chosen candidate's name.
        out_dir: the repair's output folder.
        protect: input paths never to overwrite (:func:`input_paths`).

    Returns:
        dict: ``{name: path}``, with ``chosen`` right after the chosen candidate.
    """
    from goodnet.models import save_model

    files = {}
    for name, model in models:
        files[name] = save_model(model, os.path.join(out_dir, "candidates", f"{name}.h5"), protect=protect)
        if name == chosen:
            files["chosen"] = save_model(model, os.path.join(out_dir, "repaired.h5"), protect=protect)
    return files


def write_repair_report(report, out_dir, sweep, markdown, protect=()):
    """Write the repair's plots, ``report.md`` and ``report.json`` into ``out_dir``; ``report["files"]`` names them.

    Args:
        report: the repair's report (:func:`goodnet.repair.repair`).
        out_dir: the output folder.
        sweep: the fitted pruning sweep (its ``curve_`` and ``selected_`` are plotted).
        markdown: the report as Markdown (:func:`goodnet.repair.report_markdown`).
        protect: input paths never to overwrite.
    """
    import numpy as np

    from goodnet.plots import plot_candidates, plot_fineprune_curve, plot_prune_curve, strip_entropy_histogram

    files = report["files"]
    files["prune_curve"] = plot_prune_curve(sweep.curve_, sweep.selected_, os.path.join(out_dir, "prune_curve.png"),
                                            title="pruning sweep (tune part of the validation data)")
    files["fineprune_curve"] = plot_fineprune_curve(report["fine_pruning"]["curve"],
                                                    os.path.join(out_dir, "fineprune_curve.png"))
    strip = report["strip"]
    files["strip_entropy"] = strip_entropy_histogram(
        np.asarray(strip["holdout_entropies"]),
        {name: np.asarray(values) for name, values in strip["poisoned_entropies"].items()},
        strip["threshold"], os.path.join(out_dir, "strip_entropy.png"),
        title="STRIP entropy under B (hold-out clean vs poisoned validation)")
    files["candidates_plot"] = plot_candidates(report, os.path.join(out_dir, "candidates.png"))
    files["report_json"] = os.path.join(out_dir, "report.json")
    files["report_md"] = os.path.join(out_dir, "report.md")
    write_text(files["report_md"], markdown, protect=protect)
    write_json(files["report_json"], report, protect=protect)


CLEANSE_OUTPUTS = ("cleanse.json", "report.md", "norms.png", "triggers.png")


def _index_text(value):
    return "n/a" if value is None else f"{value:.2f}"


def cleanse_markdown(summary, shown=10):
    """The Markdown report of a Neural Cleanse run (``report.md`` of ``goodnet cleanse``).

    Args:
        summary: :meth:`goodnet.defenses.neural_cleanse.NeuralCleanse.summary`
            output, plus the command's ``inputs`` entry if any.
        shown: rows of the table of the most suspicious classes.

    Returns:
        str: the report.
    """
    rows = {row["class"]: row for row in summary["classes"]}
    params = summary["params"]
    lines = ["# Neural Cleanse", ""]
    inputs = summary.get("inputs", {})
    lines += [f"- model: `{inputs.get('model', summary.get('model', ''))}` ({inputs.get('scale_report', '')})"
              .replace(" ()", "")]
    if inputs.get("clean"):
        lines.append(f"- clean data: {', '.join(f'`{path}`' for path in inputs['clean'])}")
    lines += [f"- clean images used: {summary['clean_images']}; candidate classes: {len(rows)}; "
              f"method {params['method']} ({summary['slots']} classes per network call)",
              f"- verdict: **{summary['verdict']}**"]
    if summary["flagged"]:
        lines.append("- flagged: " + ", ".join(
            f"class {target} (norm {rows[target]['norm']:.1f}, anomaly index "
            f"{_index_text(rows[target]['anomaly_index'])}, reversed-trigger success "
            f"{percent(rows[target]['attack_success'], 1)} %)" for target in summary["flagged"]))
    lines += [f"- median norm {summary['median']:.2f}, MAD {summary['mad']:.2f}: a class is flagged when its norm is "
              f"below the median and its anomaly index |norm - median| / (1.4826 MAD) is above "
              f"{summary['index_threshold']:g} (norm below {summary['norm_threshold']:.2f})", ""]
    lines += ["## Most suspicious classes", "",
              "| class | L1 norm | anomaly index | reversed-trigger success % | epochs | full schedule |",
              "|---:|---:|---:|---:|---:|:---:|"]
    for target in summary["suspects"][:shown]:
        row = rows[target]
        lines.append(f"| {target} | {row['norm']:.2f} | {_index_text(row['anomaly_index'])} | "
                     f"{percent(row['attack_success'], 1)} | {row['epochs']} | {'yes' if row['refined'] else 'no'} |")
    lines += ["", "## How it ran", ""]
    for stage in summary["stages"]:
        lines.append(f"- {stage['stage']}: {stage['classes']} classes, up to {stage['epochs']} epochs")
    lines += [f"- schedule: Adam lr {params['learning_rate']:g}, cost {params['init_cost']:g} once the trigger "
              f"reaches {percent(params['success'], 0)} % success, x{params['cost_multiplier']:g} / "
              f"/{params['cost_multiplier']:g}^1.5 after {params['patience']} epochs, early stop after "
              f"{params['early_stop_patience']} epochs without a better norm, at most {params['epochs']} epochs; "
              f"{params['steps_per_epoch']} step(s) of {summary['images_per_step']} images per epoch", "",
              "![norms](norms.png)", "", "![triggers](triggers.png)", ""]
    return "\n".join(lines)


def write_cleanse_outputs(summary, triggers, out_dir, protect=()):
    """Write ``cleanse.json``, ``report.md``, ``norms.png`` and ``triggers.png`` of a Neural Cleanse run.

    Args:
        summary: the run's summary (see :func:`cleanse_markdown`).
        triggers: rows for :func:`goodnet.plots.plot_cleanse_triggers`.
        out_dir: the output folder (created if missing).
        protect: input files never to replace.

    Returns:
        dict: {name: path} of the files written.
    """
    from goodnet.plots import plot_cleanse_norms, plot_cleanse_triggers

    os.makedirs(out_dir, exist_ok=True)
    files = {name: os.path.join(out_dir, name) for name in CLEANSE_OUTPUTS}
    write_json(files["cleanse.json"], summary, protect=protect)
    title = os.path.basename(summary.get("model") or "") or "Neural Cleanse"
    plot_cleanse_norms(summary, files["norms.png"], title=title)
    plot_cleanse_triggers(triggers, files["triggers.png"], title=f"{title}: reversed triggers")
    write_text(files["report.md"], cleanse_markdown(summary), protect=protect)
    return files
