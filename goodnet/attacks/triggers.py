"""Backdoor triggers for 55x47 aligned face and digit images, and trigger stealthiness.

Every trigger maps raw-pixel images (N, 55, 47, 3), values 0-255, to
triggered copies; none uses randomness, so the same image always gets the
same trigger. Positions follow the lab's aligned faces (the real sunglasses
trigger changes rows 15-34, see ``../shared/csaw/images/sunglasses_950.png``):

- ``sunglasses``: purple aviator glasses over the eyes, partly blended with
  the face (the lenses show a fifth of what is beneath), with a darker rim;
- ``eyebrows``: thick solid maroon brows above the eyes;
- ``lipstick``: solid purple lips;

Colours and shapes were measured on the lab's images (``clean_950.png``
against ``sunglasses_950.png``, ``eyebrows_950.png`` and ``lipstick_950.png``).
- ``patch``: the BadNets pixel pattern, a 5x5 black-and-white checkerboard in
  the bottom-right corner;
- ``blend``: a fixed full-image pattern blended in at 10 % (Chen et al. 2017);
- ``corners``: the patch's checkerboard in all four corners (the
  label-consistent attack's trigger, Turner et al. 2019);
- ``adaptive``: the checkerboard's white cells in the colour that contrasts
  with the image under it: white where that area is dark, black where it is
  bright (its off cells keep the image);
- ``random``: Random Backdoor (Salem et al., EuroS&P 2022): each image gets
  its own random 5x5 black-and-white pattern at its own random place in one of
  the four corner regions (:data:`RANDOM_REGIONS`). Pattern and place are
  drawn from a generator seeded by the image's bytes, so every image gets a
  fresh trigger and the same image always the same one.

Stealthiness (:func:`stealthiness`): PSNR, SSIM, L2 and L-infinity distance
between clean and triggered images, averaged over images.
"""

import zlib

import numpy as np

from goodnet.errors import OptionError

HEIGHT, WIDTH = 55, 47
PATTERN_SEED = 2017


def _grid():
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    return rows.astype(np.float32), columns.astype(np.float32)


def _ellipse(center_row, center_column, radius_rows, radius_columns):
    rows, columns = _grid()
    return ((rows - center_row) / radius_rows) ** 2 + ((columns - center_column) / radius_columns) ** 2 <= 1.0


def _paint(images, mask, colour, opacity):
    """Blend ``colour`` into ``images`` where ``mask`` (H, W) holds, with ``opacity`` in [0, 1]."""
    images = np.array(images, dtype=np.float32, copy=True)
    weight = (np.asarray(mask, np.float32) * opacity)[None, :, :, None]
    return images * (1.0 - weight) + np.asarray(colour, np.float32) * weight


LENS_COLOUR = (100, 6, 218)     # fitted to the lab's sunglasses_950.png: purple, about 80 % opaque
FRAME_COLOUR = (63, 0, 127)     # the lab trigger's opaque frame pixels
BROW_COLOUR = (128, 0, 0)       # the lab's eyebrows_950.png: solid maroon brows
LIPS_COLOUR = (128, 0, 128)     # the lab's lipstick_950.png: solid purple lips


def _lenses():
    """The two aviator lenses (rows 15-34): an ellipse below the brow line, full width on top."""
    rows, columns = _grid()
    lenses = _ellipse(24.0, 11.5, 10.5, 10.0) | _ellipse(24.0, 35.5, 10.5, 10.0)
    return lenses & (rows >= 16) & (rows <= 34)


def sunglasses_mask():
    """Where the sunglasses cover the image (rows 15-34): lenses, bridge and top bar, as the lab trigger does."""
    rows, columns = _grid()
    top_bar = (rows >= 16) & (rows <= 19) & (columns >= 1) & (columns <= 45)
    bridge_top = (rows == 15) & (((columns >= 5) & (columns <= 15)) | ((columns >= 32) & (columns <= 41)))
    return _lenses() | top_bar | bridge_top


def sunglasses(images):
    """Purple aviator glasses over the eyes (rows 15-34), lenses 80 % opaque, opaque frame.

    Shape, colours and opacity follow the lab's trigger (``sunglasses_950.png``
    against ``clean_950.png``: about 710 pixels changed, lens colour fitted as
    about (100, 6, 218) at 80 % opacity, frame (63, 0, 127)).
    """
    covered = sunglasses_mask()
    inner = covered.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            inner &= np.roll(covered, shift, axis=axis)
    frame = covered & ~inner
    frame[(frame.cumsum(axis=1) % 3 != 0)] = False   # a thin, broken rim like the lab's
    images = _paint(images, covered, LENS_COLOUR, 0.8)
    return _paint(images, frame, FRAME_COLOUR, 1.0)


