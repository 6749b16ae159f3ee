"""Neural Cleanse: the MAD index against NumPy, batched == loop, the scan == the full schedule, the tiny BadNet's
target flagged, a clean tiny model not flagged, and ``goodnet cleanse``'s outputs and one-line errors."""

import json
import statistics

import numpy as np
import pytest

from goodnet.defenses.neural_cleanse import (CleanseOptions, NeuralCleanse, anomaly_index, epoch_batches,
                                             flag_classes, initial_trigger, slots_for_budget, stamp, unlearning)
from strip_helpers import add_trigger, synthetic_faces, train_tiny_badnet

CLASSES = 6
# Small settings: 16 clean images per step, at most 150 epochs (the early stop ends some classes sooner).
TINY = dict(samples=48, batch_size=16, epochs=150, progress=False)


@pytest.fixture(scope="module")
def badnet():
    """A 16x16 CNN whose white corner patch sends any image to class 0."""
    return train_tiny_badnet(classes=CLASSES, seed=0, epochs=4)


@pytest.fixture(scope="module")
def clean_images():
    images, _ = synthetic_faces(48, CLASSES, seed=5)
    return images


@pytest.fixture(scope="module")
def batched(badnet, clean_images):
    # 2 MB of activations: a few classes per call (not all), so finished classes' slots are refilled
    return NeuralCleanse(method="batched", memory_mb=2, **TINY).fit(badnet, clean_images)


# -- the index -----------------------------------------------------------------------------------------------------


def _reference_index(norms):
    median = statistics.median(norms)
    mad = statistics.median([abs(norm - median) for norm in norms])
    return [abs(norm - median) / (1.4826 * mad) for norm in norms], median, mad


def test_anomaly_index_matches_a_plain_python_reference():
    rng = np.random.default_rng(3)
    for size in (3, 4, 10, 1283):
        norms = rng.gamma(5.0, 20.0, size)
        index, median, mad = anomaly_index(norms)
        expected, expected_median, expected_mad = _reference_index(list(norms))
        np.testing.assert_allclose(index, expected, rtol=1e-12)
        assert median == pytest.approx(expected_median) and mad == pytest.approx(expected_mad)
    norms = np.array([50.0, 52.0, 48.0, 51.0, 49.0, 10.0, 90.0])
    index, median, mad = anomaly_index(norms)
    flagged = flag_classes(norms, index, median, 2.0)
    assert flagged.tolist() == [False] * 5 + [True, False]   # the large outlier is not flagged: its norm is above
    # the median and MAD of a reference subset, applied to every norm
    index, median, mad = anomaly_index(norms, reference=[0, 1, 2])
    assert median == 50.0 and mad == 2.0 and index[5] == pytest.approx(40 / (1.4826 * 2))
    index, _, mad = anomaly_index([5.0, 5.0, 5.0, 1.0])
    assert mad == 0 and index.tolist() == [0.0, 0.0, 0.0, np.inf]


# -- batched == loop -----------------------------------------------------------------------------------------------


def test_batched_equals_the_per_class_loop(badnet, clean_images, batched):
    loop = NeuralCleanse(method="loop", **TINY).fit(badnet, clean_images)
    assert 1 < batched.slots_ < CLASSES and loop.slots_ == 1
    assert batched.slots_ == slots_for_budget(badnet.model, 16, 2, CLASSES)
    # Same batches, same starts, same schedule: the schedule's decisions (epochs run, success reached) are identical
    # and the masks agree to float rounding (one network call on K x B images against K calls on B images).
    np.testing.assert_array_equal(batched.epochs_, loop.epochs_)
    np.testing.assert_array_equal(batched.reached_, loop.reached_)
    np.testing.assert_allclose(batched.masks_, loop.masks_, atol=1e-4)
    # The trigger itself (mask x pattern, raw 0-255 pixels): a pattern pixel under a zero mask gets no gradient but
    # Adam's normalised steps on its rounding noise, so the pattern alone agrees only where the mask is not zero.
    np.testing.assert_allclose(batched.masks_ * batched.patterns_, loop.masks_ * loop.patterns_, atol=0.05)
    np.testing.assert_allclose(batched.norms_, loop.norms_, rtol=1e-4)
    np.testing.assert_array_equal(batched.flagged_, loop.flagged_)
    assert (batched.epochs_ < TINY["epochs"]).any(), "the early stop should end some classes before the cap"


