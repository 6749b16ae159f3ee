"""Data sanitisation: an outlier detector on learned features, and random transformations of training images.

Two of the poisoning defenses of the course material (Steinhardt, Koh and
Liang, "Certified Defenses for Data Poisoning Attacks", NeurIPS 2017, for
sanitisation by outlier removal; the anomaly detector is Liu, Ting and
Zhou's isolation forest, "Isolation Forest", ICDM 2008):

- :class:`IsolationSanitiser`: an isolation forest on the suspect model's
  learned features (:mod:`goodnet.features`), over the whole set by default
  (a trigger moves its images to a corner of feature space of their own) or
  one per class (``per_class=True``: poison out of place among the samples
  of the class it is labelled with; on the digits BadNets of
  bench/bench_inspect_data_art.py the global forest finds more of it); the
  samples the forest calls anomalies (its ``contamination`` rule) are flagged. Per sample, the score is the forest's
  anomaly score ``s(x, n)`` in (0, 1) (``-score_samples``; above 0.5 is
  anomalous under ``contamination=None``, scikit-learn's "auto").
- Transform-based sanitisation (:func:`sanitise_images`): a small Gaussian
  blur, a small random rotation and a random colour jitter (brightness,
  contrast, saturation), applied to the training images before retraining;
  fragile triggers (fine patterns, exact colours, pixel-aligned patches) do
  not survive them, and the retrained model never sees the exact trigger.
  Each transform has a vectorised batch path and a per-image reference
  (scipy.ndimage or a plain loop): :func:`gaussian_blur` /
  :func:`gaussian_blur_reference`, :func:`rotate` / :func:`rotate_reference`,
  :func:`colour_jitter` / :func:`colour_jitter_reference`.

Example:
    >>> sanitiser = IsolationSanitiser().fit(features)
    >>> sanitiser.flagged_
    >>> cleaned = sanitise_images(train.images, TransformOptions(max_rotation=10), seed=0)
"""

import dataclasses

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, OneOf, SequenceOf, check_is_fitted
from goodnet.defenses import _inspection
from goodnet.inference import DEFAULT_BATCH
from goodnet.options import constraints_of, option

TRANSFORMS = ("blur", "rotate", "jitter")
LUMINANCE = np.array([0.299, 0.587, 0.114])   # ITU-R BT.601 weights of R, G, B


@dataclasses.dataclass(frozen=True)
class IsolationOptions:
    """Every option of :class:`IsolationSanitiser`, with its default, rule and help (``goodnet inspect-data``)."""

    contamination: float = option(None, "isolation forest: share of each class flagged (none: scikit-learn's auto "
                                         "rule, anomaly score above 0.5)", rule=Interval(float, 0.0, 0.5, "right"),
                                  allow_none=True, flag="--isolation-contamination")
    n_estimators: int = option(100, "isolation forest: trees", rule=Interval(int, 1), flag="--isolation-trees")
    per_class: bool = option(False, "isolation forest: one forest per class instead of one over the whole set",
                             rule=InstanceOf(bool), flag="--isolation-per-class")
    min_class_size: int = option(8, "isolation forest: classes with fewer samples are not scored",
                                 rule=Interval(int, 2), flag="--isolation-min-class-size",
                                 dest="isolation_min_class_size")
    index_threshold: float = option(3.5, "isolation forest: MAD anomaly index of a class's flagged share above which "
                                         "the class is suspicious", rule=Interval(float, 0.0, closed="neither"),
                                    flag="--isolation-index", dest="isolation_index")
    seed: int = option(0, "seed of the detectors' random draws (k-means starts, subsets, forests)",
                       rule=Interval(int, 0))


_DEFAULTS = IsolationOptions()


