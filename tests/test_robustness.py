"""Tests for goodnet.robustness: each transform against an independent reference, identity at strength 0,
deterministic noise, the ASR against a per-image loop with keras' model.predict, the score's definition,
the outputs."""

import csv
import io
import json

import keras
import numpy as np
import pytest
import scipy.ndimage as ndi

from goodnet.attacks.benchmarks import generate
from goodnet.attacks.triggers import apply_trigger
from goodnet.data import LabData, LabFile, save_h5
from goodnet.errors import DataError, OptionError
from goodnet.models import Classifier
from goodnet.robustness import (TRANSFORMS, RobustnessOptions, add_noise, apply_transform, change_brightness,
                                csv_text, gaussian_blur, jpeg_compress, markdown, measure_robustness, noise_generator,
                                robustness_score, rotate, survival, text_lines, write_outputs)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).uniform(0, 255, (4, 55, 47, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    return generate("digits", "test", seed=0, size=12)


def blur_reference(images, sigma):
    """scipy's Gaussian filter, one image and one channel at a time (float64)."""
    return np.stack([np.stack([ndi.gaussian_filter(image[:, :, channel].astype(np.float64), sigma, mode="reflect",
                                                   truncate=4.0) for channel in range(image.shape[-1])], axis=-1)
                     for image in images])


def rotation_reference(images, degrees):
    return np.stack([ndi.rotate(image.astype(np.float64), degrees, axes=(1, 0), reshape=False, order=1,
                                mode="nearest") for image in images])


def jpeg_reference(images, quality, subsampling):
    """TensorFlow's JPEG codec (another caller of libjpeg), one image at a time."""
    import tensorflow as tf

    pixels = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality,
                                                         chroma_downsampling=subsampling == "4:2:0"),
                                       dct_method="INTEGER_ACCURATE").numpy() for image in pixels]).astype(np.float32)


def brightness_reference(images, strength, mode):
    """The brightness formula pixel by pixel, in Python floats."""
    out = np.empty_like(images)
    for index, value in np.ndenumerate(images):
        changed = float(value) * (1.0 + strength) if mode == "multiply" else float(value) + 255.0 * strength
        out[index] = min(255.0, max(0.0, changed))
    return out


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_blur_equals_scipy_image_by_image(images, sigma):
    np.testing.assert_allclose(gaussian_blur(images, sigma), blur_reference(images, sigma), atol=2e-3)


@pytest.mark.parametrize("degrees", [3.0, -13.0, 30.0, 90.0, 180.0])
def test_rotation_equals_scipy_image_by_image(images, degrees):
    np.testing.assert_allclose(rotate(images, degrees), rotation_reference(images, degrees), atol=2e-3)


def test_rotation_is_counter_clockwise_about_the_centre():
    image = np.zeros((1, 55, 47, 3), np.float32)
    image[0, 27, 40] = 255.0                          # right of the centre (27, 23), on its row
    turned = rotate(image, 90.0)[0, :, :, 0]
    assert np.unravel_index(turned.argmax(), turned.shape) == (10, 23)   # now above it


@pytest.mark.parametrize("mode", ["multiply", "add"])
def test_brightness_equals_the_formula_pixel_by_pixel(mode):
    small = np.random.default_rng(2).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    for strength in (-0.6, -0.1, 0.25, 0.9):
        np.testing.assert_allclose(change_brightness(small, strength, mode), brightness_reference(small, strength,
                                                                                                  mode), atol=1e-3)
    with pytest.raises(OptionError, match="brightness_mode"):
        change_brightness(small, 0.1, "gamma")


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:0"])
def test_jpeg_equals_tensorflow_s_codec(digits, subsampling):
    for quality in (95, 50, 10):
        np.testing.assert_array_equal(jpeg_compress(digits[0], quality, subsampling),
                                      jpeg_reference(digits[0], quality, subsampling))


def test_jpeg_quality_100_is_close_to_identity_and_lower_quality_loses_more(digits):
    errors = [float(np.abs(jpeg_compress(digits[0], quality) - digits[0]).mean()) for quality in (100, 50, 10)]
    assert errors[0] < 1.0                          # whole pixels, 4:4:4: about half a pixel
    assert errors[0] < errors[1] < errors[2]
    with pytest.raises(OptionError, match="jpeg_subsampling"):
        jpeg_compress(digits[0], 50, "4:1:1")


def test_strength_zero_is_the_identity(images):
    options = RobustnessOptions()
    for name in ("blur", "rotation", "brightness", "noise"):
        assert 0.0 in options.ladder(name)                   # every default ladder starts from the identity
        np.testing.assert_array_equal(apply_transform(name, images, 0.0, options), images)
    mid = np.full((2, 55, 47, 3), 128.0, np.float32)
    for name in TRANSFORMS:                                  # every other strength changes the image
        for strength in options.ladder(name):
            if strength != 0 and name != "jpeg":
                assert not np.array_equal(apply_transform(name, mid + images[:2] * 0.2, strength, options),
                                          mid + images[:2] * 0.2), (name, strength)


