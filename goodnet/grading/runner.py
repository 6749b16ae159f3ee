"""The grader's parent side: :class:`Grader`, its :class:`Limits` and :class:`GradeOptions`, one process per
submission, the cache.

Every submission is scored in a process of its own (:mod:`goodnet.grading.worker`,
started by :func:`run_jobs` through a multiprocessing context, never imported
here), under a wall-time limit and a memory limit; a broken, malicious, huge
or never-ending file only ever costs its own limits. The process runs in its
own session (killed as a process group), with an address-space cap and no
core dumps; the parent polls its private resident memory and kills it above
the limit, and kills it at the time limit. With "forkserver" isolation the
worker and TensorFlow are imported once, in a fork server that never opens a
submission; the parent itself never imports TensorFlow.

Results are cached by the SHA-256 of the file and of everything else that
affects the score (the data files, scale, number of classes, execution
settings, :data:`GRADER_VERSION`), so a re-run scores only new or changed
files; a limit stop is scored again under larger limits, a crash always.

With a Dask scheduler address (``GradeOptions.scheduler``, ``--scheduler
tcp://host:port``) each submission is one job on that cluster
(:func:`run_jobs_on_cluster`, through :mod:`goodnet.executors`): on the worker,
:func:`run_job_isolated` runs :func:`run_jobs` for that one job, so it is
still scored in its own isolated process under the same limits; the result
comes back and this process writes the cache and the scoreboard. Dask's
worker processes are daemonic by default, and multiprocessing refuses to start
children from one: there the job goes through a fresh interpreter
(``subprocess``), which pays the interpreter start and the TensorFlow import
per submission; workers started with ``distributed.worker.daemon: False``
(``DASK_DISTRIBUTED__WORKER__DAEMON=False``) run it in the worker itself,
whose fork server then imports TensorFlow once per worker. The data files and the submissions must be on storage the workers
share, under the same absolute paths (a worker that does not see a file, or
sees a different model file, is a one-line "setup" error); the cache key does
not depend on where a job ran.

The entries are found and checked by :mod:`goodnet.grading.entries` before
any process starts; the rows, score and files come from
:mod:`goodnet.grading.scoreboard`.
"""

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time

from goodnet.base import InstanceOf, Interval, OneOf
from goodnet.errors import OptionError
from goodnet.files import sha256_file, write_text
from goodnet.grading.entries import MODEL_SUFFIXES, read_entry, submission_entries
from goodnet.grading.scoreboard import Scoreboard, rank_rows, result_row
from goodnet.models import DEFAULT_SCALE, LAB_CLASSES, SCALE_CHOICES, ModelError
from goodnet.options import option

logger = logging.getLogger(__name__)

GRADER_VERSION = 1
STATUSES = ("ok", "refused", "error", "timeout", "memory", "crashed", "setup")
# "setup": the grader's own settings cannot run on this machine (e.g. more devices than TensorFlow sees):
# never cached, reported as the command's error.
ISOLATIONS = ("forkserver", "spawn")
# Address space TensorFlow maps without using it (measured: ~1.7 GB after import).
ADDRESS_SPACE_HEADROOM_MB = 2048
POLL_SECONDS = 0.1
# Imported once by the fork server, so that no submission's clock includes them (the worker imports TensorFlow).
PRELOAD_MODULES = ["goodnet.grading.worker", "goodnet.grading.runner", "goodnet.models", "goodnet.metrics",
                   "goodnet.data"]
# On a Dask worker: time allowed beyond the time limit for the fresh interpreter's start and its fork server's
# TensorFlow import, before that interpreter is killed (it enforces the limits itself; this only stops a hang).
REMOTE_MARGIN_SECONDS = 600.0
# How long the parent waits for a Dask cluster without workers to get one.
WORKER_WAIT_SECONDS = 60.0
# What the fresh interpreter on a Dask worker runs (argv: the request file, the result file).
REMOTE_MAIN = "from goodnet.grading.runner import _remote_main; _remote_main()"


