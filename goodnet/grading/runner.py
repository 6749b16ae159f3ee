"""Grade a folder of submitted models safely, fairly and in parallel.

Every submission is scored in a process of its own, under a wall-time limit
and a memory limit, with Keras safe mode on; a broken, malicious, huge or
never-ending file only ever costs its own limits. Results are cached by the
SHA-256 of the file (and of everything else that affects the score), so a
re-run scores only new or changed files.

Safety, in layers:

0. :func:`submission_entries` makes every matching name a row and refuses,
   unread and with its reason, whatever is not a regular model file inside
   the folder (folders, FIFOs, devices, sockets, symlinks leading out, hidden
   names); :func:`read_entry` opens the rest without following a symlink or
   blocking and hashes only the regular file that was checked.
1. :func:`goodnet.models.inspect_model_file` sizes every archive member and
   HDF5 dataset, reads the model's JSON config with h5py/zipfile
   only, before Keras is involved, and refuses any ``Lambda``-style layer,
   serialized Python function (``__lambda__``, ``function_type``) and any
   object from a module outside ``keras``/``goodnet`` or registered under
   another package (unknown custom objects).
2. Keras loads the rest with ``safe_mode=True`` and ``compile=False``; it
   also refuses Lambda bytecode and unknown classes.
3. The process runs in its own session (killed as a process group), with an
   address-space cap and no core dumps; the parent polls its private resident
   memory and kills it above the limit, and kills it at the time limit.

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
score and are listed last, by name.
"""

import csv
import dataclasses
import errno
import hashlib
import html
import io
import json
import logging
import os
import stat
import time

from goodnet.errors import OptionError
from goodnet.files import sha256_file, sha256_stream, write_text
from goodnet.models import LAB_CLASSES, ModelError, UnsafeModelError, config_problems, inspect_model_file  # noqa: F401

logger = logging.getLogger(__name__)

GRADER_VERSION = 1
MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")
STATUSES = ("ok", "refused", "error", "timeout", "memory", "crashed", "setup")
# "setup": the grader's own settings cannot run on this machine (e.g. more devices than TensorFlow sees):
# never cached, reported as the command's error.
ISOLATIONS = ("forkserver", "spawn")
# Address space TensorFlow maps without using it (measured: ~1.7 GB after import).
ADDRESS_SPACE_HEADROOM_MB = 2048
POLL_SECONDS = 0.1
PRELOAD_MODULES = ["goodnet.grading.worker", "goodnet.grading.runner", "goodnet.models", "goodnet.metrics", "goodnet.data"]


# A submission that carries code or unknown objects, or would inflate too far: not loaded
# (goodnet.models.inspect_model_file, run before Keras reads the file).
SubmissionRefused = UnsafeModelError


@dataclasses.dataclass
class Limits:
    """Per-submission limits.

    Attributes:
        seconds: wall-clock limit of one submission's process (start to exit).
        memory_mb: private resident memory limit of that process (MiB).
    """

    seconds: float = 600.0
    memory_mb: int = 4096


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


def run_jobs(jobs, limits, workers=2, isolation="forkserver", work_dir=".", progress=None):
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


# Names an entry's kind in a reason; anything else that is not a regular file is "a special file".
FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symlink"}
# How an accepted entry's file is opened: never through a symlink, never blocking (a FIFO), not inherited.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclasses.dataclass
class Entry:
    """One submission entry: a matching name in the submissions folder, or a path of a given list.

    Attributes:
        path: the absolute path as listed; its row's ``path`` (and its name, the row's ``submission``).
        target: the regular file to read: ``path`` itself, or where a symlink leads inside the folder
            (None when refused).
        status: None (to be graded), "refused" (not read: see ``reason``) or "error" (could not be read).
        reason: one line naming the entry and what was expected (empty when graded).
        identity: ``(st_dev, st_ino)`` of ``target`` when it was checked; the opened file must still be it.
        sha256: the content's hash, once :func:`read_entry` has read it (None when refused).
    """

    path: str
    target: str = None
    status: str = None
    reason: str = ""
    identity: tuple = None
    sha256: str = None


