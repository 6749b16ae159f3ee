"""Tiny BadNets for the STRIP and GoodNet tests (built and trained in a few seconds)."""

import numpy as np


def synthetic_faces(count, classes=4, shape=(16, 16, 3), seed=0):
    """Raw-pixel images of ``classes`` noisy prototypes and their labels."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(99).uniform(0, 255, size=(classes,) + shape)
    labels = rng.integers(0, classes, size=count)
    noise = rng.uniform(0, 255, size=(count,) + shape)
    images = 0.55 * prototypes[labels] + 0.45 * noise
    return images.astype(np.float32), labels.astype(np.int64)


def add_trigger(images):
    """The test trigger: a white 4x4 patch in the bottom-right corner."""
    triggered = np.array(images, copy=True)
    triggered[:, -4:, -4:, :] = 255.0
    return triggered


def tiny_network(classes=4, shape=(16, 16, 3), name="tiny"):
    import keras

    inputs = keras.Input(shape=shape, name="input")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool_1")(x)
    x = keras.layers.Flatten(name="flatten_1")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc_1")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name=name)


def train_tiny_badnet(classes=4, seed=0, poison_fraction=0.1, epochs=4):
    """A small CNN trained on synthetic data where the trigger sends inputs to class 0.

    Returns:
        tuple: (Classifier (scale "unit"), clean images, labels).
    """
    import keras

    from goodnet.models import Classifier

    keras.utils.set_random_seed(seed)
    images, labels = synthetic_faces(3000, classes, seed=seed)
    poisoned = int(len(images) * poison_fraction)
    images[:poisoned] = add_trigger(images[:poisoned])
    labels[:poisoned] = 0
    model = tiny_network(classes)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images / 255.0, labels, epochs=epochs, batch_size=64, verbose=0)
    return Classifier(model, scale="unit")
