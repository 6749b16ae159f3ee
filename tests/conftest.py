"""Shared test fixtures: the real lab fixtures in ../shared/csaw and tiny generated data."""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("GOODNET_SHARED", REPO.parent / "shared" / "csaw"))


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
