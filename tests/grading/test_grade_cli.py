"""Tests of ``goodnet grade`` (goodnet/cli/grade.py): JSON from the cache, one-line errors, the summary line.

They live here, not in tests/cli, to share the grading fixtures of tests/grading/conftest.py."""

import json

from grading_helpers import TIME_LIMIT, make_hostile_folder


def test_cli_json_from_the_cache(graded, submissions, lab_data, shared, capsys):
    from goodnet.cli import main

    folder, _ = submissions
    code = main(["grade", str(folder), "--clean", str(lab_data["clean"]), "--poisoned", str(lab_data["poisoned"]),
                 "--validation", str(lab_data["validation"]), "--baseline", str(shared / "models" / "bd_net.h5"),
                 "--time-limit", str(TIME_LIMIT), "--memory-mb", "3000", "--out", str(graded["out"]), "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["submissions"]) == len(graded["rows"])
    assert all(row["cached"] for row in document["submissions"])
    assert set(document["files"]) == {"csv", "json", "md", "html"}


def test_cli_bad_input_is_one_line_exit_2(lab_data, tmp_path, capsys):
    from goodnet.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["grade", str(empty), "--clean", str(tmp_path / "missing.h5"), "--poisoned",
                 str(lab_data["poisoned"]), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "missing.h5: file not found" in error
    code = main(["grade", str(empty), "--clean", str(lab_data["clean"]), "--poisoned", str(lab_data["poisoned"]),
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "no model files" in error


def test_cli_summary_counts_every_row(lab_data, tmp_path, monkeypatch, stand_in_workers, no_hang, capsys):
    from goodnet.cli import main

    folder = tmp_path / "submissions"
    expected = make_hostile_folder(folder, monkeypatch)
    code = main(["grade", str(folder), "--clean", str(lab_data["clean"]), "--poisoned", str(lab_data["poisoned"]),
                 "--scale", "raw", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    output = capsys.readouterr().out
    refused = sum(status == "refused" for status, _ in expected.values())
    errors = len(expected) - refused
    assert (f"\n{len(expected)} submissions: 0 scored, {len(expected)} failed "
            f"({refused} refused, {errors} error), 0 from the cache;") in output