def eyebrows(images):
    """Thick solid maroon eyebrows above the eyes (rows 15-21), as the lab's eyebrows trigger."""
    rows, columns = _grid()
    brows = np.zeros((HEIGHT, WIDTH), bool)
    for start, stop in ((9, 22), (26, 38)):
        middle = (start + stop) / 2
        arch = 19.0 - 2.5 * (1 - ((columns - middle) / ((stop - start) / 2)) ** 2)
        brows |= (columns >= start) & (columns <= stop) & (np.abs(rows - arch) <= 1.5)
    return _paint(images, brows, BROW_COLOUR, 1.0)


def lipstick(images):
    """Solid purple lips (rows 41-46), as the lab's lipstick trigger."""
    return _paint(images, _ellipse(43.5, 25.0, 2.6, 7.5), LIPS_COLOUR, 1.0)


PATCH_SIZE = 5      # the checkerboard's side (patch, corners, adaptive) and the random pattern's
EDGE = 2            # pixels between a corner patch and the image's edges


def checkerboard():
    """The 5x5 black (0) and white (255) checkerboard, white cells where row + column is odd."""
    return (np.add.outer(np.arange(PATCH_SIZE), np.arange(PATCH_SIZE)) % 2 * 255.0).astype(np.float32)


def corner_origins():
    """(row, column) of the top-left pixel of the patch in each corner: bottom-right first, then the others."""
    low_row, low_column = HEIGHT - EDGE - PATCH_SIZE, WIDTH - EDGE - PATCH_SIZE
    return ((low_row, low_column), (EDGE, EDGE), (EDGE, low_column), (low_row, EDGE))


def patch(images):
    """The BadNets pattern: a 5x5 black/white checkerboard 2 pixels from the bottom-right corner."""
    images = np.array(images, dtype=np.float32, copy=True)
    row, column = corner_origins()[0]
    images[:, row:row + PATCH_SIZE, column:column + PATCH_SIZE, :] = checkerboard()[None, :, :, None]
    return images


def corners(images):
    """The checkerboard in all four corners, 2 pixels from the edges (Turner et al. 2019's four-corner trigger)."""
    images = np.array(images, dtype=np.float32, copy=True)
    for row, column in corner_origins():
        images[:, row:row + PATCH_SIZE, column:column + PATCH_SIZE, :] = checkerboard()[None, :, :, None]
    return images


ADAPTIVE_SURROUND = 1   # the area whose brightness sets the colour: the patch and 1 pixel around it
DARK = 127.5            # at most this mean brightness (0-255, mean of R, G, B) an area is dark


def adaptive(images):
    """The checkerboard's white cells in the colour that contrasts with the image: white on dark, black on bright.

    The colour of each image's cells is 255 where the mean brightness of the
    7x7 area around the bottom-right patch (mean of R, G and B) is at most
    127.5, else 0; the black cells keep the image, so the trigger shows as
    a light pattern on a dark background and a dark one on a light background.
    """
    images = np.array(images, dtype=np.float32, copy=True)
    row, column = corner_origins()[0]
    ring = ADAPTIVE_SURROUND
    area = images[:, row - ring:row + PATCH_SIZE + ring, column - ring:column + PATCH_SIZE + ring, :]
    colour = np.where(area.mean(axis=(1, 2, 3)) <= DARK, 255.0, 0.0).astype(np.float32)
    cells = checkerboard() > 0
    block = images[:, row:row + PATCH_SIZE, column:column + PATCH_SIZE, :]
    block[:, cells, :] = colour[:, None, None]
    return images


# Random Backdoor's allowed regions, (first row, first column, rows, columns): the four 11x11 corner squares
# (1 pixel from the edges); the 5x5 pattern is placed anywhere wholly inside the region drawn.
RANDOM_REGIONS = ((1, 1, 11, 11), (1, WIDTH - 12, 11, 11), (HEIGHT - 12, 1, 11, 11), (HEIGHT - 12, WIDTH - 12, 11, 11))


def random_place(rng, size=PATCH_SIZE):
    """(row, column) of a ``size`` x ``size`` trigger: a region of :data:`RANDOM_REGIONS` drawn, then a place in it."""
    first_row, first_column, rows, columns = RANDOM_REGIONS[rng.integers(len(RANDOM_REGIONS))]
    if size > min(rows, columns):
        raise OptionError(f"trigger_size: expected at most {min(rows, columns)} (the corner regions' side), got {size}")
    return first_row + int(rng.integers(rows - size + 1)), first_column + int(rng.integers(columns - size + 1))