def _positive_float(value):
    """The ``--time-limit`` flag's conversion: a number above 0 (argparse reports the message)."""
    import argparse

    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return number


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-submission limits (``goodnet grade``'s ``--time-limit`` and ``--memory-mb``).

    Attributes:
        seconds: wall-clock limit of one submission's process (start to exit).
        memory_mb: private resident memory limit of that process (MiB).
    """

    seconds: float = option(600.0, "wall-time limit per submission", rule=Interval(float, 0.0, closed="neither"),
                            flag="--time-limit", dest="time_limit", type=_positive_float, metavar="SECONDS")
    memory_mb: int = option(4096, "memory limit per submission in MiB", rule=Interval(int, 1))


@dataclasses.dataclass(frozen=True)
class GradeOptions:
    """How :class:`Grader` scores and schedules the submissions: its defaults and ``goodnet grade``'s flags, once."""

    scale: str = option(DEFAULT_SCALE, "input scaling of every model (auto: stored in the file, else chosen on "
                                "--validation, else raw)", rule=OneOf(SCALE_CHOICES))
    workers: int = option(2, "submissions scored in parallel", rule=Interval(int, 1))
    batch_size: int = option(256, "images per inference call", rule=Interval(int, 1))
    threads: int = option(None, "TensorFlow threads per submission", rule=Interval(int, 1), allow_none=True,
                          default_text="cores / workers")
    isolation: str = option("forkserver", "forkserver: fork each submission's process from a server that preloaded "
                                          "TensorFlow (fast); spawn: a fresh interpreter per submission",
                            rule=OneOf(ISOLATIONS))
    scheduler: str = option(None, "a Dask scheduler address (tcp://host:port): score each submission on that "
                                  "cluster, still in its own process under the same limits; the data files and the "
                                  "submissions must be on storage the workers share, under the same paths; "
                                  "workers started with DASK_DISTRIBUTED__WORKER__DAEMON=False import TensorFlow "
                                  "once, daemonic ones once a submission (--workers is then unused)",
                            rule=InstanceOf(str), allow_none=True, metavar="ADDRESS", default_text="none: local")


def _private_memory_mb(pid):
    """Resident memory that the process does not share with its parent, in MiB (None if gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            kilobytes = sum(int(line.split()[1]) for line in handle
                            if line.startswith(("Private_Clean:", "Private_Dirty:")))
        return kilobytes / 1024.0
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024.0
    except (OSError, ValueError, StopIteration):
        return None


def _kill_group(process):
    import signal

    for kill in (lambda: os.killpg(process.pid, signal.SIGKILL), lambda: os.kill(process.pid, signal.SIGKILL)):
        try:
            kill()
            break
        except (ProcessLookupError, PermissionError):
            continue
    process.join(5)


def _context(isolation):
    import multiprocessing

    if isolation not in ISOLATIONS:
        raise OptionError(f"isolation: expected one of {ISOLATIONS}, got {isolation!r}")
    context = multiprocessing.get_context(isolation)
    if isolation == "forkserver":
        context.set_forkserver_preload(PRELOAD_MODULES)
    return context


def _log_tail(log_path, lines=3):
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            text = [line.strip() for line in handle.read()[-4000:].splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[:400]


class _Running:
    """One submission's process and what the parent knows about it."""

    def __init__(self, job, context, work_dir, limits):
        self.job = job
        self.limits = limits
        stem = job["key"][:24]
        self.result_path = os.path.join(work_dir, f"{stem}.result.json")
        self.log_path = os.path.join(work_dir, f"{stem}.log")
        for stale in (self.result_path, self.log_path):
            if os.path.exists(stale):
                os.remove(stale)
        self.process = context.Process(
            target=_child_entry, daemon=False,
            args=(job, self.result_path, self.log_path, limits.memory_mb, ADDRESS_SPACE_HEADROOM_MB))
        self.started = time.monotonic()
        self.process.start()
        self.peak_mb = 0.0
        self.outcome = None

    def poll(self):
        """Return the result dict once the process has ended or been stopped, else None."""
        elapsed = time.monotonic() - self.started
        if self.process.exitcode is None:
            memory = _private_memory_mb(self.process.pid)
            if memory is not None:
                self.peak_mb = max(self.peak_mb, memory)
            if self.limits.memory_mb and memory is not None and memory > self.limits.memory_mb:
                _kill_group(self.process)
                return self._finish({"status": "memory", "error": f"stopped: memory above the limit of "
                                     f"{self.limits.memory_mb} MiB ({memory:.0f} MiB)"}, elapsed)
            if elapsed > self.limits.seconds:
                _kill_group(self.process)
                return self._finish({"status": "timeout", "error": f"stopped: still running after the time limit "
                                     f"of {self.limits.seconds:g} s"}, elapsed)
            return None
        self.process.join()
        _kill_group_quietly(self.process.pid)
        return self._finish(self._read_result(), elapsed)

    def _read_result(self):
        try:
            with open(self.result_path, encoding="utf-8") as handle:
                result = json.load(handle)
            if not isinstance(result, dict) or result.get("status") not in STATUSES:
                raise OptionError("malformed result")
            return result
        except (OSError, ValueError):
            code = self.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            tail = _log_tail(self.log_path)
            return {"status": "crashed", "error": f"the grading process died ({how}) without a result"
                                                  + (f": {tail}" if tail else "")}

    def _finish(self, result, elapsed):
        result["seconds"] = round(elapsed, 3)
        result["peak_memory_mb"] = round(self.peak_mb, 1)
        result["limits"] = dataclasses.asdict(self.limits)
        self.outcome = result
        # The result is cached by the caller; a failed submission's log stays for inspection.
        for done in (self.result_path,) + ((self.log_path,) if result["status"] == "ok" else ()):
            if os.path.exists(done):
                os.remove(done)
        return result


def _child_entry(*args):
    """Process target: imports the worker (and TensorFlow) only in the child, never in the parent."""
    from goodnet.grading.worker import child_main

    child_main(*args)


def _warm_up(context):
    """Start the fork server and wait until its preloading (the TensorFlow import) is done.

    Without this the first submissions' clocks would include that import.
    """
    process = context.Process(target=_noop)
    process.start()
    process.join()


def _noop():
    return None


def _kill_group_quietly(pid):
    """Kill what the submission's process may have left in its group (it has exited)."""
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_jobs(jobs, limits, workers=GradeOptions.workers, isolation=GradeOptions.isolation, work_dir=".",
             progress=None):
    """Run one isolated process per job, at most ``workers`` at a time.

    Args:
        jobs: list of job dicts (see :func:`goodnet.grading.worker.evaluate_submission`)
            each with a unique ``key``.
        limits: :class:`Limits` for every job.
        workers: parallel processes.
        isolation: "forkserver" (fork of a server that preloaded TensorFlow)
            or "spawn" (a fresh interpreter per submission).
        work_dir: folder for result and log files.
        progress: progress bar setting (see :func:`goodnet.inference.progress_bar`).

    Returns:
        dict: job key -> result dict (``status``, ``error``, ``seconds``,
        ``peak_memory_mb`` and the figures).
    """
    from goodnet.inference import progress_bar

    context = _context(isolation)
    os.makedirs(work_dir, exist_ok=True)
    if jobs and isolation == "forkserver":
        _warm_up(context)
    pending = list(jobs)
    running = []
    results = {}
    with progress_bar(len(jobs), "grade", progress, unit="model") as bar:
        try:
            while pending or running:
                while pending and len(running) < workers:
                    running.append(_Running(pending.pop(0), context, work_dir, limits))
                for entry in list(running):
                    result = entry.poll()
                    if result is not None:
                        results[entry.job["key"]] = result
                        running.remove(entry)
                        bar.update(1)
                        logger.info("%s: %s in %.1f s", entry.job["path"], result["status"], result["seconds"])
                if running:
                    time.sleep(POLL_SECONDS)
        finally:
            for entry in running:
                _kill_group(entry.process)
    return results


def _failed(status, error, limits):
    """A result dict for a job that produced none (the same keys as :func:`run_jobs`'s)."""
    return {"status": status, "error": error, "seconds": 0.0, "peak_memory_mb": 0.0,
            "limits": dataclasses.asdict(limits)}


def _shared_storage_problem(job):
    """Why this machine cannot run ``job`` as the parent hashed it (a file missing or different), else None."""
    import socket

    where = f"on the Dask worker {socket.gethostname()}"
    for path in [job["path"], job["clean"], *job["poisoned"], job.get("validation")]:
        if path and not os.path.isfile(path):
            return (f"{path}: not found {where}: the data files and the submissions must be on storage the "
                    "workers share, under the same paths")
    if sha256_file(job["path"]) != job["sha256"]:
        return (f"{job['path']}: differs {where} from the file hashed by the grader: the submissions must be on "
                "storage the workers share")
    return None


def run_job_isolated(job, limits, isolation=GradeOptions.isolation):
    """Score ONE job in its own isolated process (:func:`run_jobs`): what a Dask worker runs.

    In a process that may have children (a Dask worker started with ``distributed.worker.daemon: False``)
    :func:`run_jobs` runs here, and the fork server it starts stays for the worker's next jobs. A Dask worker
    is a daemonic process by default, and multiprocessing refuses to start children from one; there this
    starts ``python -c REMOTE_MAIN`` with :mod:`subprocess`, and that interpreter runs :func:`run_jobs` for
    the job. Either way: the same isolation, limits and result. The job's files must be on this machine under
    the job's absolute paths (else a "setup" result).

    Args:
        job: one job dict of :meth:`Grader._job` (absolute paths).
        limits: :class:`Limits`.
        isolation: "forkserver" or "spawn" (see :func:`run_jobs`).

    Returns:
        dict: the job's result dict, as :func:`run_jobs` gives it; "crashed" if the interpreter ended
        without one.
    """
    import multiprocessing
    import socket
    import subprocess
    import tempfile

    import goodnet

    problem = _shared_storage_problem(job)
    if problem:
        return _failed("setup", problem, limits)
    if not multiprocessing.current_process().daemon:
        with tempfile.TemporaryDirectory(prefix="goodnet-grade-") as folder:
            return run_jobs([job], limits, 1, isolation, folder, progress=False)[job["key"]]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(goodnet.__file__)))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root] + [part for part in os.environ.get("PYTHONPATH", "").split(os.pathsep) if part]))
    with tempfile.TemporaryDirectory(prefix="goodnet-grade-") as folder:
        request, answer, log_path = (os.path.join(folder, name) for name in ("job.json", "result.json", "log"))
        with open(request, "w", encoding="utf-8") as handle:
            json.dump({"job": job, "limits": dataclasses.asdict(limits), "isolation": isolation,
                       "work_dir": os.path.join(folder, "work")}, handle)
        with open(log_path, "wb") as log:
            try:
                completed = subprocess.run([sys.executable, "-c", REMOTE_MAIN, request, answer],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           env=environment, timeout=limits.seconds + REMOTE_MARGIN_SECONDS)
            except subprocess.TimeoutExpired:
                return _failed("crashed", f"the grading interpreter on {socket.gethostname()} did not end within "
                                          f"{limits.seconds + REMOTE_MARGIN_SECONDS:g} s", limits)
        try:
            with open(answer, encoding="utf-8") as handle:
                result = json.load(handle)
            if not isinstance(result, dict) or result.get("status") not in STATUSES:
                raise ValueError("malformed result")
            return result
        except (OSError, ValueError):
            tail = _log_tail(log_path)
            return _failed("crashed", f"the grading interpreter on {socket.gethostname()} ended (exit code "
                                      f"{completed.returncode}) without a result" + (f": {tail}" if tail else ""),
                           limits)


