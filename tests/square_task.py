"""A tiny lab-sized classification task shared by the fine-pruning and unlearning tests."""

import numpy as np


def coloured_squares(per_class, corner, seed, classes=4, size=20):
    """Raw-pixel lab-sized images whose class is the colour of one square, and their labels.

    Args:
        per_class: images per class.
        corner: (row, column) of the square's top-left pixel.
        seed: seed of the background noise.
        classes: number of classes (class c lights channel c % 3, brighter for every third class).
        size: side of the square in pixels.

    Returns:
        tuple: float32 images (N, 55, 47, 3) in 0-255 and int64 labels (N,), class by class.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = rng.uniform(0, 60, (len(labels), 55, 47, 3)).astype(np.float32)
    row, column = corner
    for index, label in enumerate(labels):
        images[index, row:row + size, column:column + size, label % 3] += 150 + 40 * (label // 3)
    return images, labels
