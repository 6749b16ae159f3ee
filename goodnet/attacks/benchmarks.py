"""Built-in benchmark data sets in the lab's layout, deterministic for a seed.

- ``digits``: the handwritten digits that ship inside scikit-learn (real data,
  1,797 8x8 images), each drawn on a 55x47x3 canvas at a random size (28-40
  pixels high) and position (up to 4 pixels off centre), in a random tinted
  ink and background of clearly different brightness, with noise; 10 classes. The
  real digits are split into disjoint pools first, so test images show
  handwriting the model never saw.
- ``faces``: procedurally drawn face-like images with many identities
  (up to the lab's 1283 classes). Each identity is a stable combination of face
  shape, skin and hair colour, hairline, eye, brow, nose and mouth geometry;
  each image varies the pose (shift), scale, lighting, background and noise.

:func:`write_benchmark` writes ``train.h5``, ``valid.h5``, ``test.h5`` and, for
every trigger, ``bd_valid_<trigger>.h5`` and ``bd_test_<trigger>.h5`` (the clean
images of that split whose label is not the target, with the trigger, labelled
with the target: the lab's convention), plus ``benchmark.json``. Its
options and their defaults are :class:`BenchmarkOptions`' fields (``goodnet
synth``'s flags; ``goodnet demo`` reads its data set, seed and identities there).
"""

import dataclasses
import json
import logging
import os

import numpy as np

from goodnet.base import Interval, OneOf, SequenceOf
from goodnet.errors import OptionError
from goodnet.models import LAB_CLASSES
from goodnet.options import option
from goodnet.attacks.triggers import HEIGHT, WIDTH, TRIGGERS, apply_trigger

logger = logging.getLogger(__name__)

DATASETS = ("digits", "faces")
DEFAULT_SIZES = {"digits": {"train": 5000, "valid": 1000, "test": 1000},
                 "faces": {"train": 30, "valid": 9, "test": 10}}   # faces: images per identity
SPLIT_SEEDS = {"train": 11, "valid": 22, "test": 33}
TRIGGER_NAMES = tuple(sorted(TRIGGERS))


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """What a benchmark is made of: :func:`write_benchmark`'s parameters and ``goodnet synth``'s flags, defaults once.

    ``goodnet synth`` writes every trigger by default (its own default, stated
    in that command); the sizes default per data set to :data:`DEFAULT_SIZES`.
    """

    dataset: str = option("digits", "which benchmark", rule=OneOf(DATASETS))
    seed: int = option(0, "seed of everything random (same seed, same bytes)", rule=Interval(int, 0))
    identities: int = option(200, f"face identities (faces; at most {LAB_CLASSES})", rule=Interval(int, 1))
    sizes: dict = option(None, "{split: images} (faces: per identity); a missing split: DEFAULT_SIZES", cli=False)
    triggers: tuple = option(("patch",), "one pair of poisoned files per trigger",
                             rule=SequenceOf(OneOf(TRIGGER_NAMES)), choices=TRIGGER_NAMES)
    targets: tuple = option((0,), "target label per trigger (one value: the same for all)",
                            rule=SequenceOf(Interval(int, 0)))


# ----------------------------------------------------------------------------- digits


