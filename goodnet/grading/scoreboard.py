"""The scoreboard: a row per submission, its score and rank, and the files ``scoreboard.{csv,json,md,html}``.

Score (the scoreboard's sort key, higher is better):

- with a baseline (``--baseline``, the BadNet before any defense, scored the
  same way): BackdoorBench's defense-effectiveness rating
  ``DER = (max(0, ASR_b - ASR) - max(0, ACC_b - ACC) + 1) / 2`` where ASR is
  the mean attack success rate over the poisoned files (an answer N,
  "poisoned", is never an attack success) and ACC the clean accuracy (an
  answer N on a clean image is wrong). 0.5 means "no better than the
  baseline"; 1 means all attacks removed at no accuracy cost.
- without a baseline: ``clean accuracy - mean ASR`` (in [-1, 1]).

Failed submissions (status refused, error, timeout, memory, crashed) have no
score and are listed last, by name. This module only turns result dicts into
rows and files; it starts no process and loads no model.
"""

import dataclasses
import html
import os

from goodnet.files import write_text
from goodnet.reports import csv_text, json_text, percent


def mean_asr(result):
    """Mean attack success rate over the poisoned files (None without any)."""
    rates = [entry["attack_success_rate"] for entry in result.get("poisoned", [])]
    return sum(rates) / len(rates) if rates else None


def score_result(result, baseline=None):
    """The sort score of an "ok" result: DER against ``baseline``, or accuracy - mean ASR.

    Args:
        result: a submission's result dict (status "ok").
        baseline: the baseline's result dict, or None.

    Returns:
        float or None: None for failed submissions.
    """
    from goodnet.metrics import defense_effectiveness_rating

    if result.get("status") != "ok":
        return None
    asr = mean_asr(result) or 0.0
    if baseline is not None:
        return defense_effectiveness_rating(baseline["clean_accuracy"], mean_asr(baseline) or 0.0,
                                            result["clean_accuracy"], asr)
    return result["clean_accuracy"] - asr



def result_row(job, result, baseline=None):
    """The scoreboard row of one job (or unread entry) and its result; errors lose the file's path prefix.

    Args:
        job: the job dict (``path``, ``sha256``, optionally ``listed``: the path as listed), or
            ``{"path": ..., "sha256": None}`` for an entry refused before any worker.
        result: its result dict (``status``, ``error`` and, for "ok", the figures).
        baseline: the baseline's result dict (the score is then DER), or None.

    Returns:
        dict: the row (``rank`` is set by :func:`rank_rows`).
    """
    listed = job.get("listed", job["path"])
    error = result.get("error", "")
    for path in {job["path"], listed}:
        error = error.replace(f"{path}: ", "")
    row = {"submission": os.path.basename(listed), "path": listed, "sha256": job["sha256"],
           "status": result["status"], "error": error, "score": score_result(result, baseline),
           "clean_accuracy": result.get("clean_accuracy"), "mean_asr": mean_asr(result) if result["status"] == "ok"
           else None, "poisoned": result.get("poisoned", []), "detection_rate": result.get("detection_rate"),
           "false_rejection_rate": result.get("false_rejection_rate"),
           "flags_poisoned": result.get("flags_poisoned"), "scale": result.get("scale"),
           "scale_report": result.get("scale_report"), "seconds": result.get("seconds"),
           "peak_memory_mb": result.get("peak_memory_mb"), "cached": result.get("cached", False),
           "execution": result.get("execution"), "precision_report": result.get("precision_report")}
    for entry in row["poisoned"]:
        entry["file"] = os.path.basename(entry["file"])
    return row


def rank_rows(rows):
    """Sort by score (best first); failed submissions last, by name; number the scored ones."""
    scored = sorted((row for row in rows if row["score"] is not None),
                    key=lambda row: (-row["score"], row["submission"]))
    failed = sorted((row for row in rows if row["score"] is None), key=lambda row: row["submission"])
    for rank, row in enumerate(scored, 1):
        row["rank"] = rank
    for row in failed:
        row["rank"] = None
    return scored + failed


