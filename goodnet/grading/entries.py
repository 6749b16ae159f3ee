"""Finding and checking submission files, before anything reads them (the grader's safety layer 0).

:func:`submission_entries` makes every matching name a scoreboard row and
refuses, unread and with its reason, whatever is not a regular model file
inside the folder (folders, FIFOs, devices, sockets, symlinks leading out,
hidden names, the grader's own data and baseline files);
:func:`read_entry` opens the rest without following a symlink or blocking and
hashes only the regular file that was checked. :func:`check_entry` decides
one entry from its metadata alone.

The next layer, :func:`goodnet.models.inspect_model_file` (re-exported here
with :func:`goodnet.models.config_problems`), runs in the worker before Keras
reads the file and raises :class:`SubmissionRefused` for code-carrying or
unknown content. This module opens no model and imports no Keras.
"""

import dataclasses
import errno
import os
import stat

from goodnet.errors import OptionError
from goodnet.files import sha256_stream
from goodnet.models import UnsafeModelError, config_problems, inspect_model_file  # noqa: F401

MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")

# A submission that carries code or unknown objects, or would inflate too far: not loaded
# (goodnet.models.inspect_model_file, run before Keras reads the file).
SubmissionRefused = UnsafeModelError

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

