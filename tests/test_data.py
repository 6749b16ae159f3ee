"""Tests for goodnet.data: the lab-layout reader, its errors, images and writing."""

import os
import tracemalloc

import h5py
import numpy as np
import pytest

from goodnet.data import DataError, LabFile, PoisonTruth, load_h5, load_image, load_poison_truth, save_h5
from goodnet.files import MANIFEST


def write_raw(path, data=None, label=None, **datasets):
    """Write an HDF5 file with exactly the given datasets (no goodnet logic)."""
    with h5py.File(path, "w") as handle:
        if data is not None:
            handle.create_dataset("data", data=data)
        if label is not None:
            handle.create_dataset("label", data=label)
        for name, value in datasets.items():
            handle.create_dataset(name, data=value)
    return path


def lab_array(count=5, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 3, 55, 47)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
def test_channels_first_file_is_transposed_exactly(tmp_path, dtype):
    data = lab_array(dtype=dtype)
    labels = np.array([0, 1, 2, 1282, 7], dtype=np.float64)
    path = write_raw(tmp_path / "valid.h5", data, labels)
    loaded = load_h5(path, num_classes=1283)
    expected = np.transpose(data, (0, 2, 3, 1)).astype(np.float32)  # the lab's own loader
    assert loaded.images.dtype == np.float32 and loaded.images.shape == (5, 55, 47, 3)
    np.testing.assert_array_equal(loaded.images, expected)
    assert loaded.labels.dtype == np.int64
    np.testing.assert_array_equal(loaded.labels, [0, 1, 2, 1282, 7])


@pytest.mark.parametrize("label_dtype", [np.float32, np.int32, np.uint16, np.int64])
def test_any_numeric_label_dtype(tmp_path, label_dtype):
    path = write_raw(tmp_path / "f.h5", lab_array(3), np.array([3, 2, 1], dtype=label_dtype))
    np.testing.assert_array_equal(load_h5(path).labels, [3, 2, 1])


def test_channels_last_and_gzip(tmp_path):
    data = lab_array(4, np.float32)
    channels_last = np.transpose(data, (0, 2, 3, 1))
    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=channels_last, compression="gzip", chunks=(1, 55, 47, 3))
        handle.create_dataset("label", data=np.arange(4), compression="gzip")
    loaded = load_h5(path)
    np.testing.assert_array_equal(loaded.images, channels_last)


def test_chunked_reading_and_batches_agree(tmp_path):
    data = lab_array(23, np.float64, seed=3)
    path = write_raw(tmp_path / "f.h5", data, np.arange(23) % 5)
    whole = load_h5(path, chunk_size=4)
    with LabFile(path) as lab:
        pieces = list(lab.batches(5))
    assert [len(labels) for _, labels in pieces] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([images for images, _ in pieces]), whole.images)
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in pieces]), whole.labels)


def test_float64_file_needs_no_more_memory_than_its_float32_result(tmp_path):
    count = 600  # 600 x 7755 x 8 bytes = 37 MB stored as float64
    path = write_raw(tmp_path / "big.h5", lab_array(count, np.float64, seed=1), np.zeros(count))
    result_bytes = count * 55 * 47 * 3 * 4
    tracemalloc.start()
    loaded = load_h5(path, chunk_size=32)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert loaded.images.nbytes == result_bytes
    # The float32 result plus one float64 chunk (and its float32 copy), nowhere near the 2x of a whole float64 read.
    assert peak < result_bytes * 1.2, (peak, result_bytes)


def test_round_trip_through_save_h5(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.uniform(0, 255, size=(6, 55, 47, 3))
    labels = np.array([5, 4, 3, 2, 1, 0])
    for dtype in ("float32", "float64"):
        path = save_h5(tmp_path / f"{dtype}.h5", images, labels, dtype=dtype, compression="gzip")
        loaded = load_h5(path)
        np.testing.assert_allclose(loaded.images, images.astype(dtype).astype(np.float32))
        np.testing.assert_array_equal(loaded.labels, labels)
        with h5py.File(path, "r") as handle:
            assert handle["data"].shape == (6, 3, 55, 47)  # the lab's channels-first layout
    path = save_h5(tmp_path / "u8.h5", images, labels, layout="channels_last")
    np.testing.assert_array_equal(load_h5(path).images, np.clip(np.rint(images), 0, 255).astype(np.float32))


def test_save_h5_refuses_to_overwrite_and_leaves_no_temporary(tmp_path):
    path = save_h5(tmp_path / "a.h5", np.zeros((1, 55, 47, 3)), [0])
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="exists"):
        save_h5(path, np.ones((1, 55, 47, 3)), [1])
    assert open(path, "rb").read() == before
    with pytest.raises(DataError, match="label"):
        save_h5(tmp_path / "b.h5", np.zeros((2, 55, 47, 3)), [0])
    assert sorted(os.listdir(tmp_path)) == [MANIFEST, "a.h5"]  # no temporary left


