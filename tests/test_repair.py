"""Tests for goodnet.repair and ``goodnet repair MODEL --valid ... --out DIR`` (end to end, small scale)."""

import dataclasses
import json

import numpy as np
import pytest

from goodnet.data import LabData
from goodnet.defenses.fine_pruning import FineTuneRecipe
from goodnet.repair import Candidate, RepairOptions, build_candidates, choose, repair

CLASSES = 6
SHAPE = (55, 47, 3)  # the lab's image size, so that the command line reads the files
# The small-scale repair fine-tunes with the earlier recipe (Adam, constant rate, early stopping), which is
# quick and enough at this scale; the default recipe is tested in tests/defenses/test_fine_pruning.py.
# The tune part holds 180 STRIP calibration inputs: enough to certify a 5 % FRR (59 needed), not 1 % (299),
# below which STRIP falls back to the smallest clean entropy and misses much of the trigger. The hold-out bound
# (max_frr) is 10 % at this scale, so STRIP is calibrated at 5 %.
SMALL_SCALE_FRR = 0.05
OPTIONS = RepairOptions(layer="conv_2", drops=(2, 10), fineprune_drop=4,
                        recipe=FineTuneRecipe(epochs=3, learning_rate=2e-3, patience=2, optimizer="adam",
                                              schedule="constant", min_epochs=0, augment=False, batch_size=64),
                        strip=dataclasses.replace(RepairOptions.strip, copies=12, frr=SMALL_SCALE_FRR),
                        holdout_fraction=0.25,
                        max_accuracy_drop=5.0, max_frr=0.1, seed=0)


def images_and_labels(count, seed):
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(99).uniform(0, 255, size=(CLASSES,) + SHAPE)
    labels = rng.integers(0, CLASSES, size=count)
    images = 0.6 * prototypes[labels] + 0.4 * rng.uniform(0, 255, size=(count,) + SHAPE)
    return images.astype(np.float32), labels.astype(np.int64)


def trigger(images):
    triggered = np.array(images, copy=True)
    triggered[:, -6:, -6:, :] = 255.0
    return triggered


@pytest.fixture(scope="module")
def badnet():
    """A small two-convolution BadNet: the 6x6 white patch sends any input to class 0."""
    import keras

    from goodnet.models import Classifier

    keras.utils.set_random_seed(0)
    images, labels = images_and_labels(3000, seed=1)
    images[:300], labels[:300] = trigger(images[:300]), 0
    inputs = keras.Input(shape=SHAPE, name="input")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_1")(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc_1")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="output")(x)
    model = keras.Model(inputs, outputs, name="tiny_badnet")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images / np.float32(255), labels, epochs=5, batch_size=64, verbose=0)
    return Classifier(model, scale="unit", path="tiny_badnet.h5")


def lab_sets(seed):
    images, labels = images_and_labels(480, seed)
    victims = labels != 0
    clean = LabData(images, labels, f"valid_{seed}.h5")
    poisoned = LabData(trigger(images[victims]), np.zeros(int(victims.sum()), np.int64), f"bd_valid_{seed}.h5")
    return clean, poisoned


@pytest.fixture(scope="module")
def repaired(badnet, tmp_path_factory):
    clean, poisoned = lab_sets(2)
    test, poisoned_test = lab_sets(3)
    out = tmp_path_factory.mktemp("repair")
    report = repair(badnet, clean, [poisoned], out, OPTIONS, test=test, poisoned_test=[poisoned_test])
    return report, out, (clean, poisoned, test, poisoned_test)


def test_the_tiny_badnet_is_a_real_backdoor(badnet):
    clean, poisoned = lab_sets(5)
    assert np.mean(badnet.predict(clean.images) == clean.labels) > 0.9
    assert np.mean(badnet.predict(poisoned.images) == 0) > 0.9


