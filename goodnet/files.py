"""Safe file writing: never leave a half-written file, never clobber an input."""

import contextlib
import os
import tempfile


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
def atomic_write(path, *, overwrite=True, protect=()):
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The temporary file keeps the final name's extension (Keras picks the save
    format from it). On any exception the temporary file is removed and
    ``path`` is left as it was.

    Args:
        path: the final file name.
        overwrite: if False, refuse to replace an existing ``path``.
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
            raise ValueError(f"{path}: refusing to write over the input file {guarded}")
    if not overwrite and os.path.exists(path):
        raise ValueError(f"{path}: file exists; refusing to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, extension = os.path.splitext(os.path.basename(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{extension}", dir=directory)
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


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