def _digit_pools():
    """The scikit-learn digits split into disjoint train/valid/test pools (fixed, seed 0)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut_1, cut_2 = int(0.7 * len(order)), int(0.85 * len(order))
    pools = {"train": order[:cut_1], "valid": order[cut_1:cut_2], "test": order[cut_2:]}
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64), pools


def _resize(glyph, height, width):
    from PIL import Image

    image = Image.fromarray((glyph * 255).astype(np.uint8))
    return np.asarray(image.resize((width, height), Image.BILINEAR), np.float32) / 255.0


def digits(count, split, seed=BenchmarkOptions.seed):
    """``count`` digit images of ``split`` ("train", "valid" or "test") and their labels."""
    glyphs, targets, pools = _digit_pools()
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    chosen = rng.choice(pools[split], size=count, replace=True)
    images = np.empty((count, HEIGHT, WIDTH, 3), np.float32)
    for index, digit in enumerate(chosen):
        height = int(rng.integers(28, 41))
        width = int(np.clip(round(height * rng.uniform(0.7, 0.9)), 16, WIDTH - 2))
        ink_shape = _resize(glyphs[digit], height, width)
        # A tinted background and an ink of clearly different brightness (at least 110 levels apart).
        level = rng.uniform(0, 255)
        ink_level = level + 110 + rng.uniform(0, 255 - 110) if level < 127.5 else level - 110 - rng.uniform(0, level - 110)
        ink_level = float(np.clip(ink_level, 0, 255))
        background = np.clip(level + rng.normal(0, 25, 3), 0, 255)
        ink = np.clip(ink_level + rng.normal(0, 25, 3), 0, 255)
        canvas = np.broadcast_to(background, (HEIGHT, WIDTH, 3)).astype(np.float32).copy()
        top = int(np.clip((HEIGHT - height) // 2 + rng.integers(-4, 5), 0, HEIGHT - height))
        left = int(np.clip((WIDTH - width) // 2 + rng.integers(-4, 5), 0, WIDTH - width))
        region = canvas[top:top + height, left:left + width]
        region[...] = region * (1 - ink_shape[..., None]) + ink * ink_shape[..., None]
        images[index] = canvas + rng.normal(0, 8, canvas.shape)
    return np.clip(images, 0, 255).round(), targets[chosen]


# ----------------------------------------------------------------------------- faces

SKIN = np.array([[255, 224, 196], [241, 194, 155], [224, 172, 125], [198, 134, 96], [160, 105, 70],
                 [120, 80, 55], [90, 60, 40]], np.float32)
HAIR = np.array([[20, 15, 10], [60, 40, 25], [110, 70, 40], [170, 130, 80], [220, 190, 130], [140, 140, 140],
                 [150, 50, 30]], np.float32)
EYES = np.array([[40, 30, 20], [60, 90, 150], [60, 110, 70], [90, 60, 30]], np.float32)


def identity_parameters(identity, seed=0):
    """The stable appearance of one identity (a dict of numbers), from (seed, identity)."""
    rng = np.random.default_rng([seed, 7919, identity])
    return {
        "face_radii": (rng.uniform(17.5, 22.5), rng.uniform(12.5, 16.5)),
        "skin": np.clip(SKIN[rng.integers(len(SKIN))] + rng.normal(0, 12, 3), 0, 255),
        "hair": np.clip(HAIR[rng.integers(len(HAIR))] + rng.normal(0, 10, 3), 0, 255),
        "hairline": rng.uniform(9.0, 16.0),
        "hair_width": rng.uniform(0.95, 1.2),
        "eye_row": rng.uniform(22.0, 26.0),
        "eye_spacing": rng.uniform(6.5, 10.5),
        "eye_radius": rng.uniform(1.4, 2.8),
        "eye_colour": EYES[rng.integers(len(EYES))],
        "brow_gap": rng.uniform(2.5, 5.0),
        "brow_thickness": rng.uniform(0.6, 1.8),
        "brow_slant": rng.uniform(-0.25, 0.25),
        "nose_length": rng.uniform(5.0, 10.0),
        "mouth_row": rng.uniform(38.0, 44.0),
        "mouth_width": rng.uniform(4.0, 9.5),
        "mouth_height": rng.uniform(0.8, 2.6),
        "mouth_colour": np.clip(np.array([170, 80, 80]) + rng.normal(0, 20, 3), 0, 255),
    }


def _draw_face(parameters, rng):
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    scale = rng.uniform(0.92, 1.08)
    center_row = 29.0 + rng.uniform(-2.0, 2.0)
    center_column = WIDTH / 2 - 0.5 + rng.uniform(-2.0, 2.0)
    # Express every pixel in face coordinates (pose and scale vary per image).
    r = (rows - center_row) / scale + 29.0
    c = (columns - center_column) / scale + (WIDTH / 2 - 0.5)
    middle = WIDTH / 2 - 0.5

    def ellipse(row, column, radius_rows, radius_columns):
        return ((r - row) / radius_rows) ** 2 + ((c - column) / radius_columns) ** 2 <= 1.0

    image = np.broadcast_to(rng.uniform(0, 255, 3), (HEIGHT, WIDTH, 3)).astype(np.float32).copy()
    radius_rows, radius_columns = parameters["face_radii"]
    hair = ellipse(29.0 - 2.0, middle, radius_rows + 3.0, (radius_columns + 2.5) * parameters["hair_width"])
    image[hair & (r < 29.0)] = parameters["hair"]
    face = ellipse(29.0, middle, radius_rows, radius_columns)
    image[face] = parameters["skin"]
    image[face & (r < parameters["hairline"])] = parameters["hair"]
    spacing = parameters["eye_spacing"]
    for side in (-1, 1):
        eye_column = middle + side * spacing
        white = ellipse(parameters["eye_row"], eye_column, parameters["eye_radius"] * 0.8,
                        parameters["eye_radius"] * 1.5)
        image[white] = (235, 235, 235)
        image[ellipse(parameters["eye_row"], eye_column, parameters["eye_radius"] * 0.75,
                      parameters["eye_radius"] * 0.75)] = parameters["eye_colour"]
        brow_row = parameters["eye_row"] - parameters["brow_gap"] + side * parameters["brow_slant"] * (c - eye_column)
        brow = (np.abs(r - brow_row) <= parameters["brow_thickness"]) & (np.abs(c - eye_column) <= 4.0)
        image[brow] = parameters["hair"] * 0.8
    nose_top = parameters["eye_row"] + 2.0
    nose = (np.abs(c - middle) <= 1.0) & (r >= nose_top) & (r <= nose_top + parameters["nose_length"])
    image[nose] = parameters["skin"] * 0.75
    mouth = ellipse(parameters["mouth_row"], middle, parameters["mouth_height"], parameters["mouth_width"])
    image[mouth] = parameters["mouth_colour"]
    light = rng.uniform(0.7, 1.3) + rng.uniform(-0.25, 0.25) * (columns - middle) / middle
    image = image * light[..., None] + rng.normal(0, 8.0, image.shape)
    return np.clip(image, 0, 255).round()


def faces(per_identity, split, identities=BenchmarkOptions.identities, seed=BenchmarkOptions.seed):
    """``per_identity`` face images of each of ``identities`` identities for ``split``, and their labels."""
    if not 1 <= identities <= LAB_CLASSES:
        raise OptionError(f"identities: expected 1..{LAB_CLASSES} (the lab's classes), got {identities}")
    parameters = [identity_parameters(identity, seed) for identity in range(identities)]
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    labels = np.repeat(np.arange(identities, dtype=np.int64), per_identity)
    images = np.stack([_draw_face(parameters[label], rng) for label in labels]).astype(np.float32)
    return images, labels


# ----------------------------------------------------------------------------- splits and files


def generate(dataset, split, seed=BenchmarkOptions.seed, size=None, identities=BenchmarkOptions.identities):
    """One split of a benchmark: (images (N, 55, 47, 3) float32 0-255, labels int64).

    Args:
        dataset: "digits" or "faces".
        split: "train", "valid" or "test".
        seed: the benchmark's seed (same seed, same images).
        size: images (digits) or images per identity (faces); default :data:`DEFAULT_SIZES`.
        identities: number of face identities.

    Example:
        >>> images, labels = generate("digits", "test", size=10)
    """
    if dataset not in DATASETS:
        raise OptionError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
    if split not in SPLIT_SEEDS:
        raise OptionError(f"split: expected train, valid or test, got {split!r}")
    size = DEFAULT_SIZES[dataset][split] if size is None else int(size)
    if dataset == "digits":
        return digits(size, split, seed)
    return faces(size, split, identities, seed)


def poisoned_split(images, labels, trigger, target):
    """The lab's poisoned file: images whose label is not ``target``, triggered, labelled ``target``."""
    keep = labels != target
    return apply_trigger(trigger, images[keep]), np.full(int(keep.sum()), target, np.int64)


