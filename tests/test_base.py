"""The estimator contract's machinery (goodnet.base) and the option dataclasses (goodnet.options)."""

import argparse
import dataclasses

import pytest

from goodnet.base import (Defense, InstanceOf, Interval, NotFittedError, OneOf, SequenceOf, check_is_fitted, clone,
                          is_fitted, validate_params)
from goodnet.cli.options import add_options, options_from_args
from goodnet.errors import InputError, OptionError
from goodnet.options import constraints_of, defaults_of, option, validate_options


@pytest.mark.parametrize("rule, good, bad", [
    (Interval(int, 1), [1, 7, 10 ** 9], [0, -1, 1.0, True, "2", None]),
    (Interval(float, 0, 1, closed="left"), [0, 0.0, 0.5, 0.999], [1, 1.0, -0.1, float("nan"), True]),
    (Interval(float, 0, 1, closed="neither"), [0.5, 1e-9], [0, 1]),
    (Interval(float, None, 2, closed="right"), [-5, 2], [2.5]),
    (OneOf(("sgd", "adam")), ["sgd", "adam"], ["SGD", "", None, 1]),
    (OneOf((1, 2)), [1, 2], [1.0, True]),
    (InstanceOf(str), ["x"], [1]),
    (SequenceOf(Interval(float, 0)), [(1, 2.5), [0]], [(), (-1,), "12", 3]),
    (SequenceOf(Interval(int, 0), allow_empty=True), [()], [(1.5,)]),
])
def test_rules_accept_exactly_their_values(rule, good, bad):
    assert all(rule.accepts(value) for value in good)
    assert not any(rule.accepts(value) for value in bad)


def test_rules_describe_themselves():
    assert str(Interval(float, 0, 1, closed="left")) == "a number in [0, 1)"
    assert str(Interval(int, 1)) == "an integer >= 1"
    assert str(Interval(float, 0, closed="neither")) == "a number > 0"
    assert str(OneOf(("a", "b"))) == "one of 'a', 'b'"


def test_validate_params_names_the_owner_the_parameter_and_what_was_expected():
    constraints = {"rate": [Interval(float, 0, 1)], "patience": [Interval(int, 1), None]}
    validate_params({"rate": 0.5, "patience": None, "other": object()}, constraints)
    with pytest.raises(OptionError, match=r"^Thing: rate: expected a number in \[0, 1\], got 1.5$"):
        validate_params({"rate": 1.5}, constraints, "Thing")
    with pytest.raises(OptionError, match=r"patience: expected an integer >= 1 or None, got 0$"):
        validate_params({"patience": 0}, constraints)


class Toy(Defense):
    """A minimal defense following the contract."""

    _parameter_constraints = {"k": [Interval(int, 1)], "mode": [OneOf(("a", "b"))]}

    def __init__(self, k=3, mode="a", sizes=(1, 2)):
        self.k = k
        self.mode = mode
        self.sizes = sizes

    def fit(self, values):
        self._validate_params()
        self.total_ = self.k * sum(values)
        return self

    def answer(self):
        check_is_fitted(self)
        return self.total_


def test_parameters_repr_and_clone():
    toy = Toy(k=5, sizes=[1, 2])
    assert toy.get_params() == {"k": 5, "mode": "a", "sizes": [1, 2]}
    assert repr(toy) == "Toy(k=5, sizes=[1, 2])" and repr(Toy()) == "Toy()"
    copied = clone(toy.fit([1, 2]))
    assert copied.get_params() == toy.get_params() and copied.sizes is not toy.sizes
    assert is_fitted(toy) and not is_fitted(copied)
    assert toy.set_params(k=2) is toy and toy.k == 2
    with pytest.raises(OptionError, match="Toy: rate: not a parameter"):
        toy.set_params(rate=1)


