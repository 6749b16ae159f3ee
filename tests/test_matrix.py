"""goodnet.matrix: a tiny attack x defense matrix (2 attacks x 2 cheap defenses, 2 epochs): its files, DER from
each cell's own figures, the content-keyed cache (a re-run recomputes nothing; a changed setting recomputes only
its cells), a failing cell reported while the rest finish, the command line, and a Dask LocalCluster run equal to
the local run, figure for figure."""

import csv
import json
import shutil

import pytest

from goodnet import matrix
from goodnet.cli import main
from goodnet.matrix import MatrixOptions, run_matrix

FIGURES = ("clean_accuracy_before", "asr_before", "clean_accuracy_after", "asr_after", "detection_rate",
           "false_rejection_rate", "der", "notes")


def tiny(out, **changes):
    return MatrixOptions(**{"attacks": ("patch", "blend"), "defenses": ("pruning", "strip"), "out_dir": str(out),
                            "workers": 0, "quick": True, "epochs": 2, **changes})


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix")
    return out, run_matrix(tiny(out, workers=2), progress=False)   # the default executor: a local spawn pool


def _figures(result):
    return {(cell["attack"], cell["defense"]): {key: cell[key] for key in FIGURES} for cell in result["cells"]}


def _refuse(*args, **kwargs):
    raise AssertionError("recomputed although cached")


