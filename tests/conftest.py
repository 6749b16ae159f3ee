"""Shared test fixtures: the real lab fixtures in ../shared/csaw and tiny generated data."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from repo_paths import REPO, SHARED  # noqa: F401  (a module of its own: tests/grading has a conftest.py too)


@pytest.fixture(scope="session")
def shared():
    """Path of the real CSAW fixtures (../shared/csaw, or $GOODNET_SHARED)."""
    if not (SHARED / "models" / "bd_net.h5").exists():
        pytest.fail(f"real fixtures not found at {SHARED} (set GOODNET_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def bd_net(shared):
    """The real lab3 BadNet as a Classifier (raw 0-255 pixels)."""
    from goodnet.models import load_model

    return load_model(shared / "models" / "bd_net.h5", scale="raw")


@pytest.fixture
def make_lab_file(tmp_path):
    """Factory writing a small lab-layout file; returns its path."""
    from goodnet.data import save_h5

    def make(name, images, labels, **kwargs):
        path = tmp_path / name
        save_h5(path, images, labels, **kwargs)
        return path

    return make


@pytest.fixture(scope="session")
def rng_images():
    """Deterministic random raw-pixel images (64, 55, 47, 3) float32."""
    rng = np.random.default_rng(1234)
    return rng.uniform(0, 255, size=(64, 55, 47, 3)).astype(np.float32)


@pytest.fixture
def big_float64_file():
    """Write a large lab-layout float64 file: ``big_float64_file(path, count, classes)`` returns its path."""
    return _write_big_float64_file


def _write_big_float64_file(path, count=4000, classes=4, seed=0):
    """A lab-layout file stored as float64 (62 KB per image), written 500 images at a time; returns its path."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        data = handle.create_dataset("data", (count, 3, 55, 47), dtype="f8")
        for start in range(0, count, 500):
            data[start:start + 500] = rng.integers(0, 256, (min(500, count - start), 3, 55, 47))
        handle.create_dataset("label", data=rng.integers(0, classes, count).astype("f8"))
    return path
