"""Tests of goodnet.grading.scoreboard: the score (DER or accuracy - mean ASR), the ranking and the four files."""

import csv
import json

import pytest

from goodnet.grading import rank_rows, score_result
from grading_helpers import REAL


def test_scoreboard_files_agree_and_are_sorted(graded):
    board, out = graded["board"], graded["out"]
    scores = [row["score"] for row in board.rows if row["score"] is not None]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(REAL) + 1
    assert [row["rank"] for row in board.rows[:len(scores)]] == list(range(1, len(scores) + 1))
    document = json.loads((out / "scoreboard.json").read_text())
    assert [row["submission"] for row in document["submissions"]] == [row["submission"] for row in board.rows]
    assert document["score"] == "DER"
    with open(out / "scoreboard.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0][:5] == ["rank", "submission", "status", "score (DER)", "clean acc %"]
    assert "ASR % bd_test.h5" in table[0] and "detection %" in table[0] and "FRR %" in table[0]
    assert [line[1] for line in table[1:]] == [row["submission"] for row in board.rows]
    markdown = (out / "scoreboard.md").read_text()
    assert markdown.count("\n") == len(board.rows) + 2 and "endless.h5 | timeout" in markdown
    page = (out / "scoreboard.html").read_text()
    assert page.count("<tr>") == len(board.rows) + 1 and "Baseline bd_net.h5" in page


def test_fallback_score_and_ranking_without_baseline():
    good = {"status": "ok", "clean_accuracy": 0.9, "poisoned": [{"attack_success_rate": 0.1},
                                                                {"attack_success_rate": 0.3}]}
    assert score_result(good) == pytest.approx(0.9 - 0.2)
    baseline = {"status": "ok", "clean_accuracy": 0.95, "poisoned": [{"attack_success_rate": 1.0}]}
    assert score_result(good, baseline) == pytest.approx((0.8 - 0.05 + 1) / 2)
    assert score_result({"status": "timeout"}) is None
    rows = rank_rows([{"submission": "b", "score": None}, {"submission": "c", "score": 0.2},
                      {"submission": "a", "score": 0.7}])
    assert [(row["submission"], row["rank"]) for row in rows] == [("a", 1), ("c", 2), ("b", None)]


def test_scoreboard_text_forms_quote_escape_and_format_every_cell(tmp_path):
    """The exact CSV, Markdown and HTML of a scored row (with a precision report) and a failed one."""
    from goodnet.grading import Scoreboard

    ok = {"submission": 'a,"b".h5', "status": "ok", "error": "", "score": 0.734561, "clean_accuracy": 0.912345,
          "poisoned": [{"file": "bd.h5", "attack_success_rate": 0.1}], "detection_rate": None,
          "false_rejection_rate": None, "scale": "raw", "seconds": 3.14159,
          "precision_report": {"precision": "mixed_float16", "top1_agreement": 0.999}}
    bad = {"submission": "c|d.h5", "status": "error", "error": "x | y\nz <&>", "score": None, "clean_accuracy": None,
           "poisoned": [], "detection_rate": None, "false_rejection_rate": None, "scale": None, "seconds": None,
           "precision_report": None}
    board = Scoreboard(rank_rows([bad, ok]), ["bd.h5"],
                       baseline={"submission": "bd_net.h5", "clean_accuracy": 0.98, "mean_asr": 1.0})
    header = ("rank,submission,status,score (DER),clean acc %,ASR % bd.h5,detection %,FRR %,scale,time s,"
              "top-1 % same as float32 (mixed_float16),error\n")
    assert board.to_csv() == header + '1,"a,""b"".h5",ok,0.7346,91.23,10.00,,,raw,3.1,99.90,\n' \
                                      '-,c|d.h5,error,,,,,,,,,"x | y\nz <&>"\n'
    markdown = board.to_markdown().splitlines()
    assert markdown[1] == "|" + "|".join(["---"] * 12) + "|"
    assert markdown[2:] == ['| 1 | a,"b".h5 | ok | 0.7346 | 91.23 | 10.00 |  |  | raw | 3.1 | 99.90 |  |',
                            "| - | c\\|d.h5 | error |  |  |  |  |  |  |  |  | x \\| y z <&> |"]
    page = board.to_html()
    assert "<p>Baseline bd_net.h5: clean accuracy 98.00 %, mean ASR 100.00 %</p>" in page
    assert "<td>a,&quot;b&quot;.h5</td>" in page and "<td>x | y\nz &lt;&amp;&gt;</td></tr>" in page
    paths = board.write(tmp_path)
    assert sorted(paths) == ["csv", "html", "json", "md"]
    assert (tmp_path / "scoreboard.csv").read_text() == board.to_csv()
    assert (tmp_path / "scoreboard.json").read_text() == json.dumps(board.to_json(), indent=2) + "\n"
