"""``goodnet attack --attack ban``: BaN and c-BaN end to end on a tiny digits benchmark (the files written and
loadable, the card's ASR against the written files, the training set's ground truth), and bad input refused."""

import json
import re

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from goodnet.attacks.benchmarks import write_benchmark

    folder = tmp_path_factory.mktemp("ban") / "bench"
    write_benchmark(folder, "digits", seed=0, sizes={"train": 200, "valid": 40, "test": 40}, triggers=("patch",))
    return folder


def run_attack(bench, out, capsys, *extra):
    from goodnet.cli import main

    code = main(["attack", "--data", str(bench), "--out", str(out), "--attack", "ban", "--epochs", "2",
                 "--batch-size", "32", "--poison-rate", "0.25", *extra, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("targets", [(3,), (1, 4)], ids=["ban", "c-ban"])
def test_the_command_writes_the_badnet_generator_poisoned_files_and_a_card_measured_on_them(bench, tmp_path, capsys,
                                                                                             targets):
    from goodnet.attacks.badnets import AttackOptions, ban_poisoned_split
    from goodnet.attacks.ban import load_generator
    from goodnet.data import load_h5, load_poison_truth
    from goodnet.models import load_model

    out = tmp_path / "ban.h5"
    card = run_attack(bench, out, capsys, "--targets", *map(str, targets), "--trigger-size", "6")
    names = ["ban"] if len(targets) == 1 else [f"c-ban-target-{target}" for target in targets]
    assert card["attack"] == ("ban" if len(targets) == 1 else "c-ban")
    assert card["triggers"] == names and card["targets"] == list(targets)
    settings = card["attack_settings"]
    assert settings["conditional"] == (len(targets) > 1) and settings["trigger_size"] == 6
    assert settings["backdoored_per_step"] == 8 and settings["backdoored_seen"] == 2 * 7 * 8   # 7 batches a epoch
    assert json.loads((tmp_path / "ban.json").read_text()) == card
    # the generator file rebuilds G: it redraws the written poisoned files exactly
    generator, noise_dim, stored_targets = load_generator(settings["generator_file"])
    assert settings["generator_file"] == str(tmp_path / "ban_generator.npz")
    assert stored_targets == targets and noise_dim == 16
    options = AttackOptions(attack="ban", triggers=(), targets=targets, poison_rate=0.25, epochs=2, batch_size=32,
                            trigger_size=6)
    badnet = load_model(out)
    for split in ("valid", "test"):
        clean = load_h5(bench / f"{split}.h5")
        files = settings["poisoned_files"][split]
        suffixes = [""] if len(targets) == 1 else [f"_target{target}" for target in targets]
        assert list(files) == names
        assert list(files.values()) == [str(tmp_path / f"ban_bd_{split}{suffix}.h5") for suffix in suffixes]
        redrawn = ban_poisoned_split(generator, options, split, clean)
        for name, target, (images, labels) in zip(names, targets, redrawn):
            written = load_h5(files[name])
            assert np.all(written.labels == target) and len(written) == np.sum(clean.labels != target)
            np.testing.assert_array_equal(written.images, images)
            changed = np.any(written.images != clean.images[clean.labels != target], axis=(1, 2, 3))
            assert changed.mean() > 0.9                               # every image carries its own trigger
            asr = float(np.mean(badnet.predict(written.images) == target))
            assert card[split]["attack_success_rate"][name] == pytest.approx(asr)
        accuracy = float(np.mean(badnet.predict(clean.images) == clean.labels))
        assert card[split]["clean_accuracy"] == pytest.approx(accuracy)
    assert set(card["stealthiness"]) == set(names)
    assert all(0 < figures["linf"] <= 255 and figures["ssim"] < 1 for figures in card["stealthiness"].values())
    # the training set: the clean images, then one epoch's backdoored copies with their ground truth
    train = load_h5(bench / "train.h5")
    written = load_h5(card["training_set"])
    truth = load_poison_truth(card["training_set"])
    assert card["training_set"] == str(tmp_path / "ban_train_poisoned.h5")
    assert len(written) == 200 + 56 and card["poisoned_training_images"] == 56
    assert card["training_set_dtype"] == "uint8"          # the copies in whole pixels, as the poisoned files
    np.testing.assert_array_equal(written.images[:200], train.images)
    np.testing.assert_array_equal(written.labels[:200], train.labels)
    assert truth.trigger_names == tuple(names) and not truth.poisoned[:200].any() and truth.poisoned[200:].all()
    np.testing.assert_array_equal(written.labels[200:], np.asarray(targets)[truth.trigger[200:]])
    assert not truth.flipped.any() and set(truth.clean_labels[200:]) <= set(train.labels)


def test_bad_input_is_a_one_line_error_and_writes_nothing(bench, tmp_path, capsys):
    from goodnet.cli import main

    base = ["attack", "--data", str(bench), "--out", str(tmp_path / "bad.h5"), "--attack", "ban", "--epochs", "1"]
    for extra, message in [(["--targets", "1", "1"], r"--targets: expected different classes with --attack ban"),
                           (["--targets", "10"], r"--targets: expected classes in 0\.\.9, got 10"),
                           (["--triggers", "patch", "blend"], r"--triggers: expected at most one with --attack ban"),
                           (["--poison-rate", "0"], r"--poison-rate: expected a share above 0 with --attack ban"),
                           (["--pruning-aware"], r"--pruning-aware: expected none with --attack ban"),
                           (["--flip-rate", "0.1"], r"--flip-rate: expected none with --attack ban"),
                           (["--trigger-size", "12"], r"--trigger-size: expected an integer in \[1, 11\]"),
                           (["--noise-dim", "0"], r"--noise-dim: expected a positive integer, got 0")]:
        try:
            code = main(base + extra)
        except SystemExit as exit:                                # argparse's own refusals
            code = exit.code
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), (extra, err)
    assert not list(tmp_path.iterdir())
    # the Python API: the default options take ban (the benchmark's one trigger is not used); no fixed set
    from goodnet.attacks.badnets import AttackOptions, poison_training_set
    from goodnet.errors import OptionError

    options = AttackOptions(attack="ban").check_attack()
    assert options.trigger_names == ("ban",) and options.ban_options().targets == (0,)
    with pytest.raises(OptionError, match="attack: expected a poisoning attack; ban draws"):
        poison_training_set(np.zeros((4, 55, 47, 3)), np.arange(4) % 2, 2, options)


def test_a_bad_generator_file_is_a_one_line_data_error(tmp_path):
    from goodnet.attacks.ban import BaNOptions, build_generator, load_generator, save_generator
    from goodnet.errors import DataError

    options = BaNOptions(targets=(0, 1), noise_dim=4, trigger_size=3)
    save_generator(tmp_path / "good.npz", build_generator(4, 3, 2), options)
    stored = dict(np.load(tmp_path / "good.npz"))
    cases = {"truncated.npz": (tmp_path / "good.npz").read_bytes()[:100],
             "no_targets.npz": {key: value for key, value in stored.items() if key != "targets"},
             "one_weight_short.npz": {key: value for key, value in stored.items() if key != "weight_3"},
             "wrong_shape.npz": {**stored, "trigger_size": np.asarray(4)},
             "bad_size.npz": {**stored, "trigger_size": np.asarray(40)}}
    messages = {"truncated.npz": "expected a BaN generator file", "no_targets.npz": "missing targets",
                "one_weight_short.npz": "expected 7 generator weights, found 6",
                "wrong_shape.npz": r"weight_\d+: expected shape", "bad_size.npz": "trigger_size in 1..11"}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            np.savez(path, **content)
        with pytest.raises(DataError, match=messages[name]) as caught:
            load_generator(path)
        assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
