"""Grade a folder of submitted models safely, fairly and in parallel (``goodnet grade``).

Every submission is scored in a process of its own, under a wall-time limit
and a memory limit, with Keras safe mode on; a broken, malicious, huge or
never-ending file only ever costs its own limits. Results are cached by the
SHA-256 of the file (and of everything else that affects the score), so a
re-run scores only new or changed files.

Safety, in layers:

0. :mod:`goodnet.grading.entries`: :func:`submission_entries` makes every
   matching name a row and refuses, unread and with its reason, whatever is
   not a regular model file inside the folder (folders, FIFOs, devices,
   sockets, symlinks leading out, hidden names); :func:`read_entry` opens the
   rest without following a symlink or blocking and hashes only the regular
   file that was checked.
1. :func:`goodnet.models.inspect_model_file` sizes every archive member and
   HDF5 dataset, reads the model's JSON config with h5py/zipfile
   only, before Keras is involved, and refuses any ``Lambda``-style layer,
   serialized Python function (``__lambda__``, ``function_type``) and any
   object from a module outside ``keras``/``goodnet`` or registered under
   another package (unknown custom objects): :class:`SubmissionRefused`.
2. Keras loads the rest with ``safe_mode=True`` and ``compile=False``; it
   also refuses Lambda bytecode and unknown classes.
3. The process runs in its own session (killed as a process group), with an
   address-space cap and no core dumps; the parent polls its private resident
   memory and kills it above the limit, and kills it at the time limit.

The package, in the order a grading runs:

- :mod:`goodnet.grading.entries`: finding and checking the submission files.
- :mod:`goodnet.grading.runner`: :class:`Grader`, :class:`Limits`, one
  process per submission (:func:`run_jobs`), the SHA-256 cache.
- :mod:`goodnet.grading.worker`: the child process that scores ONE file
  (it imports TensorFlow; only child processes import it).
- :mod:`goodnet.grading.scoreboard`: the score (DER against a baseline, else
  clean accuracy - mean ASR), the ranking and ``scoreboard.{csv,json,md,html}``.

Imports go one way: runner -> entries, scoreboard; worker -> entries; none
of them imports :mod:`goodnet.cli`. The names below are loaded on first use,
so that importing the worker (``goodnet.grading.worker``) does not import the
runner.

Example:
    >>> from goodnet.grading import Grader
    >>> board = Grader("test.h5", ["bd_test.h5"], baseline="models/bd_net.h5").grade("submissions/", "grades/")
"""

import importlib

# Public name -> the module of this package that defines it.
_EXPORTS = {
    **dict.fromkeys(("MODEL_SUFFIXES", "Entry", "SubmissionRefused", "check_entry", "config_problems",
                     "find_submissions", "inspect_model_file", "read_entry", "submission_entries"), "entries"),
    **dict.fromkeys(("GRADER_VERSION", "ISOLATIONS", "STATUSES", "Grader", "Limits", "run_jobs"), "runner"),
    **dict.fromkeys(("Scoreboard", "mean_asr", "rank_rows", "result_row", "score_result"), "scoreboard"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """Load a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