def _kind(mode):
    return FILE_KINDS.get(stat.S_IFMT(mode), "a special file")


def _printable(path):
    """``path`` as printable UTF-8 text, for rows and reasons: undecodable bytes and control characters as ``\\xNN``."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(char):02x}" if ord(char) < 32 or ord(char) == 127 else char for char in text)


def _refused(path, why, status="refused"):
    return Entry(_printable(path), status=status, reason=f"{_printable(path)}: {why}")


def _excluded_files(exclude):
    """``{(st_dev, st_ino): what it is}`` of the existing files in ``exclude`` (paths, or a path -> role mapping)."""
    roles = exclude.items() if isinstance(exclude, dict) else ((path, "a data or baseline file") for path in exclude)
    files = {}
    for path, role in roles:
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            continue
        files.setdefault((info.st_dev, info.st_ino), role)
    return files


def check_entry(path, folder, excluded=None, where="its folder"):
    """Decide from its metadata alone (``os.lstat``, ``readlink``, ``realpath``) whether to read one entry.

    Nothing is opened here: a FIFO, a device, a folder or a socket is refused
    unopened, and a symlink is refused unread unless it leads, through any
    chain of links, to a regular file inside ``folder``.

    Args:
        path: the entry's absolute path.
        folder: the folder a symlink must not lead out of (the submissions
            folder, or the folder of a listed path).
        excluded: ``{(st_dev, st_ino): role}`` of the grader's own files (see
            :func:`_excluded_files`): such an entry is refused as that role.
        where: ``folder`` in words, for the reason.

    Returns:
        Entry: ``status`` None with ``target`` and ``identity`` set, or
        "refused"/"error" with a one-line ``reason``.
    """
    try:
        info = os.lstat(path)
    except OSError as error:
        return _refused(path, f"cannot be checked ({error.strerror}): expected a model file", "error")
    target, link = path, ""
    if stat.S_ISLNK(info.st_mode):
        try:
            link = f"a symlink to {_printable(os.readlink(path))!r}"
        except OSError:
            link = "a symlink"
        target = os.path.realpath(path)
        real_folder = os.path.realpath(folder)
        if os.path.commonpath([target, real_folder]) != real_folder:
            return _refused(path, f"{link} that leads out of {where}: expected a model file "
                                  "inside it; not read")
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return _refused(path, f"{link} whose target does not exist (dangling): expected a model file; not read")
        except OSError as error:
            return _refused(path, f"{link} whose target cannot be checked ({error.strerror}): expected a model "
                                  "file", "error")
        if stat.S_ISLNK(info.st_mode):
            return _refused(path, f"{link} in a loop of symlinks: expected a model file; not read")
    if not stat.S_ISREG(info.st_mode):
        what = f"{link} leading to {_kind(info.st_mode)}" if link else _kind(info.st_mode)
        return _refused(path, f"{what}, not a regular file: expected a model file; not opened")
    role = (excluded or {}).get((info.st_dev, info.st_ino))
    if role:
        return _refused(path, f"{role} given to the grader, not a submission; not graded as one")
    return Entry(path, target=target, identity=(info.st_dev, info.st_ino))


def read_entry(entry):
    """Open an accepted entry's file and hash it, refusing whatever it became since it was checked.

    The file is opened with ``O_NOFOLLOW | O_NONBLOCK`` (a symlink put in its
    place is not followed, a FIFO does not block) and the open descriptor is
    ``fstat``-ed: unless it is still the regular file :func:`check_entry`
    saw (same device and inode), nothing is read.

    Args:
        entry: an :class:`Entry` with ``status`` None.

    Returns:
        Entry: a copy with ``sha256`` set, or refused/"error" with its reason.
    """
    try:
        descriptor = os.open(entry.target, READ_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return _refused(entry.path, "became a symlink after it was checked: expected a regular model file; "
                                        "not read")
        return _refused(entry.path, f"cannot be opened ({error.strerror}): expected a readable model file", "error")
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != entry.identity:
            now = "another file" if stat.S_ISREG(info.st_mode) else _kind(info.st_mode)
            return _refused(entry.path, f"changed after it was checked (now {now}): expected the regular file "
                                        "that was checked; not read")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            digest = sha256_stream(handle)
    except OSError as error:
        return _refused(entry.path, f"cannot be read ({error.strerror}): expected a readable model file", "error")
    finally:
        os.close(descriptor)
    return dataclasses.replace(entry, sha256=digest)


def submission_entries(submissions, exclude=()):
    """Every submission entry and whether it will be read: one per scoreboard row.

    A folder is listed (not recursively) and every name ending in
    :data:`MODEL_SUFFIXES` (any case) is an entry; other names are not
    submissions. A list of paths is taken as given (any names). Each entry is
    checked by :func:`check_entry` without opening it. Refused unread, each
    with its one-line reason: hidden names in a folder (starting with ".";
    a listed path is taken as named), names that are not printable UTF-8,
    folders, FIFOs, devices, sockets, symlinks that lead out of the folder
    (the submissions folder, or a listed path's own folder), dangling or
    looping symlinks, and the grader's own data and baseline files.

    Args:
        submissions: the submissions folder, or a list of model paths.
        exclude: the grader's own files: paths, or a mapping path -> what it
            is (e.g. ``{"test.h5": "the clean test file"}``).

    Returns:
        list[Entry]: sorted by name for a folder, in the given order for a list.

    Raises:
        OptionError: ``submissions`` is a path but not a folder.
    """
    excluded = _excluded_files(exclude)
    if not isinstance(submissions, (str, os.PathLike)):
        paths = [os.path.abspath(os.fspath(path)) for path in submissions]
        return [_checked(path, os.path.dirname(path), excluded, "its folder") for path in paths]
    folder = os.fspath(submissions)
    if not os.path.isdir(folder):
        raise OptionError(f"{folder}: expected a folder of submitted model files")
    entries = []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(MODEL_SUFFIXES):
            continue
        path = os.path.abspath(os.path.join(folder, name))
        if name.startswith("."):
            entries.append(_refused(path, "a hidden name (starts with '.'): hidden entries are not graded; "
                                          "rename it without the dot to submit it"))
        else:
            entries.append(_checked(path, folder, excluded, "the submissions folder"))
    return entries


def _checked(path, folder, excluded, where):
    """:func:`check_entry`, after refusing a name that is not printable UTF-8 (the scoreboard shows it escaped)."""
    name = os.path.basename(path)
    if _printable(name) != name:
        return _refused(path, "a name that is not printable UTF-8 (undecodable bytes or control characters): "
                              "rename it to submit it; not opened")
    return check_entry(path, folder, excluded, where)


def find_submissions(folder, exclude=()):
    """The entries of ``folder`` that will be read and graded (see :func:`submission_entries`), sorted by name.

    Args:
        folder: the submissions folder (not searched recursively).
        exclude: paths to leave out (the data files, the baseline).

    Returns:
        list[str]: absolute paths (as listed; a symlink stays a symlink).
    """
    return [entry.path for entry in submission_entries(folder, exclude) if entry.status is None]


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


class Grader:
    """Score many submitted model files on the same data, each in its own process.

    Args:
        clean: the clean test file (lab layout).
        poisoned: poisoned test files (labels = the attack's target).
        validation: optional clean file used ONLY to pick the input scaling
            of models that do not store it (``scale="auto"``); never the test
            data.
        baseline: optional model file (the BadNet before defense) for DER.
        scale: "auto", "raw" or "unit" for every submission.
        num_classes: N; a model must have N or N+1 outputs.
        limits: :class:`Limits` per submission.
        workers: submissions scored in parallel.
        isolation: "forkserver" or "spawn" (see :func:`run_jobs`).
        batch_size: images per inference call.
        threads: TensorFlow threads per submission (default: cores / workers).
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

    def __init__(self, clean, poisoned, validation=None, baseline=None, scale="auto", num_classes=LAB_CLASSES,
                 limits=None, workers=2, isolation="forkserver", batch_size=256, threads=None, use_cache=True,
                 progress=None, execution=None):
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

    def _check(self):
        if self.scale not in ("auto", "raw", "unit"):
            raise OptionError(f"scale: expected 'auto', 'raw' or 'unit', got {self.scale!r}")
        if not self.poisoned:
            raise OptionError("poisoned: expected at least one poisoned test file")
        if int(self.workers) < 1:
            raise OptionError(f"workers: expected a positive number, got {self.workers}")
        if self.isolation not in ISOLATIONS:
            raise OptionError(f"isolation: expected one of {ISOLATIONS}, got {self.isolation!r}")
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
        rows = [_row(job, results[job["key"]], baseline_result, options) for job in jobs
                if job["role"] == "submission"]
        # Entries refused or unreadable before any worker: a row each, with no hash, never cached.
        rows += [_row({"path": entry.path, "sha256": None}, {"status": entry.status, "error": entry.reason},
                      None, options) for entry in entries if entry.status is not None]
        board = Scoreboard(rank_rows(rows), [os.path.basename(path) for path in self.poisoned],
                           baseline=_row(jobs[-1], baseline_result, None, options) if baseline_result else None,
                           score_name="DER" if baseline_result else "accuracy - mean ASR")
        board.write(out_dir)
        return board


def _row(job, result, baseline, options):
    """The scoreboard row of one job (or unread entry) and its result; errors lose the file's path prefix."""
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


def _percent(value):
    return "" if value is None else f"{value * 100:.2f}"


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
                          "" if row["score"] is None else f"{row['score']:.4f}", _percent(row["clean_accuracy"])]
                         + [_percent(rates.get(name)) for name in self.poisoned_names]
                         + [_percent(row["detection_rate"]), _percent(row["false_rejection_rate"]),
                            row["scale"] or "", "" if row["seconds"] is None else f"{row['seconds']:.1f}"]
                         + ([_percent((row.get("precision_report") or {}).get("top1_agreement"))]
                            if self._precision() else [])
                         + [row["error"]])
        return lines

    def to_json(self):
        """The JSON document (``scoreboard.json``)."""
        return {"score": self.score_name, "poisoned_files": self.poisoned_names, "baseline": self.baseline,
                "submissions": self.rows}

    def to_csv(self):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns())
        writer.writerows(self.table())
        return buffer.getvalue()

    def to_markdown(self):
        def cell(text):
            return text.replace("|", "\\|").replace("\n", " ")

        header = self.columns()
        lines = ["| " + " | ".join(cell(name) for name in header) + " |",
                 "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in self.table()]
        return "\n".join(lines) + "\n"

    def to_html(self):
        head = "".join(f"<th>{html.escape(name)}</th>" for name in self.columns())
        body = "\n".join("<tr>" + "".join(f"<td>{html.escape(value)}</td>" for value in row) + "</tr>"
                         for row in self.table())
        baseline = ""
        if self.baseline:
            baseline = (f"<p>Baseline {html.escape(self.baseline['submission'])}: clean accuracy "
                        f"{_percent(self.baseline['clean_accuracy'])} %, mean ASR "
                        f"{_percent(self.baseline['mean_asr'])} %</p>\n")
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>goodnet scoreboard</title>"
                "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}</style>"
                f"</head><body>\n<h1>Scoreboard</h1>\n<p>Sorted by {html.escape(self.score_name)}, best first."
                "</p>\n" + baseline + f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n"
                "</table>\n</body></html>\n")

    def write(self, out_dir):
        """Write scoreboard.csv/.json/.md/.html into ``out_dir`` atomically; return the paths."""
        os.makedirs(out_dir, exist_ok=True)
        texts = {"csv": self.to_csv(), "json": json.dumps(self.to_json(), indent=2) + "\n",
                 "md": self.to_markdown(), "html": self.to_html()}
        for kind, text in texts.items():
            self.paths[kind] = write_text(os.path.join(out_dir, f"scoreboard.{kind}"), text)
        return self.paths
