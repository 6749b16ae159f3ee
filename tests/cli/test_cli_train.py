"""``goodnet train`` end to end on tiny data built here: model and card, --json, ground truth, errors (exit 2)."""

import json

import h5py
import numpy as np
import pytest

from goodnet.cli import build_parser, main
from goodnet.cli.options import options_from_args
from goodnet.data import PoisonTruth, save_h5
from goodnet.training import TrainOptions
from square_task import coloured_squares


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    images, labels = coloured_squares(20, (10, 10), seed=0, classes=3)
    valid_images, valid_labels = coloured_squares(8, (10, 10), seed=1, classes=3)
    paths = {"train": save_h5(folder / "train.h5", images, labels),
             "valid": save_h5(folder / "valid.h5", valid_images, valid_labels),
             "bd": save_h5(folder / "bd_valid.h5", valid_images[valid_labels != 0], np.zeros(16, np.int64))}
    return folder, paths


def test_defaults_are_train_options():
    args = build_parser().parse_args(["train", "--data", "t.h5", "--valid", "v.h5", "--out", "m.h5"])
    assert options_from_args(args, TrainOptions) == TrainOptions()
    args = build_parser().parse_args(["train", "--data", "t.h5", "--valid", "v.h5", "--out", "m.h5", "--epochs", "2",
                                      "--batch-size", "4", "--learning-rate", "0.01", "--seed", "9"])
    assert options_from_args(args, TrainOptions) == TrainOptions(epochs=2, batch_size=4, learning_rate=0.01, seed=9)


def test_train_writes_model_and_card_and_refuses_to_overwrite(files, tmp_path, capsys):
    from goodnet.models import load_model

    _, paths = files
    out = tmp_path / "model.h5"
    code = main(["train", "--data", paths["train"], "--valid", paths["valid"], "--poisoned-valid", paths["bd"],
                 "--out", str(out), "--epochs", "2", "--batch-size", "16", "--json", "--no-progress"])
    captured = capsys.readouterr()
    card = json.loads(captured.out)
    assert code == 0 and json.loads(out.with_suffix(".json").read_text()) == card
    assert card["data"] == {"train": paths["train"], "valid": paths["valid"], "poisoned_valid": [paths["bd"]]}
    assert card["num_classes"] == 3 and card["training_images"] == 60 and card["ground_truth"] is None
    assert card["options"] == {"epochs": 2, "batch_size": 16, "learning_rate": 2e-3, "seed": 0}
    assert card["training_seconds"] > 0 and card["valid"]["clean_images"] == 24
    model = load_model(out)
    assert model.scale == "unit" and model.num_classes == 3
    valid_images, valid_labels = coloured_squares(8, (10, 10), seed=1, classes=3)
    accuracy = float(np.mean(model.predict(valid_images) == valid_labels))
    assert card["valid"]["clean_accuracy"] == pytest.approx(accuracy)
    assert set(card["valid"]["attack_success_rate"]) == {"bd_valid.h5"}
    before = out.read_bytes()
    code = main(["train", "--data", paths["train"], "--valid", paths["valid"], "--out", str(out), "--epochs", "1"])
    assert code == 2 and "--out: file exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    code = main(["train", "--data", paths["train"], "--valid", paths["valid"], "--out", str(out), "--epochs", "1",
                 "--overwrite", "--no-progress"])
    assert code == 0 and out.read_bytes() != before
    assert "Model written to" in capsys.readouterr().out


