"""PNG plots of goodnet's results (matplotlib, headless Agg backend).

Every function takes the figures to draw and a destination path, writes the
PNG atomically and returns the path.
"""

import logging

from goodnet.files import atomic_write

logger = logging.getLogger(__name__)


def new_figure(width=7.0, height=4.5):
    """Return (figure, axes) drawn with the headless Agg backend (no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def save_figure(figure, path):
    """Save ``figure`` as a PNG at ``path`` atomically; return ``path``."""
    figure.tight_layout()
    with atomic_write(path) as temporary:
        figure.savefig(temporary, format="png")
    return str(path)


def finish_axes(figure, axes, path, title, xlabel, ylabel, ylim=None, legend=None):
    """The common end of a line plot: labels (None: leave as set), y range, title, light grid, legend, saved.

    Returns:
        str: ``path`` (see :func:`save_figure`).
    """
    if xlabel is not None:
        axes.set_xlabel(xlabel)
    if ylabel is not None:
        axes.set_ylabel(ylabel)
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(**(legend or {}))
    return save_figure(figure, path)


def score_histogram(clean_scores, poisoned, threshold, path, title, xlabel):
    """Histogram of a detector's scores on clean and poisoned inputs with the threshold line (lower: flagged).

    Args:
        clean_scores: scores of clean inputs.
        poisoned: {name: scores} for each poisoned set.
        threshold: inputs below it are flagged as trojaned.
        path: destination PNG.
        title: the plot title.
        xlabel: what the score is.

    Returns:
        str: ``path``.
    """
    import numpy as np

    figure, axes = new_figure()
    groups = [("clean", np.asarray(clean_scores, dtype=float))]
    groups += [(name, np.asarray(values, dtype=float)) for name, values in poisoned.items()]
    values = np.concatenate([group for _, group in groups] + [[threshold]])
    bins = np.linspace(values.min(), values.max() + 1e-9, 50)
    for name, group in groups:
        axes.hist(group, bins=bins, alpha=0.55, density=True, label=f"{name} ({len(group)})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def strip_entropy_histogram(clean_entropies, poisoned, threshold, path, title="STRIP entropy"):
    """:func:`score_histogram` of STRIP entropies (bits): clean, each poisoned set, the threshold."""
    return score_histogram(clean_entropies, poisoned, threshold, path, title,
                           "mean entropy over perturbed copies (bits)")


def plot_prune_curve(curve, selected, path, title="pruning sweep"):
    """Clean accuracy and attack success rate against the fraction of channels pruned.

    Args:
        curve: a :class:`goodnet.defenses.pruning.PruneCurve`.
        selected: {X: step or None}, the saved models, marked and labelled.
        path: destination PNG.
        title: the figure's title.

    Returns:
        str: ``path``.

    Example:
        >>> plot_prune_curve(defense.curve_, defense.selected_, "out/prune_curve.png")
    """
    figure, axes = new_figure()
    fraction = curve.fraction_pruned * 100.0
    axes.plot(fraction, curve.clean_accuracy * 100.0, color="tab:blue", marker=".", label="clean accuracy")
    for index, name in enumerate(curve.poisoned_names):
        axes.plot(fraction, curve.attack_success[:, index] * 100.0, marker=".", linestyle="--",
                  label=f"attack success ({name})")
    for drop, step in selected.items():
        if step is None:
            continue
        accuracy = curve.clean_accuracy[step] * 100.0
        axes.axvline(fraction[step], color="grey", linewidth=0.8, linestyle=":")
        axes.plot([fraction[step]], [accuracy], marker="o", color="black")
        axes.annotate(f"X={drop:g}\n{step} ch, {accuracy:.1f}%", (fraction[step], accuracy),
                      textcoords="offset points", xytext=(-8, -28), ha="right", fontsize=8)
    return finish_axes(figure, axes, path, title, "channels pruned (%)", "rate (%)", ylim=(-2, 102),
                       legend={"loc": "lower left", "fontsize": 8})


def plot_fineprune_curve(rows, path, title="fine-pruning"):
    """Hold-out clean accuracy and attack success rates per fine-tuning epoch (epoch 0: pruned, not tuned).

    Args:
        rows: :meth:`goodnet.defenses.fine_pruning.FinePruning.curve_rows` output.
        path: destination PNG.
        title: the figure's title.

    Returns:
        str: ``path``.
    """
    figure, axes = new_figure()
    epochs = [row["epoch"] for row in rows]
    axes.plot(epochs, [row["holdout_accuracy"] * 100 for row in rows], marker="o", label="clean accuracy (hold-out)")
    for key in [key for key in rows[0] if key.startswith("asr:")]:
        axes.plot(epochs, [row[key] * 100 for row in rows], marker="s", linestyle="--",
                  label=f"attack success ({key[4:]})")
    return finish_axes(figure, axes, path, title, "fine-tuning epoch", "rate (%)", ylim=(-2, 102),
                       legend={"loc": "center right", "fontsize": 8})


def plot_candidates(report, path):
    """Grouped bars per repair candidate: hold-out clean accuracy, mean ASR, detection rate, FRR (validation).

    Args:
        report: the :func:`goodnet.repair.repair` report.
        path: destination PNG.

    Returns:
        str: ``path``.
    """
    import numpy as np

    names = [candidate["name"] for candidate in report["candidates"]]
    figures = report["validation"]
    series = [("clean accuracy", [figures[n]["clean_accuracy"] for n in names]),
              ("mean ASR", [figures[n].get("mean_attack_success_rate") or 0.0 for n in names]),
              ("detection", [figures[n].get("detection_rate", 0.0) for n in names]),
              ("FRR", [figures[n].get("false_rejection_rate", 0.0) for n in names])]
    figure, axes = new_figure(width=max(7.0, 0.6 * len(names) + 2), height=4.8)
    positions = np.arange(len(names))
    width = 0.2
    for index, (label, values) in enumerate(series):
        axes.bar(positions + (index - 1.5) * width, np.asarray(values) * 100, width, label=label)
    axes.set_xticks(positions)
    axes.set_xticklabels([f"{n} *" if n == report["chosen"] else n for n in names], rotation=40, ha="right",
                         fontsize=7)
    axes.set_ylabel("validation rate (%)")
    axes.set_ylim(0, 118)  # room for the legend above the 100 % bars
    axes.set_yticks(range(0, 101, 20))
    axes.set_title("repair candidates (* chosen)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=7, ncol=4, loc="upper center")
    return save_figure(figure, path)


def plot_cleanse_norms(summary, path, title="Neural Cleanse"):
    """Every class's reversed-trigger L1 norm, the median and the flagging line, flagged classes labelled.

    Args:
        summary: :meth:`goodnet.defenses.neural_cleanse.NeuralCleanse.summary` output.
        path: destination PNG.
        title: the figure's title.

    Returns:
        str: ``path``.
    """
    import numpy as np

    rows = summary["classes"]
    classes = np.asarray([row["class"] for row in rows])
    norms = np.asarray([row["norm"] for row in rows])
    refined = np.asarray([row["refined"] for row in rows], bool)
    flagged = set(summary["flagged"])
    figure, axes = new_figure(width=8.0, height=4.5)
    if (~refined).any():
        axes.scatter(classes[~refined], norms[~refined], s=6, color="lightgrey",
                     label=f"coarse score ({int((~refined).sum())} classes)")
    axes.scatter(classes[refined], norms[refined], s=10, color="tab:blue",
                 label=f"full schedule ({int(refined.sum())} classes)")
    axes.axhline(summary["median"], color="black", linewidth=1, label=f"median {summary['median']:.1f}")
    axes.axhline(summary["norm_threshold"], color="tab:red", linestyle="--", linewidth=1,
                 label=f"anomaly index {summary['index_threshold']:g} ({summary['norm_threshold']:.1f})")
    for row in rows:
        if row["class"] in flagged:
            axes.scatter([row["class"]], [row["norm"]], s=40, color="tab:red", zorder=3)
            axes.annotate(f"{row['class']} (index {row['anomaly_index']:.2f})", (row["class"], row["norm"]),
                          textcoords="offset points", xytext=(5, 5), fontsize=8, color="tab:red")
    return finish_axes(figure, axes, path, f"{title}: {summary['verdict']}", "class",
                       "L1 norm of the reversed mask", legend={"loc": "best", "fontsize": 7})


def plot_cleanse_triggers(triggers, path, title="reversed triggers"):
    """One row per class: its reversed mask, its pattern and a clean image stamped with both.

    Args:
        triggers: list of dicts with ``class``, ``label`` (a caption), ``mask``
            (H, W, 1) in [0, 1], ``pattern`` (H, W, C) and ``stamped`` (H, W, C), raw 0-255 pixels.
        path: destination PNG.
        title: the figure's title.

    Returns:
        str: ``path``.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, len(triggers))
    figure = Figure(figsize=(6.0, 2.0 * rows + 0.4), dpi=110)
    FigureCanvasAgg(figure)
    for row, trigger in enumerate(triggers):
        pictures = [(trigger["mask"][..., 0], "mask", "gray"),
                    (np.clip(trigger["pattern"], 0, 255).astype(np.uint8), "pattern", None),
                    (np.clip(trigger["mask"] * trigger["pattern"], 0, 255).astype(np.uint8), "mask x pattern", None),
                    (np.clip(trigger["stamped"], 0, 255).astype(np.uint8), "stamped clean image", None)]
        for column, (picture, caption, colours) in enumerate(pictures):
            axes = figure.add_subplot(rows, 4, row * 4 + column + 1)
            axes.imshow(picture, cmap=colours, vmin=0 if colours else None, vmax=1 if colours else None)
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(trigger["label"], fontsize=7)
            if row == 0:
                axes.set_title(caption, fontsize=8)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def plot_certified_accuracy(curves, path, title="DPA certified accuracy"):
    """Certified accuracy against the certified radius (poisoned training samples withstood), a step curve.

    Args:
        curves: ``{name: curve}`` with each curve a
            :func:`goodnet.defenses.partition_aggregation.certified_accuracy_curve` result (its ``rows``:
            radius r and the share of inputs answered correctly with certificate >= r), or one such curve.
        path: destination PNG.
        title: the figure's title.

    Returns:
        str: ``path``.

    Example:
        >>> plot_certified_accuracy({"valid": dpa.certified_accuracy(valid.images, valid.labels)}, "out/dpa.png")
    """
    if "rows" in curves:
        curves = {"": curves}
    figure, axes = new_figure()
    for name, curve in curves.items():
        radii = [row["radius"] for row in curve["rows"]]
        rates = [row["certified_accuracy"] * 100.0 for row in curve["rows"]]
        median = curve.get("median_certified_radius")
        label = f"{name + ': ' if name else ''}clean {rates[0]:.1f}%, median radius " \
                f"{'n/a' if median is None else median}"
        axes.step(radii + [radii[-1] + 1], rates + [0.0], where="post", marker=".", label=label)
    from matplotlib.ticker import MaxNLocator

    axes.axhline(50.0, color="grey", linewidth=0.8, linestyle=":")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(left=0)
    return finish_axes(figure, axes, path, title, "certified radius r (poisoned training samples)",
                       "certified accuracy (%)", ylim=(-2, 102),
                       legend={"loc": "best", "fontsize": 8, "framealpha": 0.8})


