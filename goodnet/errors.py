"""goodnet's own errors: what a user can fix (bad data, a bad model file, a bad option).

Every error goodnet raises for bad input derives from :class:`InputError`,
carries a one-line message naming the file or option, the field and what was
expected, and is printed by the command line as that one line with exit
status 2. Anything else that escapes a command is a bug in goodnet: the
command line says so and shows the traceback (exit status 1).

The classes also derive from :class:`ValueError`, so code that caught
``ValueError`` from goodnet keeps working.
"""

import numbers


class InputError(ValueError):
    """Bad input a user can fix; the message is one line."""


class DataError(InputError):
    """A data file or image is not what goodnet expects."""


class ModelError(InputError):
    """A model file cannot be used."""


class OptionError(InputError):
    """An option or argument has a value goodnet cannot use."""


class OutputError(InputError):
    """An output path cannot be written, or holds a file goodnet did not write."""


def plain(value):
    """``value`` as a message shows it: NumPy scalars as plain numbers (43.5, not ``np.float64(43.5)``).

    Example:
        >>> plain(np.float64(43.5)), plain(np.int64(7)), plain("a")
        ('43.5', '7', "'a'")
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if hasattr(value, "item") and callable(value.item):  # other NumPy scalars (complex, bool_)
        return plain(value.item())
    return repr(value)
