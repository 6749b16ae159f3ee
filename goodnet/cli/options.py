"""Command-line flags generated from the library's option dataclasses (:mod:`goodnet.options`).

:func:`add_options` adds one flag per field, with the field's default,
choices and help text (a field whose rule asks for an integer >= 1 parses
with :func:`positive_integer`; the parsed name is the field's ``dest``, by
default its name); :func:`options_from_args` builds the dataclass back
from the parsed arguments. Nested option dataclasses (``RepairOptions.recipe``)
add their own fields' flags, so no command restates a default.
"""

import argparse
import dataclasses

from goodnet.base import Interval, OneOf, validate_params
from goodnet.errors import OptionError


def _flag(field):
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _dest(field):
    return field.metadata.get("dest") or field.name


def _is_positive_integer(field):
    """Whether the field's rule asks for an integer >= 1 (its flag then parses with :func:`positive_integer`)."""
    return any(isinstance(rule, Interval) and rule.kind is int and rule.low == 1 and rule.closed in ("both", "left")
               for rule in field.metadata.get("rules", ()))


def positive_integer(value):
    """argparse type: a positive integer (``goodnet.cli.positive``)."""
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _is_group(field):
    return dataclasses.is_dataclass(field.default) and not isinstance(field.default, type)


def _default_text(field, value):
    text = field.metadata.get("default_text")
    if text is not None and value == field.default:
        return text
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return " ".join(str(entry) for entry in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _choices(field):
    if field.metadata.get("choices") is not None:
        return tuple(field.metadata["choices"])
    for rule in field.metadata.get("rules", ()):
        if isinstance(rule, OneOf):
            return tuple(rule.values)
    return None


def add_options(parser, cls, *, exclude=(), only=None, group=None, defaults=None, unset=False):
    """Add one flag per field of option dataclass ``cls`` (recursing into nested option dataclasses).

    Args:
        parser: an ``argparse`` parser (or argument group).
        cls: the option dataclass, or an instance of it whose values are the
            defaults (a nested group's default instance, e.g.
            ``RepairOptions.strip = StripOptions(blend="alpha")``).
        exclude: field names to leave off (a command that sets them itself).
        only: if given, just these field names.
        group: title of an argument group to put the flags in.
        defaults: ``{field name: value}`` to show and use instead of the
            dataclass default (a command whose own default differs, stated
            once in that command).
    """
    target = parser.add_argument_group(group) if group else parser
    instance = None if isinstance(cls, type) else cls
    defaults = dict(defaults or {})
    if instance is not None:
        defaults = {**{field.name: getattr(instance, field.name) for field in dataclasses.fields(instance)
                       if getattr(instance, field.name) != field.default}, **defaults}
    for field in dataclasses.fields(cls):
        if field.name in exclude or (only is not None and field.name not in only and not _is_group(field)):
            continue
        if _is_group(field):
            add_options(parser, defaults.pop(field.name, field.default), exclude=exclude, only=only,
                        defaults=defaults, unset=unset)
            continue
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        default = defaults.get(field.name, field.default)
        shown = _default_text(field, default)
        help_text = meta.get("help", "")
        if isinstance(field.default, bool):
            if default:
                negative = meta.get("negative") or "--no-" + field.name.replace("_", "-")
                target.add_argument(negative, dest=_dest(field), action="store_false",
                                    default=argparse.SUPPRESS if unset else True,
                                    help=f"{help_text} (on by default; this turns it off)")
            else:
                target.add_argument(_flag(field), dest=_dest(field), action="store_true",
                                    default=argparse.SUPPRESS if unset else False,
                                    help=f"{help_text} (default off)")
            continue
        kwargs = {"dest": _dest(field), "default": argparse.SUPPRESS if unset else default,
                  "help": f"{help_text} (default {shown})"}
        choices = _choices(field)
        if choices is not None:
            kwargs["choices"] = choices
        convert = meta.get("type")
        if isinstance(field.default, tuple):
            kwargs["nargs"] = meta.get("nargs") or "+"
            if convert is None and field.default:
                convert = type(field.default[0])
        elif meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
        if convert is None and _is_positive_integer(field):
            convert = positive_integer
        if convert is None and field.default is not None and not isinstance(field.default, tuple):
            convert = type(field.default)
        if convert is not None and convert is not str:
            kwargs["type"] = convert
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        target.add_argument(_flag(field), **kwargs)


def options_from_args(args, cls, **overrides):
    """Build option dataclass ``cls`` from parsed ``args`` (fields missing from ``args`` keep their default).

    ``cls`` may also be an instance: its values are then the defaults of the
    fields missing from ``args``, as :func:`add_options` shows them (a nested
    group is built from its default instance, e.g. ``RepairOptions.strip``).
    """
    instance = None if isinstance(cls, type) else cls
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif _is_group(field):
            group = field.default if instance is None else getattr(instance, field.name)
            values[field.name] = options_from_args(args, group)
        elif hasattr(args, _dest(field)):
            value = getattr(args, _dest(field))
            if isinstance(field.default, tuple) and isinstance(value, list):
                value = tuple(value)
            values[field.name] = value
        elif instance is not None:
            values[field.name] = getattr(instance, field.name)
    return (cls if instance is None else type(instance))(**values)


def check_options(options, fields=None):
    """Check an option dataclass instance (and nested ones) against its rules, naming the flag of a bad value.

    Args:
        options: the instance built by :func:`options_from_args`.
        fields: if given, check only these field names.

    Raises:
        OptionError: ``"--frr: expected a number in (0, 1), got 1.5"``.
    """
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if _is_group(field):
            check_options(value, fields)
        elif field.metadata.get("rules") and (fields is None or field.name in fields):
            try:
                validate_params({field.name: value}, {field.name: list(field.metadata["rules"])})
            except OptionError as error:
                raise OptionError(f"{_flag(field)}: {str(error).split(': ', 1)[1]}") from None
    return options
