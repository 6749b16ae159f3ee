"""Option groups as dataclasses: one place for each option's default, rule and help text.

A recipe or option group (``FineTuneRecipe``, ``StripOptions``,
``RepairOptions``) is a frozen dataclass whose fields are made with
:func:`option`. The library uses the dataclass directly; the command line
builds its flags from the same fields (:mod:`goodnet.cli.options`), so a
default, its rule and its help text are written once.

Example:
    >>> @dataclasses.dataclass(frozen=True)
    ... class Recipe:
    ...     epochs: int = option(60, "length of the schedule", rule=Interval(int, 1))
    >>> validate_options(Recipe(epochs=0))
    Traceback (most recent call last):
    goodnet.errors.OptionError: Recipe: epochs: expected an integer >= 1, got 0
"""

import dataclasses

from goodnet.base import validate_params


def option(default, help, *, rule=None, allow_none=False, flag=None, negative=None, choices=None, type=None,
           metavar=None, nargs=None, cli=True, default_text=None, dest=None):
    """A dataclass field carrying its help text, its rule and how the command line spells it.

    Args:
        default: the default value (immutable: a tuple, not a list).
        help: one line for ``--help`` (the default is appended).
        rule: a :mod:`goodnet.base` constraint (``Interval``, ``OneOf``, ...),
            or a list of them; None: any value.
        allow_none: None is also valid.
        flag: the command-line flag (default ``--`` + the name with dashes).
        negative: for a boolean that defaults to True, the flag that turns it off.
        choices: allowed values on the command line (default: a ``OneOf`` rule's).
        type: the argparse conversion (default: the default's type).
        metavar, nargs: passed to argparse.
        cli: False keeps the field off the command line.
        default_text: how ``--help`` states the default (default: the value).
        dest: the parsed argument's name (default: the field name; for a flag
            whose field name another flag's dest already takes, e.g. STRIP's
            ``precision`` as ``--strip-precision`` beside the execution's ``--precision``).
    """
    rules = [] if rule is None else list(rule) if isinstance(rule, (list, tuple)) else [rule]
    if allow_none:
        rules.append(None)
    metadata = {"help": help, "rules": tuple(rules), "flag": flag, "negative": negative, "choices": choices,
                "type": type, "metavar": metavar, "nargs": nargs, "cli": cli, "default_text": default_text,
                "dest": dest}
    return dataclasses.field(default=default, metadata=metadata)


def constraints_of(cls):
    """``{field name: rules}`` for the fields of option dataclass ``cls`` that carry a rule."""
    return {field.name: list(field.metadata["rules"]) for field in dataclasses.fields(cls)
            if field.metadata.get("rules")}


def defaults_of(cls):
    """``{field name: default}`` of option dataclass ``cls``."""
    return {field.name: field.default for field in dataclasses.fields(cls)}


def validate_options(options, owner=None):
    """Check every field of an option dataclass instance (and of nested ones) against its rule; return it."""
    owner = owner or type(options).__name__
    validate_params({field.name: getattr(options, field.name) for field in dataclasses.fields(options)},
                    constraints_of(type(options)), owner)
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_options(value, f"{owner}.{field.name}")
    return options


def restated_field(cls, name, help=None, **changes):
    """A dataclass field restating option dataclass ``cls``' field ``name``: its default, rule, flag and help
    (``help`` replaces the help text where another option group means more by it; ``changes`` other metadata,
    such as ``cli=False``), so the default is written once.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class AttackOptions:
        ...     epochs: int = restated_field(TrainOptions, "epochs")
    """
    field = {entry.name: entry for entry in dataclasses.fields(cls)}[name]
    metadata = dict(field.metadata)
    if help is not None:
        metadata["help"] = help
    metadata.update(changes)
    return dataclasses.field(default=field.default, metadata=metadata)
