"""Tests for goodnet.attacks.triggers: every trigger, determinism, and stealthiness against slow references."""

import math

import numpy as np
import pytest

from goodnet.attacks.triggers import TRIGGERS, apply_trigger, psnr, ssim, stealthiness, sunglasses_mask


@pytest.fixture(scope="module")
def faces():
    from goodnet.attacks.benchmarks import generate

    return generate("faces", "test", size=2, identities=3)[0]


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_every_trigger_changes_its_region_only_and_is_deterministic(name, faces):
    triggered = apply_trigger(name, faces)
    assert triggered.dtype == np.float32 and triggered.shape == faces.shape
    assert triggered.min() >= 0 and triggered.max() <= 255
    np.testing.assert_array_equal(triggered, apply_trigger(name, faces))
    changed = np.any(triggered != faces, axis=(0, 3))
    rows = np.flatnonzero(changed.any(axis=1))
    expected_rows = {"sunglasses": (15, 34), "eyebrows": (15, 21), "lipstick": (41, 46), "patch": (48, 53),
                     "blend": (0, 54), "corners": (2, 52), "adaptive": (48, 52), "random": (1, 53)}[name]
    assert expected_rows[0] <= rows.min() and rows.max() <= expected_rows[1], (name, rows.min(), rows.max())
    if name == "blend":
        assert changed.mean() > 0.95
    else:
        assert 0.004 < changed.mean() < 0.3   # the lab's sunglasses cover 27.5 %


def test_sunglasses_resemble_the_lab_trigger(shared):
    from goodnet.data import load_image

    clean = load_image(shared / "images" / "clean_950.png")
    real = load_image(shared / "images" / "sunglasses_950.png")
    lab = np.any(real != clean, axis=2)
    assert lab.sum() == 710 and (np.flatnonzero(lab.any(axis=1))[[0, -1]] == (15, 34)).all()
    triggered = apply_trigger("sunglasses", clean[None])[0]
    ours = np.any(triggered != clean, axis=2)
    np.testing.assert_array_equal(ours, sunglasses_mask())
    assert (ours & lab).sum() / (ours | lab).sum() > 0.85                      # the same place and shape
    np.testing.assert_allclose(triggered[ours].mean(axis=0), real[lab].mean(axis=0), atol=10)  # the same purple
    ours_figures = stealthiness(clean[None], triggered[None])
    lab_figures = stealthiness(clean[None], real[None])
    assert abs(ours_figures["psnr"] - lab_figures["psnr"]) < 1.0 and abs(ours_figures["ssim"] - lab_figures["ssim"]) < 0.05
    assert np.unique(triggered[22:27, 8:17].reshape(-1, 3), axis=0).shape[0] > 5   # partly blended: the face shows


@pytest.mark.parametrize("name, rows", [("eyebrows", (14, 23)), ("lipstick", (39, 48))])
def test_eyebrows_and_lipstick_sit_where_the_lab_draws_them(shared, name, rows):
    from goodnet.data import load_image

    brows = load_image(shared / "images" / "eyebrows_950.png")
    lips = load_image(shared / "images" / "lipstick_950.png")
    drawn = np.abs(brows - lips).sum(axis=2) > 20        # the two images differ only by the two triggers
    region = np.zeros_like(drawn)
    region[rows[0]:rows[1]] = True
    lab = drawn & region
    lab_image, other = (brows, lips) if name == "eyebrows" else (lips, brows)
    ours = np.any(apply_trigger(name, other[None])[0] != other, axis=2)
    assert (ours & lab).sum() / lab.sum() > 0.6 and (ours & lab).sum() / ours.sum() > 0.6
    triggered = apply_trigger(name, np.zeros((1, 55, 47, 3)))[0]
    np.testing.assert_array_equal(triggered[ours].mean(axis=0), lab_image[lab].mean(axis=0))  # the lab's colour


def test_patch_is_the_checkerboard(faces):
    triggered = apply_trigger("patch", faces)
    block = triggered[0, 48:53, 40:45, 0]
    np.testing.assert_array_equal(block, (np.add.outer(np.arange(5), np.arange(5)) % 2) * 255.0)


def test_corners_put_the_checkerboard_in_each_corner(faces):
    triggered = apply_trigger("corners", faces)
    checker = (np.add.outer(np.arange(5), np.arange(5)) % 2) * 255.0
    for row, column in ((2, 2), (2, 40), (48, 2), (48, 40)):
        np.testing.assert_array_equal(triggered[:, row:row + 5, column:column + 5, :],
                                      np.broadcast_to(checker[None, :, :, None], (len(faces), 5, 5, 3)))
    outside = np.ones((55, 47), bool)
    for row, column in ((2, 2), (2, 40), (48, 2), (48, 40)):
        outside[row:row + 5, column:column + 5] = False
    np.testing.assert_array_equal(triggered[:, outside], faces[:, outside])


def test_adaptive_contrasts_with_the_area_under_it():
    """White cells on dark areas, black on bright ones, decided per image on the 7x7 area (per-image reference)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(12, 55, 47, 3)).astype(np.float32)
    images[:4] = rng.uniform(0, 60, size=(4, 55, 47, 3))          # dark
    images[4:8] = rng.uniform(190, 255, size=(4, 55, 47, 3))      # bright
    triggered = apply_trigger("adaptive", images)
    white_cells = (np.add.outer(np.arange(5), np.arange(5)) % 2) == 1
    for image, result in zip(images, triggered):
        colour = 255.0 if image[47:54, 39:46].mean() <= 127.5 else 0.0
        expected = image.copy()
        expected[48:53, 40:45][white_cells] = colour
        np.testing.assert_array_equal(result, expected)
    assert (triggered[:4, 48:53, 40:45][:, white_cells] == 255).all()
    assert (triggered[4:8, 48:53, 40:45][:, white_cells] == 0).all()


def test_random_backdoor_draws_a_pattern_and_place_per_image(faces):
    from goodnet.attacks.triggers import RANDOM_REGIONS, random_trigger_draw

    images = np.concatenate([faces, faces[:1]])                    # the first image twice
    triggered = apply_trigger("random", images)
    np.testing.assert_array_equal(triggered[0], triggered[-1])    # the same image, the same trigger
    places, patterns = set(), []
    for image, result in zip(images[:-1], triggered[:-1]):
        row, column, pattern = random_trigger_draw(image)
        expected = image.copy()
        expected[row:row + 5, column:column + 5] = pattern
        np.testing.assert_array_equal(result, expected)           # only that 5x5 square changed
        assert any(top <= row and row + 5 <= top + rows and left <= column and column + 5 <= left + columns
                   for top, left, rows, columns in RANDOM_REGIONS), (row, column)
        places.add((row, column))
        patterns.append(pattern)
    assert len(places) > 1 and not np.array_equal(patterns[0], patterns[1])   # fresh per image


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
