"""The estimator contract every goodnet defense follows (after scikit-learn's ``BaseEstimator``).

- The constructor only stores its keyword arguments, under their own names;
  it validates nothing and computes nothing.
- ``fit`` validates the parameters from one table (``_parameter_constraints``,
  see :func:`validate_params`), learns, and returns ``self``.
- What ``fit`` learns is stored in attributes ending in ``_`` (``curve_``,
  ``threshold_``); a method that needs them calls :func:`check_is_fitted`,
  which raises :class:`NotFittedError` before ``fit``.
- ``get_params`` / ``set_params`` / :func:`clone` / ``repr`` work from the
  constructor's signature; ``summary()`` is a JSON-ready dict.

Two shapes of ``fit``:

- **model defenses** (pruning, fine-pruning, STRIP, ...) take the suspect
  model and clean data: ``fit(classifier, clean, poisoned=(), **data)`` with
  ``classifier`` a :class:`goodnet.models.Classifier`, ``clean`` a
  :class:`goodnet.data.LabData` (or images where labels are not needed) and
  ``poisoned`` a sequence of poisoned LabData, used only for measurements
  that are reported, never to choose anything;
- **data defenses** (training-set inspection) take the model and the
  training set: ``fit(classifier, images, labels)``.

Example:
    >>> defense = PruningDefense(drops=(2, 4)).fit(classifier, clean_valid)
    >>> clone(defense)            # same parameters, not fitted
    PruningDefense(drops=(2, 4))
"""

import copy
import dataclasses
import inspect
import numbers

from goodnet.errors import OptionError, plain


class NotFittedError(ValueError, AttributeError):
    """A defense was used before ``fit`` (a mistake in the calling code, not bad input)."""


# -- parameter constraints ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (``int`` or ``float``) between ``low`` and ``high`` (None: unbounded).

    ``closed`` says which ends belong to it: "both", "left", "right" or "neither".
    Booleans are not numbers here.
    """

    kind: type
    low: float = None
    high: float = None
    closed: str = "both"

    def __post_init__(self):
        if self.closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed: expected both, left, right or neither, got {self.closed!r}")

    def accepts(self, value):
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            return False
        if value != value:  # NaN
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        if self.high is not None and (value > self.high or (value == self.high and self.closed in ("left", "neither"))):
            return False
        return True

    def __str__(self):
        name = "an integer" if self.kind is int else "a number"
        if self.low is None and self.high is None:
            return name
        if self.high is None:
            return f"{name} {'>=' if self.closed in ('both', 'left') else '>'} {self.low:g}"
        if self.low is None:
            return f"{name} {'<=' if self.closed in ('both', 'right') else '<'} {self.high:g}"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{name} in {left}{self.low:g}, {self.high:g}{right}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of the given values."""

    values: tuple

    def accepts(self, value):
        return any(value == option and type(value) is type(option) for option in self.values)

    def __str__(self):
        return "one of " + ", ".join(repr(value) for value in self.values)


@dataclasses.dataclass(frozen=True)
class InstanceOf:
    """An instance of ``kind`` (a type or a tuple of types)."""

    kind: object
    description: str = ""

    def accepts(self, value):
        return isinstance(value, self.kind)

    def __str__(self):
        if self.description:
            return self.description
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        return " or ".join(f"a {kind.__name__}" for kind in kinds)


@dataclasses.dataclass(frozen=True)
class SequenceOf:
    """A non-empty list or tuple whose items each satisfy ``item``."""

    item: object
    allow_empty: bool = False

    def accepts(self, value):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        return (self.allow_empty or len(value) > 0) and all(self.item.accepts(entry) for entry in value)

    def __str__(self):
        return f"a {'' if self.allow_empty else 'non-empty '}sequence, each {self.item}"


def _describe(rules):
    return " or ".join("None" if rule is None else str(rule) for rule in rules)