def plot_privacy_tradeoff(rows, baseline, path, title="DP-SGD: privacy against utility and attack success"):
    """Clean accuracy and attack success rate against the privacy budget epsilon (log axis), and without DP.

    Args:
        rows: one dict per DP-SGD run: ``epsilon`` (the budget reached), ``clean_accuracy`` and
            ``attack_success_rate`` (shares in [0, 1]), optionally ``clean_to_target`` (the share of the
            poisoned images' clean versions already classified as the target: what the ASR owes to the model,
            not to the trigger).
        baseline: the same figures trained without DP (drawn as dashed lines), or None.
        path: destination PNG.
        title: the figure's title.

    Returns:
        str: ``path``.

    Example:
        >>> plot_privacy_tradeoff([{"epsilon": 3.0, "clean_accuracy": 0.8, "attack_success_rate": 0.1}],
        ...                       {"clean_accuracy": 0.93, "attack_success_rate": 1.0}, "out/dp.png")
    """
    from matplotlib.ticker import NullFormatter

    rows = sorted(rows, key=lambda row: row["epsilon"])
    epsilons = [row["epsilon"] for row in rows]
    figure, axes = new_figure()
    series = [("clean_accuracy", "clean accuracy", "tab:blue", "o"),
              ("attack_success_rate", "attack success rate", "tab:red", "s"),
              ("clean_to_target", "clean versions sent to the target", "tab:orange", "^")]
    for key, label, colour, marker in series:
        if not all(key in row for row in rows):
            continue
        values = [row[key] * 100.0 for row in rows]
        axes.plot(epsilons, values, marker=marker, color=colour, label=f"{label}, DP-SGD",
                  linestyle=":" if key == "clean_to_target" else "-")
        for epsilon, value in zip(epsilons, values):
            axes.annotate(f"{value:.1f}", (epsilon, value), textcoords="offset points", xytext=(0, 6),
                          ha="center", fontsize=7, color=colour)
        if baseline is not None and key in baseline:
            axes.axhline(baseline[key] * 100.0, color=colour, linestyle="--", linewidth=1.0,
                         label=f"{label}, no DP ({baseline[key] * 100.0:.1f}%)")
    axes.set_xscale("log")
    axes.set_xticks(epsilons)
    axes.set_xticklabels([f"{epsilon:.3g}" for epsilon in epsilons])
    axes.xaxis.set_minor_formatter(NullFormatter())
    return finish_axes(figure, axes, path, title, "privacy budget epsilon (log scale; smaller = more private)", "%",
                       ylim=(-2, 105), legend={"loc": "center right", "fontsize": 7})
