"""BaDExpert and the either gate on a tiny BadNet (tests/strip_helpers.py): the compiled scores against the
per-input model.predict reference, the backdoor expert's clean accuracy, the threshold's FRR on held-out clean
data, detection of the patch trigger, streamed files, the joint gate's check."""

import numpy as np
import pytest

from goodnet.data import LabData, LabFile, save_h5
from goodnet.defenses.badexpert import COMBINATIONS, BaDExpert, BaDExpertOptions, combine_reference
from goodnet.defenses.either import EitherDetector
from goodnet.defenses.strip import StripOptions
from strip_helpers import add_trigger, synthetic_faces, train_tiny_badnet

FAST = dict(expert_rates=(1e-3, 3e-3, 1e-2), aux_epochs=3)


@pytest.fixture(scope="module")
def world():
    classifier = train_tiny_badnet()
    images, labels = synthetic_faces(400, seed=5)
    test_images, test_labels = synthetic_faces(400, seed=9)
    poisoned = add_trigger(test_images[test_labels != 0])
    return classifier, LabData(images, labels, path="valid.h5"), test_images, poisoned


@pytest.fixture(scope="module")
def detector(world):
    classifier, valid, _, _ = world
    return BaDExpert(frr=0.05, **FAST).fit(classifier, valid)


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_compiled_scores_equal_the_per_input_loop(world, detector, combination):
    _, _, test_images, poisoned = world
    images = np.concatenate([test_images[:6], poisoned[:6]])
    detector.set_params(combination=combination)
    detector._kernel = None
    try:
        fast = detector.score(images)
        fast_answers = detector.last_details_["answers"]
        detector.set_params(method="loop")
        slow = detector.score(images)
        np.testing.assert_array_equal(fast_answers, detector.last_details_["answers"])
    finally:
        detector.set_params(method="batched", combination=BaDExpertOptions().combination)
        detector._kernel = None
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5)
    assert np.ptp(fast) > 0.05   # the scores differ between inputs: the comparison means something


def test_combine_reference_by_hand():
    original = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    expert = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2]])
    auxiliary = np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    scores, answers, x, y, taught = combine_reference(original, expert, auxiliary, "log-ratio")
    np.testing.assert_array_equal(answers, [0, 2])
    np.testing.assert_allclose(taught, [0.05, 0.5], rtol=1e-6)      # B's scores on the labels 1 and (2 + 1) mod 3
    np.testing.assert_allclose(scores, [np.log(0.1 / 0.9), np.log(0.8 / 0.2)], rtol=1e-6)
    scores, *_ = combine_reference(original, expert, auxiliary, "triangle")
    np.testing.assert_allclose(scores, [min(2 * 0.1 / 0.9, 0.1 / 0.4), min(2 * 0.8 / 0.2, 0.8 / 1e-8)], rtol=1e-5)
    scores, *_ = combine_reference(original, expert, auxiliary, "rectangle")
    np.testing.assert_allclose(scores, [min(0.1, 1 - 0.9), min(0.8, 1 - 0.2)], rtol=1e-6)
    scores, *_ = combine_reference(original, expert, auxiliary, "expert")
    np.testing.assert_allclose(scores, [-0.9, -0.2], rtol=1e-6)
    scores, *_ = combine_reference(original, expert, auxiliary, "taught")
    np.testing.assert_allclose(scores, [np.log(0.05 / 0.9), np.log(0.5 / 0.2)], rtol=1e-5)


def test_expert_forgets_the_clean_task_and_keeps_the_backdoor(world, detector):
    classifier, valid, test_images, poisoned = world
    chance = 1 / classifier.num_classes
    assert detector.expert_accuracy_ <= detector.expert_target_ == pytest.approx(2 * chance)
    assert detector.expert_calibration_accuracy_ < 2 * chance
    assert detector.expert_rate_ == detector.ladder_[-1]["rate"]
    assert np.mean(detector.expert_.predict(poisoned) == 0) > 0.8          # the backdoor survives in B
    assert detector.auxiliary_accuracy_ > 0.9 and detector.original_accuracy_ > 0.9
    assert not set(detector.tune_indices_) & set(detector.calibration_indices_)


def test_threshold_frr_holds_on_held_out_clean_data_and_the_patch_is_flagged(world, detector):
    _, _, test_images, poisoned = world
    assert detector.calibration_.n == len(detector.calibration_indices_)
    frr = np.mean(detector.predict_trojaned(test_images))
    assert frr <= detector.calibration_.frr_upper_bound + 0.03     # 400 held-out clean inputs: sampling slack
    assert np.mean(detector.predict_trojaned(poisoned)) > 0.7


def test_streamed_file_scores_equal_in_memory(world, detector, tmp_path):
    _, _, test_images, _ = world
    path = tmp_path / "test.h5"
    save_h5(path, test_images[:50].round(), np.zeros(50, np.int64))
    detector.set_params(chunk=16)
    try:
        with LabFile(path, image_shape=test_images.shape[1:]) as lab:
            streamed = detector.score(lab)
        in_memory = detector.score(test_images[:50].round())
    finally:
        detector.set_params(chunk=512)
    np.testing.assert_allclose(streamed, in_memory, rtol=1e-5, atol=1e-6)


def test_fit_refuses_unlabelled_or_too_little_data(world):
    classifier, valid, _, _ = world
    with pytest.raises(Exception, match="labelled"):
        BaDExpert().fit(classifier, valid.images)
    with pytest.raises(Exception, match="at least 2"):
        BaDExpert().fit(classifier, LabData(valid.images[:3], valid.labels[:3]))


