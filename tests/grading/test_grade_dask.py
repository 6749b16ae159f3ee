"""Tests of ``goodnet grade`` on a Dask cluster (GradeOptions.scheduler, ``--scheduler``): a LocalCluster of two
worker processes on this machine gives exactly the local run's rows, the cache does not depend on where a job ran,
and a misconfiguration (no ``distributed``, no scheduler, files the workers do not see) is one line."""

import json
import shutil
import socket

import pytest

from goodnet.files import json_default
from goodnet.grading import Grader, Limits
from grading_helpers import REAL, make_lambda_keras, make_small_model

distributed = pytest.importorskip("distributed")

LIMITS = Limits(seconds=60, memory_mb=3000)
TIMINGS = ("seconds", "peak_memory_mb", "cached")
# What each submission's row says, in both runs (status, part of the reason).
EXPECTED = {
    REAL[0]: ("ok", ""),
    "small.keras": ("ok", ""),
    "not_hdf5.h5": ("error", "not an HDF5 file"),
    "wrong_input.h5": ("error", "input: expected images of shape (55, 47, 3)"),
    "lambda.keras": ("refused", "Lambda layers carry Python code"),
    ".hidden.h5": ("refused", "a hidden name"),            # refused before any worker
}


@pytest.fixture(scope="module")
def tiny_folder(shared, tmp_path_factory):
    """One real model, one tiny model and four bad entries: two fail on a worker, one is refused there, one before."""
    folder = tmp_path_factory.mktemp("dask_submissions")
    shutil.copyfile(shared / "models" / "peer_repaired" / REAL[0], folder / REAL[0])
    make_small_model(folder / "small.keras", input_shape=(55, 47, 3))
    (folder / "not_hdf5.h5").write_text("this is not an HDF5 file\n")
    make_small_model(folder / "wrong_input.h5", input_shape=(32, 32, 3))
    make_lambda_keras(folder / "lambda.keras", tmp_path_factory.mktemp("dask_markers") / "payload_ran")
    (folder / ".hidden.h5").write_text("hidden\n")
    return folder