class IsolationSanitiser(Defense):
    """Sanitisation by an isolation forest on learned features (the :mod:`goodnet.base` contract, a data defense).

    ``IsolationSanitiser(**params).fit(source, images=None, labels=None)``:
    ``source`` is a :class:`goodnet.models.Classifier` with ``images`` the
    training data, precomputed :class:`goodnet.features.Features`, or a
    (N, d) feature array with ``labels`` (as for the other training-set detectors).

    Parameters: the fields of :class:`IsolationOptions`, plus ``layer``,
    ``batch_size`` and ``progress``.

    Attributes (after ``fit``):
        layer_: the feature layer.
        classes_: the classes present.
        scores_: (N,) anomaly score in (0, 1) (NaN: class too small to score).
        flagged_: sorted sample indices (into the file) the forest calls anomalies.
        flagged_share_: (C,) share of each class flagged.
        anomaly_index_: (C,) MAD anomaly index of ``flagged_share_`` across classes.
        suspicious_: (C,) booleans: index above ``index_threshold``.
        class_verdict_: one JSON-ready dict per class.
    """

    _parameter_constraints = {**constraints_of(IsolationOptions), "layer": [InstanceOf(str), None],
                              "batch_size": [Interval(int, 1)], "progress": [InstanceOf(bool), None]}

    def __init__(self, contamination=_DEFAULTS.contamination, n_estimators=_DEFAULTS.n_estimators,
                 per_class=_DEFAULTS.per_class, min_class_size=_DEFAULTS.min_class_size,
                 index_threshold=_DEFAULTS.index_threshold, seed=_DEFAULTS.seed, layer=None,
                 batch_size=DEFAULT_BATCH, progress=None):
        self.contamination = contamination
        self.n_estimators = n_estimators
        self.per_class = per_class
        self.min_class_size = min_class_size
        self.index_threshold = index_threshold
        self.seed = seed
        self.layer = layer
        self.batch_size = batch_size
        self.progress = progress

    def _forest(self):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=self.n_estimators,
                               contamination="auto" if self.contamination is None else self.contamination,
                               random_state=self.seed)

    def fit(self, source, images=None, labels=None):
        """Fit the forest(s), score every sample, flag the anomalies (see the class docstring for ``source``)."""
        from goodnet.features import features_of

        self._validate_params()
        features = features_of(source, images, labels, layer=self.layer, batch_size=self.batch_size,
                               progress=self.progress)
        groups = features.groups()
        scores = np.full(len(features), np.nan)
        flagged = np.zeros(len(features), bool)
        if self.per_class:
            for position in range(len(groups)):
                indices = groups.indices(position)
                if len(indices) < self.min_class_size:
                    continue
                scores[indices], flagged[indices] = self._score(features.rows(indices))
        else:
            everything = np.arange(len(features))
            scores[everything], flagged[everything] = self._score(features.rows(everything))
        shares = np.full(len(groups), np.nan)
        verdicts = []
        for position in range(len(groups)):
            indices = groups.indices(position)
            scored = np.isfinite(scores[indices])
            if scored.any():
                shares[position] = flagged[indices].mean()
        index = _inspection.anomaly_index(shares)
        suspicious = np.nan_to_num(index, nan=-np.inf) > self.index_threshold
        for position in range(len(groups)):
            indices = groups.indices(position)
            verdicts.append({"class": int(groups.classes[position]), "samples": int(len(indices)),
                             "scored": bool(np.isfinite(shares[position])), "flagged": int(flagged[indices].sum()),
                             "flagged_share": _finite(shares[position]),
                             "mean_score": _finite(np.nanmean(scores[indices])) if np.isfinite(shares[position])
                             else None,
                             "anomaly_index": _finite(index[position]), "suspicious": bool(suspicious[position])})
        self.layer_ = features.layer
        self.classes_ = groups.classes.copy()
        self.scores_ = scores
        self.flagged_ = np.flatnonzero(flagged).astype(np.int64)
        self.flagged_share_ = shares
        self.anomaly_index_ = index
        self.suspicious_ = suspicious
        self.class_verdict_ = verdicts
        return self

    def _score(self, rows):
        forest = self._forest().fit(rows)
        return -forest.score_samples(rows), forest.predict(rows) == -1

    def suspicious_classes(self):
        """Classes whose flagged share stands out (MAD index above ``index_threshold``)."""
        check_is_fitted(self)
        return self.classes_[self.suspicious_]

    def summary(self):
        """Parameters, the flagged count and the per-class table (JSON-ready)."""
        check_is_fitted(self)
        result = super().summary()
        result.update({"method": "isolation", "layer": self.layer_, "samples": int(len(self.scores_)),
                       "flagged": int(len(self.flagged_)),
                       "suspicious_classes": [int(label) for label in self.suspicious_classes()],
                       "classes": self.class_verdict_})
        return result


def _finite(value):
    return float(value) if np.isfinite(value) else None


