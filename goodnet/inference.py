"""One batched, compiled inference path for every goodnet component."""

import logging

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 1024
PROGRESS_DELAY_SECONDS = 3.0


def progress_bar(total, description, enabled=None, unit="img"):
    """Return a tqdm progress bar (on stderr) that appears only for long work.

    Args:
        total: number of items.
        description: label shown left of the bar.
        enabled: True shows it at once, False never; None (default) shows it
            once the work has taken ``PROGRESS_DELAY_SECONDS``.
        unit: the unit name.

    Returns:
        tqdm.tqdm: the bar (a no-op when disabled).
    """
    from tqdm.auto import tqdm

    delay = 0.0 if enabled else PROGRESS_DELAY_SECONDS
    return tqdm(total=total, desc=description, unit=unit, disable=enabled is False, delay=delay,
                leave=False, dynamic_ncols=True)


def compiled_forward(model, divisor=1.0):
    """Return a ``tf.function`` computing ``model(images / divisor)`` in inference mode.

    Unit scaling divides by 255 exactly as the lab's scripts do (float32
    division of 0-255 pixels gives the same values as the lab's float64
    division cast to float32; multiplying by 1/255 would not).
    The input signature has a free batch dimension, so batches of any size
    reuse one trace.

    Args:
        model: a Keras model.
        divisor: input scaling (1.0 for raw pixels, 255.0 for unit scaling).

    Returns:
        callable: images (float32 tensor) -> outputs tensor.
    """
    import tensorflow as tf

    input_shape = tuple(model.inputs[0].shape[1:])
    divisor = float(divisor)

    @tf.function(input_signature=[tf.TensorSpec((None,) + input_shape, tf.float32)], reduce_retracing=True)
    def forward(images):
        if divisor != 1.0:
            images = images / divisor
        return model(images, training=False)

    return forward


def run_batches(function, images, batch_size=DEFAULT_BATCH, progress=None, description="predict"):
    """Apply ``function`` to ``images`` batch by batch and concatenate the results.

    Args:
        function: a callable taking a float32 batch and returning a tensor.
        images: array (N, ...).
        batch_size: images per call.
        progress: see :func:`progress_bar`.
        description: progress-bar label.

    Returns:
        np.ndarray: the outputs for all N images.
    """
    images = np.asarray(images, dtype=np.float32)
    outputs = []
    with progress_bar(len(images), description, progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            outputs.append(np.asarray(function(batch)))
            bar.update(len(batch))
    if not outputs:
        raise ValueError("images: expected at least one image, got an empty array")
    return np.concatenate(outputs, axis=0)
