"""The child side of ``goodnet grade``: score ONE submitted model file, isolated.

This module runs in a process of its own per submission, started by
:func:`goodnet.grading.runner.run_jobs`, which imports it only in child
processes (the fork server, or each spawned interpreter), never in the
grading parent. With the default "forkserver" isolation it is
preloaded, together with TensorFlow and Keras, in a multiprocessing fork
server that never opens a submission; every submission is then evaluated in a
fresh fork of that server, so the 5-10 s TensorFlow import is paid once per
``goodnet grade`` run instead of once per submission. Importing this module
imports TensorFlow quietly for that reason.

Order of work in the child, cheapest and safest first:

1. :func:`goodnet.models.inspect_model_file` reads the model's JSON config with
   h5py/zipfile only (no Keras) and refuses code-carrying content.
2. The data files are opened and validated (trusted: they come from the grader).
3. :func:`goodnet.models.load_model` loads the model with Keras safe mode on,
   checks its input shape and its number of outputs (N or N+1).
4. :func:`goodnet.metrics.evaluate_files` scores it, reading the test files
   batch by batch, on the device(s) and in the precision of the job's
   execution settings.

The result is one JSON object written atomically to a path the parent chose.
This module imports only downward (:mod:`goodnet.grading.entries` and the
core modules), never the runner or :mod:`goodnet.cli`.
"""

import json
import logging
import os
import resource
import sys
import time

from goodnet.inference import quiet_tensorflow
from goodnet.files import json_default

quiet_tensorflow()

logger = logging.getLogger(__name__)

# Keras messages that mean "this file asks for code or classes we do not run".
REFUSAL_MARKERS = ("lambda", "safe_mode", "unsafe", "unknown layer", "could not locate", "custom object",
                   "not allowed", "arbitrary code")


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0][:400] if lines else type(error).__name__


def _limit_address_space(memory_limit_mb, headroom_mb):
    """Cap the virtual address space: what is mapped now + headroom + 2 x the memory limit.

    TensorFlow reserves far more address space than it touches, so the cap is
    generous; it stops a single absurd allocation. The parent enforces the
    memory limit itself by polling the child's private resident memory.
    """
    if not memory_limit_mb:
        return
    with open("/proc/self/status", encoding="ascii") as handle:
        mapped_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmSize:"))
    cap = (mapped_kb * 1024) + (headroom_mb + 2 * memory_limit_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _set_threads(threads):
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # runtime already initialised: keep its settings
            logger.info("TensorFlow threads already configured")


def evaluate_submission(job):
    """Score one model file; never raises for problems of the submission.

    Args:
        job: dict with ``path``, ``clean``, ``poisoned`` (list), ``validation``
            (or None), ``scale``, ``num_classes``, ``batch_size``, ``threads``
            and ``execution`` (the settings of a
            :class:`goodnet.inference.Execution`; absent: the default).

    Returns:
        dict: ``status`` ("ok", "refused", "error", or "setup" when the
        execution cannot run here), ``error`` (one line, for failures) and,
        for "ok", the figures of :func:`goodnet.metrics.evaluate_files` plus
        ``scale_report``, ``execution`` and, for a mixed precision,
        ``precision_report``.
    """
    from goodnet.data import DataError
    from goodnet.grading.entries import SubmissionRefused
    from goodnet.inference import Execution
    from goodnet.models import ModelError, inspect_model_file

    started = time.monotonic()
    path = job["path"]
    try:
        _set_threads(job.get("threads"))
        execution = Execution(**(job.get("execution") or {}))
        placement = execution.placement()      # checks that the devices exist
        description = execution.describe()
    except ValueError as error:
        return {"status": "setup", "error": _first_line(error)}
    try:
        inspect_model_file(path)
        with placement:
            figures, classifier = _score(job, path, execution)
    except SubmissionRefused as error:
        return {"status": "refused", "error": _first_line(error)}
    except ModelError as error:
        message = _first_line(error)
        refused = any(marker in message.lower() for marker in REFUSAL_MARKERS)
        return {"status": "refused" if refused else "error", "error": message}
    except DataError as error:
        return {"status": "error", "error": f"data: {_first_line(error)}"}
    except MemoryError:
        return {"status": "memory", "error": "out of memory (address-space limit reached)"}
    except Exception as error:  # a submission must never crash the harness: report it
        return {"status": "error", "error": f"{type(error).__name__}: {_first_line(error)}"}
    figures.update(status="ok", error="", scale_report=classifier.scale_report, execution=description,
                   evaluation_seconds=round(time.monotonic() - started, 3))
    return figures


def _score(job, path, execution):
    """Load the submission, configure ``execution`` and score it (the test files streamed batch by batch)."""
    import contextlib

    from goodnet.data import LabFile, load_h5
    from goodnet.inference import PRECISION_SAMPLE, precision_agreement
    from goodnet.metrics import evaluate_files
    from goodnet.models import load_model

    with contextlib.ExitStack() as stack:
        clean = stack.enter_context(LabFile(job["clean"], num_classes=job["num_classes"]))
        poisoned = [stack.enter_context(LabFile(name, num_classes=job["num_classes"])) for name in job["poisoned"]]
        validation = load_h5(job["validation"], num_classes=job["num_classes"]) if job.get("validation") else None
        classifier = load_model(path, scale=job["scale"], num_classes=job["num_classes"], clean=validation)
        classifier.configure(execution)
        figures = evaluate_files(classifier, clean, poisoned, batch_size=job["batch_size"], progress=False)
        if execution.precision != "float32":
            figures["precision_report"] = precision_agreement(
                classifier.model, classifier.divisor, clean.sample(PRECISION_SAMPLE).images, execution.precision,
                batch_size=job["batch_size"], execution=execution)
    return figures, classifier


def _thread_only_progress_lock():
    """Give tqdm a thread lock: its default multiprocessing lock is a named semaphore
    that a killed child would leave behind (the resource tracker then warns)."""
    import threading

    from tqdm import std
    from tqdm.auto import tqdm

    for bar_class in {std.tqdm, tqdm}:
        bar_class.set_lock(threading.RLock())


def child_main(job, result_path, log_path, memory_limit_mb, headroom_mb):
    """Entry point of the per-submission process (a multiprocessing target).

    Starts a new session (so the parent can kill the whole process group),
    sends stdout/stderr to ``log_path``, caps the address space, scores the
    submission and writes the result JSON to ``result_path`` atomically.
    """
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)
    _thread_only_progress_lock()
    _limit_address_space(memory_limit_mb, headroom_mb)
    result = evaluate_submission(job)
    temporary = f"{result_path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=json_default)
    os.replace(temporary, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