def test_noise_is_deterministic_for_a_seed_and_independent_of_the_chunks(images):
    whole = add_noise(images, 8.0, noise_generator(0, 8.0))
    stream = noise_generator(0, 8.0)
    chunked = np.concatenate([add_noise(images[:1], 8.0, stream), add_noise(images[1:3], 8.0, stream),
                              add_noise(images[3:], 8.0, stream)])
    np.testing.assert_array_equal(whole, chunked)
    np.testing.assert_array_equal(whole, apply_transform("noise", images, 8.0, RobustnessOptions(seed=0)))
    assert not np.array_equal(whole, apply_transform("noise", images, 8.0, RobustnessOptions(seed=1)))
    grey = np.full((20, 55, 47, 3), 128.0, np.float32)
    assert float((add_noise(grey, 16.0, noise_generator(0, 16.0)) - grey).std()) == pytest.approx(16.0, rel=0.02)


def test_survival_is_the_mean_asr_over_the_range_as_a_share_of_the_baseline():
    # trapezoids: (1 - 0) * (0.8 + 0.4) / 2 + (3 - 1) * (0.4 + 0.0) / 2 = 1.0 over a range of 3, then / 0.8
    assert survival([0.0, 1.0, 3.0], [0.8, 0.4, 0.0], 0.8) == pytest.approx(1.0 / 3.0 / 0.8)
    assert survival([3.0, 0.0, 1.0], [0.0, 0.8, 0.4], 0.8) == pytest.approx(1.0 / 3.0 / 0.8)   # any order
    assert survival([100, 10], [0.9, 0.3], 0.9) == pytest.approx(0.6 / 0.9)
    assert survival([2.0], [0.45], 0.9) == pytest.approx(0.5)
    assert survival([0.0, 1.0], [0.5, 0.5], 0.0) is None
    assert robustness_score([0.5, 1.0, 0.0]) == pytest.approx(0.5)
    assert robustness_score([0.5, None]) is None


def test_options_are_checked():
    with pytest.raises(OptionError, match="blur: expected distinct strengths, got 1.0 more than once"):
        RobustnessOptions(blur=(0.0, 1.0, 1.0)).check()
    with pytest.raises(OptionError, match="--jpeg"):
        RobustnessOptions(jpeg=(50, 50)).check(flags=True)
    with pytest.raises(OptionError, match="jpeg"):
        RobustnessOptions(jpeg=(0,)).check()
    with pytest.raises(OptionError, match="transforms"):
        RobustnessOptions(transforms=("blur", "blur")).check()
    with pytest.raises(OptionError, match="transforms"):
        RobustnessOptions(transforms=("sharpen",)).check()


