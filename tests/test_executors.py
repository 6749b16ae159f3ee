"""goodnet.executors: this process, a local spawn pool and a Dask LocalCluster give the same results; a job's
error comes back as that job's error and does not stop the others."""

import operator

import pytest

from goodnet.errors import OptionError
from goodnet.executors import DaskExecutor, InlineExecutor, LocalExecutor, call_job, make_executor

# stdlib functions: importable in every worker, whatever its sys.path
JOBS = [(operator.truediv, (7, 2)), (operator.truediv, (1, 0)), (pow, (3, 4)), (operator.truediv, (9, 3))]


def _run(executor):
    with executor:
        for tag, (function, args) in enumerate(JOBS):
            executor.submit(tag, function, *args)
        return {result.tag: (result.value, result.error) for result in executor.results()}


def _expected():
    expected = {}
    for tag, (function, args) in enumerate(JOBS):
        try:
            expected[tag] = (function(*args), None)
        except ZeroDivisionError as error:
            expected[tag] = (None, f"ZeroDivisionError: {error}")
    return expected


def test_call_job_catches_the_error_as_one_line_and_its_traceback():
    assert call_job(pow, (2, 5)) == ("ok", 32)
    status, message, trace = call_job(operator.truediv, (1, 0))
    assert (status, message) == ("error", "ZeroDivisionError: division by zero")
    assert "Traceback" in trace and "ZeroDivisionError" in trace


def test_inline_and_local_pool_agree_and_report_the_failing_job():
    inline = _run(InlineExecutor())
    assert inline == _expected()
    assert inline[1] == (None, "ZeroDivisionError: division by zero")
    assert _run(LocalExecutor(2)) == inline


def test_submitting_while_iterating_is_waited_for():
    with make_executor(workers=1) as executor:
        executor.submit("first", pow, 2, 3)
        seen = []
        for result in executor.results():
            seen.append((result.tag, result.value))
            if result.tag == "first":
                executor.submit("second", pow, result.value, 2)
    assert seen == [("first", 8), ("second", 64)]


def test_dask_local_cluster_gives_the_local_results():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        executor = make_executor(scheduler=cluster.scheduler_address)
        assert isinstance(executor, DaskExecutor) and executor.workers == 2
        assert _run(executor) == _expected()


def test_bad_worker_count_is_a_one_line_error():
    with pytest.raises(OptionError, match="workers: expected at least 1"):
        LocalExecutor(0)


def test_missing_dask_is_a_one_line_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)   # import distributed -> ImportError
    with pytest.raises(OptionError, match=r"^--scheduler: needs the optional dependency dask\[distributed\]"):
        make_executor(scheduler="tcp://127.0.0.1:1")