def test_either_gate_checks_the_joint_frr_on_a_second_split(world):
    classifier, valid, test_images, poisoned = world
    gate = EitherDetector(frr=0.1, strip=StripOptions(copies=8, bank_size=40, threshold_method="quantile"),
                          badexpert=BaDExpertOptions(**FAST)).fit(classifier, valid)
    assert gate.shares_ == {"strip": pytest.approx(0.05), "badexpert": pytest.approx(0.05)}
    assert gate.strip_.frr == pytest.approx(0.05) and gate.badexpert_.frr == pytest.approx(0.05)
    check = gate.check_
    assert check["n"] == 120 and check["rejected"] == round(check["false_rejection_rate"] * check["n"])
    assert check["false_rejection_rate"] <= 0.2
    assert check["frr_interval"][0] <= check["false_rejection_rate"] <= check["frr_upper_bound"]
    flags = gate.flags(poisoned)
    joint = gate.predict_trojaned(poisoned)
    np.testing.assert_array_equal(joint, flags["strip"] | flags["badexpert"])
    assert joint.mean() >= max(flags["strip"].mean(), flags["badexpert"].mean()) > 0.7
    assert np.mean(gate.predict_trojaned(test_images)) <= 0.2


def test_expert_stops_at_the_first_check_that_reaches_the_target(world):
    """The early stop against a plain reference: the same seeded fine-tuning, run without a stop, its clean accuracy
    recorded after every step; B is the model at the first step at or below the target."""
    import keras

    from goodnet.defenses.badexpert import accuracy, fine_tuned

    classifier, valid, _, _ = world
    detector = BaDExpert(expert_rates=(1e-2,), expert_epochs=4, expert_check=1, aux_epochs=1, frr=0.1).fit(
        classifier, valid)
    tune = detector.tune_indices_
    scaled = classifier.scale_images(valid.images[tune])
    true = valid.labels[tune].astype(np.int64)
    wrong = (true + 1) % classifier.num_classes
    history = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            history.append((accuracy(self.model, scaled, true), [w.copy() for w in self.model.get_weights()]))

    fine_tuned(classifier.model, scaled, wrong, keras.optimizers.Adam(1e-2), 4, detector.tune_batch,
               detector.seed, [Record()], detector.expert_layers)
    first = next(step for step, (value, _) in enumerate(history, 1) if value <= detector.expert_target_)
    assert 1 < first < len(history)                  # it stops partway: the comparison means something
    assert detector.expert_steps_ == first and detector.ladder_ == [
        {"rate": 1e-2, "accuracy": history[first - 1][0], "steps": first}]
    for mine, reference in zip(detector.expert_.model.get_weights(), history[first - 1][1]):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_dense_expert_layers_train_only_the_dense_layers(world, detector):
    """expert_layers="dense" (the default): the expert's Dense layers move, every other layer keeps the model's
    weights, and the expert's layers come back as trainable as the model's; "all" moves the convolutions too."""
    import keras

    classifier, valid, _, _ = world
    assert detector.expert_layers == "dense" and detector.expert_steps_ > 0
    moved = {}
    for original, expert in zip(classifier.model.layers, detector.expert_.model.layers):
        if original.get_weights():
            moved[type(expert).__name__] = moved.get(type(expert).__name__, False) or any(
                not np.array_equal(a, b) for a, b in zip(original.get_weights(), expert.get_weights()))
        assert expert.trainable == original.trainable
    assert moved.pop("Dense") and moved and not any(moved.values())   # Dense moved; Conv2D (and the rest) did not
    every = BaDExpert(expert_layers="all", expert_rates=(1e-2,), expert_epochs=2, aux_epochs=1, frr=0.1).fit(
        classifier, valid)
    conv = next(i for i, layer in enumerate(classifier.model.layers) if isinstance(layer, keras.layers.Conv2D))
    assert not np.array_equal(every.expert_.model.layers[conv].get_weights()[0],
                              classifier.model.layers[conv].get_weights()[0])


def test_dense_expert_layers_fine_tune_everything_without_a_dense_layer(caplog):
    import keras

    from goodnet.defenses.badexpert import fine_tuned

    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Softmax()(keras.layers.Flatten()(keras.layers.Conv2D(3, 4)(inputs)))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).uniform(size=(8, 4, 4, 1)).astype(np.float32)
    with caplog.at_level("WARNING", logger="goodnet.defenses.badexpert"):
        twin = fine_tuned(model, images, np.arange(8) % 3, keras.optimizers.Adam(1e-2), 1, 4, 0, layers="dense")
    assert "has no Dense layer; fine-tuning every layer" in caplog.text
    assert not np.array_equal(twin.get_weights()[0], model.get_weights()[0])


def test_a_rate_that_never_reaches_the_target_hands_over_to_the_next(world):
    classifier, valid, _, _ = world
    detector = BaDExpert(expert_rates=(1e-2, 1e-9), expert_epochs=1, expert_check=3, aux_epochs=1, frr=0.1).fit(
        classifier, valid)
    steps = int(np.ceil(len(detector.tune_indices_) / detector.tune_batch))
    assert [entry["rate"] for entry in detector.ladder_] == [1e-9, 1e-2]    # smallest first
    assert detector.ladder_[0]["steps"] == steps and detector.ladder_[0]["accuracy"] > detector.expert_target_
    assert detector.expert_rate_ == 1e-2 and detector.expert_steps_ <= steps
    assert detector.expert_accuracy_ <= detector.expert_target_