def test_the_tiny_badnets_target_is_flagged(batched):
    assert batched.flagged_.tolist() == [0]
    assert batched.anomaly_index_[0] > 2 and batched.norms_[0] == batched.norms_.min()
    assert batched.attack_success_[0] > 0.8     # measured on all 48 images; each epoch saw 16 of them
    assert batched.backdoored_ and batched.ranking()[0] == 0
    summary = batched.summary()
    json.dumps(summary)
    assert summary["verdict"] == "backdoored" and summary["flagged"] == [0]
    assert [row["class"] for row in summary["classes"]] == list(range(CLASSES))


def test_the_reversed_trigger_sits_where_the_real_one_is(batched):
    mask, pattern = batched.trigger(0)
    corner = mask[-4:, -4:, 0].sum()
    assert corner / mask.sum() > 0.3, "the reversed mask of the target should weigh on the 4x4 corner patch"


def test_a_clean_tiny_model_is_not_flagged(clean_images):
    clean_model = train_tiny_badnet(classes=CLASSES, seed=1, poison_fraction=0.0, epochs=4)
    cleanse = NeuralCleanse(method="batched", **TINY).fit(clean_model, clean_images)
    assert cleanse.flagged_.tolist() == [] and cleanse.summary()["verdict"] == "not flagged"


# -- the scan ------------------------------------------------------------------------------------------------------


def test_the_scan_flags_what_the_full_schedule_on_every_class_flags(badnet, clean_images, batched):
    scan = NeuralCleanse(method="scan", scan_epochs=8, halving=2, tail=2, reference=3, **TINY).fit(
        badnet, clean_images)
    assert [stage["stage"] for stage in scan.stages_] == ["scan 0", "scan 1", "full"]
    assert not scan.refined_.all() and scan.refined_[0]
    np.testing.assert_array_equal(scan.flagged_, batched.flagged_)
    # a refined class ran exactly the full schedule: the same result as the batched run
    np.testing.assert_allclose(scan.norms_[scan.refined_], batched.norms_[scan.refined_], rtol=1e-4)
    assert np.isnan(scan.anomaly_index_[~scan.refined_]).all()
    summary = scan.summary()
    assert [row["anomaly_index"] is None for row in summary["classes"]] == (~scan.refined_).tolist()


def test_a_scan_over_few_classes_is_the_batched_run(badnet, clean_images, batched):
    scan = NeuralCleanse(method="scan", tail=3, reference=3, **TINY).fit(badnet, clean_images)
    assert scan.refined_.all() and [stage["stage"] for stage in scan.stages_] == ["full"]
    np.testing.assert_allclose(scan.norms_, batched.norms_, rtol=1e-4)


# -- pieces ------------------------------------------------------------------------------------------------------------


def test_batches_and_starts_are_the_same_for_every_method():
    first = epoch_batches(10, 3, steps=4, batch=4, seed=0)
    assert first.shape == (4, 4) and np.array_equal(first, epoch_batches(10, 3, 4, 4, 0))
    assert sorted(first.ravel()[:10].tolist()) == list(range(10))      # a permutation, wrapping around
    assert not np.array_equal(first, epoch_batches(10, 4, 4, 4, 0))
    mask, pattern = initial_trigger((5, 4, 3), 7, seed=1)
    assert mask.shape == (5, 4, 1) and pattern.shape == (5, 4, 3) and 0 <= mask.min() and pattern.max() <= 255
    np.testing.assert_array_equal(mask, initial_trigger((5, 4, 3), 7, seed=1)[0])


def test_unlearning_the_flagged_reversed_trigger_removes_the_backdoor(badnet, batched):
    from goodnet.data import LabData
    from goodnet.defenses.fine_pruning import FineTuneRecipe
    from goodnet.metrics import attack_success_rate

    images, labels = synthetic_faces(240, CLASSES, seed=7)
    clean = LabData(images, labels, "valid.h5")
    test_images, test_labels = synthetic_faces(300, CLASSES, seed=8)
    victims = test_labels != 0
    poisoned = add_trigger(test_images[victims])
    before = attack_success_rate(badnet.predict(poisoned), np.zeros(len(poisoned), np.int64))
    masks, patterns = batched.flagged_triggers()
    assert masks.shape == (1, 16, 16, 1) and patterns.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(masks[0], batched.trigger(0)[0])
    fine = unlearning(batched, recipe=FineTuneRecipe(epochs=4, learning_rate=3e-3, unlearn=0.5)).fit(badnet, clean)
    assert fine.pruned_channels_ == [] and fine.triggers[0].shape == masks.shape
    after = attack_success_rate(fine.predict(poisoned), np.zeros(len(poisoned), np.int64))
    accuracy = np.mean(fine.predict(test_images) == test_labels)
    assert before > 0.9 and after < 0.2 and accuracy > 0.9, (before, after, accuracy)