def test_retraining_the_attack_s_training_set_reproduces_the_badnet(tmp_path, capsys):
    """The loop's first step: the set ``goodnet attack`` writes, retrained with its seed, gives its BadNet."""
    from goodnet.attacks.badnets import AttackOptions, save_training_set, train_badnet
    from goodnet.models import load_model

    images, labels = coloured_squares(20, (10, 10), seed=2, classes=3)
    attack = AttackOptions(triggers=("blend",), targets=(1,), poison_rate=0.2, flip_rate=0.1, epochs=1, seed=4)
    badnet, info = train_badnet(images, labels, 3, attack)
    train_path, dtype = save_training_set(tmp_path / "train_poisoned.h5", info)
    assert dtype == "float32"
    valid = save_h5(tmp_path / "valid.h5", *coloured_squares(4, (10, 10), seed=3, classes=3))
    out = tmp_path / "retrained.h5"
    code = main(["train", "--data", str(train_path), "--valid", valid, "--out", str(out), "--epochs", "1",
                 "--seed", "4", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "12 poisoned, 6 flipped labels" in text
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["ground_truth"] == {"poisoned": 12, "flipped": 6, "per_trigger": {"blend": 12}}
    retrained = load_model(out)
    for mine, theirs in zip(retrained.model.get_weights(), badnet.model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def _write(path, **datasets):
    with h5py.File(path, "w") as handle:
        for name, value in datasets.items():
            handle.create_dataset(name, data=value)
    return str(path)


def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys):
    folder, paths = files
    images = np.zeros((4, 3, 55, 47), np.uint8)
    bad = {"missing": str(tmp_path / "none.h5"),
           "nolabel": _write(tmp_path / "nolabel.h5", data=images),
           "shape": _write(tmp_path / "shape.h5", data=np.zeros((4, 3, 32, 32), np.uint8), label=np.arange(4)),
           "truth": _write(tmp_path / "truth.h5", data=images, label=np.arange(4), poisoned=np.array([0, 3, 0, 0]))}
    cases = [
        (["--data", bad["missing"]], f"{bad['missing']}: file not found"),
        (["--data", bad["nolabel"]], f"{bad['nolabel']}: label: missing dataset"),
        (["--data", bad["shape"]], f"{bad['shape']}: data: expected images of 3x55x47"),
        (["--data", bad["truth"]], f"{bad['truth']}: poisoned: expected 0 or 1 per image"),
        (["--data", paths["train"], "--num-classes", "2"], "label: expected class labels in 0..1"),
        (["--data", paths["train"], "--out", str(tmp_path / "m.keras")], "--out: expected a model file name ending"),
        (["--data", paths["train"], "--out", paths["train"]], "refusing to write over the input file"),
        (["--data", paths["train"], "--learning-rate", "0"], "--learning-rate: expected"),
    ]
    for extra, fragment in cases:
        argv = ["train", "--valid", paths["valid"], "--out", str(tmp_path / "m.h5"), "--epochs", "1", *extra]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert fragment in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp_path / "m.h5").exists()
    with pytest.raises(SystemExit) as caught:
        main(["train", "--data", paths["train"], "--valid", paths["valid"], "--out", "m.h5", "--epochs", "0"])
    assert caught.value.code == 2
    # a training file whose ground truth holds fewer images than its data: named with the field
    truth = PoisonTruth.from_indices([0, 1, 2])
    short = save_h5(tmp_path / "short.h5", np.zeros((3, 55, 47, 3)), [0, 1, 2], **truth.datasets())
    with h5py.File(short, "a") as handle:
        del handle["flipped"]
        handle.create_dataset("flipped", data=np.zeros(2, np.uint8))
    code = main(["train", "--data", short, "--valid", paths["valid"], "--out", str(tmp_path / "m.h5")])
    assert code == 2 and f"{short}: flipped: expected one entry per image (3,)" in capsys.readouterr().err


def test_defense_flags_are_the_defenses_options():
    from goodnet.defenses.bagging import BaggingOptions
    from goodnet.defenses.partition_aggregation import PartitionOptions

    base = ["train", "--data", "t.h5", "--valid", "v.h5", "--out", "m.h5"]
    args = build_parser().parse_args(base)
    assert args.defense == "none" and args.partitions is None
    assert options_from_args(args, BaggingOptions) == BaggingOptions()
    assert options_from_args(args, PartitionOptions) == PartitionOptions()
    args = build_parser().parse_args(base + ["--defense", "bagging", "--models", "4", "--sample-fraction", "0.3",
                                             "--no-bootstrap", "--partition-hash", "pixel-sum"])
    assert options_from_args(args, BaggingOptions) == BaggingOptions(models=4, sample_fraction=0.3, bootstrap=False)
    assert options_from_args(args, PartitionOptions) == PartitionOptions(models=4, partition_hash="pixel-sum")
    args = build_parser().parse_args(base + ["--defense", "dpa", "--partitions", "6", "--no-match-steps"])
    assert args.partitions == 6 and options_from_args(args, PartitionOptions).match_steps is False


def test_train_bagging_writes_one_model_and_the_members_in_the_card(files, tmp_path, capsys):
    from goodnet.models import load_model

    _, paths = files
    out = tmp_path / "bagged.h5"
    code = main(["train", "--data", paths["train"], "--valid", paths["valid"], "--out", str(out), "--defense",
                 "bagging", "--models", "2", "--sample-fraction", "0.4", "--epochs", "1", "--batch-size", "16",
                 "--json", "--no-progress"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and card["defense"] == "bagging" and card["members"] == 2
    assert card["defense_options"] == {"models": 2, "match_steps": True, "sample_fraction": 0.4, "bootstrap": True}
    assert card["member_images"] == [24, 24] and len(card["member_training_seconds"]) == 2
    assert card["member_epochs"] == 3 and card["options"]["epochs"] == 1      # ceil(1 / 0.4) each
    assert card["training_seconds"] >= sum(card["member_training_seconds"]) - 0.05
    model = load_model(out)
    assert model.scale == "unit" and model.num_classes == 3
    valid_images, valid_labels = coloured_squares(8, (10, 10), seed=1, classes=3)
    assert card["valid"]["clean_accuracy"] == pytest.approx(np.mean(model.predict(valid_images) == valid_labels))
    assert not (tmp_path / "bagged_certified_accuracy.csv").exists()


def test_train_dpa_writes_the_voting_model_and_the_certified_accuracy(files, tmp_path, capsys):
    import csv

    from goodnet.defenses.partition_aggregation import certified_accuracy_curve, certify
    from goodnet.models import load_model

    _, paths = files
    out = tmp_path / "dpa.h5"
    argv = ["train", "--data", paths["train"], "--valid", paths["valid"], "--out", str(out), "--defense", "dpa",
            "--partitions", "3", "--epochs", "1", "--batch-size", "16", "--no-match-steps", "--no-progress"]
    code = main(argv)
    text = capsys.readouterr().out
    assert code == 0 and "as dpa of 3 models" in text and "median certified radius" in text
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["defense"] == "dpa" and card["members"] == 3 and sum(card["partition_sizes"]) == 60
    assert card["defense_options"] == {"models": 3, "match_steps": False, "partition_hash": "sha256"}
    assert card["member_epochs"] == 1
    curve = card["valid"]["certified_accuracy"]
    # the saved model's output is the vote share: its votes give the card's curve again
    model = load_model(out)
    valid_images, valid_labels = coloured_squares(8, (10, 10), seed=1, classes=3)
    votes = np.rint(model.predict_proba(valid_images) * 3).astype(np.int64)
    assert np.all(votes.sum(axis=1) == 3)
    assert certified_accuracy_curve(*certify(votes), valid_labels) == curve
    assert curve["clean_accuracy"] == pytest.approx(card["valid"]["clean_accuracy"])
    csv_path, png_path = tmp_path / "dpa_certified_accuracy.csv", tmp_path / "dpa_certified_accuracy.png"
    assert card["certified_accuracy_files"] == {"csv": str(csv_path), "png": str(png_path)}
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["radius"]) for row in rows] == [row["radius"] for row in curve["rows"]]
    assert [float(row["certified_accuracy"]) for row in rows] == [row["certified_accuracy"] for row in curve["rows"]]
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    # the curve files are outputs too: never replaced without --overwrite
    out.unlink()
    out.with_suffix(".json").unlink()
    code = main(argv)
    assert code == 2 and f"{csv_path}: --out: file exists; pass --overwrite" in capsys.readouterr().err


def test_defense_errors_are_one_line(files, tmp_path, capsys):
    _, paths = files
    base = ["train", "--data", paths["train"], "--valid", paths["valid"], "--out", str(tmp_path / "m.h5"),
            "--epochs", "1", "--no-progress"]
    cases = [(["--defense", "bagging", "--partitions", "3"], "--partitions: DPA's number of partitions, expected "
                                                             "with --defense dpa"),
             (["--defense", "dpa", "--models", "70"], "of 70 partitions hold no training image"),
             (["--defense", "bagging", "--sample-fraction", "1.5"], "--sample-fraction: expected a number in (0, 1]")]
    for extra, fragment in cases:
        code = main(base + extra)
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp_path / "m.h5").exists()
    for extra in (["--defense", "dp"], ["--defense", "dpa", "--partitions", "0"]):
        with pytest.raises(SystemExit) as caught:
            main(base + extra)
        assert caught.value.code == 2