def test_validation_happens_in_fit_and_the_fitted_check_is_not_an_input_error():
    toy = Toy(k=0)                       # the constructor accepts anything
    with pytest.raises(OptionError, match="Toy: k: expected an integer >= 1, got 0"):
        toy.fit([1])
    with pytest.raises(NotFittedError, match="this Toy is not fitted yet") as caught:
        Toy().answer()
    assert not isinstance(caught.value, InputError)   # calling code's mistake: a traceback, not exit 2
    assert isinstance(caught.value, AttributeError)
    assert Toy().fit([1, 2]).answer() == 9


def test_a_defense_must_list_its_parameters():
    class Loose(Defense):
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    with pytest.raises(TypeError, match="explicitly"):
        Loose().get_params()
    with pytest.raises(TypeError):
        clone(object())


@dataclasses.dataclass(frozen=True)
class Inner:
    copies: int = option(100, "copies per input", rule=Interval(int, 1))
    blend: str = option("add", "how to superimpose", rule=OneOf(("add", "alpha")))


@dataclasses.dataclass(frozen=True)
class Outer:
    drops: tuple = option((2, 4, 10), "accuracy drops", rule=SequenceOf(Interval(float, 0, closed="neither")),
                          type=float)
    patience: int = option(None, "epochs without gain", rule=Interval(int, 1), allow_none=True, type=int)
    augment: bool = option(True, "train on shifted copies")
    flip: bool = option(False, "mirror half the images")
    strip: Inner = option(Inner(blend="alpha"), "STRIP settings")
    seed: int = option(0, "seed", cli=False)


def test_option_dataclasses_carry_rules_and_defaults_once():
    assert defaults_of(Inner) == {"copies": 100, "blend": "add"}
    assert set(constraints_of(Outer)) == {"drops", "patience"}
    assert validate_options(Outer()) == Outer()
    with pytest.raises(OptionError, match=r"^Outer.strip: copies: expected an integer >= 1, got 0$"):
        validate_options(Outer(strip=Inner(copies=0)))


def test_flags_come_from_the_fields():
    parser = argparse.ArgumentParser()
    add_options(parser, Outer)
    flags = parser._option_string_actions
    assert {"--drops", "--patience", "--no-augment", "--flip", "--copies", "--blend"} <= set(flags)
    assert "--seed" not in flags and "--augment" not in flags
    assert flags["--blend"].default == "alpha"        # the nested group's own default instance
    assert flags["--blend"].choices == ("add", "alpha")
    assert "(default 2 4 10)" in flags["--drops"].help
    assert options_from_args(parser.parse_args([]), Outer) == Outer()
    parsed = options_from_args(parser.parse_args(["--drops", "1", "3.5", "--patience", "4", "--no-augment",
                                                  "--copies", "8", "--blend", "add"]), Outer, seed=7)
    assert parsed == Outer(drops=(1.0, 3.5), patience=4, augment=False, strip=Inner(copies=8, blend="add"), seed=7)
    with pytest.raises(SystemExit):
        parser.parse_args(["--blend", "mix"])


def test_check_options_names_the_flag_of_a_bad_value():
    from goodnet.cli.options import check_options

    assert check_options(Outer()) == Outer()
    with pytest.raises(OptionError, match=r"^--copies: expected an integer >= 1, got 0$"):
        check_options(Outer(strip=Inner(copies=0)))
    with pytest.raises(OptionError, match=r"^--drops: expected a non-empty sequence, each a number > 0, got \(\)$"):
        check_options(Outer(drops=()))
    check_options(Outer(drops=()), fields=("copies",))      # only the named fields


def test_from_options_takes_the_fields_of_an_option_dataclass():
    @dataclasses.dataclass(frozen=True)
    class ToyOptions:
        k: int = option(4, "k")
        mode: str = option("b", "mode")

    toy = Toy.from_options(ToyOptions(), sizes=(3,))
    assert toy.get_params() == {"k": 4, "mode": "b", "sizes": (3,)}