def validate_params(params, constraints, owner=""):
    """Check every parameter named in ``constraints`` against its rules; raise :class:`OptionError` on the first miss.

    Args:
        params: ``{name: value}``.
        constraints: ``{name: [rule, ...]}``; a value passes when any rule
            accepts it; ``None`` in the list allows None.
        owner: prefix for the message (a class name).

    Raises:
        OptionError: ``"<owner>: <name>: expected <rules>, got <value>"``.
    """
    for name, rules in constraints.items():
        if name not in params:
            continue
        value = params[name]
        if any((value is None) if rule is None else rule.accepts(value) for rule in rules):
            continue
        prefix = f"{owner}: " if owner else ""
        raise OptionError(f"{prefix}{name}: expected {_describe(rules)}, got {plain(value)}")


# -- the estimator base ------------------------------------------------------------------------------------------


class Defense:
    """Base class of goodnet's defenses: parameters, cloning, repr, the fitted check (see the module docstring).

    Subclasses list their constructor's keyword arguments explicitly (no
    ``*args`` / ``**kwargs``), store each one unchanged under its own name, and
    declare ``_parameter_constraints = {name: [rule, ...]}``.
    """

    _parameter_constraints = {}

    @classmethod
    def _get_param_names(cls):
        signature = inspect.signature(cls.__init__)
        names = []
        for name, parameter in signature.parameters.items():
            if name == "self":
                continue
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ must list its parameters explicitly (found *{name})")
            names.append(name)
        return names

    @classmethod
    def _defaults(cls):
        signature = inspect.signature(cls.__init__)
        return {name: parameter.default for name, parameter in signature.parameters.items() if name != "self"}

    def get_params(self):
        """The constructor's parameters and their current values, as a dict."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set parameters by name (validated at the next ``fit``); return self."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise OptionError(f"{type(self).__name__}: {name}: not a parameter (expected one of {', '.join(valid)})")
            setattr(self, name, value)
        return self

    @classmethod
    def from_options(cls, options, **extra):
        """The defense whose parameters are the fields of an option dataclass (``StripOptions``), plus ``extra``."""
        return cls(**{field.name: getattr(options, field.name) for field in dataclasses.fields(options)}, **extra)

    def _validate_params(self):
        validate_params(self.get_params(), self._parameter_constraints, type(self).__name__)

    def __repr__(self):
        defaults = self._defaults()
        changed = []
        for name, value in self.get_params().items():
            default = defaults.get(name, inspect.Parameter.empty)
            try:
                same = bool(value == default) and type(value) is type(default)
            except Exception:  # an array-valued comparison, for instance
                same = False
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def summary(self):
        """A JSON-ready description: the defense's name and parameters (subclasses add what ``fit`` learned)."""
        return {"defense": type(self).__name__, "params": _json_ready(self.get_params())}


def _json_ready(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_ready(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _json_ready(entry) for key, entry in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(entry) for entry in value]
    if isinstance(value, (str, bool, type(None))):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return repr(value)


def clone(defense):
    """A new, unfitted defense with the same parameters (deep copies of them)."""
    if not isinstance(defense, Defense):
        raise TypeError(f"clone: expected a goodnet Defense, got {type(defense).__name__}")
    params = {name: copy.deepcopy(value) for name, value in defense.get_params().items()}
    return type(defense)(**params)


def is_fitted(defense, attributes=None):
    """Whether ``fit`` has run: the named attributes exist (default: any public attribute ending in ``_``)."""
    if attributes is not None:
        names = [attributes] if isinstance(attributes, str) else list(attributes)
        return all(hasattr(defense, name) for name in names)
    return any(name.endswith("_") and not name.startswith("_") for name in vars(defense))


def check_is_fitted(defense, attributes=None):
    """Raise :class:`NotFittedError` unless ``fit`` has run (see :func:`is_fitted`)."""
    if not is_fitted(defense, attributes):
        raise NotFittedError(f"this {type(defense).__name__} is not fitted yet: call fit(...) first")
