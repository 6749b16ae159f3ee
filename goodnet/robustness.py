"""Trigger robustness: how much of a backdoor survives everyday image transformations.

A trigger that works on the attacker's exact pixels may not survive a camera,
a resize or a JPEG re-encoding. :func:`measure_robustness` applies five
transformations to the poisoned images (and, if given, to clean images) at a
ladder of strengths and measures, under each, the attack success rate
(ASR: the share of the poisoned images answered the target class) and the
clean accuracy:

- ``blur``: Gaussian blur, strength = sigma in pixels (each channel; the
  kernel and the mirrored border of :func:`scipy.ndimage.gaussian_filter`,
  truncated at 4 sigma);
- ``rotation``: rotation about the image centre, strength = degrees
  counter-clockwise as displayed; bilinear, the border pixels extended
  (:func:`scipy.ndimage.rotate` with ``order=1, mode="nearest"``);
- ``brightness``: strength s, a share of full scale: ``pixels x (1 + s)``
  (``brightness_mode="multiply"``) or ``pixels + 255 s`` (``"add"``);
- ``jpeg``: JPEG compression at a quality (1-100; Pillow's encoder, by
  default without chroma subsampling, so the quality is the only loss;
  ``jpeg_subsampling="4:2:0"`` for libjpeg's default); strength = the quality;
- ``noise``: additive Gaussian noise, strength = its standard deviation in
  pixels (deterministic for ``seed``, whatever the chunking).

Every result is clipped to 0-255 and kept as float32 (only JPEG rounds to
whole pixels). Strength 0 of blur, rotation, brightness and noise is the
identity; the untransformed images are also measured once (the baseline).
JPEG has no identity strength: quality 100 is close to it (tested within a
tolerance), not equal.

Robustness score. For a poisoned file and a transform with strengths
s_1 < ... < s_K, its *survival* is the ASR averaged over the strength range
(the area under the ASR-against-strength curve by the trapezoid rule, divided
by s_K - s_1; for a single strength, the ASR there), as a share of the
untransformed ASR. The file's *robustness score* is the mean survival over
the transforms: 1 means the attack is untouched throughout the ladders, 0
that no poisoned image reaches the target under any transformed strength.
It can exceed 1 where a transform sends more images to the target than the
trigger alone; the clean images' *target rate* (clean images not of the
target class answered the target, under the same transform) shows when the
transform itself does that. The score depends on the ladders: compare
scores measured with the same options. It is None when the untransformed
ASR is 0.

Inference is the package's (:meth:`goodnet.models.Classifier.predict`, so a
classifier's :class:`goodnet.inference.Execution` applies); files are read
chunk by chunk (:class:`goodnet.data.LabFile`), so memory stays bounded.

Example:
    >>> with LabFile("bd_test.h5") as poisoned, LabFile("test.h5") as clean:
    ...     result = measure_robustness(badnet, [poisoned], target=0, clean=clean)
    >>> result["poisoned"][0]["robustness_score"]
    >>> write_outputs(result, "out/robustness")
"""

import dataclasses
import io
import json
import logging
import math
import os
import time

import numpy as np

from goodnet.base import Interval, OneOf, SequenceOf
from goodnet.data import DEFAULT_CHUNK
from goodnet.errors import DataError, OptionError, plain
from goodnet.files import write_text
from goodnet.inference import DEFAULT_BATCH, progress_bar
from goodnet.options import option, validate_options

logger = logging.getLogger(__name__)

TRANSFORMS = ("blur", "rotation", "brightness", "jpeg", "noise")
BRIGHTNESS_MODES = ("multiply", "add")
JPEG_SUBSAMPLING = ("4:4:4", "4:2:0")
IDENTITY = {"blur": 0.0, "rotation": 0.0, "brightness": 0.0, "noise": 0.0}   # jpeg has none
PARAMETERS = {"blur": "sigma (pixels)", "rotation": "degrees", "brightness": "brightness change (share of 255)",
              "jpeg": "JPEG quality", "noise": "noise std (pixels)"}
