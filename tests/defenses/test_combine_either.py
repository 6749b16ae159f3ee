"""The gated GoodNet with a BaDExpert or a STRIP-or-BaDExpert gate (goodnet.defenses.combine) on a tiny BadNet
(tests/strip_helpers.py): its answers equal those computed by hand from the fitted detectors' flags and the
two models' answers, before and after save and load; the export refuses the new gates in one line."""

import numpy as np
import pytest

from goodnet.data import LabData
from goodnet.defenses.badexpert import BaDExpertOptions
from goodnet.defenses.either import EitherDetector
from goodnet.defenses.strip import StripOptions
from strip_helpers import add_trigger, synthetic_faces, train_tiny_badnet

POISONED = 4
FAST = dict(expert_rates=(1e-3, 3e-3, 1e-2), aux_epochs=3)


@pytest.fixture(scope="module")
def world():
    """B (the tiny BadNet), B' (a clean tiny network), the fitted either gate (its STRIP with fixed draws), and
    probe images: clean ones and triggered ones."""
    bad = train_tiny_badnet()
    repaired = train_tiny_badnet(seed=1, poison_fraction=0.0, epochs=2)
    images, labels = synthetic_faces(400, seed=5)
    gate = EitherDetector(frr=0.1, strip=StripOptions(copies=8, bank_size=40, draws="fixed",
                                                      threshold_method="quantile"),
                          badexpert=BaDExpertOptions(**FAST)).fit(bad, LabData(images, labels))
    test_images, test_labels = synthetic_faces(60, seed=9)
    probe = np.concatenate([test_images, add_trigger(test_images[test_labels != 0][:30])])
    return bad, repaired, gate, probe


def _detector(gate, name):
    return {"strip": gate.strip_, "badexpert": gate.badexpert_, "both": gate}[name]


def _reference(bad, repaired, images, flagged, require_agreement):
    """G's answers by hand: the answering model's class unless flagged (or, for G, B and B' disagree)."""
    bad_answers, repaired_answers = bad.predict(images), repaired.predict(images)
    if not require_agreement:
        return np.where(flagged, POISONED, repaired_answers)
    return np.where(~flagged & (bad_answers == repaired_answers), bad_answers, POISONED)


def _flags(gate, name, images):
    """The detector's flags, and where its signals are clear of the thresholds (float rounding cannot flip them)."""
    clear = np.ones(len(images), bool)
    if name in ("strip", "both"):
        clear &= np.abs(gate.strip_.entropy(images) - gate.strip_.threshold_) > 1e-4
    if name in ("badexpert", "both"):
        clear &= np.abs(gate.badexpert_.score(images) - gate.badexpert_.threshold_) > 1e-4
    return np.asarray(_detector(gate, name).predict_trojaned(images)), clear


@pytest.mark.parametrize("name", ["strip", "badexpert", "both"])
@pytest.mark.parametrize("require_agreement", [True, False])
def test_gated_goodnet_answers_equal_the_hand_reference_and_survive_save_and_load(world, name, require_agreement,
                                                                                    tmp_path):
    from goodnet.defenses.combine import build_gated_goodnet, goodnet_parts
    from goodnet.models import load_model, save_model

    bad, repaired, gate, probe = world
    flagged, clear = _flags(gate, name, probe)
    expected = _reference(bad, repaired, probe, flagged, require_agreement)
    assert clear.mean() > 0.9
    assert 0 < flagged.sum() < len(probe) and 0 < np.sum(expected == POISONED) < len(probe)
    gated = build_gated_goodnet(bad, repaired, _detector(gate, name), chunk_images=24,
                                require_agreement=require_agreement)
    assert gated.flags_poisoned and gated.num_classes == POISONED
    assert goodnet_parts(gated)["detector"] == name
    answers = gated.predict(probe, batch_size=7)
    np.testing.assert_array_equal(answers[clear], expected[clear])
    path = save_model(gated, tmp_path / f"gated_{name}.h5")
    loaded = load_model(path, image_shape=probe.shape[1:])
    assert loaded.flags_poisoned and goodnet_parts(loaded)["detector"] == name
    np.testing.assert_array_equal(loaded.predict(probe, batch_size=32), answers)
    np.testing.assert_array_equal(loaded.predict(probe[::-1], batch_size=5)[::-1], answers)   # deterministic


def test_the_gate_signals_inside_the_file_equal_the_detectors(world):
    from goodnet.defenses.combine import build_gated_goodnet, expert_score_model, strip_entropy_model

    bad, repaired, gate, probe = world
    gated = build_gated_goodnet(bad, repaired, gate)
    np.testing.assert_allclose(np.asarray(strip_entropy_model(gated)(probe / 255.0)), gate.strip_.entropy(probe),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(expert_score_model(gated)(probe / 255.0)), gate.badexpert_.score(probe),
                               atol=1e-5)
    thresholds = gated.model.get_layer("goodnet").thresholds
    assert thresholds == pytest.approx((gate.strip_.threshold_, gate.badexpert_.threshold_))


def test_random_draws_and_unfitted_detectors_are_refused(world):
    from goodnet.defenses.combine import build_gated_goodnet

    bad, repaired, gate, _ = world
    with pytest.raises(ValueError, match="draws: expected 'fixed'"):
        build_gated_goodnet(bad, repaired, _with_random_draws(gate))
    with pytest.raises(ValueError, match="expected a fitted detector"):
        build_gated_goodnet(bad, repaired, EitherDetector())
    with pytest.raises(ValueError, match="expected a fitted STRIP, BaDExpert or EitherDetector"):
        build_gated_goodnet(bad, repaired, object())


def _with_random_draws(gate):
    import copy

    changed = copy.copy(gate)
    changed.strip_ = copy.copy(gate.strip_)
    changed.strip_.draws = "random"
    return changed


@pytest.mark.parametrize("name", ["badexpert", "both"])
def test_the_keras2_export_refuses_a_badexpert_gate_in_one_line(world, name, tmp_path):
    from goodnet.defenses.combine import build_gated_goodnet
    from goodnet.errors import ModelError
    from goodnet.export import export_goodnet

    bad, repaired, gate, _ = world
    with pytest.raises(ModelError) as error:
        export_goodnet(build_gated_goodnet(bad, repaired, _detector(gate, name)), tmp_path / "export")
    message = str(error.value)
    assert "\n" not in message and "STRIP" in message and name in message
    assert not (tmp_path / "export" / "gate.json").exists()
