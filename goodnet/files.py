"""Safe file writing: never leave a half-written file, never clobber an input or a user's file.

Every file goodnet writes goes through :func:`atomic_write`: a temporary file
in the destination's folder, given the mode a plain ``open()`` would give it
under the user's umask, renamed over the destination only when complete, and
recorded in that folder's manifest (:data:`MANIFEST`) with its size, time and
SHA-256. An existing destination is replaced only if the manifest shows that
goodnet wrote it and nobody changed it since, unless the caller (or the
``--overwrite`` option, through :func:`overwriting`) says any file may go.
"""

import contextlib
import contextvars
import hashlib
import json
import os
import tempfile

from goodnet.errors import OutputError

MANIFEST = ".goodnet-manifest.json"
_REPLACE_ANY = contextvars.ContextVar("goodnet_replace_any", default=False)


@contextlib.contextmanager
def overwriting(allowed=True):
    """Within this block, writes may replace files goodnet did not write (the ``--overwrite`` option)."""
    token = _REPLACE_ANY.set(bool(allowed))
    try:
        yield
    finally:
        _REPLACE_ANY.reset(token)


def file_mode():
    """The mode a plain ``open(path, "w")`` gives a new file: 0o666 less the process's umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)  # no /proc: read the umask by setting it, then restore it at once
    os.umask(umask)
    return 0o666 & ~umask


def sha256_file(path, chunk_size=1 << 20):
    """Return the hex SHA-256 of a file's content.

    Example:
        >>> sha256_file("models/bd_net.h5")[:12]
    """
    with open(path, "rb") as handle:
        return sha256_stream(handle, chunk_size)


def sha256_stream(handle, chunk_size=1 << 20):
    """The hex SHA-256 of what is left to read in a binary file object."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(chunk_size), b""):
        digest.update(block)
    return digest.hexdigest()


def _manifest_path(directory):
    return os.path.join(directory, MANIFEST)


def _read_manifest(directory):
    try:
        with open(_manifest_path(directory), encoding="utf-8") as handle:
            manifest = json.load(handle)
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else {"files": {}}
    except (OSError, ValueError):
        return {"files": {}}


def _stamp(path):
    status = os.stat(path)
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": sha256_file(path)}


def written_by_goodnet(path):
    """Whether ``path`` is a file goodnet wrote, unchanged since (by its folder's manifest)."""
    path = os.fspath(path)
    entry = _read_manifest(os.path.dirname(os.path.abspath(path)))["files"].get(os.path.basename(path))
    if not isinstance(entry, dict) or not os.path.isfile(path) or os.path.islink(path):
        return False
    status = os.stat(path)
    if status.st_size != entry.get("size"):
        return False
    return status.st_mtime_ns == entry.get("mtime_ns") or sha256_file(path) == entry.get("sha256")


@contextlib.contextmanager
def _renamed_into_place(path):
    """Yield a temporary file beside ``path`` (same extension); on success give it the umask's mode and rename
    it over ``path``; on any exception remove it and leave ``path`` as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    base, extension = os.path.splitext(os.path.basename(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{extension}", dir=directory)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _record(path):
    """Add ``path`` (just written) to its folder's manifest, atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    manifest = _read_manifest(directory)
    manifest["files"][os.path.basename(path)] = _stamp(path)
    with _renamed_into_place(_manifest_path(directory)) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump({"written_by": "goodnet", "files": manifest["files"]}, stream, indent=1, sort_keys=True)


def check_replaceable(path, overwrite=None, option=None):
    """Raise OutputError unless writing ``path`` would replace nothing goodnet may not replace.

    Args:
        path: the destination.
        overwrite: True: any existing file may be replaced; False: none;
            None (default): only one goodnet wrote (see :func:`written_by_goodnet`),
            or any inside an :func:`overwriting` block.
        option: the command-line option that named the path, for the message.
    """
    path = os.fspath(path)
    where = f"{path}: {option}: " if option else f"{path}: "
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        raise OutputError(f"{where}a folder is in the way of this output file")
    if overwrite is None:
        if _REPLACE_ANY.get() or written_by_goodnet(path):
            return
        raise OutputError(f"{where}a file goodnet did not write is in the way; move it, or pass --overwrite "
                          "to replace it")
    if not overwrite:
        raise OutputError(f"{where}file exists; refusing to overwrite it")


def prepare_output_dir(path, option="--out", names=(), overwrite=None):
    """Check, before any work, that ``path`` is (or can become) a writable folder and ``names`` can be written.

    Nothing is created: a missing folder is checked by its nearest existing
    parent, which must be a folder this process may create entries in.

    Args:
        path: the output folder.
        option: the option that named it, for messages.
        names: file names the command will write there.
        overwrite: see :func:`check_replaceable`.

    Returns:
        str: ``path``.

    Raises:
        OutputError: one line naming the folder, the option and the problem.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: {option}: expected a folder, found a file")
    if os.path.isdir(path):
        try:
            handle, probe = tempfile.mkstemp(prefix=".goodnet-probe.", dir=path)
            os.close(handle)
            os.remove(probe)
        except OSError as error:
            raise OutputError(f"{path}: {option}: cannot write in this folder ({error.strerror or error})") from None
    else:
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise OutputError(f"{path}: {option}: cannot create this folder: {parent} is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: {option}: cannot create this folder: no permission to write in {parent}")
    for name in names:
        check_replaceable(os.path.join(path, name), overwrite, option)
    return path


def prepare_output_file(path, option="--out", overwrite=None):
    """Check, before any work, that the file ``path`` can be written (see :func:`prepare_output_dir`)."""
    path = os.fspath(path)
    prepare_output_dir(os.path.dirname(os.path.abspath(path)), option)
    check_replaceable(path, overwrite, option)
    return path


def same_file(first, second):
    """Return True if two paths name the same existing file.

    Args:
        first: a path.
        second: another path.

    Returns:
        bool: whether both exist and are the same file on disk.
    """
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_write(path, *, overwrite=None, protect=()):
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The temporary file keeps the final name's extension (Keras picks the save
    format from it). On any exception the temporary file is removed and
    ``path`` is left as it was. The written file gets the umask's mode and is
    recorded in its folder's manifest.

    Args:
        path: the final file name.
        overwrite: True: replace any existing ``path``; False: refuse; None
            (default): replace only a file goodnet wrote (see :func:`check_replaceable`).
        protect: paths (inputs) that ``path`` must not be.

    Yields:
        str: the temporary path to write to.

    Example:
        >>> with atomic_write("out/report.json") as tmp:
        ...     open(tmp, "w").write("{}")
    """
    path = os.fspath(path)
    for guarded in protect:
        if guarded is not None and (same_file(path, guarded) or os.path.abspath(path) == os.path.abspath(os.fspath(guarded))):
            raise OutputError(f"{path}: refusing to write over the input file {guarded}")
    check_replaceable(path, overwrite)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _renamed_into_place(path) as temporary:
        yield temporary
    _record(path)


def write_text(path, text, **kwargs):
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, **kwargs) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    return path


def json_default(value):
    """``json.dumps(default=...)`` for NumPy scalars and arrays."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
