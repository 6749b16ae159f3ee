"""Tests for goodnet.defenses.fine_pruning: masked fine-tuning on clean validation data only."""

import keras
import numpy as np
import pytest

from goodnet.data import LabData
from goodnet.files import MANIFEST
from goodnet.defenses.fine_pruning import (FinePruning, FineTuneRecipe, augment_images, learning_rate_at, mix_images,
                                          split_holdout)
from goodnet.models import Classifier, build_deepid
from square_task import coloured_squares


@pytest.fixture(scope="module")
def tiny_task():
    """A small 4-class problem (class = colour of a square) and a model trained briefly on it."""
    images, labels = coloured_squares(30, corner=(10, 10), seed=0)
    keras.utils.set_random_seed(0)
    model = build_deepid(4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(images / 255.0, labels, epochs=3, batch_size=32, verbose=0)
    poisoned = LabData(np.clip(images + 40, 0, 255), np.zeros(120, np.int64), "bd.h5")
    return Classifier(model, "unit"), LabData(images, labels, "valid.h5"), poisoned


def test_split_is_per_class_disjoint_and_complete():
    labels = np.array([0] * 10 + [1] * 5 + [2])
    tune, hold = split_holdout(labels, 0.2, seed=1)
    assert set(tune).isdisjoint(hold) and sorted(np.concatenate([tune, hold])) == list(range(16))
    assert [np.sum(labels[hold] == label) for label in (0, 1, 2)] == [2, 1, 0]
    np.testing.assert_array_equal(split_holdout(labels, 0.2, seed=1)[1], hold)
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_holdout(labels, 1.0)


def test_fine_pruning_keeps_channels_pruned_and_never_uses_poisoned_data(tiny_task):
    classifier, clean, poisoned = tiny_task
    channels = list(range(0, 60, 2))
    recipe = FineTuneRecipe(epochs=3, learning_rate=1e-2, clip_norm=1.0)
    first = FinePruning(channels=tuple(channels), recipe=recipe).fit(classifier, clean, [poisoned])
    kernel, bias = first.model_.model.get_layer("conv_3").get_weights()
    assert np.all(kernel[..., channels] == 0) and np.all(bias[channels] == 0)
    assert np.any(kernel[..., 1] != 0)
    assert [record.epoch for record in first.history_][:2] == [0, 1]
    assert first.pruned_channels_ == channels
    with pytest.raises(ValueError, match="no layer named 'conv_9'"):
        FinePruning(layer="conv_9", channels=(0,)).fit(classifier, clean)
    assert len(first.history_[0].attack_success_rates) == 1
    kept = [r.holdout_accuracy for r in first.history_ if r.epoch >= first.first_kept_epoch]
    assert first.first_kept_epoch == 1 and first.best_epoch_ >= 1
    assert first.history_[first.best_epoch_].holdout_accuracy == max(kept)
    # Another poisoned file (or none) must not change anything that was chosen or learned.
    other = LabData(poisoned.images[::-1], np.full(120, 3, np.int64), "other.h5")
    second = FinePruning(channels=tuple(channels), recipe=recipe).fit(classifier, clean, [other])
    third = FinePruning(channels=tuple(channels), recipe=recipe).fit(classifier, clean)
    assert first.best_epoch_ == second.best_epoch_ == third.best_epoch_
    for a, b in zip(first.model_.model.get_weights(), third.model_.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    rows = first.curve_rows(["bd.h5"])
    assert set(rows[1]) == {"epoch", "learning_rate", "loss", "holdout_accuracy", "trigger_loss", "asr:bd.h5"}
    # The logged rates follow the one-cycle schedule (rate after each epoch's last step).
    steps = int(np.ceil(len(first.tune_indices_) / 32))
    assert [row["learning_rate"] for row in rows[1:]] == [learning_rate_at(e * steps - 1, 3 * steps, 1e-2)
                                                          for e in (1, 2, 3)]


def test_fineprune_command_writes_model_curve_and_plot(tiny_task, tmp_path, capsys):
    import json

    from goodnet.cli import main
    from goodnet.data import save_h5
    from goodnet.models import load_model, save_model

    classifier, clean, poisoned = tiny_task
    model_path = save_model(classifier, tmp_path / "bad.h5")
    save_h5(tmp_path / "valid.h5", clean.images, clean.labels, dtype="float32")
    save_h5(tmp_path / "bd_valid.h5", poisoned.images, poisoned.labels, dtype="float32")
    out = tmp_path / "fp"
    code = main(["fineprune", "--model", str(model_path), "--valid", str(tmp_path / "valid.h5"),
                 "--poisoned-valid", str(tmp_path / "bd_valid.h5"), "--out", str(out), "--channels", "20",
                 "--epochs", "2", "--learning-rate", "1e-3", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "fineprune_curve.csv", "fineprune_curve.json",
                                                     "fineprune_curve.png", "model_fp.h5"]
    assert len(summary["channels_pruned"]) == 20 and summary["holdout_images"] + summary["fine_tuning_images"] == 120
    repaired = load_model(out / "model_fp.h5")
    kernel = repaired.model.get_layer("conv_3").get_weights()[0]
    assert np.all(kernel[..., summary["channels_pruned"]] == 0) and repaired.scale == "unit"
    _, holdout = split_holdout(clean.labels, 0.2, seed=0)
    assert summary["holdout_accuracy"] == np.mean(repaired.predict(clean.images[holdout]) == clean.labels[holdout])
    assert summary["attack_success_rates"]["bd_valid.h5"] == np.mean(repaired.predict(poisoned.images) == 0)
    code = main(["fineprune", "--model", str(model_path), "--valid", str(tmp_path / "valid.h5"),
                 "--out", str(model_path)])
    assert code == 2 and "expected a folder" in capsys.readouterr().err


def test_learning_rate_schedules():
    rates = [learning_rate_at(step, 100, 0.02) for step in range(101)]
    assert rates[0] == pytest.approx(0.02 / 25) and rates[30] == pytest.approx(0.02) and rates[100] == 0.0
    assert all(a < b for a, b in zip(rates[:30], rates[1:31]))        # rises over the warm-up share
    assert all(a > b for a, b in zip(rates[30:100], rates[31:101]))   # then decays to zero
    cosine = [learning_rate_at(step, 10, 0.5, "cosine") for step in (0, 5, 10)]
    assert cosine == pytest.approx([0.5, 0.25, 0.0])
    assert learning_rate_at(7, 10, 1e-4, "constant") == 1e-4
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_at(0, 10, 0.1, "linear")


def test_the_recipe_is_validated_by_fit_not_by_the_constructor(tiny_task):
    classifier, clean, _ = tiny_task
    for recipe, message in ((FineTuneRecipe(optimizer="rmsprop"), "optimizer"), (FineTuneRecipe(mixup=-1), "mixup"),
                            (FineTuneRecipe(unlearn=1.5), "unlearn"),
                            (FineTuneRecipe(unlearn_area=0.0), "unlearn_area"),
                            (FineTuneRecipe(schedule="linear"), "schedule")):
        fine = FinePruning(recipe=recipe)            # stores only
        assert fine.recipe is recipe
        with pytest.raises(ValueError, match=message):
            fine.fit(classifier, clean)
    with pytest.raises(ValueError, match="holdout_fraction"):
        FinePruning(holdout_fraction=1.0).fit(classifier, clean)


def test_augmentation_is_deterministic_for_a_seed_and_shifts_within_bounds():
    images = np.random.default_rng(0).uniform(0, 255, (6, 55, 47, 3)).astype(np.float32)
    first = augment_images(images, np.random.default_rng(3), shift=3)
    np.testing.assert_array_equal(first, augment_images(images, np.random.default_rng(3), shift=3))
    assert not np.array_equal(first, augment_images(images, np.random.default_rng(4), shift=3))
    assert first.shape == images.shape and first.dtype == np.float32
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
    for index in range(6):   # every copy is a window of the edge-padded image, at most 3 pixels off
        assert any(np.array_equal(first[index], padded[index, top:top + 55, left:left + 47])
                   for top in range(7) for left in range(7))
    np.testing.assert_array_equal(augment_images(images, np.random.default_rng(0), shift=0), images)
    mirrored = augment_images(images, np.random.default_rng(1), shift=0, flip=True)
    assert all(np.array_equal(m, i) or np.array_equal(m, i[:, ::-1]) for m, i in zip(mirrored, images))
    noisy = augment_images(images, np.random.default_rng(1), shift=0, noise=5.0)
    assert 0 <= noisy.min() and noisy.max() <= 255 and not np.array_equal(noisy, images)


def test_mixup_blends_each_image_with_one_partner_and_its_target_likewise():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 5, 4, 3)).astype(np.float32)
    targets = np.eye(8, dtype=np.float32)         # one class per image: a target row names the blend
    mixed, soft = mix_images(images, targets, np.random.default_rng(5), 0.4)
    assert mixed.shape == images.shape and soft.shape == targets.shape and mixed.dtype == np.float32
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    partners = []
    for index in range(8):   # the reference: read the weight and the partner off the target, rebuild the image
        own = soft[index, index]
        others = [column for column in range(8) if column != index and soft[index, column] > 0]
        assert own >= 0.5 and len(others) <= 1
        partner = others[0] if others else index
        partners.append(partner)
        expected = own * images[index] + (1 - own) * images[partner] if others else images[index]
        np.testing.assert_allclose(mixed[index], expected, rtol=1e-5, atol=1e-3)
    assert sorted(partners) == list(range(8))   # the partners are a permutation of the images
    again = mix_images(images, targets, np.random.default_rng(5), 0.4)
    np.testing.assert_array_equal(again[0], mixed)
    assert not np.array_equal(mix_images(images, targets, np.random.default_rng(6), 0.4)[0], mixed)
    with pytest.raises(ValueError, match="mixup"):
        mix_images(images, targets, rng, 0.0)
    with pytest.raises(ValueError, match="targets"):
        mix_images(images, targets[:3], rng, 0.4)


def test_epoch_data_uses_labels_without_mixup_and_distributions_with_it(tiny_task):
    classifier, clean, _ = tiny_task
    rng = np.random.default_rng(0)
    plain = FinePruning(recipe=FineTuneRecipe(augment=False, mixup=0.0))
    images, targets = plain._epoch_data(classifier, clean, rng)
    np.testing.assert_array_equal(images, clean.images)
    np.testing.assert_array_equal(targets, clean.labels)
    mixed = FinePruning(recipe=FineTuneRecipe(augment=False, mixup=0.4, distill=0.5))
    images, targets = mixed._epoch_data(classifier, clean, rng)
    assert targets.shape == (120, 4) and not np.array_equal(images, clean.images)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
    assert plain._soft_targets() is False and mixed._soft_targets() is True


def test_unlearning_stamps_the_recovered_trigger_on_the_chosen_share_and_keeps_labels(tiny_task):
    from goodnet.defenses.unlearning import TriggerSearch, stamp

    classifier, clean, _ = tiny_task
    fine = FinePruning(recipe=FineTuneRecipe(augment=False, mixup=0.0, unlearn=0.5))
    search = TriggerSearch(area=0.05, steps=3, seed=0)
    images, targets = fine._epoch_data(classifier, clean, np.random.default_rng(2), classifier.model, search)
    np.testing.assert_array_equal(targets, clean.labels)
    changed = np.array([not np.array_equal(a, b) for a, b in zip(images, clean.images)])
    assert 30 < changed.sum() < 90            # about half the images carry the trigger
    np.testing.assert_allclose(images[changed], stamp(clean.images[changed], search.mask_, search.pattern_),
                               rtol=1e-5, atol=1e-3)


def test_equal_hold_out_accuracy_keeps_the_later_epoch(tiny_task):
    classifier, clean, _ = tiny_task
    # A zero learning rate never changes the weights: every epoch ties, and the last one is kept.
    still = FinePruning(channels=(0, 1), recipe=FineTuneRecipe(epochs=3, learning_rate=0.0, schedule="constant",
                                                               min_epochs=0, augment=False, mixup=0.0)).fit(
        classifier, clean)
    assert len({record.holdout_accuracy for record in still.history_}) == 1
    assert still.best_epoch_ == 3


def test_min_epochs_and_patience_decide_the_kept_epoch(tiny_task):
    classifier, clean, poisoned = tiny_task
    channels = list(range(0, 60, 2))
    # min_epochs = epochs: the end of the schedule is kept whatever the hold-out accuracy did before.
    last = FinePruning(channels=tuple(channels), recipe=FineTuneRecipe(epochs=3, learning_rate=1e-2, min_epochs=3,
                                                                       augment=False)).fit(classifier, clean)
    assert last.best_epoch_ == 3 and len(last.history_) == 4
    # The legacy recipe (Adam, constant rate, epoch 0 allowed, patience) still runs.
    legacy = FinePruning(channels=tuple(channels),
                         recipe=FineTuneRecipe(epochs=4, learning_rate=1e-4, optimizer="adam", schedule="constant",
                                               min_epochs=0, patience=1, augment=False, batch_size=64)).fit(
        classifier, clean)
    best = max(r.holdout_accuracy for r in legacy.history_)
    assert legacy.history_[legacy.best_epoch_].holdout_accuracy == best
    assert len(legacy.history_) - 1 <= legacy.best_epoch_ + 1      # stopped one epoch after the last gain
    kernel = legacy.model_.model.get_layer("conv_3").get_weights()[0]
    assert np.all(kernel[..., channels] == 0)
    assert legacy.resolved_recipe()["optimizer"] == "adam" and last.resolved_recipe()["min_epochs"] == 3


def test_a_given_holdout_is_used_as_it_is(tiny_task):
    """With ``holdout`` (the repair passes its own split), ``clean`` is the tune part: the model of that split."""
    classifier, clean, poisoned = tiny_task
    make = lambda: FinePruning(channels=tuple(range(0, 60, 3)), recipe=FineTuneRecipe(epochs=2, unlearn_steps=2))
    split = make().fit(classifier, clean, [poisoned])
    given = make().fit(classifier, clean.subset(split.tune_indices_), [poisoned],
                       holdout=clean.subset(split.holdout_indices_))
    assert given.tune_indices_ is None and given.holdout_indices_ is None
    assert given.best_epoch_ == split.best_epoch_
    assert [r.holdout_accuracy for r in given.history_] == [r.holdout_accuracy for r in split.history_]
    for a, b in zip(split.model_.model.get_weights(), given.model_.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_recipe_flags_of_both_commands_are_the_recipe():
    """``goodnet fineprune`` and ``goodnet repair`` generate their recipe flags from FineTuneRecipe's fields."""
    import argparse

    import goodnet.cli.fineprune
    import goodnet.cli.repair
    from goodnet.cli.options import options_from_args

    for module, argv in ((goodnet.cli.fineprune, ["--model", "m.h5", "--valid", "v.h5", "--out", "o"]),
                         (goodnet.cli.repair, ["b.h5", "--valid", "v.h5", "--out", "o"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert options_from_args(parser.parse_args(argv), FineTuneRecipe) == FineTuneRecipe()
        parsed = options_from_args(parser.parse_args(argv + ["--optimizer", "adam", "--no-augment", "--min-epochs",
                                                             "0", "--tune-batch-size", "7"]), FineTuneRecipe)
        assert parsed.optimizer == "adam" and parsed.augment is False and parsed.min_epochs == 0
        assert parsed.batch_size == 7


def _corner_trigger(shape=(55, 47, 3)):
    mask = np.zeros(shape[:2] + (1,), np.float32)
    mask[-6:, -6:] = 1.0
    pattern = np.full(shape, 255.0, np.float32)
    return mask, pattern


def test_given_triggers_are_stamped_on_the_unlearn_share_instead_of_a_searched_patch(tiny_task, monkeypatch):
    from goodnet.defenses import unlearning
    from goodnet.defenses.unlearning import stamp

    classifier, clean, _ = tiny_task
    first, second = _corner_trigger(), _corner_trigger()
    second[0][:] = 0.0
    second[0][:6, :6] = 0.5
    masks, patterns = np.stack([first[0], second[0]]), np.stack([first[1], second[1] * 0.0])
    fine = FinePruning(recipe=FineTuneRecipe(augment=False, mixup=0.0, unlearn=0.5), triggers=(masks, patterns))
    checked = fine._checked_triggers(clean.images.shape[1:])
    images, targets = fine._epoch_data(classifier, clean, np.random.default_rng(2), classifier.model,
                                       triggers=checked)
    np.testing.assert_array_equal(targets, clean.labels)
    # the reference, image by image: each changed image is one of the two triggers stamped, the others untouched
    stamped = [stamp(clean.images, masks[k], patterns[k]) for k in range(2)]
    which = []
    for row, image in enumerate(images):
        matches = [k for k in range(2) if np.allclose(image, stamped[k][row], atol=1e-3)]
        if np.array_equal(image, clean.images[row]):
            continue
        assert matches, f"image {row} changed but is neither trigger stamped"
        which.append(matches[0])
    assert 30 < len(which) < 90 and set(which) == {0, 1}
    # fit with triggers never runs the patch search
    monkeypatch.setattr(unlearning.TriggerSearch, "fit", lambda *a, **k: pytest.fail("searched a patch"))
    tuned = FinePruning(recipe=FineTuneRecipe(epochs=1, augment=False), triggers=first).fit(classifier, clean)
    assert tuned.pruned_channels_ == [] and tuned.best_epoch_ == 1


def test_triggers_of_the_wrong_shape_or_without_an_unlearn_share_are_refused(tiny_task):
    from goodnet.errors import OptionError

    classifier, clean, _ = tiny_task
    mask, pattern = _corner_trigger((16, 16, 3))
    with pytest.raises(OptionError, match=r"triggers: expected masks \(T, 55, 47, 1\)"):
        FinePruning(recipe=FineTuneRecipe(epochs=1), triggers=(mask, pattern)).fit(classifier, clean)
    with pytest.raises(OptionError, match="recipe.unlearn is 0"):
        FinePruning(recipe=FineTuneRecipe(epochs=1, unlearn=0.0), triggers=_corner_trigger()).fit(classifier, clean)