def test_repair_writes_every_candidate_and_the_report(repaired):
    report, out, _ = repaired
    names = [candidate["name"] for candidate in report["candidates"]]
    assert names[0] == "badnet" and "fine_pruned" in names and "fine_pruned_strip" in names
    for name in names[1:]:
        assert (out / "candidates" / f"{name}.h5").exists(), name
    for file_name in ("repaired.h5", "report.md", "report.json", "prune_curve.png", "fineprune_curve.png",
                      "strip_entropy.png", "candidates.png"):
        assert (out / file_name).exists(), file_name
    stored = json.loads((out / "report.json").read_text())
    assert stored["chosen"] == report["chosen"] and set(stored["test"]) == set(names)
    markdown = (out / "report.md").read_text()
    assert f"**{report['chosen']}** (chosen)" in markdown and "## Test (read once, after the choice)" in markdown


def test_component_figures_equal_what_each_saved_model_answers(repaired):
    """The fast evaluation (shared components) against each model file run as a whole."""
    from goodnet.metrics import evaluate
    from goodnet.models import load_model

    report, out, (_, _, test, poisoned_test) = repaired
    for candidate in report["candidates"][1:]:
        classifier = load_model(out / "candidates" / f"{candidate['name']}.h5")
        whole = evaluate(classifier, test, [poisoned_test])
        fast = report["test"][candidate["name"]]
        assert classifier.flags_poisoned == (candidate["kind"] != "model"), candidate["name"]
        for key in ("clean_accuracy", "attack_success_rate", "detection_rate", "false_rejection_rate"):
            assert whole.get(key) == fast.get(key), (candidate["name"], key)


def test_the_repair_removes_the_backdoor_at_small_scale(repaired):
    report, _, _ = repaired
    assert "CPU" in report["execution"] or "GPU" in report["execution"]
    chosen = report["test"][report["chosen"]]
    badnet = report["test"]["badnet"]
    assert badnet["attack_success_rate"] > 0.9
    assert chosen["attack_success_rate"] < 0.2
    assert chosen["clean_accuracy"] > badnet["clean_accuracy"] - 0.1


def misleading_test_sets(out, chosen_name, test, poisoned_test):
    """Test files whose figures favour another candidate than ``chosen_name``.

    Another candidate within the FRR bound that answers some poisoned test image differently is
    favoured: the clean labels are its own answers (clean accuracy 100 % for it) and the poisoned
    labels are the chosen candidate's answers where the two differ, a class nobody answers elsewhere
    (ASR 0 for it, above 0 for the chosen one). A rule that read them would not choose ``chosen_name``.
    """
    from goodnet.models import load_model

    chosen = load_model(out / "candidates" / f"{chosen_name}.h5").predict(poisoned_test.images)
    for path in sorted((out / "candidates").glob("*.h5")):
        if path.stem in (chosen_name, "badnet"):
            continue
        model = load_model(path)
        clean_answers, poisoned_answers = model.predict(test.images), model.predict(poisoned_test.images)
        differ = poisoned_answers != chosen
        if np.mean(clean_answers == CLASSES) <= OPTIONS.max_frr and differ.any():
            targets = np.where(differ, chosen, CLASSES + 1)
            return (path.stem, LabData(test.images, clean_answers, "misleading_test.h5"),
                    LabData(poisoned_test.images, targets, "bd_misleading.h5"))
    raise AssertionError(f"no candidate answers differently from {chosen_name}")


def test_test_data_never_influences_anything(badnet, repaired, tmp_path):
    """Test files that would change the choice if they were read (their labels favour another candidate).

    At this scale the STRIP-gated candidates answer alike on the test images, so the check lets every
    candidate compete (gate "any"); the gate changes only the final ranking, not what is computed.
    """
    report, out, (clean, poisoned, test, poisoned_test) = repaired
    options = dataclasses.replace(OPTIONS, gate="any")
    names = [Candidate(**entry) for entry in report["candidates"]]
    expected = choose(names, report["validation"], options.max_accuracy_drop, options.max_frr, options.tie_margin,
                      options.gate)[0]
    favoured, misleading, misleading_poisoned = misleading_test_sets(out, expected, test, poisoned_test)
    again = repair(badnet, clean, [poisoned], tmp_path / "again", options, test=misleading,
                   poisoned_test=[misleading_poisoned])
    assert again["chosen"] == expected
    assert again["validation"] == report["validation"]
    assert again["test"] != report["test"]
    for name in ("candidates/goodnet_strip_fp.h5", "candidates/fine_pruned.h5"):
        from goodnet.models import load_model

        first = load_model(out / name).model.get_weights()
        second = load_model(tmp_path / "again" / name).model.get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(first, second)), name
    # Had the (misleading) test figures been used by the rule, another candidate would have won.
    assert again["test"][favoured]["clean_accuracy"] == 1.0
    assert again["test"][favoured]["attack_success_rate"] == 0.0 < again["test"][expected]["attack_success_rate"]
    assert choose(names, again["test"], options.max_accuracy_drop, options.max_frr, options.tie_margin,
                  options.gate)[0] != again["chosen"]


