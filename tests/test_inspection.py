"""goodnet.inspection: the detectors over shared features, masks and figures against NumPy, the recommendation
(from the detectors' verdicts, never the truth), and the cleaned set (streamed = in memory, transforms, truth)."""

import numpy as np
import pytest

from goodnet.defenses.activation_clustering import ActivationClusteringOptions
from goodnet.data import LabData, LabFile, PoisonTruth, load_h5, load_poison_truth, save_h5
from goodnet.errors import DataError, OptionError
from goodnet.features import Features
from goodnet.inspection import (METHODS, PREFERENCE, Inspection, InspectionOptions, cleaned_training_set, detect,
                                flag_masks, inspect_training_set, method_summary, write_clean_set)
from square_task import coloured_squares


def planted_features(seed=0):
    """4 classes x 60 samples of 12-D Gaussian features; 12 of class 0 (the poison) far off along one axis."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 60)
    values = rng.normal(0, 1, (240, 12))
    poisoned = np.zeros(240, bool)
    poisoned[np.arange(48, 60)] = True
    values[poisoned, 0] += 12.0
    clean_labels = labels.copy()
    clean_labels[poisoned] = 1
    truth = PoisonTruth.from_indices(clean_labels, np.flatnonzero(poisoned), np.zeros(12, np.int64), ("patch",))
    return Features(values.astype(np.float32), labels), truth


def _inspection(features, truth, methods=METHODS, options=None):
    timings = {}
    detectors = detect(features, methods, options or InspectionOptions(), timings=timings, progress=False)
    return Inspection(features, detectors, flag_masks(detectors, len(features)), timings, truth)


def test_masks_union_and_figures_against_numpy():
    features, truth = planted_features()
    inspection = _inspection(features, truth)
    assert list(inspection.detectors) == list(METHODS) and set(inspection.timings) == set(METHODS)
    for method, detector in inspection.detectors.items():
        np.testing.assert_array_equal(np.flatnonzero(inspection.masks[method]), detector.flagged_)
    np.testing.assert_array_equal(inspection.masks["union"], np.any([inspection.masks[m] for m in METHODS], axis=0))
    detection = inspection.detection()
    for method in METHODS + ("union",):
        mask = inspection.masks[method]
        hits = int(np.sum(mask & truth.poisoned))
        assert detection[method]["true_positives"] == hits
        assert detection[method]["recall"] == hits / 12
        if mask.any():
            precision = hits / mask.sum()
            assert detection[method]["precision"] == pytest.approx(precision)
            recall = hits / 12
            expected = 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
            assert detection[method]["f1"] == pytest.approx(expected)
    # the planted cluster is found by activation clustering, exactly, and class 0 alone is judged poisoned
    np.testing.assert_array_equal(inspection.masks["ac"], truth.poisoned)
    assert inspection.suspicious()["ac"] == [0]
    summary = method_summary(inspection)
    assert summary["methods"]["ac"]["flagged"] == 12 and summary["truth"]["poisoned_classes"] == [0]
    assert summary["union"]["detection"] == detection["union"]


def test_falsely_flagged_classes_are_suspicious_classes_without_poison():
    features, truth = planted_features()
    inspection = _inspection(features, truth)
    false = inspection.falsely_flagged_classes()
    for method, classes in inspection.suspicious().items():
        assert false[method] == sorted(set(classes) - {0})
    assert Inspection(features, inspection.detectors, inspection.masks, {}, None).falsely_flagged_classes() is None


def test_the_recommendation_follows_the_verdicts_and_ignores_the_truth():
    features, truth = planted_features()
    with_truth = _inspection(features, truth)
    without = _inspection(features, None)
    assert with_truth.recommended() == without.recommended() == "ac"
    assert without.detection() is None
    # a truth claiming other samples changes the figures, not the choice
    other = PoisonTruth.from_indices(features.labels, np.arange(100, 110), np.zeros(10, np.int64), ("patch",))
    assert _inspection(features, other).recommended() == "ac"
    # without activation clustering: the next method of the preference with a suspicious class, or None
    rest = _inspection(features, None, methods=("spectral", "isolation"))
    suspicious = rest.suspicious()
    expected = next((method for method in PREFERENCE if suspicious.get(method)), None)
    assert rest.recommended() == expected
    clean = Features(np.random.default_rng(1).normal(0, 1, (240, 12)).astype(np.float32), features.labels)
    clean_inspection = _inspection(clean, None, methods=("ac",))
    assert clean_inspection.suspicious()["ac"] == [] and clean_inspection.recommended() is None
    assert not clean_inspection.flagged(None).any()


def test_bad_methods_and_clean_by_are_option_errors():
    features, truth = planted_features()
    with pytest.raises(OptionError, match="methods: expected one or more of ac, spectral, isolation"):
        detect(features, ("ac", "nope"))
    with pytest.raises(OptionError, match="methods"):
        detect(features, ())
    inspection = _inspection(features, truth, methods=("spectral",))
    with pytest.raises(OptionError, match="clean-by: ac: that method did not run"):
        inspection.flagged("ac")


@pytest.fixture(scope="module")
def square_task(tmp_path_factory):
    """A small untrained DeepID and a training file (patch -> class 0, with its ground truth)."""
    import keras

    from goodnet.models import Classifier, build_deepid

    keras.utils.set_random_seed(0)
    images, clean_labels = coloured_squares(30, (5, 5), seed=0)
    labels = clean_labels.copy()
    chosen = np.array([35, 40, 70, 75, 100, 110])
    images[chosen, -10:, -10:, :] = 255.0
    labels[chosen] = 0
    truth = PoisonTruth.from_indices(clean_labels, chosen, np.zeros(len(chosen), np.int64), ("patch",))
    path = tmp_path_factory.mktemp("inspection") / "train.h5"
    save_h5(path, images, labels, **truth.datasets())
    stored = load_h5(path)        # the images as stored (uint8 pixels)
    options = InspectionOptions(ac=ActivationClusteringOptions(min_class_size=8))
    return {"classifier": Classifier(build_deepid(4), "unit"), "path": str(path), "data": stored, "truth": truth,
            "options": options}


def test_a_file_and_its_arrays_give_the_same_inspection(square_task):
    from_arrays = inspect_training_set(square_task["classifier"], square_task["data"], square_task["truth"],
                                       options=square_task["options"], progress=False)
    with LabFile(square_task["path"]) as lab:
        from_file = inspect_training_set(square_task["classifier"], lab, load_poison_truth(square_task["path"]),
                                         options=square_task["options"], progress=False)
    assert set(from_file.timings) == {"features"} | set(METHODS)
    np.testing.assert_allclose(from_file.features.values, from_arrays.features.values, rtol=1e-5, atol=1e-5)
    for key in from_arrays.masks:
        np.testing.assert_array_equal(from_file.masks[key], from_arrays.masks[key])
    assert from_file.detection() == from_arrays.detection()
    with pytest.raises(OptionError, match="truth: expected the ground truth of 120 images"):
        inspect_training_set(square_task["classifier"], square_task["data"], square_task["truth"].subset(slice(10)),
                             methods=("spectral",), progress=False)


def test_the_cleaned_set_streamed_equals_in_memory_and_drops_exactly_the_flagged(square_task, monkeypatch):
    import goodnet.inspection as inspection_module
    from goodnet.defenses.sanitisation import TransformOptions, sanitise_images, transform_parameters

    data = square_task["data"]
    flagged = np.zeros(len(data), bool)
    flagged[[0, 7, 35, 40, 119]] = True
    images, labels, kept = cleaned_training_set(data, flagged)
    np.testing.assert_array_equal(kept, np.flatnonzero(~flagged))
    np.testing.assert_array_equal(images, data.images[kept])
    np.testing.assert_array_equal(labels, data.labels[kept])
    index_images, _, index_kept = cleaned_training_set(data, np.flatnonzero(flagged))
    np.testing.assert_array_equal(index_kept, kept)
    np.testing.assert_array_equal(index_images, images)
    monkeypatch.setattr(inspection_module, "READ_CHUNK", 16)   # many chunks, some without a kept row
    transform = TransformOptions()
    with LabFile(square_task["path"]) as lab:
        streamed, streamed_labels, streamed_kept = cleaned_training_set(lab, flagged, transform, seed=3)
    np.testing.assert_array_equal(streamed_kept, kept)
    np.testing.assert_array_equal(streamed_labels, labels)
    whole = sanitise_images(data.images[kept], transform, parameters=transform_parameters(len(kept), transform, 3))
    np.testing.assert_allclose(streamed, whole, atol=1e-3)
    assert not np.array_equal(streamed, images)
    with pytest.raises(DataError, match="every sample is flagged; nothing to write"):
        cleaned_training_set(data, np.ones(len(data), bool))
    with pytest.raises(OptionError, match="flagged: expected 120 booleans"):
        cleaned_training_set(data, np.ones(3, bool))


def test_write_clean_set_keeps_the_truth_of_the_kept_rows_and_never_overwrites(square_task, tmp_path):
    from goodnet.errors import InputError

    inspection = inspect_training_set(square_task["classifier"], square_task["data"], square_task["truth"],
                                      methods=("spectral",), progress=False)
    path = str(tmp_path / "clean.h5")
    result = write_clean_set(path, square_task["data"], inspection, by="spectral")
    kept = np.flatnonzero(~inspection.masks["spectral"])
    written = load_h5(path)
    np.testing.assert_array_equal(written.images, square_task["data"].images[kept])
    truth = load_poison_truth(path)
    np.testing.assert_array_equal(truth.poisoned, square_task["truth"].poisoned[kept])
    np.testing.assert_array_equal(truth.clean_labels, square_task["truth"].clean_labels[kept])
    assert result["kept"] == len(kept) and result["removed"] == 120 - len(kept)
    assert result["poisoned_kept"] + result["poisoned_removed"] == 6
    assert result["poisoned_kept"] == int(truth.poisoned.sum()) and result["transformed"] is False
    with pytest.raises(InputError):
        write_clean_set(path, square_task["data"], inspection, by="spectral")
    plain = LabData(square_task["data"].images, square_task["data"].labels, "")
    untruthful = Inspection(inspection.features, inspection.detectors, inspection.masks, {}, None)
    result = write_clean_set(path, plain, untruthful, by="union", overwrite=True)
    assert "poisoned_kept" not in result and load_poison_truth(path) is None


def test_clean_and_retrain_trains_on_exactly_the_kept_rows_and_measures_three_models(square_task, monkeypatch):
    import goodnet.training
    from goodnet.metrics import evaluate
    from goodnet.training import TrainOptions

    real = goodnet.training.train_deepid
    seen = []

    def recording(images, labels, num_classes, options=None, callbacks=()):
        seen.append((np.array(images), np.array(labels), num_classes, options))
        return real(images, labels, num_classes, options, callbacks)

    monkeypatch.setattr(goodnet.training, "train_deepid", recording)
    from goodnet.inspection import clean_and_retrain

    data, truth, badnet = square_task["data"], square_task["truth"], square_task["classifier"]
    test_images, test_labels = coloured_squares(5, (5, 5), seed=1)
    test = LabData(test_images, test_labels, "test")
    triggered = test_images[test_labels != 0].copy()
    triggered[:, -10:, -10:, :] = 255.0
    poisoned_test = LabData(triggered, np.zeros(len(triggered), np.int64), "bd test")
    recipe = TrainOptions(epochs=1, seed=0)
    figures, inspection, retrained, clean = clean_and_retrain(
        badnet, data, 4, test, [poisoned_test], truth=truth, recipe=recipe, by="spectral", clean_model=badnet,
        options=square_task["options"], progress=False)
    assert len(seen) == 1 and seen[0][2] == 4 and seen[0][3] == recipe      # the clean model was reused
    kept = np.flatnonzero(~inspection.masks["spectral"])
    np.testing.assert_array_equal(seen[0][0], data.images[kept])
    np.testing.assert_array_equal(seen[0][1], data.labels[kept])
    assert figures["by"] == "spectral" and figures["recommended"] == inspection.recommended()
    assert figures["kept"] == len(kept) and figures["removed"] == 120 - len(kept)
    assert figures["poisoned"] == 6 and figures["poisoned_kept"] == int(truth.poisoned[kept].sum())
    for name, model in (("badnet", badnet), ("retrained", retrained), ("clean", clean)):
        expected = evaluate(model, test, [poisoned_test])
        assert figures["models"][name] == {"clean_accuracy": expected["clean_accuracy"],
                                           "attack_success_rate": expected["attack_success_rate"]}
    detection = inspection.detection()
    assert figures["methods"]["ac"]["f1"] == detection["ac"]["f1"]
    assert figures["methods"]["spectral"]["falsely_flagged_classes"] == inspection.falsely_flagged_classes()[
        "spectral"]
    # nothing dropped (by=None) trains on the whole set
    seen.clear()
    figures, *_ = clean_and_retrain(badnet, data, 4, test, truth=truth, recipe=recipe, by=None,
                                    methods=("spectral",), progress=False)
    assert figures["removed"] == 0 and len(seen[0][0]) == 120 and "clean" not in figures["models"]
    assert figures["models"]["retrained"]["attack_success_rate"] is None