BLUR_TRUNCATE = 4.0          # the kernel reaches 4 sigma each side (scipy's default)
OUTPUT_NAMES = ("robustness.json", "robustness.md", "robustness.csv", "robustness.png")


@dataclasses.dataclass(frozen=True)
class RobustnessOptions:
    """Which transformations, at which strengths (``goodnet robustness``'s flags): every default once."""

    transforms: tuple = option(TRANSFORMS, "transformations applied", rule=SequenceOf(OneOf(TRANSFORMS)),
                               choices=TRANSFORMS)
    blur: tuple = option((0.0, 0.5, 1.0, 1.5, 2.0, 3.0), "Gaussian blur strengths: sigma in pixels",
                         rule=SequenceOf(Interval(float, 0.0, 20.0)), metavar="SIGMA")
    rotation: tuple = option((0.0, 5.0, 10.0, 15.0, 20.0, 30.0),
                             "rotation strengths: degrees counter-clockwise about the centre (bilinear, border "
                             "pixels extended)", rule=SequenceOf(Interval(float, -180.0, 180.0)), metavar="DEGREES")
    brightness: tuple = option((-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6),
                               "brightness strengths s, a share of full scale (multiply: pixels x (1 + s); add: "
                               "pixels + 255 s; clipped to 0-255)", rule=SequenceOf(Interval(float, -1.0, 1.0)),
                               metavar="S")
    brightness_mode: str = option("multiply", "how brightness changes: multiply or add",
                                  rule=OneOf(BRIGHTNESS_MODES))
    jpeg: tuple = option((100, 90, 75, 50, 30, 10), "JPEG qualities (1-100, lower compresses more)",
                         rule=SequenceOf(Interval(int, 1, 100)), metavar="QUALITY")
    jpeg_subsampling: str = option("4:4:4", "JPEG chroma subsampling: 4:4:4 (none: the quality is the only loss) "
                                            "or 4:2:0 (libjpeg's default, most cameras' and web images')",
                                   rule=OneOf(JPEG_SUBSAMPLING))
    noise: tuple = option((0.0, 4.0, 8.0, 16.0, 24.0, 32.0),
                          "additive Gaussian noise strengths: standard deviation in pixels (0-255 scale)",
                          rule=SequenceOf(Interval(float, 0.0, 255.0)), metavar="STD")
    seed: int = option(0, "seed of the noise", rule=Interval(int, 0))

    def ladder(self, name):
        """The strengths of transform ``name``, as floats (JPEG: the qualities, as ints)."""
        values = getattr(self, name)
        return [int(value) for value in values] if name == "jpeg" else [float(value) for value in values]

    def check(self, flags=False):
        """Validate every field, and that no transform is listed or no ladder holds a strength twice; return self.

        Args:
            flags: name the command-line flags (``--blur``) in errors instead of the fields.
        """
        validate_options(self)

        def name(field):
            return "--" + field.replace("_", "-") if flags else field

        if len(set(self.transforms)) != len(self.transforms):
            raise OptionError(f"{name('transforms')}: expected each transformation once, got "
                              f"{' '.join(self.transforms)}")
        for transform in self.transforms:
            ladder = self.ladder(transform)
            repeated = sorted({value for value in ladder if ladder.count(value) > 1})
            if repeated:
                raise OptionError(f"{name(transform)}: expected distinct strengths, got {plain(repeated[0])} "
                                  "more than once")
        return self


# ----------------------------------------------------------------------------- the transformations


def _clip(images):
    return np.clip(images, 0.0, 255.0, out=images)