def _remote_main(argv=None):
    """The fresh interpreter of :func:`run_job_isolated`: run the request's one job and write its result."""
    request_path, result_path = argv or sys.argv[1:]
    with open(request_path, encoding="utf-8") as handle:
        request = json.load(handle)
    job = request["job"]
    results = run_jobs([job], Limits(**request["limits"]), 1, request["isolation"], request["work_dir"],
                       progress=False)
    write_text(result_path, json.dumps(results[job["key"]]))


def run_jobs_on_cluster(jobs, limits, scheduler, isolation=GradeOptions.isolation, progress=None, executor=None):
    """Run every job on a Dask cluster, one :func:`run_job_isolated` each: :func:`run_jobs`'s results.

    Args:
        jobs, limits, isolation, progress: as :func:`run_jobs`.
        scheduler: the Dask scheduler address (``tcp://host:port``).
        executor: a :class:`goodnet.executors.Executor` to use instead (tests); it is not closed.

    Returns:
        dict: job key -> result dict. A job that fails on the cluster (its worker died, an error) is that
        job's "crashed" result; the others finish.

    Raises:
        OptionError: ``distributed`` is not installed, the scheduler cannot be reached, or the cluster has
            no worker after :data:`WORKER_WAIT_SECONDS`.
    """
    import contextlib

    from goodnet.executors import make_executor
    from goodnet.inference import progress_bar

    if not jobs:
        return {}
    with contextlib.ExitStack() as stack:
        if executor is None:
            try:
                executor = make_executor(scheduler=scheduler)
            except OSError as error:   # includes TimeoutError: nothing answers at that address
                lines = str(error).strip().splitlines()
                raise OptionError(f"--scheduler {scheduler}: cannot reach the Dask scheduler"
                                  + (f" ({lines[0]})" if lines else "")) from None
            stack.enter_context(executor)
            executor.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        by_key = {}
        for job in jobs:
            remote = dict(job, path=os.path.abspath(job["path"]))   # the workers' cwd is not ours
            by_key[job["key"]] = (job, remote)
            executor.submit(job["key"], run_job_isolated, remote, limits, isolation)
        results = {}
        with progress_bar(len(jobs), "grade", progress, unit="model") as bar:
            for outcome in executor.results():
                job, remote = by_key[outcome.tag]
                if outcome.ok:
                    result = outcome.value
                    if remote["path"] != job["path"] and result.get("error"):   # as a local run words it
                        result["error"] = result["error"].replace(f"{remote['path']}: ", f"{job['path']}: ")
                else:
                    result = _failed("crashed", f"the Dask job failed: {outcome.error}", limits)
                results[outcome.tag] = result
                bar.update(1)
                logger.info("%s: %s in %.1f s (%s)", job["path"], result["status"], result["seconds"],
                            executor.where)
    return results