def test_dp_sgd_flags_are_its_options_and_the_recipe_flags_default_per_defense():
    from goodnet.defenses.dp_sgd import DPSGDOptions

    base = ["train", "--data", "t.h5", "--valid", "v.h5", "--out", "m.h5", "--defense", "dp-sgd"]
    args = build_parser().parse_args(base)
    assert options_from_args(args, DPSGDOptions) == DPSGDOptions()        # 60 epochs, expected batch 256
    assert options_from_args(args, TrainOptions) == TrainOptions()        # 8 epochs, batch 32
    args = build_parser().parse_args(base + ["--epochs", "3", "--batch-size", "16", "--clip-norm", "0.5",
                                             "--target-epsilon", "4", "--delta", "1e-4", "--optimizer", "sgd"])
    assert options_from_args(args, DPSGDOptions) == DPSGDOptions(epochs=3, batch_size=16, clip_norm=0.5,
                                                                 target_epsilon=4.0, delta=1e-4, optimizer="sgd")
    assert options_from_args(args, TrainOptions) == TrainOptions(epochs=3, batch_size=16)


def test_train_dp_sgd_prints_epsilon_per_epoch_and_writes_its_budget(files, tmp_path, capsys):
    from goodnet.models import load_model
    from goodnet.privacy import PrivacyOptions, privacy_budget

    _, paths = files
    out = tmp_path / "private.h5"
    code = main(["train", "--data", paths["train"], "--valid", paths["valid"], "--out", str(out), "--defense",
                 "dp-sgd", "--epochs", "2", "--batch-size", "12", "--target-epsilon", "20", "--delta", "1e-3",
                 "--json"])
    captured = capsys.readouterr()
    card = json.loads(captured.out)
    lines = [line for line in captured.err.splitlines() if line.startswith("dp-sgd epoch")]
    assert code == 0 and [line.split(":")[0] for line in lines] == ["dp-sgd epoch 1/2", "dp-sgd epoch 2/2"]
    assert all("(tight)" in line and "(classic)" in line and "valid accuracy" in line for line in lines)
    privacy = card["privacy"]
    assert card["defense"] == "dp-sgd" and card["options"] is None and card["recipe"].startswith("DP-SGD")
    assert card["defense_options"]["epochs"] == 2 and card["defense_options"]["batch_size"] == 12
    assert privacy["steps"] == 10 and len(privacy["history"]) == 2      # ceil(2 * 60 / 12)
    # the card's epsilon is the privacy budget goodnet privacy-budget gives for the same run
    budget = privacy_budget(PrivacyOptions(examples=60, batch_size=12, epochs=2, delta=1e-3,
                                           noise_multiplier=privacy["noise_multiplier"]))
    assert privacy["epsilon"]["tight"]["epsilon"] == pytest.approx(budget.tight.epsilon, rel=1e-9)
    assert budget.tight.epsilon <= 20.0
    assert privacy["epsilon"]["classic"]["epsilon"] == pytest.approx(budget.classic.epsilon, rel=1e-9)
    assert privacy["history"][-1]["epsilon_tight"] == pytest.approx(budget.tight.epsilon, rel=1e-9)
    model = load_model(out)
    valid_images, valid_labels = coloured_squares(8, (10, 10), seed=1, classes=3)
    assert model.scale == "unit" and model.num_classes == 3
    assert card["valid"]["clean_accuracy"] == pytest.approx(np.mean(model.predict(valid_images) == valid_labels))
    assert privacy["history"][-1]["valid_accuracy"] == pytest.approx(card["valid"]["clean_accuracy"])