def gaussian_kernel(sigma, truncate=BLUR_TRUNCATE):
    """The normalised 1-D Gaussian kernel scipy's ``gaussian_filter`` uses (radius ``int(truncate sigma + 0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return weights / weights.sum()


def _correlate_axis(images, weights, axis):
    """Correlate ``images`` with ``weights`` along ``axis``, border mirrored (``d c b a | a b c d | d c b a``)."""
    radius = len(weights) // 2
    if radius == 0:
        return images
    pad = [(0, 0)] * images.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(images, pad, mode="symmetric")
    size = images.shape[axis]
    out = np.zeros_like(images)
    for tap, weight in enumerate(weights):
        out += np.float32(weight) * np.take(padded, np.arange(tap, tap + size), axis=axis)
    return out


def gaussian_blur(images, sigma):
    """Gaussian blur of raw-pixel images (N, H, W, C), every image and channel at once (separable kernel).

    Sigma 0 returns a copy. Equals :func:`scipy.ndimage.gaussian_filter` (``mode="reflect"``,
    ``truncate=4``) image by image and channel by channel, in float32.
    """
    images = np.array(images, dtype=np.float32)
    if sigma == 0:
        return images
    weights = gaussian_kernel(sigma)
    return _clip(_correlate_axis(_correlate_axis(images, weights, 1), weights, 2))


def _rotation_taps(height, width, degrees):
    """The bilinear taps of a rotation: four (flat source index, weight) pairs per output pixel."""
    theta = math.radians(degrees)
    centre_row, centre_column = (height - 1) / 2.0, (width - 1) / 2.0
    rows, columns = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                                indexing="ij")
    # the source of each output pixel: the output position rotated back (rows grow downwards)
    d_row, d_column = rows - centre_row, columns - centre_column
    source_row = centre_row + math.cos(theta) * d_row + math.sin(theta) * d_column
    source_column = centre_column - math.sin(theta) * d_row + math.cos(theta) * d_column
    source_row = np.clip(source_row, 0.0, height - 1.0)          # border pixels extended
    source_column = np.clip(source_column, 0.0, width - 1.0)
    row0 = np.minimum(np.floor(source_row).astype(np.int64), height - 1)
    column0 = np.minimum(np.floor(source_column).astype(np.int64), width - 1)
    row1, column1 = np.minimum(row0 + 1, height - 1), np.minimum(column0 + 1, width - 1)
    fraction_row, fraction_column = source_row - row0, source_column - column0
    taps = [(row0, column0, (1 - fraction_row) * (1 - fraction_column)),
            (row0, column1, (1 - fraction_row) * fraction_column),
            (row1, column0, fraction_row * (1 - fraction_column)),
            (row1, column1, fraction_row * fraction_column)]
    return [((row * width + column).ravel(), weight.ravel().astype(np.float32)) for row, column, weight in taps]


def rotate(images, degrees):
    """Rotate raw-pixel images (N, H, W, C) by ``degrees`` counter-clockwise about the centre, all at once.

    Bilinear; a source position beyond the border takes the border pixel. The taps are computed once per
    angle and gathered for every image. 0 degrees returns a copy. Equals :func:`scipy.ndimage.rotate`
    (``axes=(1, 0), reshape=False, order=1, mode="nearest"``) per image.
    """
    images = np.array(images, dtype=np.float32)
    if degrees == 0:
        return images
    count, height, width, channels = images.shape
    flat = images.reshape(count, height * width, channels)
    out = np.zeros_like(flat)
    for index, weight in _rotation_taps(height, width, degrees):
        out += flat[:, index, :] * weight[None, :, None]
    return _clip(out.reshape(images.shape))


def change_brightness(images, strength, mode=RobustnessOptions.brightness_mode):
    """``pixels x (1 + strength)`` (multiply) or ``pixels + 255 strength`` (add), clipped to 0-255."""
    if mode not in BRIGHTNESS_MODES:
        raise OptionError(f"brightness_mode: expected one of {', '.join(BRIGHTNESS_MODES)}, got {mode!r}")
    images = np.array(images, dtype=np.float32)
    if strength == 0:
        return images
    if mode == "multiply":
        return _clip(images * np.float32(1.0 + strength))
    return _clip(images + np.float32(255.0 * strength))


def jpeg_compress(images, quality, subsampling=RobustnessOptions.jpeg_subsampling):
    """Encode each raw-pixel image as a JPEG at ``quality`` (Pillow) and decode it; float32 0-255.

    Pixels are rounded and clipped to whole 0-255 values first (what a JPEG holds). ``subsampling``:
    "4:4:4" (full-resolution colour) or "4:2:0" (colour at half resolution each way). The bytes equal
    TensorFlow's ``tf.io.encode_jpeg`` at the same quality and chroma downsampling (tested).
    """
    from PIL import Image

    if subsampling not in JPEG_SUBSAMPLING:
        raise OptionError(f"jpeg_subsampling: expected one of {', '.join(JPEG_SUBSAMPLING)}, got {subsampling!r}")

    images = np.asarray(images, dtype=np.float32)
    pixels = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    out = np.empty(images.shape, dtype=np.float32)
    for index, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality), subsampling=subsampling)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[index] = np.asarray(decoded.convert("RGB"), dtype=np.float32)
    return out


def noise_generator(seed, std):
    """The noise stream of strength ``std``: one Generator per (seed, strength), drawn in image order."""
    return np.random.default_rng([int(seed), int(round(float(std) * 1000))])


def add_noise(images, std, rng):
    """``images`` + Gaussian noise of standard deviation ``std`` pixels drawn from ``rng``, clipped to 0-255.

    Consecutive chunks drawn from the same ``rng`` get the noise one call on all their images would get
    (the stream does not depend on the chunking; tested). Std 0 returns a copy and draws nothing.
    """
    images = np.array(images, dtype=np.float32)
    if std == 0:
        return images
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    return _clip(images + np.float32(std) * noise)


def apply_transform(name, images, strength, options=None, rng=None):
    """Transform ``name`` at ``strength`` applied to raw-pixel images (N, 55, 47, 3); float32 0-255.

    Args:
        name: one of :data:`TRANSFORMS`.
        images: raw-pixel images.
        strength: the transform's strength (see the module docstring for its unit).
        options: :class:`RobustnessOptions` (brightness mode, noise seed).
        rng: the noise stream (default: :func:`noise_generator` of the options' seed), for ``noise``.
    """
    options = options or RobustnessOptions()
    if name == "blur":
        return gaussian_blur(images, strength)
    if name == "rotation":
        return rotate(images, strength)
    if name == "brightness":
        return change_brightness(images, strength, options.brightness_mode)
    if name == "jpeg":
        return jpeg_compress(images, strength, options.jpeg_subsampling)
    if name == "noise":
        return add_noise(images, strength, rng if rng is not None else noise_generator(options.seed, strength))
    raise OptionError(f"transform: expected one of {', '.join(TRANSFORMS)}, got {name!r}")


# ----------------------------------------------------------------------------- measurement


def check_target(target, num_classes, name="target"):
    """Raise OptionError unless ``target`` is a class of the model (0..num_classes-1); return it as int."""
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < num_classes:
        raise OptionError(f"{name}: expected a class in 0..{num_classes - 1} (the model's classes), "
                          f"got {plain(target)}")
    return int(target)


def check_poisoned_labels(source, target, name="target"):
    """Raise DataError when every image of a poisoned file is labelled one class other than ``target``.

    In the lab's layout a poisoned file is labelled with the attack's target; a file labelled throughout
    with another class most likely belongs to another target. Files with mixed labels (poisoned images
    kept with their true labels) are accepted.
    """
    labels = np.asarray(source.labels)
    if len(labels) and np.all(labels == labels[0]) and labels[0] != target:
        raise DataError(f"{source.path}: label: every image is labelled {plain(labels[0])} (the attack's target "
                        f"in the lab's layout), but the {name} is {target}; pass the file's target")


def _chunks(source, chunk):
    """(images, labels) blocks of at most ``chunk`` images from a LabFile (streamed) or a LabData."""
    if hasattr(source, "read_images"):
        for start in range(0, len(source), chunk):
            stop = min(start + chunk, len(source))
            yield source.read_images(start, stop), np.asarray(source.labels[start:stop])
    else:
        for start in range(0, len(source), chunk):
            yield (np.asarray(source.images[start:start + chunk], np.float32),
                   np.asarray(source.labels[start:start + chunk]))


def _evaluations(options):
    """The (transform, strength) pairs to predict: every ladder's strengths, except identities (the baseline's)."""
    return [(name, strength) for name in options.transforms for strength in options.ladder(name)
            if IDENTITY.get(name) != strength]


def _rates(classifier, source, target, options, batch_size, chunk_size, bar, clean=False):
    """``{(transform, strength): figures}`` over ``source`` (the baseline's key ``(None, None)``)."""
    keys = [(None, None)] + _evaluations(options)
    totals = {key: {"images": 0, "target": 0, "correct": 0, "others": 0, "others_to_target": 0} for key in keys}
    streams = {strength: noise_generator(options.seed, strength) for name, strength in keys if name == "noise"}
    if chunk_size is None:
        chunk_size = max(DEFAULT_CHUNK, batch_size * getattr(classifier.forward(), "replicas", 1))
    for images, labels in _chunks(source, chunk_size):
        others = labels != target
        for key in keys:
            name, strength = key
            transformed = images if name is None else apply_transform(name, images, strength, options,
                                                                      streams.get(strength))
            predicted = classifier.predict(transformed, batch_size, progress=False)
            hits = predicted == target
            total = totals[key]
            total["images"] += len(labels)
            total["target"] += int(hits.sum())
            total["correct"] += int((predicted == labels).sum())
            total["others"] += int(others.sum())
            total["others_to_target"] += int((hits & others).sum())
            bar.update(len(labels))
    figures = {}
    for key, total in totals.items():
        if clean:
            figures[key] = {"clean_accuracy": total["correct"] / total["images"],
                            "clean_to_target": (total["others_to_target"] / total["others"] if total["others"]
                                                else None)}
        else:
            figures[key] = {"attack_success_rate": total["target"] / total["images"]}
    return figures


def survival(strengths, rates, baseline):
    """The share of the attack that survives a transform: the ASR averaged over the strength range, / baseline.

    Args:
        strengths: the ladder (any order, distinct).
        rates: the ASR at each strength.
        baseline: the untransformed ASR.

    Returns:
        float or None: the trapezoid-rule mean of ``rates`` over ``[min, max]`` of ``strengths`` (one strength:
        its rate) divided by ``baseline``; None when ``baseline`` is 0.
    """
    if not baseline:
        return None
    order = np.argsort(np.asarray(strengths, dtype=np.float64))
    x = np.asarray(strengths, dtype=np.float64)[order]
    y = np.asarray(rates, dtype=np.float64)[order]
    if len(x) == 1:
        return float(y[0] / baseline)
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0]) / float(baseline)