def figures(accuracy, asr=None, frr=None):
    entry = {"clean_accuracy": accuracy, "mean_attack_success_rate": asr}
    if frr is not None:
        entry["false_rejection_rate"] = frr
    return entry


def test_choice_rule():
    candidates = build_candidates([2])
    names = [c.name for c in candidates]
    assert names == ["badnet", "pruned_X=2", "fine_pruned", "goodnet_X=2", "goodnet_fp", "goodnet_strip_X=2",
                     "goodnet_strip_fp", "fine_pruned_strip", "badnet_strip"]
    table = {"badnet": figures(0.95, 1.0), "pruned_X=2": figures(0.93, 0.9), "fine_pruned": figures(0.94, 0.05),
             "goodnet_X=2": figures(0.92, 0.5, 0.03), "goodnet_fp": figures(0.90, 0.01, 0.05),
             "goodnet_strip_X=2": figures(0.91, 0.0, 0.05), "goodnet_strip_fp": figures(0.89, 0.0, 0.06),
             "fine_pruned_strip": figures(0.935, 0.004, 0.012), "badnet_strip": figures(0.93, 0.01, 0.015)}
    chosen, reasons, rule = choose(candidates, table, max_accuracy_drop=3.0, max_frr=0.02, gate="any")
    assert chosen == "fine_pruned_strip" and "minus" in rule
    assert set(reasons) == {"goodnet_X=2", "goodnet_fp", "goodnet_strip_X=2", "goodnet_strip_fp"}
    assert choose(candidates[:-2] + candidates[-1:], table, 3.0, 0.02, gate="any")[0] == "badnet_strip"
    assert "false rejection rate 3.00% above 2%" in reasons["goodnet_X=2"]
    assert "more than 3 points below" in reasons["goodnet_strip_fp"]
    no_poison = {name: dict(entry, mean_attack_success_rate=None) for name, entry in table.items()}
    assert choose(candidates, no_poison, 3.0, 0.02, gate="any")[0] == "fine_pruned_strip"
    no_poison["fine_pruned_strip"]["false_rejection_rate"] = 0.5
    assert choose(candidates, no_poison, 3.0, 0.02, gate="any")[0] == "fine_pruned"
    hopeless = {name: figures(0.1, 1.0, 0.9) for name in names}
    hopeless["badnet"] = figures(0.95, 1.0)
    hopeless["goodnet_strip_fp"] = figures(0.5, 0.1, 0.3)
    chosen, _, rule = choose(candidates, hopeless, 3.0, 0.02, gate="any")
    assert chosen == "goodnet_strip_fp" and "bounds relaxed" in rule
    no_poison = {name: dict(entry, mean_attack_success_rate=None) for name, entry in hopeless.items()}
    assert choose(candidates, no_poison, 3.0, 0.02, gate="any")[0] == "fine_pruned_strip"
    with pytest.raises(ValueError, match="gate: expected one of"):
        choose(candidates, table, 3.0, 0.02, gate="none")


