"""goodnet.layers: entropy, superimposition, the GoodNet combiner and the STRIP gate against NumPy references."""

import numpy as np
import pytest

from goodnet.defenses.strip import entropy_reference


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def test_entropy_bits_matches_numpy_reference_with_zeros():
    from goodnet.layers import entropy_bits

    rng = np.random.default_rng(0)
    probabilities = _softmax(rng.normal(0, 3, size=(50, 7)))
    probabilities[:5, :3] = 0.0
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    got = np.asarray(entropy_bits(probabilities.astype(np.float32)))
    np.testing.assert_allclose(got, entropy_reference(probabilities), atol=1e-5)
    assert np.asarray(entropy_bits(np.eye(4, dtype=np.float32))) == pytest.approx(np.zeros(4))
    assert float(entropy_bits(np.full((1, 8), 1 / 8, np.float32))[0]) == pytest.approx(3.0, abs=1e-5)


def test_entropy_is_over_classes_not_over_copies():
    """ART takes scipy's entropy along the copies axis: a confident (trojaned) input then scores log2(N)."""
    from goodnet.layers import entropy_bits

    copies = np.full((5, 5), 0.025, np.float32)
    copies[:, 0] = 0.9  # 5 copies, all confident in class 0: low entropy over classes
    ours = float(np.mean(np.asarray(entropy_bits(copies))))
    assert ours == pytest.approx(entropy_reference([0.9, 0.025, 0.025, 0.025, 0.025]), abs=1e-5)
    assert ours < 0.7
    per_class = copies / copies.sum(axis=0, keepdims=True)  # scipy.stats.entropy(axis=0) normalises columns
    art_value = entropy_reference(per_class.T).sum() / 5
    assert art_value == pytest.approx(np.log2(5), abs=1e-5)


def test_superimpose_matches_numpy():
    from goodnet.layers import superimpose

    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (3, 4, 5, 3)).astype(np.float32)
    bank = rng.uniform(0, 255, (6, 4, 5, 3)).astype(np.float32)
    added = np.asarray(superimpose(images, bank, "add"))
    np.testing.assert_allclose(added, np.clip(images[:, None] + bank[None], 0, 255), rtol=1e-6)
    blended = np.asarray(superimpose(images, bank, "alpha", alpha=0.3))
    np.testing.assert_allclose(blended, 0.7 * images[:, None] + 0.3 * bank[None], rtol=1e-5)
    with pytest.raises(ValueError, match="blend"):
        superimpose(images, bank, "max")


def _combiner_reference(bad, repaired, entropy=None, threshold=None):
    agree = bad.argmax(1) == repaired.argmax(1)
    if entropy is not None:
        agree &= entropy >= threshold
    return np.where(agree, bad.argmax(1), bad.shape[1])


def test_goodnet_combiner_matches_reference():
    from goodnet.layers import GoodNetCombiner

    rng = np.random.default_rng(2)
    bad = _softmax(rng.normal(size=(200, 6))).astype(np.float32)
    repaired = _softmax(rng.normal(size=(200, 6))).astype(np.float32)
    repaired[:100] = bad[:100]
    output = np.asarray(GoodNetCombiner(6)([bad, repaired]))
    assert output.shape == (200, 7)
    np.testing.assert_array_equal(output.argmax(1), _combiner_reference(bad, repaired))
    agreeing = output.argmax(1) < 6
    np.testing.assert_allclose(output[agreeing, :6], bad[agreeing])
    entropy = rng.uniform(0, 2, 200).astype(np.float32)
    gated = np.asarray(GoodNetCombiner(6, threshold=1.0)([bad, repaired, entropy]))
    np.testing.assert_array_equal(gated.argmax(1), _combiner_reference(bad, repaired, entropy, 1.0))
    with pytest.raises(ValueError, match="threshold"):
        GoodNetCombiner(6)([bad, repaired, entropy])


def _gate_reference(network, images, bank):
    """Slow: one copy at a time through plain Keras, NumPy entropy, mean over copies."""
    entropies = []
    for image in images:
        per_copy = []
        for clean in bank:
            copy = np.clip(image + clean, 0, 255)[None]
            per_copy.append(entropy_reference(np.asarray(network(copy, training=False)))[0])
        entropies.append(np.mean(per_copy))
    return np.array(entropies)


def test_strip_gate_matches_per_copy_reference_and_round_trips(tmp_path):
    import keras

    from goodnet.layers import StripGate, custom_objects

    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 5, 3))
    hidden = keras.layers.Rescaling(1 / 255.0)(inputs)
    hidden = keras.layers.Flatten()(hidden)
    network = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(hidden), name="net")
    rng = np.random.default_rng(3)
    bank = rng.uniform(0, 255, (5, 6, 5, 3)).astype(np.float32)
    images = rng.uniform(0, 255, (7, 6, 5, 3)).astype(np.float32)
    gate = StripGate(network, bank.shape, chunk_inputs=3, name="strip_gate")  # 7 inputs: padded chunks
    outer_inputs = keras.Input((6, 5, 3))
    scores, entropy = gate(outer_inputs)
    gate.bank.assign(bank)
    model = keras.Model(outer_inputs, [scores, entropy])
    got_scores, got_entropy = (np.asarray(value) for value in model(images))
    np.testing.assert_allclose(got_entropy, _gate_reference(network, images, bank), atol=1e-5)
    np.testing.assert_allclose(got_scores, np.asarray(network(images)), atol=1e-6)
    path = tmp_path / "gate.h5"
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    np.testing.assert_allclose(np.asarray(loaded(images)[1]), got_entropy, atol=1e-6)
    assert loaded.get_layer("strip_gate").blend == "add"
