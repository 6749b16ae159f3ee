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
    poisoned, new_labels, chosen, triggers = poison(images, labels, pairs, 0.1, np.random.default_rng(1))
    assert len(chosen) == 60 and len(set(chosen)) == 60  # 10 % each, disjoint
    np.testing.assert_array_equal(triggers, np.repeat([0, 1, 2], 20))   # each poisoned image's position in pairs
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
    original_fit = attacks.fit_deepid

    def recording_fit(model, images, labels, options, epochs=None, callbacks=()):
        result = original_fit(model, images, labels, options, epochs, callbacks)
        snapshots.setdefault("clean" if not callbacks else "poisoned",
                             [np.array(v) for v in model.get_layer("conv_3").get_weights()])
        return result

    monkeypatch.setattr(attacks, "fit_deepid", recording_fit)
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


def test_train_badnet_info_holds_the_training_set_and_its_ground_truth(digits_small):
    (train_x, train_y), _ = digits_small
    images, labels = train_x[:200], train_y[:200]
    options = AttackOptions(triggers=("patch", "blend"), targets=(3, 5), poison_rate=0.1, flip_rate=0.1, epochs=1)
    _, info = train_badnet(images, labels, 10, options)
    truth, trained = info["truth"], info["training_set"]
    assert truth.trigger_names == ("patch", "blend") and len(truth) == 200
    np.testing.assert_array_equal(truth.poisoned_indices, np.sort(info["poisoned_indices"]))
    np.testing.assert_array_equal(truth.trigger[info["poisoned_indices"]], info["poisoned_triggers"])
    np.testing.assert_array_equal(truth.flipped_indices, info["flipped_indices"])
    np.testing.assert_array_equal(truth.clean_labels, labels)
    assert truth.counts()["per_trigger"] == {"patch": 20, "blend": 20} and truth.counts()["flipped"] == 20
    for index, (name, target) in enumerate(options.pairs()):
        chosen = np.flatnonzero(truth.trigger == index)
        np.testing.assert_array_equal(trained.images[chosen], apply_trigger(name, images[chosen]))
        assert np.all(trained.labels[chosen] == target)
    flipped_only = truth.flipped & ~truth.poisoned
    assert flipped_only.any() and np.all(trained.labels[flipped_only] != labels[flipped_only])
    untouched = ~truth.poisoned & ~truth.flipped
    np.testing.assert_array_equal(trained.images[untouched], images[untouched])
    np.testing.assert_array_equal(trained.labels[untouched], labels[untouched])