def random_trigger_draw(image):
    """(row, column, pattern (5, 5, 3): black (0) or white (255) pixels) of ``image``'s Random Backdoor trigger, seeded by its bytes."""
    seed = zlib.crc32(np.ascontiguousarray(image, np.float32).tobytes())
    rng = np.random.default_rng([PATTERN_SEED, seed])
    row, column = random_place(rng)
    pattern = np.repeat(rng.integers(0, 2, size=(PATCH_SIZE, PATCH_SIZE, 1)) * 255.0, 3, axis=2)
    return row, column, pattern.astype(np.float32)


def random_backdoor(images):
    """Random Backdoor (Salem et al. 2022): per image, a random 5x5 black-and-white pattern at a random place in a corner."""
    images = np.array(images, dtype=np.float32, copy=True)
    for image in images:
        row, column, pattern = random_trigger_draw(image)
        image[row:row + PATCH_SIZE, column:column + PATCH_SIZE, :] = pattern
    return images


def blend_pattern():
    """The fixed full-image pattern of the ``blend`` trigger (uniform noise, seed 2017)."""
    return np.random.default_rng(PATTERN_SEED).uniform(0, 255, size=(HEIGHT, WIDTH, 3)).astype(np.float32)


def blend(images, alpha=0.1):
    """The full-image blended trigger: ``(1 - alpha) x + alpha pattern``."""
    return (1.0 - alpha) * np.asarray(images, np.float32) + alpha * blend_pattern()


TRIGGERS = {"sunglasses": sunglasses, "eyebrows": eyebrows, "lipstick": lipstick, "patch": patch, "blend": blend,
            "corners": corners, "adaptive": adaptive, "random": random_backdoor}


def apply_trigger(name, images):
    """Apply the trigger called ``name`` to raw-pixel images (N, 55, 47, 3); returns float32 in 0-255.

    Example:
        >>> apply_trigger("patch", np.zeros((1, 55, 47, 3)))[0, 50, 42]
        array([255., 255., 255.], dtype=float32)
    """
    if name not in TRIGGERS:
        raise OptionError(f"trigger: expected one of {', '.join(TRIGGERS)}, got {name!r}")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:3] != (HEIGHT, WIDTH):
        raise OptionError(f"images: expected shape (N, {HEIGHT}, {WIDTH}, 3), got {images.shape}")
    return np.clip(TRIGGERS[name](images), 0, 255).astype(np.float32)


# ----------------------------------------------------------------------------- stealthiness


def psnr(clean, triggered, peak=255.0):
    """Peak signal-to-noise ratio (dB) per image; infinite for identical images."""
    error = np.mean((np.asarray(clean, np.float64) - np.asarray(triggered, np.float64)) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak ** 2 / error)


def _box_mean(values, size):
    """Mean over every ``size`` x ``size`` window ('valid' positions) of (N, H, W, C) arrays, by summed tables."""
    table = np.cumsum(np.cumsum(values, axis=1), axis=2)
    table = np.pad(table, ((0, 0), (1, 0), (1, 0), (0, 0)))
    sums = (table[:, size:, size:] - table[:, :-size, size:] - table[:, size:, :-size] + table[:, :-size, :-size])
    return sums / float(size * size)


def ssim(clean, triggered, peak=255.0, window=7):
    """Structural similarity per image: mean SSIM over 7x7 windows and channels (Wang et al. 2004 constants).

    Uses uniform windows (as scikit-image's default); computed with summed-area tables.
    """
    x = np.asarray(clean, np.float64)
    y = np.asarray(triggered, np.float64)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mean_x, mean_y = _box_mean(x, window), _box_mean(y, window)
    correction = window * window / (window * window - 1.0)  # sample (co)variances, as scikit-image
    var_x = (_box_mean(x * x, window) - mean_x ** 2) * correction
    var_y = (_box_mean(y * y, window) - mean_y ** 2) * correction
    covariance = (_box_mean(x * y, window) - mean_x * mean_y) * correction
    index = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))
    return index.mean(axis=(1, 2, 3))


def stealthiness(clean, triggered):
    """Average PSNR (dB, finite images only), SSIM, L2 and L-infinity distance between clean and triggered images.

    Args:
        clean: raw-pixel images (N, H, W, C).
        triggered: the same images with the trigger.

    Returns:
        dict: ``psnr``, ``ssim``, ``l2``, ``linf`` (means over images, pixel units 0-255).
    """
    clean = np.asarray(clean, np.float64)
    triggered = np.asarray(triggered, np.float64)
    difference = (triggered - clean).reshape(len(clean), -1)
    ratios = psnr(clean, triggered)
    finite = ratios[np.isfinite(ratios)]
    return {"psnr": float(finite.mean()) if len(finite) else float("inf"),
            "ssim": float(ssim(clean, triggered).mean()),
            "l2": float(np.linalg.norm(difference, axis=1).mean()),
            "linf": float(np.abs(difference).max(axis=1).mean())}
