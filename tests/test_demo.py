"""Tests for goodnet.demo / `goodnet demo`: everything runs, figures are reported, caches are reused and safe."""

import json
import os

from goodnet.cli import main


def demo_args(tmp_path):
    return ["demo", "--sizes", "300", "100", "100", "--epochs", "1", "--copies", "4", "--no-progress",
            "--data-dir", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models"),
            "--out", str(tmp_path / "runs")]


def test_demo_runs_every_defense_and_reports_every_figure(tmp_path, capsys):
    code = main(demo_args(tmp_path) + ["--json"])
    output = capsys.readouterr().out
    figures = json.loads(output[output.index("\n{") + 1:])
    assert code == 0
    for key in ("clean_accuracy", "attack_success_rate", "pruning", "strip", "repair", "card", "plots"):
        assert key in figures, key
    assert 0 <= figures["clean_accuracy"] <= 1 and figures["strip"]["copies"] == 4
    assert figures["repair"]["chosen"] in figures["repair"]["candidates"]
    assert os.path.exists(figures["repair"]["model"]) and os.path.exists(figures["pruning"]["curve_png"])
    assert all(os.path.exists(path) for path in figures["plots"].values())
    assert "goodnet demo: digits benchmark" in output and "<- chosen" in output
    model = figures["badnet"]
    assert model.startswith(str(tmp_path / "models")) and os.path.exists(os.path.splitext(model)[0] + ".json")

    before = os.stat(model).st_mtime_ns
    code = main(demo_args(tmp_path) + ["--json"])
    again = capsys.readouterr().out
    again = json.loads(again[again.index("\n{") + 1:])
    assert code == 0 and os.stat(model).st_mtime_ns == before      # the cached BadNet was reused
    assert again["clean_accuracy"] == figures["clean_accuracy"]


def test_demo_never_overwrites_files_it_does_not_own(tmp_path, capsys):
    from goodnet.demo import DemoOptions, badnet_path

    options = DemoOptions(sizes={"train": 300, "valid": 100, "test": 100}, epochs=1,
                          data_dir=str(tmp_path / "data"), models_dir=str(tmp_path / "models"))
    foreign = badnet_path(options)
    os.makedirs(os.path.dirname(foreign))
    with open(foreign, "w") as handle:
        handle.write("mine")
    code = main(demo_args(tmp_path))
    assert code == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert open(foreign).read() == "mine"
