"""Spectral signatures (Tran et al. 2018) against NumPy references: centring, the per-class split, 1.5 x eps x n."""

import numpy as np
import pytest

from goodnet.defenses.spectral_signatures import SpectralSignatures, removal_count, spectral_scores_reference
from goodnet.features import Features


def _numpy_scores(rows):
    """The paper's score written out: centre, top right singular vector of the centred matrix, squared projection."""
    centred = rows - rows.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][0]
    return (centred @ top) ** 2


def _world(seed=0, sizes=(40, 23, 61, 7, 2), dim=12, poison=(0, 9)):
    """Shuffled features of classes labelled 10, 20, ... (labels are not positions); class ``poison[0]``'s
    first ``poison[1]`` samples are shifted along one direction."""
    rng = np.random.default_rng(seed)
    labels = np.repeat((np.arange(len(sizes)) + 1) * 10, sizes)
    values = rng.normal(0, 1, (len(labels), dim)) + rng.normal(0, 3, (len(sizes), dim))[np.repeat(
        np.arange(len(sizes)), sizes)]
    poisoned = np.zeros(len(labels), bool)
    target = np.flatnonzero(labels == (poison[0] + 1) * 10)[:poison[1]]
    values[target] += 10.0 * np.eye(dim)[3]
    poisoned[target] = True
    order = rng.permutation(len(labels))
    return values[order].astype(np.float32), labels[order], poisoned[order]


