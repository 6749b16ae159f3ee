"""Run independent jobs somewhere: in this process, in a local process pool, or on a Dask cluster.

One small interface for all three (:class:`Executor`): ``submit(tag, function, *args)`` queues a picklable
module-level function with picklable arguments, ``results()`` yields a :class:`JobResult` per job as the jobs
complete (in completion order, not submission order), and ``close()`` (or ``with``) releases the workers.
Submitting while iterating is allowed: the iteration also waits for jobs submitted after it began.

- :class:`InlineExecutor` (``workers=0``): runs each job in this process when it is submitted (tests and
  debugging; monkeypatching reaches it).
- :class:`LocalExecutor` (``workers >= 1``): a ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn``
  start method (no forked TensorFlow state), ``workers`` processes.
- :class:`DaskExecutor` (``scheduler="tcp://host:port"``, or a ``distributed.Client``): jobs run on the
  cluster's workers (``dask.distributed.Client(address)``). Needs the optional dependency
  ``pip install "goodnet[dask]"``; files a job reads or writes must be on storage the workers share.

A job that raises does not stop the others: its :class:`JobResult` carries ``error`` (the exception's type
and message, one line) and ``traceback`` instead of a ``value``. The error is caught inside the job
(:func:`call_job`), so an exception that cannot be pickled still comes back as text.

Example:
    >>> with make_executor(workers=2) as executor:
    ...     for number in range(4):
    ...         executor.submit(number, pow, number, 2)
    ...     print(sorted(result.value for result in executor.results()))
    [0, 1, 4, 9]
"""

import concurrent.futures
import dataclasses
import multiprocessing
import traceback as traceback_module

from goodnet.errors import OptionError

DASK_MISSING = ("--scheduler: needs the optional dependency dask[distributed] (pip install \"goodnet[dask]\" or "
                "pip install \"dask[distributed]>=2024.1\")")


@dataclasses.dataclass
class JobResult:
    """One finished job: its ``tag``, and either its ``value`` or its ``error`` (one line) and ``traceback``."""

    tag: object
    value: object = None
    error: str = None
    traceback: str = None

    @property
    def ok(self):
        return self.error is None


def call_job(function, args):
    """Run ``function(*args)`` and return ``("ok", value)`` or ``("error", one line, traceback text)``."""
    try:
        return ("ok", function(*args))
    except BaseException as error:   # noqa: B902 - a job's failure, whatever it is, is that job's result
        if isinstance(error, KeyboardInterrupt):
            raise
        lines = str(error).strip().splitlines()
        message = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        return ("error", message, traceback_module.format_exc())


def _result(tag, outcome):
    if outcome[0] == "ok":
        return JobResult(tag, value=outcome[1])
    return JobResult(tag, error=outcome[1], traceback=outcome[2])


class Executor:
    """The interface: ``submit(tag, function, *args)``, ``results()``, ``close()``; a context manager."""

    workers = 1
    where = ""

    def submit(self, tag, function, *args):
        raise NotImplementedError

    def results(self):
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def map(self, function, argument_lists):
        """Convenience: run ``function(*args)`` for every args tuple; the JobResults in submission order."""
        for index, args in enumerate(argument_lists):
            self.submit(index, function, *args)
        return sorted(self.results(), key=lambda result: result.tag)


class InlineExecutor(Executor):
    """Runs every job in this process, at submission."""

    workers = 0
    where = "this process"

    def __init__(self):
        self._done = []

    def submit(self, tag, function, *args):
        self._done.append(_result(tag, call_job(function, args)))

    def results(self):
        while self._done:
            yield self._done.pop(0)


class LocalExecutor(Executor):
    """A local pool of ``workers`` processes (spawn start method)."""

    def __init__(self, workers=1):
        if int(workers) < 1:
            raise OptionError(f"workers: expected at least 1 for a process pool, got {workers}")
        self.workers = int(workers)
        self.where = f"local process pool ({self.workers} worker{'s' if self.workers != 1 else ''}, spawn)"
        self._pool = concurrent.futures.ProcessPoolExecutor(self.workers,
                                                            mp_context=multiprocessing.get_context("spawn"))
        self._pending = {}

    def submit(self, tag, function, *args):
        self._pending[self._pool.submit(call_job, function, args)] = tag

    def results(self):
        while self._pending:
            done, _ = concurrent.futures.wait(list(self._pending), return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                tag = self._pending.pop(future)
                try:
                    outcome = future.result()
                except BaseException as error:   # the worker process died (killed, out of memory)
                    outcome = ("error", f"{type(error).__name__}: {str(error).strip() or 'worker failed'}",
                               traceback_module.format_exc())
                yield _result(tag, outcome)

    def close(self):
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(Executor):
    """Jobs on a Dask distributed cluster: a scheduler address (``tcp://host:port``) or a ``Client``."""

    def __init__(self, scheduler):
        try:
            import distributed
        except ImportError:
            raise OptionError(DASK_MISSING) from None
        self._distributed = distributed
        if isinstance(scheduler, distributed.Client):
            self._client, self._owned = scheduler, False
        else:
            self._client, self._owned = distributed.Client(scheduler), True
        self.workers = len(self._client.scheduler_info().get("workers", {}))
        self.where = f"Dask cluster at {self._client.scheduler.address} ({self.workers} workers)"
        self._pending = {}
        self._completed = distributed.as_completed()

    def submit(self, tag, function, *args):
        future = self._client.submit(call_job, function, args, pure=False)
        self._pending[future.key] = tag
        self._completed.add(future)

    def results(self):
        while self._pending:
            future = next(self._completed)
            tag = self._pending.pop(future.key)
            try:
                outcome = future.result()
            except BaseException as error:   # the worker died or the task was lost
                outcome = ("error", f"{type(error).__name__}: {str(error).strip() or 'task failed'}",
                           traceback_module.format_exc())
            future.release()
            yield _result(tag, outcome)

    def wait_for_workers(self, count=1, timeout=60.0):
        """Wait until the cluster has ``count`` workers; an OptionError (one line) after ``timeout`` seconds."""
        if self.workers >= count:
            return self
        try:
            self._client.wait_for_workers(count, timeout=timeout)
        except (TimeoutError, OSError):
            raise OptionError(f"--scheduler: the Dask cluster at {self._client.scheduler.address} has "
                              f"{self.workers} workers after {timeout:g} s, expected at least {count}") from None
        self.workers = len(self._client.scheduler_info().get("workers", {}))
        self.where = f"Dask cluster at {self._client.scheduler.address} ({self.workers} workers)"
        return self

    def close(self):
        if self._owned:
            self._client.close()


def make_executor(scheduler=None, workers=1):
    """The executor for a scheduler address (Dask), else a local pool of ``workers`` (0: this process)."""
    if scheduler:
        return DaskExecutor(scheduler)
    if int(workers) == 0:
        return InlineExecutor()
    return LocalExecutor(workers)