def _local_cluster():
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes started with ``distributed.worker.daemon: False``: jobs run in the worker itself.
    A task whose worker dies is not retried (``allowed-failures: 0``), for the test of a dying worker."""
    import dask

    with dask.config.set({"distributed.worker.daemon": False, "distributed.scheduler.allowed-failures": 0}):
        local_cluster = _local_cluster()
    with local_cluster:
        yield local_cluster


def _grader(lab_data, **options):
    return Grader(lab_data["clean"], [lab_data["poisoned"]], validation=lab_data["validation"], limits=LIMITS,
                  workers=2, threads=1, progress=False, **options)


def _comparable(rows):
    """The rows as JSON would carry them, without their timings."""
    rows = json.loads(json.dumps(rows, default=json_default))
    return {row["submission"]: {key: value for key, value in row.items() if key not in TIMINGS} for row in rows}


@pytest.fixture(scope="module")
def local_run(tiny_folder, lab_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grades_local")
    return {"board": _grader(lab_data).grade(tiny_folder, out), "out": out}


@pytest.fixture(scope="module")
def dask_run(tiny_folder, lab_data, cluster, tmp_path_factory):
    """The same grading through ``goodnet grade --scheduler`` (end to end, JSON out)."""
    import contextlib
    import io

    from goodnet.cli import main

    out = tmp_path_factory.mktemp("grades_dask")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["grade", str(tiny_folder), "--clean", str(lab_data["clean"]), "--poisoned",
                     str(lab_data["poisoned"]), "--validation", str(lab_data["validation"]), "--time-limit", "60",
                     "--memory-mb", "3000", "--threads", "1", "--scheduler", cluster.scheduler_address,
                     "--out", str(out), "--json", "--no-progress"])
    return {"code": code, "document": json.loads(printed.getvalue()), "out": out}


def _daemonic(cluster):
    import multiprocessing

    with distributed.Client(cluster) as client:
        return set(client.run(lambda: multiprocessing.current_process().daemon).values())


def test_default_daemonic_workers_give_the_local_rows_through_a_fresh_interpreter(local_run, lab_data,
                                                                                   tiny_folder, tmp_path):
    """Dask's default workers are daemonic (multiprocessing refuses them children): each job then goes through
    a fresh interpreter, with the same row (one job: each pays an interpreter start and the TensorFlow import)."""
    names = ["small.keras"]
    with _local_cluster() as default_cluster:
        assert _daemonic(default_cluster) == {True}
        board = _grader(lab_data, scheduler=default_cluster.scheduler_address).grade(
            [str(tiny_folder / name) for name in names], tmp_path)
    local = _comparable(local_run["board"].rows)
    rows = _comparable(board.rows)
    assert set(rows) == set(names)
    for name in names:   # a row's rank depends on the others graded with it
        assert {**rows[name], "rank": None} == {**local[name], "rank": None}


def test_scheduler_flag_gives_exactly_the_local_rows(local_run, dask_run, cluster):
    assert dask_run["code"] == 0
    assert _daemonic(cluster) == {False}
    local = _comparable(local_run["board"].rows)
    remote = _comparable(dask_run["document"]["submissions"])
    assert set(local) == set(EXPECTED)
    for name, (status, reason) in EXPECTED.items():
        assert local[name]["status"] == status and reason in local[name]["error"], (name, local[name])
    assert remote == local
    assert [row["submission"] for row in dask_run["document"]["submissions"]] == [
        row["submission"] for row in local_run["board"].rows]                      # the same ranking
    assert not any(row["cached"] for row in dask_run["document"]["submissions"])
    assert all(row["seconds"] > 0 for row in dask_run["document"]["submissions"] if row["sha256"])


def test_cache_written_by_the_cluster_serves_a_local_run(dask_run, local_run, tiny_folder, lab_data, tmp_path,
                                                         monkeypatch):
    out = tmp_path / "grades"
    shutil.copytree(dask_run["out"], out)

    def no_run(jobs, *args, **kwargs):
        assert not jobs, "a cached submission was scored again"
        return {}

    monkeypatch.setattr("goodnet.grading.runner.run_jobs", no_run)
    board = _grader(lab_data).grade(tiny_folder, out)
    assert all(row["cached"] for row in board.rows if row["sha256"])
    assert _comparable(board.rows) == _comparable(local_run["board"].rows)


def test_failed_cluster_jobs_are_their_rows_and_files_the_workers_miss_are_setup(cluster, lab_data, tmp_path):
    from goodnet.grading.runner import run_jobs_on_cluster

    grader = _grader(lab_data)
    (tmp_path / "model.h5").write_text("a model\n")
    real = grader._job(str(tmp_path / "model.h5"), grader._options(), "submission")
    broken = {key: value for key, value in real.items() if key != "sha256"}          # raises on the worker
    broken["key"] = "broken"
    unseen = dict(real, key="unseen", clean=str(tmp_path / "elsewhere" / "test.h5"))
    changed = dict(real, key="changed", sha256="0" * 64)
    results = run_jobs_on_cluster([broken, unseen, changed], LIMITS, cluster.scheduler_address)
    assert results["broken"]["status"] == "crashed" and "the Dask job failed: KeyError" in results["broken"]["error"]
    assert results["unseen"]["status"] == "setup"
    assert "test.h5: not found on the Dask worker" in results["unseen"]["error"]
    assert "storage the workers share" in results["unseen"]["error"]
    assert results["changed"]["status"] == "setup" and "differs on the Dask worker" in results["changed"]["error"]


def _cli(tiny_folder, lab_data, out, scheduler, capsys):
    from goodnet.cli import main

    code = main(["grade", str(tiny_folder), "--clean", str(lab_data["clean"]), "--poisoned",
                 str(lab_data["poisoned"]), "--scale", "raw", "--scheduler", scheduler, "--out", str(out),
                 "--no-progress"])
    return code, capsys.readouterr().err


def test_missing_distributed_is_a_one_line_error_exit_2(tiny_folder, lab_data, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)   # import distributed -> ImportError
    code, error = _cli(tiny_folder, lab_data, tmp_path / "out", "tcp://127.0.0.1:1", capsys)
    assert code == 2 and error.count("\n") == 1, error
    assert "--scheduler: needs the optional dependency dask[distributed]" in error


def test_unreachable_scheduler_is_a_one_line_error_exit_2(tiny_folder, lab_data, tmp_path, capsys):
    import dask

    with socket.socket() as probe:   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code, error = _cli(tiny_folder, lab_data, tmp_path / "out", f"tcp://127.0.0.1:{port}", capsys)
    assert code == 2 and error.count("\n") == 1, error
    assert f"--scheduler tcp://127.0.0.1:{port}: cannot reach the Dask scheduler" in error


def test_cluster_without_workers_is_a_one_line_error_exit_2(tiny_folder, lab_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("goodnet.grading.runner.WORKER_WAIT_SECONDS", 1.0)
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as empty:
        code, error = _cli(tiny_folder, lab_data, tmp_path / "out", empty.scheduler_address, capsys)
    assert code == 2 and error.count("\n") == 1, error
    assert "has 0 workers after 1 s, expected at least 1" in error


def test_help_says_the_files_must_be_shared(capsys):
    from goodnet.cli import main

    with pytest.raises(SystemExit):
        main(["grade", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--scheduler ADDRESS" in text and "storage the workers share" in text


def test_a_job_whose_worker_dies_is_its_crashed_row_and_the_others_finish(cluster, lab_data, tmp_path):
    """Last in the file: it kills a worker of the module's cluster (its nanny starts a fresh one)."""
    from goodnet.grading.runner import run_jobs_on_cluster

    def kill_on_dies():   # on every worker: the job keyed "dies" ends its worker process
        import os

        import goodnet.grading.runner as runner

        original = runner.run_job_isolated

        def run_job_isolated(job, *args):
            if job["key"] == "dies":
                os._exit(3)
            return original(job, *args)

        runner.run_job_isolated = run_job_isolated

    grader = _grader(lab_data)
    (tmp_path / "model.h5").write_text("a model\n")
    real = grader._job(str(tmp_path / "model.h5"), grader._options(), "submission")
    jobs = [dict(real, key="dies"), dict(real, key="unseen", clean=str(tmp_path / "elsewhere" / "test.h5"))]
    with distributed.Client(cluster) as client:
        client.run(kill_on_dies)
        results = run_jobs_on_cluster(jobs, LIMITS, cluster.scheduler_address)
    assert results["dies"]["status"] == "crashed", results["dies"]
    assert results["dies"]["error"].startswith("the Dask job failed: KilledWorker")
    assert results["unseen"]["status"] == "setup"