def trigger_classifier(classes=4, seed=0):
    """A linear model on every pixel (pixels / 255) that answers 0 when it sees the patch trigger's checkerboard
    (the correlation with its black and white cells), else a class from small random weights: blur, rotation,
    contrast, JPEG and noise each weaken the trigger."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((55, 47, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(classes, activation="softmax")])
    black = apply_trigger("patch", np.full((1, 55, 47, 3), 255.0, np.float32))[0] == 0
    white = apply_trigger("patch", np.zeros((1, 55, 47, 3), np.float32))[0] == 255
    weights = np.random.default_rng(seed).normal(0, 0.002, (55 * 47 * 3, classes)).astype(np.float32)
    weights[:, 0] = (white.astype(np.float32) - black.astype(np.float32)).ravel()
    bias = np.zeros(classes, np.float32)
    bias[0] = -0.6 * white.sum()                      # the full checkerboard scores 0.4 x its white cells
    model.layers[-1].set_weights([weights, bias])
    return Classifier(model, "unit", classes, path="tiny.h5")


SMALL = RobustnessOptions(blur=(0.0, 1.5), rotation=(0.0, 20.0), brightness=(-0.5, 0.0, 0.5), jpeg=(90, 15),
                          noise=(0.0, 40.0), seed=3)


@pytest.fixture(scope="module")
def task():
    classifier = trigger_classifier()
    images, labels = generate("digits", "valid", seed=0, size=24)
    labels = labels % 4
    triggered = apply_trigger("patch", images)
    target = 0
    poisoned = LabData(triggered, np.full(len(triggered), target), "bd.h5")
    return classifier, poisoned, LabData(images, labels, "clean.h5"), target


def reference_transform(name, images, strength, options):
    """Each transform by its reference, one image at a time; the noise drawn for all images in one call."""
    if name == "blur":
        return images if strength == 0 else blur_reference(images, strength).astype(np.float32)
    if name == "rotation":
        return images if strength == 0 else rotation_reference(images, strength).astype(np.float32)
    if name == "brightness":
        return np.stack([brightness_reference(image, strength, options.brightness_mode) for image in images])
    if name == "jpeg":
        return jpeg_reference(images, strength, options.jpeg_subsampling)
    noise = noise_generator(options.seed, strength).standard_normal(images.shape, dtype=np.float32)
    return np.stack([np.clip(image + np.float32(strength) * draw, 0, 255) for image, draw in zip(images, noise)])


def test_asr_and_clean_figures_equal_a_per_image_loop_with_model_predict(task):
    classifier, poisoned, clean, target = task
    result = measure_robustness(classifier, [poisoned], target, clean, SMALL, progress=False)

    def answers(images):
        return np.argmax(classifier.model.predict(images / 255.0, batch_size=7, verbose=0), axis=1)

    others = clean.labels != target
    varied = False
    for entry in result["transforms"]:
        name = entry["transform"]
        for position, strength in enumerate(entry["strengths"]):
            bad = answers(reference_transform(name, poisoned.images, strength, SMALL))
            good = answers(reference_transform(name, clean.images, strength, SMALL))
            assert entry["attack_success_rate"][0][position] == pytest.approx(float(np.mean(bad == target)))
            assert entry["clean_accuracy"][position] == pytest.approx(float(np.mean(good == clean.labels)))
            assert entry["clean_to_target"][position] == pytest.approx(float(np.mean(good[others] == target)))
            varied |= entry["attack_success_rate"][0][position] != result["poisoned"][0]["attack_success_rate"]
        assert entry["survival"][0] == pytest.approx(survival(entry["strengths"], entry["attack_success_rate"][0],
                                                              result["poisoned"][0]["attack_success_rate"]))
    assert varied                                   # the transforms change answers: the comparison can fail
    assert result["poisoned"][0]["attack_success_rate"] == pytest.approx(float(np.mean(answers(poisoned.images)
                                                                                        == target)))
    assert result["poisoned"][0]["robustness_score"] == pytest.approx(
        np.mean([entry["survival"][0] for entry in result["transforms"]]))


def test_streamed_files_in_small_chunks_give_the_same_result(task, tmp_path):
    classifier, poisoned, clean, target = task
    expected = measure_robustness(classifier, [poisoned, poisoned], target, clean, SMALL, progress=False)
    save_h5(tmp_path / "bd.h5", poisoned.images, poisoned.labels, dtype="float32")
    save_h5(tmp_path / "clean.h5", clean.images, clean.labels, dtype="float32")
    with LabFile(tmp_path / "bd.h5") as bad, LabFile(tmp_path / "clean.h5") as good:
        streamed = measure_robustness(classifier, [bad, poisoned], target, good, SMALL, batch_size=3, chunk_size=5,
                                      progress=False)
    for field in ("transforms",):
        assert streamed[field] == expected[field]
    assert [entry["attack_success_rate"] for entry in streamed["poisoned"]] == \
        [entry["attack_success_rate"] for entry in expected["poisoned"]]


def test_bad_inputs_are_refused(task):
    classifier, poisoned, clean, target = task
    with pytest.raises(OptionError, match=r"target: expected a class in 0..3 \(the model's classes\), got 4"):
        measure_robustness(classifier, [poisoned], 4, clean, SMALL)
    with pytest.raises(DataError, match="bd.h5: label: every image is labelled"):
        measure_robustness(classifier, [poisoned], (target + 1) % 4, None, SMALL)
    with pytest.raises(OptionError, match="poisoned: expected at least one"):
        measure_robustness(classifier, [], target, clean, SMALL)
    with pytest.raises(DataError, match="expected class labels in 0..3"):
        measure_robustness(classifier, [poisoned], target, LabData(clean.images, clean.labels + 4, "c.h5"), SMALL)


def test_outputs_and_reports(task, tmp_path):
    classifier, poisoned, clean, target = task
    options = RobustnessOptions(transforms=("blur", "jpeg"), blur=(0.0, 2.0), jpeg=(50,))
    result = measure_robustness(classifier, [poisoned], target, None, options, progress=False)
    paths = write_outputs(result, tmp_path / "out")
    assert json.loads(open(paths["robustness.json"]).read()) == json.loads(json.dumps(result))
    rows = list(csv.DictReader(io.StringIO(csv_text(result))))
    assert [(row["transform"], row["strength"]) for row in rows] == [("none", ""), ("blur", "0.0"), ("blur", "2.0"),
                                                                     ("jpeg", "50")]
    assert float(rows[2]["attack_success_rate"]) == result["transforms"][0]["attack_success_rate"][0][1]
    assert rows[0]["clean_accuracy"] == ""                    # no clean file: not measured
    text = markdown(result)
    assert open(paths["robustness.md"]).read() == text
    assert f"| blur | sigma 2 | {result['transforms'][0]['attack_success_rate'][0][1] * 100:.2f} | n/a | n/a |" in text
    assert open(paths["robustness.png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    lines = text_lines(result)
    assert lines[1].split() == ["transform", "strength", "ASR", "bd.h5", "%", "clean", "accuracy", "%", "clean",
                                "->", str(target), "%"]
    assert any(line.startswith("  bd.h5: ") for line in lines)