def test_attack_command_writes_model_card_and_training_set(tmp_path, capsys):
    from goodnet.attacks.benchmarks import write_benchmark
    from goodnet.cli import main
    from goodnet.data import load_h5, load_poison_truth
    from goodnet.models import load_model

    write_benchmark(tmp_path / "bench", "digits", seed=0, sizes={"train": 300, "valid": 60, "test": 60},
                    triggers=("patch", "sunglasses"))
    clean = load_h5(tmp_path / "bench" / "train.h5")
    out = tmp_path / "badnet.h5"
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(out), "--epochs", "1", "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists() and json.loads(out.with_suffix(".json").read_text()) == card
    assert load_model(out).scale == "unit" and card["dataset"]["dataset"] == "digits"
    # the poisoned training set, beside the model: pixels and labels as trained, and the ground truth
    train_path = tmp_path / "badnet_train_poisoned.h5"
    assert card["training_set"] == str(train_path) and card["training_set_dtype"] == "uint8"
    written, truth = load_h5(train_path), load_poison_truth(train_path)
    assert truth.trigger_names == ("patch",) and truth.counts()["poisoned"] == card["poisoned_training_images"] == 30
    poisoned = truth.poisoned_indices
    np.testing.assert_array_equal(written.images[poisoned], apply_trigger("patch", clean.images[poisoned]))
    assert np.all(written.labels[poisoned] == 0) and np.all(clean.labels[poisoned] != 0)
    np.testing.assert_array_equal(truth.clean_labels, clean.labels)
    np.testing.assert_array_equal(np.delete(written.images, poisoned, 0), np.delete(clean.images, poisoned, 0))
    assert not truth.flipped.any()
    # nothing is overwritten without --overwrite, nor the benchmark's own files even with it
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(out), "--epochs", "1"])
    assert code == 2 and "exists" in capsys.readouterr().err
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(tmp_path / "other.h5"),
                 "--train-out", str(train_path), "--epochs", "1"])
    assert code == 2 and f"{train_path}: --train-out: file exists" in capsys.readouterr().err
    assert not (tmp_path / "other.h5").exists()
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(tmp_path / "other.h5"),
                 "--train-out", str(tmp_path / "bench" / "train.h5"), "--epochs", "1", "--overwrite"])
    assert code == 2 and "refusing to write over the benchmark's own file" in capsys.readouterr().err
    code = main(["attack", "--data", str(tmp_path), "--out", str(tmp_path / "x.h5")])
    assert code == 2 and "benchmark.json" in capsys.readouterr().err
    # two triggers (a blended one: float32 pixels) and label flipping, to a chosen file name
    chosen = tmp_path / "sets" / "train_poisoned.h5"
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(tmp_path / "multi.h5"), "--triggers",
                 "sunglasses", "patch", "--targets", "4", "7", "--flip-rate", "0.1", "--epochs", "1",
                 "--train-out", str(chosen), "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and card["training_set"] == str(chosen) and card["training_set_dtype"] == "float32"
    truth, written = load_poison_truth(chosen), load_h5(chosen)
    assert truth.trigger_names == ("sunglasses", "patch")
    assert truth.counts()["per_trigger"] == {"sunglasses": 30, "patch": 30} and truth.counts()["flipped"] == 30
    for index, (name, target) in enumerate([("sunglasses", 4), ("patch", 7)]):
        rows = np.flatnonzero(truth.trigger == index)
        np.testing.assert_array_equal(written.images[rows], apply_trigger(name, clean.images[rows]))
        assert np.all(written.labels[rows] == target)
    code = main(["attack", "--data", str(tmp_path / "bench"), "--out", str(tmp_path / "flip.h5"), "--triggers",
                 "--flip-rate", "0.3", "--epochs", "1", "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and card["attack"] == "label-flip" and card["flipped_training_labels"] == 90
    truth = load_poison_truth(tmp_path / "flip_train_poisoned.h5")
    assert truth.trigger_names == () and not truth.poisoned.any() and truth.counts()["flipped"] == 90
    written = load_h5(tmp_path / "flip_train_poisoned.h5")
    np.testing.assert_array_equal(truth.flipped, written.labels != clean.labels)


def test_targeted_flip_relabels_a_share_of_the_source_class_only():
    from goodnet.attacks.badnets import flip_targeted

    labels = np.arange(300) % 10                    # 30 images per class
    flipped_labels, chosen = flip_targeted(labels, 3, 7, 0.5, np.random.default_rng(0))
    assert len(chosen) == 15 and np.all(labels[chosen] == 3) and np.all(flipped_labels[chosen] == 7)
    assert np.all(np.diff(chosen) > 0)
    keep = np.setdiff1d(np.arange(300), chosen)
    np.testing.assert_array_equal(flipped_labels[keep], labels[keep])
    exclude = np.flatnonzero(labels == 3)[:10]      # e.g. already flipped at random: never chosen
    _, chosen = flip_targeted(labels, 3, 7, 1.0, np.random.default_rng(0), exclude=exclude)
    np.testing.assert_array_equal(chosen, np.flatnonzero(labels == 3)[10:])
    with pytest.raises(ValueError, match="targeted_flip_rate"):
        flip_targeted(labels, 3, 7, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="flip_target: expected a class other than the source 3"):
        flip_targeted(labels, 3, 3, 0.5, np.random.default_rng(0))


def test_targeted_flip_options_are_checked():
    assert AttackOptions().targeted_flip() is None and not AttackOptions().flips_labels
    options = AttackOptions(flip_source=2, flip_target=5, targeted_flip_rate=0.4)
    assert options.targeted_flip(10) == (2, 5, 0.4) and options.flips_labels
    cases = [(AttackOptions(flip_source=2), "flip_source: given without targeted_flip_rate"),
             (AttackOptions(flip_target=2), "flip_target: given without targeted_flip_rate"),
             (AttackOptions(targeted_flip_rate=0.3, flip_target=1), "flip_source: expected a class with"),
             (AttackOptions(targeted_flip_rate=0.3, flip_source=1), "flip_target: expected a class with"),
             (AttackOptions(targeted_flip_rate=0.3, flip_source=1, flip_target=1), "other than the source 1"),
             (AttackOptions(targeted_flip_rate=0.3, flip_source=1, flip_target=10), r"flip_target: expected a "
                                                                                     r"class in 0\.\.9, got 10")]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            options.targeted_flip(10)
    with pytest.raises(ValueError, match="--flip-source: given without --targeted-flip-rate"):
        AttackOptions(flip_source=2).targeted_flip(10, flags=True)


def test_targeted_flip_in_training_leaves_the_random_draws_and_is_in_the_ground_truth(digits_small):
    (train_x, train_y), (test_x, test_y) = digits_small
    images, labels = train_x[:300], train_y[:300]
    random_only = AttackOptions(triggers=(), flip_rate=0.1, epochs=1, seed=2)
    both = AttackOptions(triggers=(), flip_rate=0.1, flip_source=4, flip_target=9, targeted_flip_rate=0.5,
                         epochs=1, seed=2)
    _, plain = train_badnet(images, labels, 10, random_only)
    classifier, info = train_badnet(images, labels, 10, both)
    targeted = info["targeted_flip_indices"]
    random_flips = np.setdiff1d(info["flipped_indices"], targeted)
    np.testing.assert_array_equal(random_flips, plain["flipped_indices"])     # the random flips as before
    eligible = np.setdiff1d(np.flatnonzero(labels == 4), plain["flipped_indices"])
    assert len(targeted) == round(0.5 * len(eligible)) and set(targeted) <= set(eligible)
    trained, truth = info["training_set"], info["truth"]
    assert np.all(trained.labels[targeted] == 9)
    np.testing.assert_array_equal(truth.flipped_indices, info["flipped_indices"])
    np.testing.assert_array_equal(truth.clean_labels, labels)
    np.testing.assert_array_equal(truth.flipped, trained.labels != labels)
    card = attack_card(classifier, both, {"dataset": "digits"}, valid=LabData(test_x, test_y, "valid"), info=info)
    assert card["attack"] == "label-flip+targeted"
    assert card["targeted_flip"] == {"source": 4, "target": 9, "rate": 0.5, "count": len(targeted),
                                     "indices": targeted.tolist()}
    predictions = classifier.predict(test_x[test_y == 4])
    assert card["valid"]["source_images"] == len(predictions)
    assert card["valid"]["source_class_accuracy"] == pytest.approx(np.mean(predictions == 4))
    assert card["valid"]["source_to_target"] == pytest.approx(np.mean(predictions == 9))
    assert attack_card(classifier, random_only, {}, info=plain)["targeted_flip"] is None
    json.dumps(card)


def test_attack_command_targeted_flip(tmp_path, capsys):
    from goodnet.attacks.benchmarks import write_benchmark
    from goodnet.cli import main
    from goodnet.data import load_h5, load_poison_truth

    write_benchmark(tmp_path / "bench", "digits", seed=0, sizes={"train": 200, "valid": 60, "test": 60},
                    triggers=("patch",))
    clean = load_h5(tmp_path / "bench" / "train.h5")
    base = ["attack", "--data", str(tmp_path / "bench"), "--epochs", "1", "--triggers"]
    code = main(base + ["--out", str(tmp_path / "t.h5"), "--flip-source", "1", "--flip-target", "7",
                        "--targeted-flip-rate", "0.6", "--json"])
    card = json.loads(capsys.readouterr().out)
    assert code == 0 and card["attack"] == "targeted-label-flip" and card["flip_rate"] == 0.0
    flip = card["targeted_flip"]
    sources = int(np.sum(clean.labels == 1))
    assert flip["count"] == round(0.6 * sources) == card["flipped_training_labels"]
    truth, written = load_poison_truth(tmp_path / "t_train_poisoned.h5"), load_h5(tmp_path / "t_train_poisoned.h5")
    np.testing.assert_array_equal(truth.flipped_indices, flip["indices"])
    assert np.all(clean.labels[flip["indices"]] == 1) and np.all(written.labels[flip["indices"]] == 7)
    for split in ("valid", "test"):
        assert 0 <= card[split]["source_class_accuracy"] <= 1 and 0 <= card[split]["source_to_target"] <= 1
    code = main(base + ["--out", str(tmp_path / "t.h5"), "--flip-source", "1", "--flip-target", "7",
                        "--targeted-flip-rate", "0.6", "--overwrite"])
    assert code == 0 and "source class 1 accuracy" in capsys.readouterr().out
    for extra, message in [(["--flip-source", "1"], "--flip-source: given without --targeted-flip-rate"),
                           (["--targeted-flip-rate", "0.5", "--flip-source", "1"], "--flip-target: expected a class"),
                           (["--targeted-flip-rate", "0.5", "--flip-source", "1", "--flip-target", "12"],
                            r"--flip-target: expected a class in 0..9, got 12"),
                           (["--targeted-flip-rate", "0.5", "--flip-source", "2", "--flip-target", "2"],
                            "other than the source 2")]:
        code = main(base + ["--out", str(tmp_path / "bad.h5"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("attack", ["clean-label", "learnable-patch"])
def test_model_dependent_attacks_retrain_to_the_same_weights(digits_small, attack):
    """The clean model is trained first, then Keras is seeded again: the saved set retrains to the BadNet's weights."""
    from goodnet.training import TrainOptions, train_deepid

    (train_x, train_y), (test_x, test_y) = digits_small
    images, labels = train_x[:200], train_y[:200]
    options = AttackOptions(attack=attack, triggers=("corners",), targets=(0,), poison_rate=0.3, epochs=1, seed=3,
                            pgd_steps=2, patch_steps=3)
    badnet, info = train_badnet(images, labels, 10, options)
    retrained = train_deepid(info["training_set"].images, info["training_set"].labels, 10,
                             TrainOptions(epochs=1, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(badnet.model.get_weights(), retrained.model.get_weights()))
    clean = train_deepid(images, labels, 10, TrainOptions(epochs=1, seed=3))        # the clean model attacked
    assert all(np.array_equal(a, b) for a, b in zip(info["clean_model"].model.get_weights(),
                                                    clean.model.get_weights()))
    card = attack_card(badnet, options, {}, info=info)
    assert card["attack"] == attack and card["attack_settings"]["poison_rate_of"] == (
        "target class" if attack == "clean-label" else "training set")
    if attack == "learnable-patch":
        with pytest.raises(ValueError, match="learned patch"):
            attack_card(badnet, options, {})                                     # the patch is in the info only
    else:
        assert attack_card(badnet, options, {})["attack"] == "clean-label"
