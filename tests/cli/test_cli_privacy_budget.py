"""``goodnet privacy-budget``: flags from PrivacyOptions, the labelled text and JSON output for the published MNIST
setting, --target-epsilon, and bad input as one line with exit status 2."""

import json
import re

import pytest

from goodnet.cli import build_parser, main
from goodnet.cli.options import options_from_args
from goodnet.privacy import LABELS, PrivacyOptions

MNIST = ["privacy-budget", "--examples", "60000", "--batch-size", "256", "--noise-multiplier", "1.1", "--epochs", "60",
         "--delta", "1e-5"]


def _figure(text, label):
    """The first number after ``label:`` on its line."""
    line = next(line for line in text.splitlines() if line.strip().startswith(label + ":"))
    return float(re.search(r":\s+([0-9.]+)", line).group(1)), line


def test_flags_are_privacy_options():
    args = build_parser().parse_args(["privacy-budget"])
    assert options_from_args(args, PrivacyOptions) == PrivacyOptions()
    args = build_parser().parse_args(MNIST + ["--orders", "2", "8.5"])
    assert options_from_args(args, PrivacyOptions) == PrivacyOptions(examples=60000, orders=(2.0, 8.5))
    assert args.target_epsilon is None and not args.json


def test_text_output_labels_both_conversions(capsys):
    assert main(MNIST) == 0
    out = capsys.readouterr().out
    assert "steps: 14063 (ceil(60 * 60000 / 256))" in out
    assert "sampling probability q: 0.00426667 (256 / 60000)" in out
    classic, classic_line = _figure(out, LABELS["classic"])
    tight, tight_line = _figure(out, LABELS["tight"])
    assert round(classic, 2) == 3.01 and "best order 8.8" in classic_line
    assert round(tight, 2) == 2.60 and "best order 8.1" in tight_line
    assert "Note" not in out


def test_json_output(capsys):
    assert main(MNIST + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["steps"], report["sampling_probability"], report["examples"]) == (14063, 256 / 60000, 60000)
    assert report["classic"]["label"] == "RDP, classic conversion (Mironov 2017)"
    assert report["tight"]["label"] == "RDP, dp-accounting's conversion (tighter)"
    assert round(report["classic"]["epsilon"], 2) == 3.01 and round(report["tight"]["epsilon"], 2) == 2.60
    assert (report["classic"]["order"], report["tight"]["order"]) == (8.8, 8.1)
    assert report["noise_multiplier"] == 1.1 and report["orders"] == 156 and report["warnings"] == []


def test_target_epsilon(capsys):
    assert main(MNIST + ["--target-epsilon", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target_epsilon"] == 3.0 and "noise_multiplier" not in report
    classic, tight = report["classic"], report["tight"]
    assert classic["epsilon"] <= 3 and tight["epsilon"] <= 3
    # 1.1 gives 3.008 under the classic conversion, so a little more noise is needed; the tight one needs less
    assert 1.1 < classic["noise_multiplier"] < 1.11 and tight["noise_multiplier"] < 1.1
    assert main(MNIST + ["--target-epsilon", "3"]) == 0
    out = capsys.readouterr().out
    assert "Noise multiplier for epsilon <= 3 at delta 1e-05:" in out
    noise, line = _figure(out, LABELS["classic"])
    assert noise >= classic["noise_multiplier"] and noise - classic["noise_multiplier"] < 1e-5   # rounded up
    assert "epsilon 3.0000" in line
    assert _figure(out, LABELS["tight"])[0] == pytest.approx(tight["noise_multiplier"], abs=1e-5)


def test_notes(capsys):
    assert main(["privacy-budget", "--examples", "1000", "--batch-size", "10", "--delta", "0.01"]) == 0
    assert "Note: delta 0.01 is not below 1/N = 0.001" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    ([], "--examples: required"),
    (["--examples", "100"], "--batch-size: expected at most --examples (100), got 256"),
    (["--examples", "60000", "--delta", "1"], "--delta: expected a number in (0, 1), got 1.0"),
    (["--examples", "60000", "--delta", "0"], "--delta: expected a number in (0, 1), got 0.0"),
    (["--examples", "60000", "--noise-multiplier", "0"], "--noise-multiplier: expected a number > 0"),
    (["--examples", "60000", "--epochs", "-2"], "--epochs: expected a number > 0"),
    (["--examples", "60000", "--orders", "0.5", "2"], "--orders: expected a non-empty sequence, each a number > 1"),
    (["--examples", "0"], "argument --examples: expected a positive integer, got 0"),
    (["--examples", "60000", "--delta", "x"], "argument --delta: invalid float value"),
    (["--examples", "60000", "--target-epsilon", "-1"], "--target-epsilon: expected a number > 0, got -1"),
    (["--examples", "60000", "--target-epsilon", "1e-9"], "--target-epsilon: no noise multiplier up to 10000"),
])
def test_bad_input_is_one_line_and_exit_2(arguments, message, capsys):
    try:
        code = main(["privacy-budget"] + arguments)
    except SystemExit as stop:     # argparse's own errors (a flag's type)
        code = stop.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("goodnet privacy-budget: error: ")