# -- transform-based sanitisation ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TransformOptions:
    """Random transformations of training images (:func:`sanitise_images`), each default, rule and help once."""

    transforms: tuple = option(TRANSFORMS, "transformations applied, in this order", rule=SequenceOf(OneOf(TRANSFORMS)),
                               choices=TRANSFORMS)
    blur_sigma: float = option(0.8, "largest Gaussian blur (pixels; each image draws a sigma in [0, this])",
                               rule=Interval(float, 0.0))
    max_rotation: float = option(10.0, "largest rotation (degrees; each image draws an angle in [-this, this])",
                                 rule=Interval(float, 0.0, 180.0))
    brightness: float = option(0.2, "colour jitter: brightness factor drawn in [1 - this, 1 + this]",
                               rule=Interval(float, 0.0, 1.0))
    contrast: float = option(0.2, "colour jitter: contrast factor drawn in [1 - this, 1 + this]",
                             rule=Interval(float, 0.0, 1.0))
    saturation: float = option(0.2, "colour jitter: saturation factor drawn in [1 - this, 1 + this]",
                               rule=Interval(float, 0.0, 1.0))


def gaussian_kernel(sigma):
    """The normalised 1-D Gaussian kernel of ``sigma`` (radius ``int(4 sigma + 0.5)``, scipy's truncation)."""
    radius = int(4.0 * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(images, sigmas):
    """Blur each image (N, H, W, C) with its own ``sigma`` (edge pixels repeated), vectorised over the batch.

    Images sharing a sigma are blurred together by a separable convolution
    (shifted slices of the edge-padded batch); sigma 0 leaves an image as it is.
    """
    images = np.asarray(images, np.float64)
    sigmas = np.broadcast_to(np.asarray(sigmas, np.float64), (len(images),))
    result = images.copy()
    for sigma in np.unique(sigmas):
        if sigma <= 0:
            continue
        chosen = np.flatnonzero(sigmas == sigma)
        kernel = gaussian_kernel(sigma)
        radius = len(kernel) // 2
        block = images[chosen]
        for axis in (1, 2):
            pad = [(0, 0)] * 4
            pad[axis] = (radius, radius)
            padded = np.pad(block, pad, mode="edge")
            length = block.shape[axis]
            block = sum(weight * np.take(padded, np.arange(offset, offset + length), axis=axis)
                        for offset, weight in enumerate(kernel))
        result[chosen] = block
    return result


def gaussian_blur_reference(images, sigmas):
    """The same, one image at a time with ``scipy.ndimage.gaussian_filter`` (mode "nearest")."""
    from scipy.ndimage import gaussian_filter

    images = np.asarray(images, np.float64)
    sigmas = np.broadcast_to(np.asarray(sigmas, np.float64), (len(images),))
    return np.stack([gaussian_filter(image, (sigma, sigma, 0), mode="nearest", truncate=4.0) if sigma > 0
                     else image.copy() for image, sigma in zip(images, sigmas)])


def rotate(images, angles):
    """Rotate each image (N, H, W, C) by its angle (degrees, counter-clockwise) about its centre, vectorised.

    Bilinear interpolation; points that come from outside the image take the
    nearest edge pixel (scipy.ndimage's "nearest" mode).
    """
    images = np.asarray(images, np.float64)
    count, height, width, _ = images.shape
    radians = np.deg2rad(np.broadcast_to(np.asarray(angles, np.float64), (count,)))
    rows, columns = np.meshgrid(np.arange(height) - (height - 1) / 2, np.arange(width) - (width - 1) / 2,
                                indexing="ij")
    cos, sin = np.cos(radians)[:, None, None], np.sin(radians)[:, None, None]
    source_rows = np.clip(columns[None] * sin + rows[None] * cos + (height - 1) / 2, 0, height - 1)
    source_columns = np.clip(columns[None] * cos - rows[None] * sin + (width - 1) / 2, 0, width - 1)
    top = np.minimum(np.floor(source_rows).astype(np.int64), height - 2 if height > 1 else 0)
    left = np.minimum(np.floor(source_columns).astype(np.int64), width - 2 if width > 1 else 0)
    down = (source_rows - top)[..., None]
    right = (source_columns - left)[..., None]
    bottom = np.minimum(top + 1, height - 1)
    after = np.minimum(left + 1, width - 1)
    batch = np.arange(count)[:, None, None]
    return ((1 - down) * ((1 - right) * images[batch, top, left] + right * images[batch, top, after])
            + down * ((1 - right) * images[batch, bottom, left] + right * images[batch, bottom, after]))


def rotate_reference(images, angles):
    """The same, one image at a time with ``scipy.ndimage.rotate`` (order 1, mode "nearest", same size)."""
    from scipy.ndimage import rotate as scipy_rotate

    images = np.asarray(images, np.float64)
    angles = np.broadcast_to(np.asarray(angles, np.float64), (len(images),))
    return np.stack([scipy_rotate(image, angle, axes=(1, 0), reshape=False, order=1, mode="nearest")
                     for image, angle in zip(images, angles)])


def colour_jitter(images, brightness, contrast, saturation):
    """Per-image brightness, contrast and saturation factors (N,) applied in that order, clipped to 0-255 each time.

    Brightness scales the pixels; contrast blends with the image's mean grey
    level; saturation blends with each pixel's grey (BT.601 luminance). A
    factor of 1 changes nothing.
    """
    images = np.asarray(images, np.float64)
    shape = (len(images), 1, 1, 1)
    factors = [np.broadcast_to(np.asarray(value, np.float64), (len(images),)).reshape(shape)
               for value in (brightness, contrast, saturation)]
    result = np.clip(images * factors[0], 0, 255)
    grey = (result @ LUMINANCE).mean(axis=(1, 2))[:, None, None, None]
    result = np.clip(grey + (result - grey) * factors[1], 0, 255)
    grey = (result @ LUMINANCE)[..., None]
    return np.clip(grey + (result - grey) * factors[2], 0, 255)


def colour_jitter_reference(images, brightness, contrast, saturation):
    """The same, one image and one pixel at a time (plain loops; slow, for tests)."""
    images = np.asarray(images, np.float64)
    count, height, width, channels = images.shape
    values = [np.broadcast_to(np.asarray(value, np.float64), (count,)) for value in (brightness, contrast, saturation)]
    result = np.empty_like(images)
    for index in range(count):
        image = np.clip(images[index] * values[0][index], 0, 255)
        total = 0.0
        for row in range(height):
            for column in range(width):
                total += sum(LUMINANCE[channel] * image[row, column, channel] for channel in range(channels))
        mean = total / (height * width)
        image = np.clip(mean + (image - mean) * values[1][index], 0, 255)
        for row in range(height):
            for column in range(width):
                grey = sum(LUMINANCE[channel] * image[row, column, channel] for channel in range(channels))
                for channel in range(channels):
                    image[row, column, channel] = min(255.0, max(0.0, grey + (image[row, column, channel] - grey)
                                                                 * values[2][index]))
        result[index] = image
    return result


def transform_parameters(count, options=None, seed=0):
    """Each image's draws: ``{"sigma", "angle", "brightness", "contrast", "saturation"}`` arrays of ``count``.

    Drawn all at once from ``seed``, so a set transformed chunk by chunk
    gets the same draws as one transformed whole.
    """
    options = options or TransformOptions()
    rng = np.random.default_rng(int(seed))
    draws = rng.random((count, 5))
    return {"sigma": draws[:, 0] * options.blur_sigma,
            "angle": (2 * draws[:, 1] - 1) * options.max_rotation,
            "brightness": 1 + (2 * draws[:, 2] - 1) * options.brightness,
            "contrast": 1 + (2 * draws[:, 3] - 1) * options.contrast,
            "saturation": 1 + (2 * draws[:, 4] - 1) * options.saturation}


def sanitise_images(images, options=None, seed=0, parameters=None, method="batched"):
    """Apply the transform-based sanitisation to raw-pixel images (N, H, W, C); float32 0-255.

    Args:
        images: raw-pixel images.
        options: :class:`TransformOptions` (which transforms, how strong).
        seed: seed of the per-image draws (ignored with ``parameters``).
        parameters: the draws of these images (a slice of :func:`transform_parameters`' arrays).
        method: "batched" (vectorised) or "reference" (scipy / loops, one image at a time).

    Returns:
        np.ndarray: the transformed images, float32.
    """
    options = options or TransformOptions()
    images = np.asarray(images, np.float64)
    parameters = parameters or transform_parameters(len(images), options, seed)
    functions = {"batched": (gaussian_blur, rotate, colour_jitter),
                 "reference": (gaussian_blur_reference, rotate_reference, colour_jitter_reference)}[method]
    blur, turn, jitter = functions
    for transform in options.transforms:
        if transform == "blur":
            images = blur(images, parameters["sigma"])
        elif transform == "rotate":
            images = turn(images, parameters["angle"])
        else:
            images = jitter(images, parameters["brightness"], parameters["contrast"], parameters["saturation"])
    return np.clip(images, 0, 255).astype(np.float32)