def test_scores_are_the_numpy_formula_class_by_class_on_file_indices():
    values, labels, _ = _world()
    spectral = SpectralSignatures(poison_rate=0.1).fit(values, labels=labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)               # file indices of the class, not positions
        rows = values[members].astype(np.float64)
        expected = _numpy_scores(rows) if len(members) > 1 else np.zeros(len(members))
        np.testing.assert_allclose(spectral.scores_[members], expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(spectral.classes_, [10, 20, 30, 40, 50])


def test_batched_and_reference_agree():
    values, labels, _ = _world(seed=3, sizes=(50, 49, 48, 120, 5, 3, 1))
    batched = SpectralSignatures(poison_rate=0.2).fit(values, labels=labels)
    reference = SpectralSignatures(poison_rate=0.2, method="reference").fit(values, labels=labels)
    np.testing.assert_allclose(batched.scores_, reference.scores_, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(batched.flagged_, reference.flagged_)
    np.testing.assert_array_equal(batched.removed_per_class_, reference.removed_per_class_)
    np.testing.assert_allclose(np.abs(batched.directions_), np.abs(reference.directions_), atol=1e-9)
    np.testing.assert_allclose(batched.spectral_ratio_, reference.spectral_ratio_, rtol=1e-9)
    np.testing.assert_array_equal(batched.suspicious_, reference.suspicious_)
    scores, direction, _ = spectral_scores_reference(values[labels == 40].astype(np.float64))
    np.testing.assert_allclose(scores, _numpy_scores(values[labels == 40].astype(np.float64)), rtol=1e-9, atol=1e-9)
    assert np.isclose(np.linalg.norm(direction), 1.0)


def test_each_class_loses_exactly_floor_one_and_a_half_eps_n_of_its_highest_scores():
    values, labels, _ = _world(sizes=(40, 23, 61, 7, 2))
    eps = 0.1
    spectral = SpectralSignatures(poison_rate=eps).fit(values, labels=labels)
    flagged = np.zeros(len(labels), bool)
    flagged[spectral.flagged_] = True
    for position, label in enumerate(np.unique(labels)):
        members = np.flatnonzero(labels == label)
        expected = int(np.floor(1.5 * eps * len(members) + 1e-9))     # 6, 3, 9, 1, 0
        assert flagged[members].sum() == expected == spectral.removed_per_class_[position]
        assert spectral.class_verdict_[position]["removed"] == expected
        if expected:
            threshold = np.sort(spectral.scores_[members])[::-1][expected - 1]
            assert spectral.scores_[members][flagged[members]].min() >= threshold
            assert (spectral.scores_[members][~flagged[members]] <= threshold).all()
    assert [removal_count(n, eps) for n in (40, 23, 61, 7, 2)] == [6, 3, 9, 1, 0]
    assert removal_count(20, 0.1) == 3 and removal_count(10, 0.2) == 3     # 1.5 * 0.1 * 20 = 3.0000000000000004
    assert removal_count(5, 1.0) == 5                                      # never more than the class
    double = SpectralSignatures(poison_rate=eps, factor=3.0).fit(values, labels=labels)
    assert double.removed_per_class_.tolist() == [removal_count(n, eps, 3.0) for n in (40, 23, 61, 7, 2)]


def test_flagged_are_sample_indices_of_the_poison_not_class_indices():
    values, labels, poisoned = _world(poison=(2, 6), sizes=(40, 30, 40, 40))
    spectral = SpectralSignatures(poison_rate=0.1).fit(values, labels=labels)
    target = labels == 30
    chosen = spectral.flagged_[labels[spectral.flagged_] == 30]
    np.testing.assert_array_equal(chosen, np.flatnonzero(poisoned))       # the six shifted samples, by file index
    assert set(np.flatnonzero(poisoned)) <= set(spectral.flagged_.tolist())
    assert not set(spectral.flagged_.tolist()) <= set(range(len(np.unique(labels))))
    assert spectral.suspicious_classes().tolist() == [30] and target.sum() == 40


def test_centring_matters_the_uncentred_projection_ranks_the_poison_last():
    """A class far from the origin whose poison sits below its mean along that direction."""
    rng = np.random.default_rng(5)
    clean = np.column_stack([rng.normal(10.0, 0.3, 90), rng.normal(0.0, 0.3, 90)])
    poison = np.column_stack([rng.normal(7.0, 0.1, 10), rng.normal(0.0, 0.1, 10)])
    values = np.vstack([clean, poison])
    labels = np.zeros(100, np.int64)
    centred = values - values.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][0]
    uncentred_scores = (values @ top) ** 2                 # what several public tools (ART's among them) compute
    assert set(np.argsort(uncentred_scores)[:10]) == set(range(90, 100))   # the poison ranked last
    spectral = SpectralSignatures(poison_rate=0.1 / 1.5).fit(values, labels=labels)
    assert set(np.argsort(-spectral.scores_)[:10]) == set(range(90, 100))  # goodnet: ranked first
    np.testing.assert_array_equal(spectral.flagged_, np.arange(90, 100))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(spectral.scores_, uncentred_scores)


def test_scope_suspicious_removes_only_from_the_class_that_stands_out():
    values, labels, poisoned = _world(poison=(1, 8), sizes=(50, 50, 50, 50, 50, 50))
    everywhere = SpectralSignatures(poison_rate=0.16).fit(values, labels=labels)
    only = SpectralSignatures(poison_rate=0.16, scope="suspicious").fit(values, labels=labels)
    assert everywhere.suspicious_classes().tolist() == [20]
    assert len(everywhere.flagged_) == 6 * removal_count(50, 0.16)
    assert len(only.flagged_) == removal_count(50, 0.16) == 12 and (labels[only.flagged_] == 20).all()
    assert set(np.flatnonzero(poisoned).tolist()) <= set(only.flagged_.tolist())   # the 8 shifted ones among them
    assert only.removed_per_class_.tolist() == [0, 12, 0, 0, 0, 0]
    summary = only.summary()
    assert summary["suspicious_classes"] == [20] and summary["flagged"] == 12


def test_shared_features_and_bad_parameters():
    from goodnet.errors import OptionError

    values, labels, _ = _world()
    shared = Features(values, labels, layer="activation_1")
    spectral = SpectralSignatures().fit(shared)
    assert spectral.layer_ == "activation_1"
    with pytest.raises(OptionError, match="poison_rate"):
        SpectralSignatures(poison_rate=0.0).fit(shared)
    with pytest.raises(OptionError, match="method"):
        SpectralSignatures(method="fast").fit(shared)
