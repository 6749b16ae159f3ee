"""Tests for goodnet.attacks.benchmarks: determinism, the lab layout, poisoned files."""

import hashlib
import json
import time

import numpy as np
import pytest

from goodnet.attacks.benchmarks import generate, identity_parameters, poisoned_split, read_benchmark, write_benchmark
from goodnet.data import load_h5
from goodnet.files import MANIFEST

SMALL = {"train": 40, "valid": 20, "test": 20}


def digests(folder):
    """SHA-256 of every file goodnet wrote in ``folder``, but its manifest (which records write times)."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*"))
            if path.name != MANIFEST}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = write_benchmark(tmp_path / "a", "digits", seed=3, sizes=SMALL, triggers=("patch", "blend"))
    time.sleep(1.1)   # HDF5 object timestamps have one-second resolution: the files must hold none
    write_benchmark(tmp_path / "b", "digits", seed=3, sizes=SMALL, triggers=("patch", "blend"))
    write_benchmark(tmp_path / "c", "digits", seed=4, sizes=SMALL, triggers=("patch", "blend"))
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    differing = {name for name, digest in digests(tmp_path / "c").items() if digests(tmp_path / "a")[name] != digest}
    assert differing >= {"train.h5", "valid.h5", "test.h5"}
    assert sorted(first["files"].values()) == sorted(p.name for p in (tmp_path / "a").glob("*.h5"))
    with pytest.raises(ValueError, match="exists"):
        write_benchmark(tmp_path / "a", "digits", seed=3, sizes=SMALL)


def test_files_follow_the_lab_layout_and_poisoned_files_exclude_the_target(tmp_path):
    import h5py

    write_benchmark(tmp_path, "faces", seed=0, sizes={"train": 2, "valid": 3, "test": 3}, identities=12,
                    triggers=("sunglasses", "lipstick"), targets=(5, 1))
    with h5py.File(tmp_path / "valid.h5") as handle:
        assert handle["data"].shape == (36, 3, 55, 47) and handle["data"].dtype == np.uint8
    valid = load_h5(tmp_path / "valid.h5", num_classes=12)
    assert np.bincount(valid.labels).tolist() == [3] * 12
    for trigger, target in (("sunglasses", 5), ("lipstick", 1)):
        poisoned = load_h5(tmp_path / f"bd_valid_{trigger}.h5")
        assert len(poisoned) == 33 and set(poisoned.labels) == {target}
        expected, _ = poisoned_split(valid.images, valid.labels, trigger, target)
        np.testing.assert_array_equal(poisoned.images, np.clip(np.rint(expected), 0, 255))
    description = read_benchmark(tmp_path)
    assert description["num_classes"] == 12 and description["targets"] == [5, 1]
    assert json.loads((tmp_path / "benchmark.json").read_text())["dataset"] == "faces"


def test_digits_are_real_scikit_learn_digits_on_a_canvas():
    images, labels = generate("digits", "test", seed=1, size=50)
    assert images.shape == (50, 55, 47, 3) and set(labels) <= set(range(10)) and len(set(labels)) > 5
    assert images.min() >= 0 and images.max() <= 255
    train, _ = generate("digits", "train", seed=1, size=50)
    assert not np.array_equal(train[:5], images[:5])


def test_faces_identities_are_stable_and_images_vary():
    first = identity_parameters(7, seed=0)
    assert all(np.array_equal(np.asarray(value), np.asarray(identity_parameters(7, 0)[key]))
               for key, value in first.items())
    assert not np.array_equal(first["skin"], identity_parameters(8, 0)["skin"])
    images, labels = generate("faces", "train", seed=0, size=3, identities=4)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert not np.array_equal(images[0], images[1])  # pose, lighting and noise vary per image
    with pytest.raises(ValueError, match="1..1283"):
        generate("faces", "train", size=1, identities=2000)
    with pytest.raises(ValueError, match="dataset"):
        generate("cifar", "train")


def test_synth_command(tmp_path, capsys):
    from goodnet.cli import main

    code = main(["synth", "--dataset", "digits", "--out", str(tmp_path / "d"), "--train", "20", "--valid", "10",
                 "--test", "10", "--triggers", "patch", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["files"]["bd_test_patch"] == "bd_test_patch.h5"
    code = main(["synth", "--dataset", "digits", "--out", str(tmp_path / "d"), "--train", "20"])
    assert code == 2 and "exists" in capsys.readouterr().err