def _cache_path(cache_dir, key):
    return os.path.join(cache_dir, f"{key}.json")


def _cache_lookup(cache_dir, key, limits):
    """A cached result, unless it was a limit stop that larger limits might change."""
    try:
        with open(_cache_path(cache_dir, key), encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError):
        return None
    stored = result.get("limits", {})
    if result.get("status") == "timeout" and limits.seconds > stored.get("seconds", 0):
        return None
    if result.get("status") == "memory" and limits.memory_mb > stored.get("memory_mb", 0):
        return None
    if result.get("status") == "crashed":
        return None
    return result


def _data_entry(path, num_classes):
    from goodnet.data import LabFile

    with LabFile(path, num_classes=num_classes) as lab:
        count = len(lab)
    return {"path": os.path.abspath(path), "sha256": sha256_file(path), "images": count}


class Grader:
    """Score many submitted model files on the same data, each in its own process.

    Args:
        clean: the clean test file (lab layout).
        poisoned: poisoned test files (labels = the attack's target).
        validation: optional clean file used ONLY to pick the input scaling
            of models that do not store it (``scale="auto"``); never the test
            data.
        baseline: optional model file (the BadNet before defense) for DER.
        scale: "auto", "raw" or "unit" for every submission (see :class:`GradeOptions`).
        num_classes: N; a model must have N or N+1 outputs.
        limits: :class:`Limits` per submission.
        workers, isolation ("forkserver" or "spawn", see :func:`run_jobs`), batch_size
            (images per inference call), threads (TensorFlow threads per submission;
            None: cores / workers of this machine), scheduler (a Dask scheduler address: the
            submissions run on that cluster, see :func:`run_jobs_on_cluster`; the data files and
            the submissions must then be on storage the workers share): see :class:`GradeOptions`,
            whose defaults they take.
        use_cache: reuse results cached by content hash.
        progress: progress bar setting.
        execution: a :class:`goodnet.inference.Execution`: where each
            submission's inference runs (device, devices split with
            MirroredStrategy, mixed precision, XLA); default: one device, float32.
            It is part of the cache key. A mixed precision's effect is
            measured per submission (``precision_report``: top-1 agreement
            with float32 on a clean sample).

    Example:
        >>> grader = Grader("test.h5", ["bd_test.h5"], baseline="models/bd_net.h5")
        >>> board = grader.grade("submissions/", "grades/")
        >>> board.rows[0]["submission"], board.rows[0]["score"]
    """

    def __init__(self, clean, poisoned, validation=None, baseline=None, scale=GradeOptions.scale,
                 num_classes=LAB_CLASSES, limits=None, workers=GradeOptions.workers, isolation=GradeOptions.isolation,
                 batch_size=GradeOptions.batch_size, threads=GradeOptions.threads, use_cache=True, progress=None,
                 execution=None, scheduler=GradeOptions.scheduler):
        self.clean = clean
        self.poisoned = poisoned
        self.validation = validation
        self.baseline = baseline
        self.scale = scale
        self.num_classes = num_classes
        self.limits = limits
        self.workers = workers
        self.isolation = isolation
        self.batch_size = batch_size
        self.threads = threads
        self.use_cache = use_cache
        self.progress = progress
        self.execution = execution
        self.scheduler = scheduler

    def _check(self):
        if self.scale not in SCALE_CHOICES:
            raise OptionError(f"scale: expected 'auto', 'raw' or 'unit', got {self.scale!r}")
        if not self.poisoned:
            raise OptionError("poisoned: expected at least one poisoned test file")
        if int(self.workers) < 1:
            raise OptionError(f"workers: expected a positive number, got {self.workers}")
        if self.isolation not in ISOLATIONS:
            raise OptionError(f"isolation: expected one of {ISOLATIONS}, got {self.isolation!r}")
        if self.scheduler is not None and not (isinstance(self.scheduler, str) and self.scheduler.strip()):
            raise OptionError(f"scheduler: expected a Dask scheduler address (tcp://host:port), got "
                              f"{self.scheduler!r}")
        if self.baseline is not None and not os.path.isfile(self.baseline):
            raise OptionError(f"{self.baseline}: baseline model file not found")
        from goodnet.inference import Execution

        if self.execution is not None and not isinstance(self.execution, Execution):
            raise TypeError(f"execution: expected a goodnet.inference.Execution, got {type(self.execution).__name__}")

    def _execution_settings(self):
        from goodnet.inference import Execution

        return (self.execution or Execution()).as_dict()

    def _options(self):
        """Everything besides the model file that affects a score (part of the cache key)."""
        return {
            "grader_version": GRADER_VERSION,
            "clean": _data_entry(self.clean, self.num_classes),
            "poisoned": [_data_entry(path, self.num_classes) for path in self.poisoned],
            "validation": _data_entry(self.validation, self.num_classes) if self.validation else None,
            "scale": self.scale,
            "num_classes": int(self.num_classes),
            "execution": self._execution_settings(),
        }

    def _own_files(self):
        """The grader's data and baseline files, by what they are: never graded as submissions."""
        files = {}
        for path, role in ([(self.clean, "the clean test file")]
                           + [(path, "a poisoned test file") for path in self.poisoned]
                           + [(self.validation, "the validation file"), (self.baseline, "the baseline model")]):
            if path:
                files.setdefault(os.fspath(path), role)
        return files

    def _job(self, path, options, role, entry=None):
        """The worker's job for the model file ``path``; ``entry``: its read :class:`Entry` (hash, listed path)."""
        digest = entry.sha256 if entry is not None else sha256_file(path)
        key_source = json.dumps({"model": digest, **{name: value for name, value in options.items()}},
                                sort_keys=True)
        threads = self.threads or max(1, (os.cpu_count() or 1) // int(self.workers))
        return {"key": hashlib.sha256(key_source.encode()).hexdigest(), "path": path, "sha256": digest,
                "listed": entry.path if entry is not None else path, "role": role,
                "clean": options["clean"]["path"], "poisoned": [data["path"] for data in options["poisoned"]],
                "validation": options["validation"]["path"] if options["validation"] else None,
                "scale": self.scale, "num_classes": int(self.num_classes), "batch_size": int(self.batch_size),
                "threads": threads, "execution": options["execution"]}

    def grade(self, submissions, out_dir):
        """Score every model file in ``submissions`` and write the scoreboard to ``out_dir``.

        Args:
            submissions: a folder of model files, or a list of model paths.
            out_dir: output folder (scoreboard files, ``cache/``, ``work/``).

        Returns:
            Scoreboard: the ranked rows and the paths written.

        Raises:
            OptionError: ``submissions`` holds no model entry, or the execution
                settings cannot run here.
            ModelError: the baseline could not be scored.
        """
        self._check()
        limits = self.limits or Limits()
        options = self._options()
        entries = submission_entries(submissions, self._own_files())
        if not entries:
            raise OptionError(f"{submissions}: no model files ({', '.join(MODEL_SUFFIXES)}) to grade")
        entries = [read_entry(entry) if entry.status is None else entry for entry in entries]
        for entry in entries:
            if entry.status is not None:
                logger.warning("%s", entry.reason)
        jobs = [self._job(entry.target, options, "submission", entry) for entry in entries if entry.status is None]
        if self.baseline:
            jobs.append(self._job(os.path.abspath(self.baseline), options, "baseline"))
        cache_dir = os.path.join(out_dir, "cache")
        os.makedirs(cache_dir, exist_ok=True)
        results, to_run = {}, []
        for job in jobs:
            cached = _cache_lookup(cache_dir, job["key"], limits) if self.use_cache else None
            if cached is not None:
                results[job["key"]] = dict(cached, cached=True)
            elif job["key"] not in {other["key"] for other in to_run}:
                to_run.append(job)
        if self.scheduler:
            fresh = run_jobs_on_cluster(to_run, limits, self.scheduler, self.isolation, self.progress)
        else:
            fresh = run_jobs(to_run, limits, self.workers, self.isolation, os.path.join(out_dir, "work"),
                             self.progress)
        for result in fresh.values():
            if result["status"] == "setup":
                raise OptionError(result["error"])
        for key, result in fresh.items():
            write_text(_cache_path(cache_dir, key), json.dumps(result, indent=1))
            results[key] = dict(result, cached=False)
        baseline_result = None
        if self.baseline:
            baseline_result = results[jobs[-1]["key"]]
            if baseline_result["status"] != "ok":
                raise ModelError(f"{self.baseline}: baseline could not be scored: {baseline_result['error']}")
        rows = [result_row(job, results[job["key"]], baseline_result) for job in jobs
                if job["role"] == "submission"]
        # Entries refused or unreadable before any worker: a row each, with no hash, never cached.
        rows += [result_row({"path": entry.path, "sha256": None}, {"status": entry.status, "error": entry.reason})
                 for entry in entries if entry.status is not None]
        board = Scoreboard(rank_rows(rows), [os.path.basename(path) for path in self.poisoned],
                           baseline=result_row(jobs[-1], baseline_result) if baseline_result else None,
                           score_name="DER" if baseline_result else "accuracy - mean ASR")
        board.write(out_dir)
        return board
