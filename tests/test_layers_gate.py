"""goodnet.layers' BaDExpert score layer and the combiner with several gate signals, against NumPy references."""

import numpy as np
import pytest

from goodnet.defenses.badexpert import COMBINATIONS, combine_reference


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_score_rules_are_badexperts():
    from goodnet.layers import SCORE_RULES, SHIFT, TINY
    from goodnet.defenses import badexpert

    assert SCORE_RULES == COMBINATIONS and TINY == badexpert.TINY and SHIFT == badexpert.SHIFT


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_expert_score_matches_the_numpy_reference_and_round_trips(combination, tmp_path):
    import keras

    from goodnet.layers import ExpertScore, custom_objects

    rng = np.random.default_rng(7)
    original, expert, auxiliary = (_softmax(rng.normal(scale=3, size=(300, 5))).astype(np.float32) for _ in range(3))
    expert[:20] = 0.0          # the clamps
    auxiliary[20:40] = 0.5
    expected = combine_reference(original, expert, auxiliary, combination)[0]
    got = np.asarray(ExpertScore(combination)([original, expert, auxiliary]))
    assert got.shape == (300,) and np.ptp(expected) > 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    inputs = [keras.Input((5,)) for _ in range(3)]
    model = keras.Model(inputs, ExpertScore(combination, name="score")(inputs))
    model.save(tmp_path / "score.h5")
    loaded = keras.models.load_model(tmp_path / "score.h5", custom_objects=custom_objects(), compile=False)
    assert loaded.get_layer("score").combination == combination
    np.testing.assert_allclose(np.asarray(loaded([original, expert, auxiliary])), got, rtol=1e-6)


def test_expert_score_refuses_an_unknown_rule():
    from goodnet.layers import ExpertScore

    with pytest.raises(ValueError, match="combination: expected one of"):
        ExpertScore("ratio")


def test_combiner_with_two_signals_matches_reference_and_round_trips(tmp_path):
    import keras

    from goodnet.layers import GoodNetCombiner, custom_objects

    rng = np.random.default_rng(2)
    bad = _softmax(rng.normal(size=(200, 6))).astype(np.float32)
    repaired = _softmax(rng.normal(size=(200, 6))).astype(np.float32)
    repaired[:120] = bad[:120]
    entropy, score = rng.uniform(0, 2, 200).astype(np.float32), rng.uniform(0, 1, 200).astype(np.float32)
    combiner = GoodNetCombiner(6, threshold=[1.0, 0.3], name="goodnet")
    assert combiner.thresholds == (1.0, 0.3)
    output = np.asarray(combiner([bad, repaired, entropy, score]))
    keep = (bad.argmax(1) == repaired.argmax(1)) & (entropy >= 1.0) & (score >= 0.3)
    np.testing.assert_array_equal(output.argmax(1), np.where(keep, bad.argmax(1), 6))
    assert 0 < keep.sum() < 200
    np.testing.assert_allclose(output[keep, :6], bad[keep])
    with pytest.raises(ValueError, match="one number per gate signal"):
        GoodNetCombiner(6, threshold=1.0)([bad, repaired, entropy, score])
    inputs = [keras.Input((6,)), keras.Input((6,)), keras.Input(()), keras.Input(())]
    model = keras.Model(inputs, GoodNetCombiner(6, threshold=[1.0, 0.3], name="goodnet")(inputs))
    model.save(tmp_path / "combiner.h5")
    loaded = keras.models.load_model(tmp_path / "combiner.h5", custom_objects=custom_objects(), compile=False)
    assert loaded.get_layer("goodnet").thresholds == (1.0, 0.3)
    np.testing.assert_array_equal(np.asarray(loaded([bad, repaired, entropy, score])), output)