def bad_files(tmp_path):
    """(file, expected field, fragment of the message) for every malformed input."""
    good = lab_array(3)
    text = tmp_path / "notes.h5"
    text.write_text("this is not HDF5\n")
    truncated = write_raw(tmp_path / "truncated.h5", lab_array(50), np.zeros(50))
    size = os.path.getsize(truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(size // 2)
    return [
        (text, None, "not an HDF5 file"),
        (truncated, None, ""),
        (write_raw(tmp_path / "nodata.h5", label=np.zeros(3)), "data", "missing dataset 'data'"),
        (write_raw(tmp_path / "nolabel.h5", data=good), "label", "missing dataset 'label'"),
        (write_raw(tmp_path / "rank.h5", good[:, 0], np.zeros(3)), "data", "4-D array"),
        (write_raw(tmp_path / "size.h5", np.zeros((3, 3, 32, 32)), np.zeros(3)), "data", "55x47"),
        (write_raw(tmp_path / "count.h5", good, np.zeros(4)), "label", "expected 3 labels"),
        (write_raw(tmp_path / "fraction.h5", good, np.array([0, 1.5, 2])), "label", "whole-number"),
        (write_raw(tmp_path / "negative.h5", good, np.array([0, -1, 2])), "label", ">= 0"),
        (write_raw(tmp_path / "nanlabel.h5", good, np.array([0, np.nan, 2])), "label", "whole-number"),
        (write_raw(tmp_path / "nan.h5", np.where(np.arange(3)[:, None, None, None] == 1, np.nan, good),
                   np.zeros(3)), "data", "NaN or infinity in image 1"),
        (write_raw(tmp_path / "inf.h5", np.full((2, 3, 55, 47), np.inf), np.zeros(2)), "data", "NaN or infinity"),
        (write_raw(tmp_path / "empty.h5", np.zeros((0, 3, 55, 47)), np.zeros(0)), "data", "no images"),
        (write_raw(tmp_path / "strings.h5", good, np.array([b"a", b"b", b"c"])), "label", "numeric"),
    ]


def test_every_malformed_file_gets_a_one_line_message_naming_file_and_field(tmp_path):
    for path, field, fragment in bad_files(tmp_path):
        with pytest.raises(DataError) as caught:
            load_h5(path)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{path}: "), message
        if field:
            assert f": {field}: " in message, message
        assert fragment in message, message


def test_truncated_file_message(tmp_path):
    path = write_raw(tmp_path / "t.h5", lab_array(50), np.zeros(50))
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataError, match="truncated"):
        load_h5(path)


def test_missing_file_directory_and_class_range(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_h5(tmp_path / "nope.h5")
    with pytest.raises(DataError, match="directory"):
        load_h5(tmp_path)
    path = write_raw(tmp_path / "f.h5", lab_array(2), np.array([0, 1283]))
    with pytest.raises(DataError, match=r"label: expected class labels in 0..1282"):
        load_h5(path, num_classes=1283)
    with pytest.raises(DataError, match=r"0..9"):
        load_h5(tmp_path / "f.h5").check_classes(10)


def test_load_real_images(shared):
    image = load_image(shared / "images" / "clean_950.png")
    assert image.shape == (55, 47, 3) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 255


def test_image_of_another_size_is_refused_or_resized(tmp_path):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((110, 94, 3), np.uint8)).save(path)
    with pytest.raises(DataError, match=r"size: expected a 47x55 .* got 94x110"):
        load_image(path)
    assert load_image(path, resize=True).shape == (55, 47, 3)
    gray = tmp_path / "gray.jpg"
    Image.fromarray(np.full((55, 47), 9, np.uint8)).save(gray)
    assert load_image(gray).shape == (55, 47, 3)
    bogus = tmp_path / "bogus.png"
    bogus.write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable PNG/JPEG"):
        load_image(bogus)


def test_sample_draws_the_same_images_in_memory_and_from_an_open_file(make_lab_file):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, 55, 47, 3)).astype(np.float32)
    labels = np.arange(40) % 5
    path = make_lab_file("sample.h5", images, labels)
    in_memory = load_h5(path).sample(12, seed=4)
    with LabFile(path) as lab_file:
        streamed = lab_file.sample(12, seed=4)
    np.testing.assert_array_equal(in_memory.images, streamed.images)
    np.testing.assert_array_equal(in_memory.labels, streamed.labels)
    positions = [int(np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]) for image in in_memory.images]
    assert len(set(positions)) == 12 and positions == sorted(positions)      # distinct, in file order
    assert len(load_h5(path).sample(100)) == 40


def example_truth():
    """Six images: 1 and 4 poisoned (triggers 1 and 0), 2 flipped, 4 also flipped before poisoning."""
    return PoisonTruth.from_indices([3, 1, 4, 1, 5, 9], poisoned_indices=[1, 4], poisoned_triggers=[1, 0],
                                    trigger_names=("patch", "sunglasses"), flipped_indices=[2, 4])


