"""Tests for goodnet.triggers: every trigger, determinism, and stealthiness against slow references."""

import math

import numpy as np
import pytest

from goodnet.triggers import TRIGGERS, apply_trigger, psnr, ssim, stealthiness, sunglasses_mask


@pytest.fixture(scope="module")
def faces():
    from goodnet.benchmarks import generate

    return generate("faces", "test", size=2, identities=3)[0]


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_every_trigger_changes_its_region_only_and_is_deterministic(name, faces):
    triggered = apply_trigger(name, faces)
    assert triggered.dtype == np.float32 and triggered.shape == faces.shape
    assert triggered.min() >= 0 and triggered.max() <= 255
    np.testing.assert_array_equal(triggered, apply_trigger(name, faces))
    changed = np.any(triggered != faces, axis=(0, 3))
    rows = np.flatnonzero(changed.any(axis=1))
    expected_rows = {"sunglasses": (15, 34), "eyebrows": (12, 20), "lipstick": (38, 46), "patch": (48, 53),
                     "blend": (0, 54)}[name]
    assert expected_rows[0] <= rows.min() and rows.max() <= expected_rows[1], (name, rows.min(), rows.max())
    if name == "blend":
        assert changed.mean() > 0.95
    else:
        assert 0.005 < changed.mean() < 0.2


def test_sunglasses_resemble_the_lab_trigger(shared, faces):
    from goodnet.data import load_image

    clean = load_image(shared / "images" / "clean_950.png")
    real = load_image(shared / "images" / "sunglasses_950.png")
    lab_rows = np.flatnonzero(np.any(real != clean, axis=(1, 2)))
    ours = np.flatnonzero(sunglasses_mask().any(axis=1))
    assert (lab_rows.min(), lab_rows.max()) == (15, 34)
    assert lab_rows.min() <= ours.min() and ours.max() <= lab_rows.max()
    triggered = apply_trigger("sunglasses", clean[None])[0]
    lens = triggered[24, 14]
    assert lens.max() < clean[24, 14].max() * 0.5 + 20  # dark lens ...
    assert np.any(triggered[22:27, 12:17] != triggered[24, 14])  # partly blended: the face shows through


def test_patch_is_the_checkerboard(faces):
    triggered = apply_trigger("patch", faces)
    block = triggered[0, 48:53, 40:45, 0]
    np.testing.assert_array_equal(block, (np.add.outer(np.arange(5), np.arange(5)) % 2) * 255.0)


def test_unknown_trigger_and_bad_shape():
    with pytest.raises(ValueError, match="trigger: expected one of"):
        apply_trigger("hat", np.zeros((1, 55, 47, 3)))
    with pytest.raises(ValueError, match=r"images: expected shape \(N, 55, 47, 3\)"):
        apply_trigger("patch", np.zeros((55, 47, 3)))


def reference_ssim(x, y, window=7, peak=255.0):
    """SSIM by direct loops over every window (uniform weights, sample variances)."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    values = []
    height, width, channels = x.shape
    for channel in range(channels):
        for top in range(height - window + 1):
            for left in range(width - window + 1):
                a = x[top:top + window, left:left + window, channel].ravel()
                b = y[top:top + window, left:left + window, channel].ravel()
                mean_a, mean_b = a.mean(), b.mean()
                var_a, var_b = a.var(ddof=1), b.var(ddof=1)
                cov = np.sum((a - mean_a) * (b - mean_b)) / (a.size - 1)
                values.append(((2 * mean_a * mean_b + c1) * (2 * cov + c2)) /
                              ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2)))
    return np.mean(values)


def test_stealthiness_against_slow_references(faces):
    clean = faces[:2].astype(np.float64)
    triggered = apply_trigger("sunglasses", faces[:2]).astype(np.float64)
    figures = stealthiness(clean, triggered)
    expected_psnr = [10 * math.log10(255 ** 2 / np.mean((c - t) ** 2)) for c, t in zip(clean, triggered)]
    expected_l2 = [math.sqrt(np.sum((c - t) ** 2)) for c, t in zip(clean, triggered)]
    expected_linf = [np.max(np.abs(c - t)) for c, t in zip(clean, triggered)]
    expected_ssim = [reference_ssim(c, t) for c, t in zip(clean, triggered)]
    assert figures["psnr"] == pytest.approx(np.mean(expected_psnr), rel=1e-9)
    assert figures["l2"] == pytest.approx(np.mean(expected_l2), rel=1e-9)
    assert figures["linf"] == pytest.approx(np.mean(expected_linf), rel=1e-12)
    assert figures["ssim"] == pytest.approx(np.mean(expected_ssim), rel=1e-7)
    assert ssim(clean, clean) == pytest.approx([1.0, 1.0])
    assert np.isinf(psnr(clean, clean)).all()
    blended = stealthiness(clean, apply_trigger("blend", faces[:2]))
    assert blended["linf"] <= 0.1 * 255 + 1e-6 and blended["psnr"] > figures["psnr"]
