"""``goodnet robustness`` end to end on a tiny model and data built here: table, outputs, --json, defaults,
bad input (exit 2)."""

import csv
import json

import numpy as np
import pytest

from goodnet.attacks.benchmarks import generate
from goodnet.attacks.triggers import apply_trigger
from goodnet.cli import build_parser, main
from goodnet.cli.options import options_from_args
from goodnet.data import LabData, save_h5
from goodnet.models import load_model, save_model
from goodnet.robustness import OUTPUT_NAMES, RobustnessOptions, measure_robustness
from test_robustness import trigger_classifier

LADDERS = ["--blur", "0", "1", "--rotation", "0", "15", "--brightness", "-0.4", "0", "--jpeg", "80", "20",
           "--noise", "0", "30"]
SMALL = RobustnessOptions(blur=(0.0, 1.0), rotation=(0.0, 15.0), brightness=(-0.4, 0.0), jpeg=(80, 20),
                          noise=(0.0, 30.0))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robustness")
    images, labels = generate("digits", "valid", seed=1, size=20)
    labels = labels % 4
    keep = labels != 0
    model = folder / "badnet.h5"
    save_model(trigger_classifier(), model)
    paths = {"model": str(model), "valid": save_h5(folder / "valid.h5", images, labels),
             "bd": save_h5(folder / "bd_patch.h5", apply_trigger("patch", images[keep]), np.zeros(keep.sum())),
             "bd2": save_h5(folder / "bd_blend.h5", apply_trigger("blend", images[keep]), np.zeros(keep.sum())),
             "other": save_h5(folder / "bd_other.h5", images[keep], np.full(keep.sum(), 2))}
    return folder, paths


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_defaults_are_robustness_options():
    args = build_parser().parse_args(["robustness", "m.h5", "--poisoned", "bd.h5", "--target", "0"])
    assert options_from_args(args, RobustnessOptions) == RobustnessOptions()
    assert args.valid is None and args.out is None
    args = build_parser().parse_args(["robustness", "m.h5", "--poisoned", "bd.h5", "--target", "0", "--brightness",
                                      "-0.5", "0", "--brightness-mode", "add", "--jpeg", "90", "--transforms",
                                      "brightness", "jpeg", "--seed", "4"])
    assert options_from_args(args, RobustnessOptions) == RobustnessOptions(
        brightness=(-0.5, 0.0), brightness_mode="add", jpeg=(90,), transforms=("brightness", "jpeg"), seed=4)


def test_outputs_json_and_table_agree_with_the_library(files, tmp_path, capsys):
    _, paths = files
    out = tmp_path / "out"
    code, text, err = run(capsys, "robustness", paths["model"], "--poisoned", paths["bd"], paths["bd2"],
                          "--target", 0, "--valid", paths["valid"], "--out", out, "--json", "--no-progress",
                          *LADDERS)
    assert code == 0, err
    result = json.loads(text)
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == sorted(OUTPUT_NAMES)
    assert json.loads((out / "robustness.json").read_text()) == result
    classifier = load_model(paths["model"])
    images, labels = generate("digits", "valid", seed=1, size=20)
    labels = labels % 4
    keep = labels != 0
    expected = measure_robustness(classifier, [LabData(apply_trigger(name, images[keep]), np.zeros(keep.sum(), int),
                                                       path) for name, path in (("patch", paths["bd"]),
                                                                                ("blend", paths["bd2"]))],
                                  0, LabData(images, labels, paths["valid"]), SMALL, progress=False)
    assert result["transforms"] == json.loads(json.dumps(expected["transforms"]))
    assert [entry["robustness_score"] for entry in result["poisoned"]] == \
        [entry["robustness_score"] for entry in expected["poisoned"]]
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    assert len(rows) == 2 * (1 + 2 + 2 + 2 + 2 + 2)           # per file: untransformed + the ladders
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "robustness.md").read_text()
    assert "| transform | strength | ASR bd_patch.h5 % | ASR bd_blend.h5 % | clean accuracy % | clean -> 0 % |" \
        in markdown
    code, text, _ = run(capsys, "robustness", paths["model"], "--poisoned", paths["bd"], "--target", 0, "--no-progress",
                        "--transforms", "blur", "--blur", "0", "1")
    assert code == 0
    lines = text.splitlines()
    blur = result["transforms"][0]["attack_success_rate"][0][1] * 100
    assert any(line.split()[:3] == ["blur", "sigma", "1"] and line.split()[3] == f"{blur:.2f}" for line in lines)
    assert any(line.strip().startswith("bd_patch.h5: ") for line in lines)
    assert "n/a" in text                                     # no --valid: no clean accuracy


@pytest.mark.parametrize("argv, message", [
    (["MISSING", "--poisoned", "{bd}", "--target", "0"], "MISSING"),
    (["{model}", "--poisoned", "missing_bd.h5", "--target", "0"], "missing_bd.h5: file not found"),
    (["{model}", "--poisoned", "{bd}", "--target", "4"], "--target: expected a class in 0..3"),
    (["{model}", "--poisoned", "{bd}", "--target", "-1"], "--target: expected a class >= 0"),
    (["{model}", "--poisoned", "{other}", "--target", "0"], "every image is labelled 2"),
    (["{model}", "--poisoned", "{bd}", "--target", "0", "--blur", "1", "1"], "--blur: expected distinct strengths"),
    (["{model}", "--poisoned", "{bd}", "--target", "0", "--jpeg", "0"], "--jpeg: expected"),
    (["{model}", "--poisoned", "{bd}", "--target", "0", "--out", "{valid}"], "expected a folder, found a file"),
])
def test_bad_input_is_one_line_and_exit_2(files, capsys, argv, message):
    _, paths = files
    code, out, err = run(capsys, "robustness", *[arg.format(**paths) for arg in argv], "--no-progress")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""