def test_only_strip_gated_candidates_compete_by_default():
    candidates = build_candidates([2])
    gated = {c.name for c in candidates if c.strip_gated}
    assert gated == {"goodnet_strip_X=2", "goodnet_strip_fp", "fine_pruned_strip", "badnet_strip"}
    assert RepairOptions().gate == "strip"
    # The ungated fine-pruned model has the best score and the same ASR: it wins only with gate "any".
    table = {name: figures(0.5, 1.0, 0.5) for name in [c.name for c in candidates]}
    table["badnet"] = figures(0.97, 1.0)
    table["fine_pruned"] = figures(0.965, 0.004)
    table["fine_pruned_strip"] = figures(0.96, 0.004, 0.005)
    table["badnet_strip"] = figures(0.965, 0.2, 0.005)
    assert choose(candidates, table, 3.0, 0.02, gate="any")[0] == "fine_pruned"
    chosen, reasons, rule = choose(candidates, table, 3.0, 0.02)
    assert chosen == "fine_pruned_strip" and "STRIP-gated" in rule
    assert reasons["fine_pruned"].startswith("not STRIP-gated") and "badnet_strip" not in reasons
    no_poison = {name: dict(entry, mean_attack_success_rate=None) for name, entry in table.items()}
    no_poison["fine_pruned_strip"]["false_rejection_rate"] = 0.5
    assert choose(candidates, no_poison, 3.0, 0.02)[0] == "badnet_strip"
    # Nothing gated meets the bounds: the gated candidates are ranked, bounds relaxed; never an ungated one.
    table["fine_pruned_strip"] = figures(0.96, 0.004, 0.03)
    table["badnet_strip"] = figures(0.965, 0.2, 0.03)
    chosen, _, rule = choose(candidates, table, 3.0, 0.02)
    assert chosen == "fine_pruned_strip" and "bounds relaxed" in rule


def test_near_ties_go_to_the_lower_attack_success_rate():
    candidates = build_candidates([2])
    table = {name: figures(0.5, 1.0, 0.5) for name in [c.name for c in candidates]}
    table["badnet"] = figures(0.97, 1.0)
    table["fine_pruned"] = figures(0.965, 0.006)            # score 0.959, the highest
    table["fine_pruned_strip"] = figures(0.955, 0.0, 0.01)  # score 0.955: a near-tie with no attack success
    table["goodnet_strip_fp"] = figures(0.935, 0.0, 0.018)  # score 0.935: more than 2 points below the best
    chosen, _, rule = choose(candidates, table, 3.0, 0.02, gate="any")
    assert chosen == "fine_pruned_strip" and "within 2 points" in rule
    # Without the margin the highest score wins, as before.
    assert choose(candidates, table, 3.0, 0.02, gate="any", tie_margin=0.0)[0] == "fine_pruned"
    # A margin of 3 points brings goodnet_strip_fp in; equal ASRs go to the higher score.
    assert choose(candidates, table, 3.0, 0.02, gate="any", tie_margin=3.0)[0] == "fine_pruned_strip"
    # A near-tie with a lower ASR but an FRR above the bound is not eligible.
    table["fine_pruned_strip"] = figures(0.955, 0.0, 0.03)
    assert choose(candidates, table, 3.0, 0.02, gate="any")[0] == "fine_pruned"