def test_files_table_and_der_from_each_cells_figures(local):
    out, result = local
    for name in matrix.OUTPUT_NAMES:
        assert (out / name).stat().st_size > 0
    assert [(cell["attack"], cell["defense"]) for cell in result["cells"]] == [
        ("patch", "pruning"), ("patch", "strip"), ("blend", "pruning"), ("blend", "strip")]
    for cell in result["cells"]:
        assert cell["status"] == "ok" and cell["cached"] is False and cell["seconds"] >= 0
        gain = max(0.0, cell["asr_before"] - cell["asr_after"])
        loss = max(0.0, cell["clean_accuracy_before"] - cell["clean_accuracy_after"])
        assert cell["der"] == pytest.approx((gain - loss + 1) / 2, abs=1e-12)
    strip = [cell for cell in result["cells"] if cell["defense"] == "strip"]
    assert all(0 <= cell["detection_rate"] <= 1 and 0 <= cell["false_rejection_rate"] <= 1 for cell in strip)
    assert all(cell["detection_rate"] is None for cell in result["cells"] if cell["defense"] == "pruning")
    # both attacks' cells share their BadNet's before figures
    assert len({(c["clean_accuracy_before"], c["asr_before"]) for c in result["cells"] if c["attack"] == "patch"}) == 1
    with open(out / "matrix.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["der"]) for row in rows] == pytest.approx([cell["der"] for cell in result["cells"]])
    saved = json.loads((out / "matrix.json").read_text())
    assert _figures(saved) == _figures(result)
    page = (out / "matrix.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page and "blend" in page
    assert "| blend | strip | ok |" in (out / "matrix.md").read_text()


def test_second_run_recomputes_nothing_and_a_changed_setting_only_its_cells(local, monkeypatch, tmp_path):
    out, result = local
    monkeypatch.setattr(matrix, "run_cell", _refuse)
    monkeypatch.setattr(matrix, "run_attack", _refuse)
    again = run_matrix(tiny(out), progress=False)
    assert all(cell["cached"] for cell in again["cells"])
    assert _figures(again) == _figures(result)
    listed = run_matrix(tiny(out, attacks=("patch", "random"), compute=False), progress=False)   # --cached-only
    assert [(cell["attack"], cell["status"], cell["cached"]) for cell in listed["cells"]] == [
        ("patch", "ok", True), ("patch", "ok", True), ("random", "not computed", False),
        ("random", "not computed", False)]

    calls = []
    monkeypatch.setattr(matrix, "run_cell", lambda job: calls.append(job["defense"]) or _CELL)
    changed = run_matrix(tiny(out, defense_overrides={"strip": {"copies": 9}}), progress=False)
    assert calls == ["strip", "strip"]
    assert [cell["cached"] for cell in changed["cells"]] == [True, False, True, False]


_CELL = {"status": "ok", "clean_accuracy_before": 0.5, "asr_before": 1.0, "clean_accuracy_after": 0.5,
         "asr_after": 0.0, "detection_rate": None, "false_rejection_rate": None, "der": 1.0, "seconds": 0.0,
         "notes": {}}


def test_one_failing_cell_is_reported_and_the_others_finish(local, monkeypatch, tmp_path):
    out, _ = local
    shutil.copytree(out / "cache", tmp_path / "cache")   # the BadNets again, not retrained
    monkeypatch.setattr(matrix, "run_attack", _refuse)
    pruning = matrix.DEFENSES["pruning"]

    def failing(ctx, settings):
        if ctx.attack == "blend":
            raise ValueError("the planted failure\nsecond line")
        return pruning(ctx, settings)

    monkeypatch.setitem(matrix.DEFENSES, "pruning", failing)
    result = run_matrix(tiny(tmp_path, defense_overrides={"pruning": {"drop": 6.0}}), progress=False)
    cells = {(cell["attack"], cell["defense"]): cell for cell in result["cells"]}
    assert cells["blend", "pruning"]["status"] == "failed"
    assert cells["blend", "pruning"]["error"] == "ValueError: the planted failure"
    assert cells["patch", "pruning"]["status"] == "ok" and cells["patch", "pruning"]["cached"] is False
    assert cells["blend", "strip"]["status"] == "ok" and cells["patch", "strip"]["cached"] is True
    assert "failed: ValueError: the planted failure" in (tmp_path / "matrix.md").read_text()
    # the failure is not cached: the next run tries it again
    monkeypatch.setitem(matrix.DEFENSES, "pruning", pruning)
    monkeypatch.setattr(matrix, "run_cell", lambda job: _CELL)
    again = run_matrix(tiny(tmp_path, defense_overrides={"pruning": {"drop": 6.0}}), progress=False)
    assert {cell["attack"]: cell["cached"] for cell in again["cells"] if cell["defense"] == "pruning"} == {
        "patch": True, "blend": False}


def test_command_line_reuses_the_cache_and_refuses_bad_input(local, monkeypatch, capsys):
    out, result = local
    monkeypatch.setattr(matrix, "run_cell", _refuse)
    monkeypatch.setattr(matrix, "run_attack", _refuse)
    code = main(["matrix", "--quick", "--epochs", "2", "--attacks", "patch", "blend", "--defenses", "pruning", "strip",
                 "--workers", "0", "--out", str(out), "--json", "--no-progress"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert _figures(printed) == _figures(result)
    assert main(["matrix", "--quick"]) == 2
    assert "--out: expected a results folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_status:
        main(["matrix", "--defenses", "nothing", "--out", str(out)])
    assert exit_status.value.code == 2 and "--defenses: invalid choice: 'nothing'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    out = tmp_path_factory.mktemp("matrix-dask")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        return run_matrix(tiny(out, scheduler=cluster.scheduler_address), progress=False)


def test_dask_local_cluster_runs_every_cell(remote):
    assert remote["executor"].startswith("Dask cluster at tcp://")
    assert [(cell["attack"], cell["defense"], cell["status"], cell["cached"]) for cell in remote["cells"]] == [
        ("patch", "pruning", "ok", False), ("patch", "strip", "ok", False), ("blend", "pruning", "ok", False),
        ("blend", "strip", "ok", False)]
    for cell in remote["cells"]:
        gain = max(0.0, cell["asr_before"] - cell["asr_after"])
        loss = max(0.0, cell["clean_accuracy_before"] - cell["clean_accuracy_after"])
        assert cell["der"] == pytest.approx((gain - loss + 1) / 2, abs=1e-12)


def test_dask_local_cluster_gives_the_local_figures(local, remote):
    _, result = local
    assert _figures(remote) == _figures(result)


def test_training_defenses_retrain_on_the_poisoned_set(local, tmp_path):
    out, result = local
    shutil.copytree(out / "cache", tmp_path / "cache")   # the BadNets and their poisoned training sets
    small = {"bagging": {"models": 2, "epochs": 1}, "dpa": {"models": 2, "epochs": 1},
             "dp-sgd": {"epochs": 1, "batch_size": 128, "target_epsilon": 8.0}}
    trained = run_matrix(tiny(tmp_path, attacks=("patch",), defenses=("bagging", "dpa", "dp-sgd"),
                              defense_overrides=small), progress=False)
    cells = {cell["defense"]: cell for cell in trained["cells"]}
    before = next(cell for cell in result["cells"] if cell["attack"] == "patch")
    for name, cell in cells.items():
        assert cell["status"] == "ok", (name, cell["error"])
        assert (cell["clean_accuracy_before"], cell["asr_before"]) == (before["clean_accuracy_before"],
                                                                       before["asr_before"])
        assert 0 <= cell["clean_accuracy_after"] <= 1 and 0 <= cell["asr_after"] <= 1
        assert cell["detection_rate"] is None
    assert cells["bagging"]["notes"] == {"models": 2} and cells["dpa"]["notes"] == {"models": 2}
    assert 0 < cells["dp-sgd"]["notes"]["epsilon"] <= 8.0


def test_training_defenses_need_a_training_set():
    ctx = matrix.CellContext(None, None, [], None, [], None, None, 10, 0, "", "ban")
    for name in ("inspection", "bagging", "dpa", "dp-sgd"):
        with pytest.raises(matrix.NotApplicable, match="no poisoned training set"):
            matrix.DEFENSES[name](ctx, matrix.defense_settings(name, tiny("unused")))


def test_a_defense_that_does_not_apply_is_n_a_and_cached(local, monkeypatch, tmp_path):
    out, _ = local
    shutil.copytree(out / "cache", tmp_path / "cache")
    monkeypatch.setattr(matrix, "run_attack", _refuse)

    def not_applicable(ctx, settings):
        raise matrix.NotApplicable("nothing to inspect here")

    monkeypatch.setitem(matrix.DEFENSES, "pruning", not_applicable)
    changed = {"pruning": {"drop": 7.0}}   # a cell the copied cache does not hold
    first = run_matrix(tiny(tmp_path, attacks=("patch",), defense_overrides=changed), progress=False)
    cell = next(cell for cell in first["cells"] if cell["defense"] == "pruning")
    assert (cell["status"], cell["error"], cell["cached"]) == ("n/a", "nothing to inspect here", False)
    assert "n/a: nothing to inspect here" in (tmp_path / "matrix.md").read_text()
    monkeypatch.setattr(matrix, "run_cell", _refuse)
    again = run_matrix(tiny(tmp_path, attacks=("patch",), defense_overrides=changed), progress=False)
    cell = next(cell for cell in again["cells"] if cell["defense"] == "pruning")
    assert (cell["status"], cell["cached"]) == ("n/a", True)
