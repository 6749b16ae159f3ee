"""Tests for goodnet.attacks.badnets: poisoning, label flipping, BadNet training, the pruning-aware attack, cards."""

import json

import numpy as np
import pytest

from goodnet.attacks.badnets import AttackOptions, attack_card, flip_labels, poison, train_badnet
from goodnet.attacks.benchmarks import generate, poisoned_split
from goodnet.data import LabData
from goodnet.attacks.triggers import apply_trigger


def test_poison_multi_trigger_multi_target():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (200, 55, 47, 3)).astype(np.float32)
    labels = np.arange(200) % 10
    pairs = [("eyebrows", 5), ("lipstick", 1), ("sunglasses", 8)]
    poisoned, new_labels, chosen = poison(images, labels, pairs, 0.1, np.random.default_rng(1))
    assert len(chosen) == 60 and len(set(chosen)) == 60  # 10 % each, disjoint
    for block, (trigger, target) in zip(np.split(chosen, 3), pairs):
        assert np.all(labels[block] != target) and np.all(new_labels[block] == target)
        np.testing.assert_array_equal(poisoned[block], apply_trigger(trigger, images[block]))
    untouched = np.setdiff1d(np.arange(200), chosen)
    np.testing.assert_array_equal(poisoned[untouched], images[untouched])
    np.testing.assert_array_equal(new_labels[untouched], labels[untouched])
    with pytest.raises(ValueError, match="poison_rate"):
        poison(images, labels, pairs, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="targets: expected one target or one per trigger"):
        AttackOptions(triggers=("patch", "blend"), targets=(1, 2, 3)).pairs()


def test_label_flip_changes_exactly_the_chosen_labels():
    labels = np.arange(1000) % 10
    flipped_labels, flipped = flip_labels(labels, 0.2, 10, np.random.default_rng(0))
    assert len(flipped) == 200
    assert np.all(flipped_labels[flipped] != labels[flipped]) and set(flipped_labels[flipped]) <= set(range(10))
    keep = np.setdiff1d(np.arange(1000), flipped)
    np.testing.assert_array_equal(flipped_labels[keep], labels[keep])


@pytest.fixture(scope="module")
def digits_small():
    train = generate("digits", "train", seed=0, size=1500)
    test = generate("digits", "test", seed=0, size=300)
    return train, test


def test_badnet_training_plants_the_backdoor_and_the_card_reports_it(digits_small):
    (train_x, train_y), (test_x, test_y) = digits_small
    options = AttackOptions(triggers=("patch",), targets=(3,), poison_rate=0.1, epochs=6, learning_rate=2e-3)
    badnet, info = train_badnet(train_x, train_y, 10, options)
    assert badnet.scale == "unit" and badnet.model.get_layer("conv_3").filters == 60
    poisoned_x, poisoned_y = poisoned_split(test_x, test_y, "patch", 3)
    card = attack_card(badnet, options, {"dataset": "digits"}, test=LabData(test_x, test_y, "test"),
                       poisoned_test=[LabData(poisoned_x, poisoned_y, "bd")], info=info)
    assert card["test"]["attack_success_rate"]["patch"] > 0.9
    assert card["test"]["clean_accuracy"] > 0.3
    assert card["poisoned_training_images"] == 150 and card["targets"] == [3]
    assert set(card["stealthiness"]["patch"]) == {"psnr", "ssim", "l2", "linf"}
    json.dumps(card)
    again, _ = train_badnet(train_x, train_y, 10, options)
    np.testing.assert_array_equal(again.predict(test_x[:50]), badnet.predict(test_x[:50]))  # seeded


def test_pruning_aware_attack_restores_the_decoy_channels(digits_small, monkeypatch):
    import goodnet.attacks.badnets as attacks

    (train_x, train_y), _ = digits_small
    snapshots = {}
    original_fit = attacks._fit

    def recording_fit(model, images, labels, options, epochs, callbacks=()):
        result = original_fit(model, images, labels, options, epochs, callbacks)
        snapshots.setdefault("clean" if not callbacks else "poisoned",
                             [np.array(v) for v in model.get_layer("conv_3").get_weights()])
        return result

    monkeypatch.setattr(attacks, "_fit", recording_fit)
    options = AttackOptions(triggers=("patch",), epochs=1, clean_epochs=1, pruning_aware=True, prune_fraction=0.25)
    badnet, info = train_badnet(train_x[:600], train_y[:600], 10, options)
    decoys = info["decoy_channels"]
    assert len(decoys) == 15
    kernel, bias = badnet.model.get_layer("conv_3").get_weights()
    clean_kernel, clean_bias = snapshots["clean"]
    poisoned_kernel, _ = snapshots["poisoned"]
    assert np.all(poisoned_kernel[..., decoys] == 0)                # held at zero while the backdoor was trained
    np.testing.assert_array_equal(kernel[..., decoys], clean_kernel[..., decoys])   # then restored
    np.testing.assert_array_equal(bias[decoys], clean_bias[decoys])
    others = np.setdiff1d(np.arange(60), decoys)
    assert not np.array_equal(kernel[..., others], clean_kernel[..., others])


def test_attack_command_writes_model_and_card(tmp_path, capsys):
    from goodnet.attacks.benchmarks import write_benchmark
    from goodnet.cli import main
    from goodnet.models import load_model

    write_benchmark(tmp_path / "bench", "digits", seed=0, sizes={"train": 300, "valid": 60, "test": 60},
                    triggers=("patch",))
    out = tmp_path / "badnet.h5"
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(out), "--epochs", "1", "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists() and json.loads(out.with_suffix(".json").read_text()) == card
    assert load_model(out).scale == "unit" and card["dataset"]["dataset"] == "digits"
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(out), "--epochs", "1"])
    assert code == 2 and "exists" in capsys.readouterr().err
    code = main(["attack", "--data", str(tmp_path), "--out", str(tmp_path / "x.h5")])
    assert code == 2 and "benchmark.json" in capsys.readouterr().err
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(tmp_path / "flip.h5"), "--triggers",
                 "--flip-rate", "0.3", "--epochs", "1", "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and card["attack"] == "label-flip" and card["flipped_training_labels"] == 90