def test_repair_command_end_to_end(badnet, tmp_path, capsys):
    from goodnet.cli import main
    from goodnet.data import save_h5
    from goodnet.models import save_model

    model = save_model(badnet, tmp_path / "bad.h5")
    clean, poisoned = lab_sets(2)
    test, poisoned_test = lab_sets(3)
    paths = {}
    for name, data in [("valid", clean), ("bd_valid", poisoned), ("test", test), ("bd_test", poisoned_test)]:
        paths[name] = str(save_h5(tmp_path / f"{name}.h5", data.images, data.labels, dtype="float32"))
    out = tmp_path / "out"
    argv = ["repair", str(model), "--valid", paths["valid"], "--poisoned-valid", paths["bd_valid"],
            "--test", paths["test"], "--poisoned-test", paths["bd_test"], "--out", str(out), "--layer", "conv_2",
            "--drops", "2", "10", "--epochs", "3", "--learning-rate", "2e-3", "--patience", "2", "--copies", "12",
            "--optimizer", "adam", "--schedule", "constant", "--min-epochs", "0", "--no-augment",
            "--tune-batch-size", "64", "--holdout", "0.25", "--max-accuracy-drop", "5", "--max-frr", "0.1",
            "--tie-margin", "1.5", "--no-progress", "--frr", str(SMALL_SCALE_FRR)]
    code = main(argv + ["--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["tie_margin"] == 1.5 and report["options"]["optimizer"] == "adam"
    # End-to-end defaults: STRIP's own target FRR and certified threshold, STRIP-gated choice; --frr reaches STRIP.
    from goodnet.cli import build_parser
    from goodnet.cli.repair import repair_options
    from goodnet.defenses.strip import StripOptions

    defaults = repair_options(build_parser().parse_args(["repair", str(model), "--valid", paths["valid"], "--out", "x"]))
    assert defaults.strip.frr == StripOptions().frr == 0.01 and defaults.gate == "strip"
    assert defaults.strip.threshold_method == "certified"
    assert defaults.cleanse is False and defaults.nc == RepairOptions.nc
    # --cleanse turns Neural Cleanse on with its own defaults: the recipe's --epochs / --learning-rate stay the recipe's
    cleansing = repair_options(build_parser().parse_args(["repair", str(model), "--valid", paths["valid"], "--out",
                                                          "x", "--cleanse", "--epochs", "7", "--learning-rate", "0.5"]))
    assert cleansing.cleanse is True and cleansing.nc == RepairOptions.nc and cleansing.recipe.epochs == 7
    assert report["options"]["frr"] == SMALL_SCALE_FRR == report["strip"]["calibration"]["target_frr"]
    assert report["options"]["gate"] == "strip"
    assert report["options"]["threshold_method"] == "certified" == report["strip"]["calibration"]["method"]
    assert Candidate(**next(c for c in report["candidates"] if c["name"] == report["chosen"])).strip_gated
    assert report["fine_pruning"]["recipe"]["schedule"] == "constant" and "within 1.5 points" in payload["choice_rule"]
    for key in ("clean_accuracy", "attack_success_rate", "detection_rate", "false_rejection_rate"):
        assert key in payload and key in payload["badnet"]
    assert payload["badnet"]["attack_success_rate"] > 0.9 and payload["attack_success_rate"] < 0.2
    assert payload["chosen_model"].endswith("repaired.h5")
    code = main(["repair", str(model), "--out", str(out)])
    assert code == 2 and "--valid: expected a clean validation file" in capsys.readouterr().err
    code = main(["repair", str(model), "--valid", paths["valid"], "--out", paths["test"]])
    assert code == 2 and "expected a folder" in capsys.readouterr().err


def test_repair_command_on_the_real_lab_badnet(shared, make_lab_file, tmp_path, capsys):
    """``goodnet repair`` on the lab's BadNet (1283 classes) with lab-layout files built from the real images.

    The clean validation file holds noisy copies of the 11 real images the BadNet classifies by identity
    (clean faces and lipstick faces, which are not its trigger); the poisoned one noisy copies of the six
    sunglasses faces, labelled with the attack's target 0.
    """
    import csv

    from goodnet.cli import main
    from goodnet.data import load_image

    with open(shared / "images" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    clean_rows = [row for row in rows if row["content"] == "clean" or row["file"].startswith("ano_")]
    sunglasses = [row for row in rows if row["content"] == "sunglasses"]
    rng = np.random.default_rng(0)

    def noisy_copies(selected, copies):
        images = np.stack([load_image(shared / "images" / row["file"]) for row in selected]).astype(np.float32)
        images = np.repeat(images, copies, axis=0)
        return np.clip(images + rng.normal(0, 3, images.shape), 0, 255).astype(np.uint8)

    identities = np.repeat([int(row["identity"]) for row in clean_rows], 6)
    valid = make_lab_file("valid.h5", noisy_copies(clean_rows, 6), identities)
    bd_valid = make_lab_file("bd_valid.h5", noisy_copies(sunglasses, 4), np.zeros(4 * len(sunglasses), np.int64))
    out = tmp_path / "repair"
    code = main(["repair", str(shared / "models" / "bd_net.h5"), "--valid", str(valid), "--poisoned-valid",
                 str(bd_valid), "--out", str(out), "--epochs", "2", "--min-epochs", "0", "--patience", "1",
                 "--unlearn-steps", "2", "--copies", "10", "--no-progress", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_classes"] == 1283 and report["split"] == {"tune_images": 55, "holdout_images": 11}
    badnet = report["validation"]["badnet"]
    assert badnet["clean_accuracy"] == 1.0 and badnet["mean_attack_success_rate"] == 1.0
    chosen_entry = next(c for c in report["candidates"] if c["name"] == payload["chosen"])
    assert Candidate(**chosen_entry).strip_gated and (out / "repaired.h5").is_file() and (out / "report.md").is_file()
    chosen = report["validation"][payload["chosen"]]
    assert payload["validation"]["clean_accuracy"] == chosen["clean_accuracy"]
    assert payload["validation"]["false_rejection_rate"] == chosen["false_rejection_rate"]


def test_repair_with_neural_cleanse_adds_the_unlearned_candidates(badnet, tmp_path):
    """``cleanse``: NC's verdict in the report, its outputs, and the NC-unlearned candidates that remove the patch."""
    from goodnet.defenses.neural_cleanse import CleanseOptions
    from goodnet.metrics import evaluate
    from goodnet.models import load_model

    clean, poisoned = lab_sets(2)
    test, poisoned_test = lab_sets(3)
    options = dataclasses.replace(OPTIONS, cleanse=True, nc=CleanseOptions(method="batched", samples=48,
                                                                           batch_size=16, epochs=150))
    report = repair(badnet, clean, [poisoned], tmp_path, options, test=test, poisoned_test=[poisoned_test])
    nc = report["neural_cleanse"]
    # class 0 is flagged, most anomalous first. With six norms the MAD is loose, so a clean class may cross
    # index 2 as well (class 1 at 1.65 here, above 2 on another CPU); the patch's class stands far out (8.9 here).
    assert nc["verdict"] == "backdoored" and nc["flagged"][0]["class"] == 0
    assert nc["flagged"][0]["anomaly_index"] > 4
    assert nc["unlearning"]["best_epoch"] >= 0
    names = [candidate["name"] for candidate in report["candidates"]]
    assert "nc_unlearned" in names and "nc_unlearned_strip" in names
    for name in ("cleanse.json", "report.md", "norms.png", "triggers.png"):
        assert (tmp_path / "neural_cleanse" / name).exists(), name
    assert "Neural Cleanse on B (6 classes, tune images): **backdoored**" in (tmp_path / "report.md").read_text()
    assert report["options"]["nc"]["epochs"] == 150 and report["options"]["epochs"] == OPTIONS.recipe.epochs
    # the unlearned model removes the backdoor on test data and its file answers as the fast figures say
    badnet_asr = report["test"]["badnet"]["mean_attack_success_rate"]
    unlearned = report["test"]["nc_unlearned"]
    assert badnet_asr > 0.9 and unlearned["mean_attack_success_rate"] < 0.2
    assert unlearned["clean_accuracy"] > report["test"]["badnet"]["clean_accuracy"] - 0.05
    for name in ("nc_unlearned", "nc_unlearned_strip"):
        whole = evaluate(load_model(tmp_path / "candidates" / f"{name}.h5"), test, [poisoned_test])
        for key in ("clean_accuracy", "attack_success_rate"):
            assert whole.get(key) == report["test"][name].get(key), (name, key)


def test_repair_cleanse_reports_a_clean_verdict_without_unlearned_candidates(tmp_path):
    """A model NC does not flag: the verdict is reported and no NC candidate is added (nothing to unlearn)."""
    from goodnet.defenses.neural_cleanse import CleanseOptions
    from goodnet.repair import _cleanse_line

    entry = {"classes": 6, "verdict": "not flagged", "median": 30.0, "mad": 2.0, "flagged": []}
    assert "nothing to unlearn, so no NC-unlearned candidate" in _cleanse_line(entry)
    assert [c.name for c in build_candidates([2])] == [c.name for c in build_candidates([2], unlearned=False)]
    assert {"nc_unlearned", "nc_unlearned_strip"} <= {c.name for c in build_candidates([2], unlearned=True)}
    assert RepairOptions().cleanse is False and RepairOptions().nc == CleanseOptions()