def robustness_score(survivals):
    """The mean of a file's survivals over the transforms (None when any is None, i.e. the baseline ASR is 0)."""
    values = list(survivals)
    if not values or any(value is None for value in values):
        return None
    return float(np.mean(values))


SCORE_DEFINITION = ("the mean over the transforms of the survival, the ASR averaged over the transform's strength "
                    "range (trapezoid rule) as a share of the untransformed ASR")


def measure_robustness(classifier, poisoned, target, clean=None, options=None, batch_size=DEFAULT_BATCH,
                       progress=None, chunk_size=None):
    """ASR (and clean accuracy) of ``classifier`` under every transform of ``options`` at every strength.

    Args:
        classifier: a :class:`goodnet.models.Classifier` (the BadNet).
        poisoned: poisoned data sets: :class:`goodnet.data.LabFile` (streamed) or :class:`goodnet.data.LabData`.
        target: the attack's target class.
        clean: clean data (LabFile or LabData), or None: clean accuracy and target rate under each transform.
        options: :class:`RobustnessOptions`.
        batch_size: images per inference call.
        progress: show a progress bar (None: only for long work).
        chunk_size: images read and transformed at a time (default: 2048, or a batch per device if more);
            the result does not depend on it.

    Returns:
        dict: ``model``, ``scale``, ``num_classes``, ``target``, ``options``, ``score_definition``;
        ``poisoned``: per file ``file``, ``images``, ``attack_success_rate`` (untransformed),
        ``robustness_score``; ``clean``: None or ``file``, ``images``, ``clean_accuracy``,
        ``clean_to_target`` (untransformed); ``transforms``: per transform ``transform``, ``parameter``,
        ``strengths``, ``attack_success_rate`` (per file, per strength), ``clean_accuracy`` and
        ``clean_to_target`` (per strength, or None), ``survival`` (per file); ``seconds``.

    Raises:
        OptionError: bad options, or a target outside the model's classes.
        DataError: a data set with labels outside the model's classes, or a poisoned file labelled
            throughout with another class than ``target`` (see :func:`check_poisoned_labels`).
    """
    options = (options or RobustnessOptions()).check()
    target = check_target(target, classifier.num_classes)
    poisoned = list(poisoned)
    if not poisoned:
        raise OptionError("poisoned: expected at least one poisoned data set, got none")
    for source in poisoned + ([clean] if clean is not None else []):
        source.check_classes(classifier.num_classes)
    for source in poisoned:
        check_poisoned_labels(source, target)
    started = time.perf_counter()
    evaluations = 1 + len(_evaluations(options))
    total = evaluations * (sum(len(source) for source in poisoned) + (len(clean) if clean is not None else 0))
    with progress_bar(total, "robustness", progress) as bar:
        poisoned_figures = [_rates(classifier, source, target, options, batch_size, chunk_size, bar)
                            for source in poisoned]
        clean_figures = (None if clean is None else
                         _rates(classifier, clean, target, options, batch_size, chunk_size, bar, clean=True))
    baseline = (None, None)

    def figure(figures, name, strength, field):
        key = (name, strength) if IDENTITY.get(name) != strength else baseline
        return figures[key][field]

    transforms = []
    for name in options.transforms:
        ladder = options.ladder(name)
        rates = [[figure(figures, name, strength, "attack_success_rate") for strength in ladder]
                 for figures in poisoned_figures]
        entry = {"transform": name, "parameter": PARAMETERS[name], "strengths": ladder, "attack_success_rate": rates,
                 "clean_accuracy": None, "clean_to_target": None,
                 "survival": [survival(ladder, file_rates, figures[baseline]["attack_success_rate"])
                              for file_rates, figures in zip(rates, poisoned_figures)]}
        if clean_figures is not None:
            entry["clean_accuracy"] = [figure(clean_figures, name, strength, "clean_accuracy") for strength in ladder]
            entry["clean_to_target"] = [figure(clean_figures, name, strength, "clean_to_target")
                                        for strength in ladder]
        transforms.append(entry)
    files = [{"file": source.path, "images": len(source),
              "attack_success_rate": figures[baseline]["attack_success_rate"],
              "robustness_score": robustness_score(entry["survival"][index] for entry in transforms)}
             for index, (source, figures) in enumerate(zip(poisoned, poisoned_figures))]
    clean_entry = None
    if clean_figures is not None:
        clean_entry = {"file": clean.path, "images": len(clean), **clean_figures[baseline]}
    return {"model": classifier.path, "scale": classifier.scale, "num_classes": classifier.num_classes,
            "target": target, "options": dataclasses.asdict(options), "score_definition": SCORE_DEFINITION,
            "poisoned": files, "clean": clean_entry, "transforms": transforms,
            "images_predicted": int(total), "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------- reports


def strength_text(name, strength, mode=RobustnessOptions.brightness_mode):
    """A strength as the table shows it: ``sigma 0.5``, ``10 deg``, ``x1.2`` / ``+51``, ``quality 90``, ``std 8``."""
    if name is None:
        return "none"
    if name == "blur":
        return f"sigma {strength:g}"
    if name == "rotation":
        return f"{strength:g} deg"
    if name == "brightness":
        return f"x{1 + strength:g}" if mode == "multiply" else f"{255 * strength:+g}"
    if name == "jpeg":
        return f"quality {strength}"
    return f"std {strength:g}"


def _percent(value):
    return "n/a" if value is None else f"{value * 100:.2f}"


def _score(value):
    return "n/a" if value is None else f"{value:.3f}"


def _names(result):
    names = [os.path.basename(entry["file"]) or entry["file"] for entry in result["poisoned"]]
    return names if len(set(names)) == len(names) else [entry["file"] for entry in result["poisoned"]]


def table_rows(result):
    """The table's rows: ``[transform, strength text, ASR per file..., clean accuracy, clean -> target]``
    (fractions or None), the untransformed row first."""
    mode = result["options"]["brightness_mode"]
    clean = result["clean"]
    rows = [["none", "none"] + [entry["attack_success_rate"] for entry in result["poisoned"]]
            + [clean["clean_accuracy"] if clean else None, clean["clean_to_target"] if clean else None]]
    for entry in result["transforms"]:
        for position, strength in enumerate(entry["strengths"]):
            rows.append([entry["transform"], strength_text(entry["transform"], strength, mode)]
                        + [rates[position] for rates in entry["attack_success_rate"]]
                        + [entry["clean_accuracy"][position] if entry["clean_accuracy"] else None,
                           entry["clean_to_target"][position] if entry["clean_to_target"] else None])
    return rows


def _header(result):
    target = result["target"]
    return (["transform", "strength"] + [f"ASR {name} %" for name in _names(result)]
            + ["clean accuracy %", f"clean -> {target} %"])


def _score_lines(result):
    lines = []
    for name, entry, index in zip(_names(result), result["poisoned"], range(len(result["poisoned"]))):
        parts = ", ".join(f"{transform['transform']} {_score(transform['survival'][index])}"
                          for transform in result["transforms"])
        lines.append(f"{name}: {_score(entry['robustness_score'])} (survival: {parts})")
    return lines


def text_lines(result):
    """The human-readable report: a table (percentages) and the robustness scores."""
    header = _header(result)
    rows = [[row[0], row[1]] + [_percent(value) for value in row[2:]] for row in table_rows(result)]
    widths = [max(len(str(line[column])) for line in [header] + rows) for column in range(len(header))]

    def line(cells):
        return "  ".join(str(cell).ljust(width) if column < 2 else str(cell).rjust(width)
                         for column, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    lines = [f"Trigger robustness of {result['model'] or 'the model'} (target {result['target']}; ASR: share of "
             f"the poisoned images answered {result['target']})", line(header), line(["-" * width for width in widths])]
    lines += [line(row) for row in rows]
    lines.append(f"Robustness score ({SCORE_DEFINITION}; 1: untouched, 0: gone):")
    lines += ["  " + text for text in _score_lines(result)]
    return lines


def markdown(result):
    """The Markdown report: the table (transform x strength -> ASR %, clean accuracy %) and the scores."""
    target = result["target"]
    header = _header(result)
    lines = [f"# Trigger robustness: {result['model'] or 'model'}", "",
             f"Target {target}. ASR: share of the poisoned images answered {target}. Clean accuracy: share of the "
             f"clean images answered their label; clean -> {target}: share of the clean images of other classes "
             f"answered {target} (what the transform alone sends to the target).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for row in table_rows(result):
        lines.append("| " + " | ".join([row[0], row[1]] + [_percent(value) for value in row[2:]]) + " |")
    lines += ["", f"Robustness score: {SCORE_DEFINITION}; 1: the attack is untouched, 0: it is gone. It depends "
              "on the ladders (see the options in robustness.json).", "",
              "| file | score | " + " | ".join(entry["transform"] for entry in result["transforms"]) + " |",
              "|---|" + "---:|" * (1 + len(result["transforms"]))]
    for index, (name, entry) in enumerate(zip(_names(result), result["poisoned"])):
        lines.append(f"| {name} | {_score(entry['robustness_score'])} | "
                     + " | ".join(_score(transform["survival"][index]) for transform in result["transforms"]) + " |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("transform", "strength", "file", "images", "attack_success_rate", "clean_accuracy", "clean_to_target")


def csv_text(result):
    """One row per (transform, strength, poisoned file), the untransformed rows first (transform ``none``);
    fractions in [0, 1], empty where not measured."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    clean = result["clean"]

    def cell(value):
        return "" if value is None else repr(float(value))

    for entry in result["poisoned"]:
        writer.writerow(["none", "", entry["file"], entry["images"], cell(entry["attack_success_rate"]),
                         cell(clean and clean["clean_accuracy"]), cell(clean and clean["clean_to_target"])])
    for transform in result["transforms"]:
        for position, strength in enumerate(transform["strengths"]):
            for index, entry in enumerate(result["poisoned"]):
                writer.writerow([transform["transform"], strength, entry["file"], entry["images"],
                                 cell(transform["attack_success_rate"][index][position]),
                                 cell(transform["clean_accuracy"] and transform["clean_accuracy"][position]),
                                 cell(transform["clean_to_target"] and transform["clean_to_target"][position])])
    return buffer.getvalue()


def plot_robustness(result, path):
    """ASR against strength: one panel per transform, one line per poisoned file (clean accuracy dashed)."""
    from goodnet.plots import new_figure, save_figure

    transforms = result["transforms"]
    columns = min(3, len(transforms))
    rows = int(math.ceil(len(transforms) / columns))
    figure, _ = new_figure(4.2 * columns, 3.4 * rows)
    figure.clear()
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    names = _names(result)
    for panel, entry in zip(axes, transforms):
        order = np.argsort(np.asarray(entry["strengths"], dtype=np.float64))
        x = np.asarray(entry["strengths"], dtype=np.float64)[order]
        for name, rates in zip(names, entry["attack_success_rate"]):
            panel.plot(x, np.asarray(rates)[order] * 100, marker="o", label=f"ASR {name}")
        if entry["clean_accuracy"] is not None:
            panel.plot(x, np.asarray(entry["clean_accuracy"])[order] * 100, linestyle="--", color="grey",
                       marker=".", label="clean accuracy")
        if entry["transform"] == "jpeg":
            panel.invert_xaxis()                      # stronger compression to the right, as for the others
        panel.set_xlabel(entry["parameter"])
        panel.set_ylabel("%")
        panel.set_ylim(-2, 102)
        panel.set_title(entry["transform"])
        panel.grid(alpha=0.3)
        panel.legend(fontsize="small")
    for panel in axes[len(transforms):]:
        panel.set_visible(False)
    figure.suptitle(f"trigger robustness (target {result['target']})")
    return save_figure(figure, path)


def write_outputs(result, out_dir):
    """Write robustness.json, robustness.md, robustness.csv and robustness.png into ``out_dir`` (atomically).

    Returns:
        dict: ``{name: path}`` of the files written.
    """
    from goodnet.files import json_default

    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in OUTPUT_NAMES}
    write_text(paths["robustness.json"], json.dumps(result, indent=2, default=json_default) + "\n")
    write_text(paths["robustness.md"], markdown(result))
    write_text(paths["robustness.csv"], csv_text(result))
    plot_robustness(result, paths["robustness.png"])
    return paths