@dataclasses.dataclass
class Scoreboard:
    """Ranked grading results and their tabular forms.

    Attributes:
        rows: one dict per submission, best first (see :func:`rank_rows`).
        poisoned_names: the poisoned test files' names (ASR columns).
        baseline: the baseline's row, or None.
        score_name: what ``score`` is ("DER" or "accuracy - mean ASR").
        paths: files written by :meth:`write`.
    """

    rows: list
    poisoned_names: list
    baseline: dict = None
    score_name: str = "DER"
    paths: dict = dataclasses.field(default_factory=dict)

    def columns(self):
        """Header of the CSV/Markdown/HTML tables."""
        return (["rank", "submission", "status", f"score ({self.score_name})", "clean acc %"]
                + [f"ASR % {name}" for name in self.poisoned_names]
                + ["detection %", "FRR %", "scale", "time s"]
                + ([f"top-1 % same as float32 ({self._precision()})"] if self._precision() else []) + ["error"])

    def _precision(self):
        """The mixed precision the submissions ran in, or None (float32)."""
        reports = [row.get("precision_report") for row in self.rows if row.get("precision_report")]
        return reports[0]["precision"] if reports else None

    def table(self):
        """The rows as lists of strings, in :meth:`columns` order."""
        lines = []
        for row in self.rows:
            rates = {entry["file"]: entry["attack_success_rate"] for entry in row["poisoned"]}
            lines.append([str(row["rank"] or "-"), row["submission"], row["status"],
                          "" if row["score"] is None else f"{row['score']:.4f}", percent(row["clean_accuracy"])]
                         + [percent(rates.get(name)) for name in self.poisoned_names]
                         + [percent(row["detection_rate"]), percent(row["false_rejection_rate"]),
                            row["scale"] or "", "" if row["seconds"] is None else f"{row['seconds']:.1f}"]
                         + ([percent((row.get("precision_report") or {}).get("top1_agreement"))]
                            if self._precision() else [])
                         + [row["error"]])
        return lines

    def to_json(self):
        """The JSON document (``scoreboard.json``)."""
        return {"score": self.score_name, "poisoned_files": self.poisoned_names, "baseline": self.baseline,
                "submissions": self.rows}

    def to_csv(self):
        """The CSV text (``scoreboard.csv``): :meth:`columns`, then one line per row."""
        columns = self.columns()
        # Two poisoned files of the same name share one ASR column key; their cells hold the same value.
        return csv_text((dict(zip(columns, line)) for line in self.table()), columns)

    def to_markdown(self):
        """The Markdown table (``scoreboard.md``)."""
        def cell(text):
            return text.replace("|", "\\|").replace("\n", " ")

        header = self.columns()
        lines = ["| " + " | ".join(cell(name) for name in header) + " |",
                 "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in self.table()]
        return "\n".join(lines) + "\n"

    def to_html(self):
        """The HTML page (``scoreboard.html``), with the baseline's figures when there is one."""
        head = "".join(f"<th>{html.escape(name)}</th>" for name in self.columns())
        body = "\n".join("<tr>" + "".join(f"<td>{html.escape(value)}</td>" for value in row) + "</tr>"
                         for row in self.table())
        baseline = ""
        if self.baseline:
            baseline = (f"<p>Baseline {html.escape(self.baseline['submission'])}: clean accuracy "
                        f"{percent(self.baseline['clean_accuracy'])} %, mean ASR "
                        f"{percent(self.baseline['mean_asr'])} %</p>\n")
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>goodnet scoreboard</title>"
                "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}</style>"
                f"</head><body>\n<h1>Scoreboard</h1>\n<p>Sorted by {html.escape(self.score_name)}, best first."
                "</p>\n" + baseline + f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n"
                "</table>\n</body></html>\n")

    def write(self, out_dir):
        """Write scoreboard.csv/.json/.md/.html into ``out_dir`` atomically; return the paths."""
        os.makedirs(out_dir, exist_ok=True)
        texts = {"csv": self.to_csv(), "json": json_text(self.to_json()),
                 "md": self.to_markdown(), "html": self.to_html()}
        for kind, text in texts.items():
            self.paths[kind] = write_text(os.path.join(out_dir, f"scoreboard.{kind}"), text)
        return self.paths