def test_poison_truth_round_trip_and_readers_ignore_it(tmp_path):
    truth = example_truth()
    images = np.random.default_rng(0).integers(0, 256, (6, 55, 47, 3))
    trained = np.array([3, 7, 0, 1, 7, 9])
    path = save_h5(tmp_path / "train_poisoned.h5", images, trained, **truth.datasets())
    loaded = load_h5(path)
    np.testing.assert_array_equal(loaded.labels, trained)
    np.testing.assert_array_equal(loaded.images, images.astype(np.float32))
    with LabFile(path) as lab:
        assert len(lab) == 6
    read = load_poison_truth(path)
    np.testing.assert_array_equal(read.poisoned, [0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(read.trigger, [-1, 1, -1, -1, 0, -1])
    np.testing.assert_array_equal(read.flipped, [0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(read.clean_labels, [3, 1, 4, 1, 5, 9])
    assert read.trigger_names == ("patch", "sunglasses")
    assert read.poisoned.dtype == bool and read.flipped.dtype == bool
    assert read.counts() == {"images": 6, "poisoned": 2, "flipped": 2, "per_trigger": {"patch": 1, "sunglasses": 1}}
    np.testing.assert_array_equal(read.subset([1, 2]).trigger, [1, -1])
    with h5py.File(path, "r") as handle:
        assert handle["poisoned"].dtype == np.uint8 and handle["poison_trigger"].dtype == np.int16
        assert handle["flipped"].dtype == np.uint8
    plain_file = save_h5(tmp_path / "clean.h5", images, trained)
    assert load_poison_truth(plain_file) is None


def test_save_h5_extra_datasets_are_checked(tmp_path):
    with pytest.raises(DataError, match="poisoned: expected one entry per image"):
        save_h5(tmp_path / "x.h5", np.zeros((3, 55, 47, 3)), [0, 1, 2], extra={"poisoned": np.zeros(2)})
    with pytest.raises(DataError, match="label: an extra dataset"):
        save_h5(tmp_path / "x.h5", np.zeros((3, 55, 47, 3)), [0, 1, 2], extra={"label": np.zeros(3)})
    assert not (tmp_path / "x.h5").exists()


def _truth_file(tmp_path, name, change):
    """A valid poisoned training file with one dataset or attribute changed by ``change(handle)``."""
    truth = example_truth()
    path = save_h5(tmp_path / name, np.zeros((6, 55, 47, 3)), [3, 7, 0, 1, 7, 9], **truth.datasets())
    with h5py.File(path, "a") as handle:
        change(handle)
    return path


def _replace(name, value):
    def change(handle):
        del handle[name]
        handle.create_dataset(name, data=value)
    return change


def _set_attribute(value):
    def change(handle):
        if value is None:
            del handle.attrs["goodnet_triggers"]
        else:
            handle.attrs["goodnet_triggers"] = value
    return change


@pytest.mark.parametrize("change, field, fragment", [
    (_replace("poisoned", np.array([0, 2, 0, 0, 1, 0])), "poisoned", r"expected 0 or 1 per image, found 2 \(image 1\)"),
    (_replace("poisoned", np.zeros(5)), "poisoned", r"expected one entry per image \(6,\)"),
    (_replace("flipped", np.zeros((6, 2))), "flipped", r"expected one entry per image \(6,\)"),
    (_replace("poison_trigger", np.array([-1, 2, -1, -1, 0, -1])), "poison_trigger", "trigger index in 0..1"),
    (_replace("poison_trigger", np.array([0, 1, -1, -1, 0, -1])), "poison_trigger", "expected -1 for an image"),
    (_replace("poison_trigger", np.array([-1, 1.5, -1, -1, 0, -1])), "poison_trigger", "expected whole numbers"),
    (_replace("clean_label", np.array([3, 1, 4, 2, 5, 9])), "clean_label", "neither poisoned nor flipped, found 2"),
    (_replace("clean_label", np.array([-3, 1, 4, 1, 5, 9])), "clean_label", "expected class labels >= 0"),
    (_replace("clean_label", np.array([b"a"] * 6)), "clean_label", "expected a numeric array"),
    (lambda handle: handle.__delitem__("flipped"), "flipped", "missing dataset 'flipped'"),
    (_set_attribute(None), "goodnet_triggers", "missing file attribute"),
    (_set_attribute("not json"), "goodnet_triggers", "expected a JSON list"),
    (_set_attribute('{"a": 1}'), "goodnet_triggers", "expected a JSON list"),
], ids=["flag-2", "short", "2-d", "index-high", "clean-with-trigger", "fraction", "clean-label", "negative",
        "text", "missing", "no-names", "bad-json", "not-a-list"])
def test_bad_poison_truth_is_one_line_naming_file_and_field(tmp_path, change, field, fragment):
    path = _truth_file(tmp_path, "bad.h5", change)
    with pytest.raises(DataError, match=fragment) as caught:
        load_poison_truth(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {field}: ") and "\n" not in message
    load_h5(path)   # the images and labels stay readable


def test_poison_truth_of_a_file_that_is_not_lab_layout(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_poison_truth(tmp_path / "missing.h5")
    path = write_raw(tmp_path / "nolabel.h5", lab_array(2), None, poisoned=np.zeros(2))
    with pytest.raises(DataError, match="label: missing dataset"):
        load_poison_truth(path)