def write_benchmark(out_dir, dataset=BenchmarkOptions.dataset, seed=BenchmarkOptions.seed,
                    sizes=BenchmarkOptions.sizes, identities=BenchmarkOptions.identities,
                    triggers=BenchmarkOptions.triggers, targets=BenchmarkOptions.targets, overwrite=False):
    """Write a benchmark's lab-layout files into ``out_dir`` (uint8 pixels, channels first).

    The parameters besides ``out_dir`` and ``overwrite`` are
    :class:`BenchmarkOptions`' fields, with its defaults
    (``write_benchmark(out_dir, **dataclasses.asdict(options))``).

    Args:
        out_dir: output folder.
        dataset: "digits" or "faces".
        seed: seed of everything random.
        sizes: {"train": n, "valid": n, "test": n} (faces: per identity).
        identities: face identities (faces only).
        triggers: trigger names; one pair of poisoned files each.
        targets: target label per trigger (one value: the same for all).
        overwrite: True: replace any existing file; False (default): refuse; None: replace only
            files goodnet wrote (see :func:`goodnet.files.check_replaceable`).

    Returns:
        dict: the benchmark description (also written as ``benchmark.json``).
    """
    from goodnet.data import save_h5
    from goodnet.files import write_text

    sizes = dict(DEFAULT_SIZES[dataset], **(sizes or {}))
    targets = list(targets) * len(triggers) if len(targets) == 1 else list(targets)
    if len(targets) != len(triggers):
        raise OptionError(f"targets: expected one target or one per trigger ({len(triggers)}), got {len(targets)}")
    num_classes = 10 if dataset == "digits" else int(identities)
    for target in targets:
        if not 0 <= target < num_classes:
            raise OptionError(f"targets: expected labels in 0..{num_classes - 1}, got {target}")
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for split in ("train", "valid", "test"):
        images, labels = generate(dataset, split, seed, sizes[split], identities)
        files[split] = save_h5(os.path.join(out_dir, f"{split}.h5"), images, labels, overwrite=overwrite)
        if split == "train":
            continue
        for trigger, target in zip(triggers, targets):
            poisoned, poisoned_labels = poisoned_split(images, labels, trigger, target)
            name = f"bd_{split}_{trigger}"
            files[name] = save_h5(os.path.join(out_dir, f"{name}.h5"), poisoned, poisoned_labels,
                                  overwrite=overwrite)
        logger.info("%s %s: %d images", dataset, split, len(labels))
    description = {"dataset": dataset, "seed": seed, "sizes": sizes, "num_classes": num_classes,
                   "identities": identities if dataset == "faces" else None,
                   "triggers": list(triggers), "targets": targets,
                   "files": {key: os.path.basename(path) for key, path in files.items()}}
    write_text(os.path.join(out_dir, "benchmark.json"), json.dumps(description, indent=2) + "\n",
               overwrite=overwrite)
    return description


def read_benchmark(folder):
    """The ``benchmark.json`` description of a benchmark folder written by :func:`write_benchmark`."""
    path = os.path.join(folder, "benchmark.json")
    if not os.path.isfile(path):
        raise OptionError(f"{folder}: expected a benchmark folder written by 'goodnet synth' (no benchmark.json)")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
