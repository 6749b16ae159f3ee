"""The attack, demo, synth and grade commands and the execution options take their defaults from the library's
option dataclasses: parsing no option gives the dataclass defaults, and a shared fact has one source."""

import dataclasses

import pytest

from goodnet.cli import build_parser, execution_from_args
from goodnet.cli.options import options_from_args
from goodnet.options import validate_options


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_attack_defaults_are_attack_options(parser):
    from goodnet.attacks.badnets import AttackOptions

    args = parser.parse_args(["attack", "--data", "bench", "--out", "badnet.h5"])
    assert args.triggers is None                            # the command's own default: the benchmark's first trigger
    assert options_from_args(args, AttackOptions, triggers=AttackOptions.triggers) == AttackOptions()
    assert validate_options(AttackOptions()) == AttackOptions()
    args = parser.parse_args(["attack", "--data", "b", "--out", "m.h5", "--targets", "1", "2", "--epochs", "3",
                              "--pruning-aware", "--flip-rate", "0.2"])
    options = options_from_args(args, AttackOptions, triggers=("patch", "blend"))
    assert options == AttackOptions(triggers=("patch", "blend"), targets=(1, 2), epochs=3, pruning_aware=True,
                                    flip_rate=0.2)
    with pytest.raises(SystemExit):
        parser.parse_args(["attack", "--data", "b", "--out", "m.h5", "--epochs", "0"])


def test_demo_defaults_are_demo_options_and_shared_facts_have_one_source(parser):
    from goodnet.attacks.badnets import AttackOptions
    from goodnet.attacks.benchmarks import BenchmarkOptions
    from goodnet.demo import DemoOptions

    args = parser.parse_args(["demo"])
    assert options_from_args(args, DemoOptions, sizes=None) == DemoOptions()
    assert args.out == DemoOptions().out_dir                 # --out is out_dir
    demo = DemoOptions()
    assert (demo.dataset, demo.seed, demo.identities) == (BenchmarkOptions.dataset, BenchmarkOptions.seed,
                                                          BenchmarkOptions.identities)
    assert (demo.epochs, demo.poison_rate, demo.target) == (AttackOptions.epochs, AttackOptions.poison_rate,
                                                            AttackOptions.targets[0])
    args = parser.parse_args(["demo", "--sizes", "3", "4", "5", "--out", "elsewhere", "--copies", "4"])
    assert options_from_args(args, DemoOptions, sizes={"train": 3}) == DemoOptions(sizes={"train": 3},
                                                                                   out_dir="elsewhere", copies=4)


def test_synth_defaults_are_write_benchmarks(parser):
    import inspect

    from goodnet.attacks.benchmarks import TRIGGER_NAMES, BenchmarkOptions, write_benchmark

    args = parser.parse_args(["synth", "--out", "bench"])
    options = options_from_args(args, BenchmarkOptions, sizes=None)
    assert options == BenchmarkOptions(triggers=TRIGGER_NAMES)   # this command writes every trigger
    parameters = inspect.signature(write_benchmark).parameters
    assert {name: parameters[name].default for name in BenchmarkOptions.__dataclass_fields__} == \
        dataclasses.asdict(BenchmarkOptions())


def test_grade_defaults_are_limits_and_grade_options(parser):
    import inspect

    from goodnet.grading.runner import GradeOptions, Grader, Limits

    args = parser.parse_args(["grade", "subs", "--clean", "t.h5", "--poisoned", "b.h5", "--out", "o"])
    assert options_from_args(args, Limits) == Limits() and options_from_args(args, GradeOptions) == GradeOptions()
    parameters = inspect.signature(Grader).parameters
    assert {name: parameters[name].default for name in GradeOptions.__dataclass_fields__} == \
        dataclasses.asdict(GradeOptions())
    args = parser.parse_args(["grade", "subs", "--clean", "t.h5", "--poisoned", "b.h5", "--out", "o",
                              "--time-limit", "2.5", "--memory-mb", "100"])
    assert options_from_args(args, Limits) == Limits(seconds=2.5, memory_mb=100)
    with pytest.raises(SystemExit):
        parser.parse_args(["grade", "subs", "--clean", "t.h5", "--poisoned", "b.h5", "--out", "o",
                           "--time-limit", "0"])


def test_execution_options_are_executions_fields(parser):
    from goodnet.inference import DEFAULT_BATCH, DEVICE_KINDS, PRECISIONS, Execution

    args = parser.parse_args(["eval", "clean.h5", "model.h5"])
    assert execution_from_args(args) == Execution() and args.batch_size == DEFAULT_BATCH
    flags = parser._subparsers._group_actions[0].choices["eval"]._option_string_actions
    assert tuple(flags["--device"].choices) == DEVICE_KINDS and tuple(flags["--precision"].choices) == PRECISIONS
    args = parser.parse_args(["eval", "c.h5", "m.h5", "--strategy", "mirrored", "--device", "cpu", "--xla"])
    assert args.xla is True
    args = parser.parse_args(["eval", "c.h5", "m.h5", "--strategy", "mirrored", "--device", "cpu"])
    assert execution_from_args(args) == Execution(device="cpu", devices="all")
    assert Execution.from_settings(jit_compile=1) == Execution(jit_compile=True)
