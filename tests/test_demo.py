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

    assert "data_loop" not in figures and "data loop" not in output

    before = os.stat(model).st_mtime_ns
    code = main(demo_args(tmp_path) + ["--json", "--data-loop"])
    text = capsys.readouterr().out
    again = json.loads(text[text.index("\n{") + 1:])
    assert code == 0 and os.stat(model).st_mtime_ns == before      # the cached BadNet was reused
    assert again["clean_accuracy"] == figures["clean_accuracy"]
    _check_data_loop(again, text)


def _check_data_loop(figures, output):
    """--data-loop (here on the cached BadNet: its poisoned set is redrawn from the attack's options)."""
    from goodnet.data import load_h5, load_poison_truth

    loop = figures["data_loop"]
    assert set(loop["models"]) == {"badnet", "retrained", "clean"}
    assert loop["models"]["badnet"] == {"clean_accuracy": figures["clean_accuracy"],
                                        "attack_success_rate": figures["attack_success_rate"]}
    assert set(loop["methods"]) == {"ac", "spectral", "isolation"}
    assert loop["training_images"] == 300 and loop["poisoned"] == round(0.1 * 300)
    assert figures["card"]["poisoned_training_images"] == loop["poisoned"]     # the BadNet's own poisoned set
    assert loop["by"] in (None, "ac", "spectral", "isolation") and loop["by"] == loop["recommended"]
    # the cleaned set is the poisoned set without the chosen method's flags, with the kept rows' ground truth
    clean = load_h5(loop["clean_set"])
    truth = load_poison_truth(loop["clean_set"])
    assert len(clean) == loop["kept"] == 300 - loop["removed"]
    assert int(truth.poisoned.sum()) == loop["poisoned_kept"]
    assert loop["removed"] == (loop["methods"][loop["by"]]["flagged"] if loop["by"] else 0)
    assert os.path.exists(loop["report"])
    assert os.path.exists(os.path.join(os.path.dirname(loop["report"]), "scores.csv"))
    assert "data loop (the BadNet's poisoned training set: 300 images, 30 poisoned)" in output
    assert "retrained on the cleaned set" in output and "s for the data loop" in output


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