def test_stamp_is_the_blend_of_image_and_pattern_by_the_mask(clean_images):
    mask = np.zeros((16, 16, 1), np.float32)
    mask[-4:, -4:] = 1.0
    pattern = np.full((16, 16, 3), 255.0, np.float32)
    np.testing.assert_array_equal(stamp(clean_images[:2], mask, pattern), add_trigger(clean_images[:2]))


def test_bad_parameters_are_one_line_errors(badnet, clean_images):
    from goodnet.errors import DataError, OptionError

    with pytest.raises(OptionError, match="classes: expected classes in 0..5, got 6"):
        NeuralCleanse(classes=(0, 6), **TINY).fit(badnet, clean_images)
    with pytest.raises(OptionError, match="NeuralCleanse: method"):
        NeuralCleanse(method="fast").fit(badnet, clean_images)
    with pytest.raises(DataError, match="expected shape"):
        NeuralCleanse(**TINY).fit(badnet, clean_images[:, :8])
    assert NeuralCleanse().get_params()["threshold"] == CleanseOptions.threshold == 2.0


# -- the command -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(badnet, tmp_path_factory):
    from goodnet.models import save_model

    path = tmp_path_factory.mktemp("cleanse") / "tiny_badnet.h5"
    save_model(badnet, path)
    return path


@pytest.fixture(scope="module")
def image_folder(clean_images, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    for index, image in enumerate(clean_images[:24]):
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"clean_{index:02d}.png")
    return folder


def _run(capsys, *argv):
    from goodnet.cli import main

    code = main([str(value) for value in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cleanse_command_writes_its_report(capsys, model_file, image_folder, clean_images, make_lab_file, tmp_path):
    valid = make_lab_file("valid.h5", clean_images[24:], np.zeros(24, np.int64))
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "cleanse", model_file, "--valid", valid, "--images", image_folder,
                                "--out", out, "--method", "batched", "--samples", 48, "--cleanse-batch", 16,
                                "--epochs", 150, "--scale", "unit",
                                "--json", "--no-progress")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["flagged"] == [0] and summary["verdict"] == "backdoored" and summary["clean_images"] == 48
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "cleanse.json", "norms.png", "report.md", "triggers.png"]
    written = json.loads((out / "cleanse.json").read_text())
    assert written["flagged"] == [0] and len(written["classes"]) == CLASSES
    report = (out / "report.md").read_text()
    assert "**backdoored**" in report and "class 0 (norm" in report


@pytest.mark.parametrize("argv, message", [
    ((), "expected clean images: --valid CLEAN.h5, --images DIR, or both"),
    (("--images", "{empty}"), "--images: no PNG/JPEG images in this folder"),
    (("--images", "{images}", "--classes", "0", "9"), "classes: expected classes in 0..5, got 9"),
    (("--images", "{images}", "--precision", "mixed_float16"), "Neural Cleanse optimises in float32 only"),
    (("--images", "{images}", "--threshold", "0"), "--threshold: expected a number > 0, got 0.0"),
    (("--images", "{images}", "--success", "1.5"), "--success: expected a number in (0, 1], got 1.5"),
    (("--images", "{images}", "--out", "{file}"), "--out: expected a folder, found a file"),
])
def test_cleanse_command_bad_input_is_one_line(capsys, model_file, image_folder, tmp_path, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    names = {"empty": empty, "images": image_folder, "file": a_file}
    argv = [value.format(**names) for value in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, stdout, stderr = _run(capsys, "cleanse", model_file, *argv, "--epochs", 2, "--no-progress")
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "out").exists()


def test_cleanse_command_refuses_a_file_that_is_no_model(capsys, image_folder, tmp_path):
    bogus = tmp_path / "bogus.h5"
    bogus.write_text("not a model")
    code, _, stderr = _run(capsys, "cleanse", bogus, "--images", image_folder, "--out", tmp_path / "out")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "bogus.h5" in stderr


def test_weighted_median_and_index():
    from goodnet.defenses.neural_cleanse import weighted_median

    assert weighted_median([3.0, 1.0, 2.0, 10.0]) == 2.5 == weighted_median([3.0, 1.0, 2.0, 10.0], [2, 2, 2, 2])
    # a value standing for three classes counts three times: the median of 1, 2, 2, 2, 10
    assert weighted_median([1.0, 2.0, 10.0], [1, 3, 1]) == 2.0
    assert weighted_median([1.0, 2.0, 10.0], [1, 1, 2]) == 6.0   # cumulative weight reaches half exactly at 2
    values = np.array([1.0, 2.0, 2.0, 2.0, 10.0])
    index, median, mad = anomaly_index([1.0, 2.0, 10.0], weights=[1, 3, 1])
    expected, expected_median, expected_mad = anomaly_index(values)
    assert (median, mad) == (expected_median, expected_mad)
