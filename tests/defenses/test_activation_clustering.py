"""Activation clustering (Chen et al. 2018): clean classes stay unflagged, batched = reference, NumPy/sklearn checks."""

import numpy as np
import pytest

from goodnet.defenses.activation_clustering import (ActivationClustering, kmeans_batched, kmeans_reference,
                                                    kmeans_starts, silhouette, silhouette_reference)
from goodnet.features import Features


def _world(seed=0, sizes=(80, 60, 90, 70), dim=20, poison=(2, 15), labels_of=(3, 11, 5, 8)):
    """Shuffled unimodal Gaussian classes (labels 3, 11, 5, 8: not positions); class ``poison[0]``'s first
    ``poison[1]`` samples moved far off along a direction of their own (a trigger's cluster)."""
    rng = np.random.default_rng(seed)
    positions = np.repeat(np.arange(len(sizes)), sizes)
    labels = np.asarray(labels_of)[positions]
    values = rng.normal(0, 1, (len(labels), dim)) + rng.normal(0, 4, (len(sizes), dim))[positions]
    poisoned = np.zeros(len(labels), bool)
    if poison is not None:
        target = np.flatnonzero(positions == poison[0])[:poison[1]]
        values[target] += 9.0 * rng.normal(0, 1, dim) / np.sqrt(dim) * 3
        poisoned[target] = True
    order = rng.permutation(len(labels))
    return values[order].astype(np.float32), labels[order], poisoned[order]


def test_clean_classes_are_not_flagged_only_the_poison_cluster_is():
    values, labels, poisoned = _world()
    ac = ActivationClustering().fit(values, labels=labels)
    np.testing.assert_array_equal(ac.flagged_, np.flatnonzero(poisoned))   # sample indices into the data
    assert ac.poisoned_classes().tolist() == [5]
    # the pitfall: every class has a smaller cluster (a public default flags them all); goodnet keeps the clean ones
    smaller = [row["smaller_cluster"] for row in ac.class_verdict_]
    assert all(count > 0 for count in smaller)
    clean_rows = [row for row in ac.class_verdict_ if row["class"] != 5]
    assert all(not row["poisoned"] and row["reason"].startswith("clean") for row in clean_rows)
    assert sum(smaller) > 3 * len(np.flatnonzero(poisoned))
    # and a wholly clean set loses nothing
    clean_values, clean_labels, _ = _world(poison=None)
    nothing = ActivationClustering().fit(clean_values, labels=clean_labels)
    assert nothing.flagged_.size == 0 and not nothing.poisoned_.any()
    assert np.all(np.isfinite(nothing.scores_)) and (nothing.clusters_ >= 0).all()


def test_scores_are_positive_in_the_smaller_cluster():
    values, labels, poisoned = _world()
    ac = ActivationClustering().fit(values, labels=labels)
    members = labels == 5
    assert (ac.scores_[poisoned] > 0).all()
    assert (ac.scores_[members & ~poisoned] < 0).all()
    np.testing.assert_array_equal(ac.clusters_[members] == 1, poisoned[members])
    ratio = ac.class_verdict_[list(ac.classes_).index(5)]["relative_size"]
    assert ratio == pytest.approx(15 / 90)


def test_batched_and_reference_agree_on_every_reduction():
    values, labels, _ = _world(seed=4, sizes=(80, 75, 300, 21, 5), labels_of=(0, 1, 2, 3, 4))
    for reduce in ("auto", "pca", "ica", "none"):
        batched = ActivationClustering(reduce=reduce).fit(values, labels=labels)
        reference = ActivationClustering(reduce=reduce, method="reference").fit(values, labels=labels)
        np.testing.assert_array_equal(batched.clusters_, reference.clusters_)
        np.testing.assert_array_equal(batched.flagged_, reference.flagged_)
        np.testing.assert_array_equal(batched.poisoned_, reference.poisoned_)
        np.testing.assert_allclose(batched.scores_, reference.scores_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(batched.silhouette_, reference.silhouette_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(batched.relative_size_, reference.relative_size_)
        assert np.isnan(batched.scores_[labels == 4]).all()           # 5 samples: fewer than min_class_size


def test_the_pca_is_numpy_pca_and_kmeans_matches_scikit_learn():
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from goodnet.defenses.activation_clustering import pca_reference

    values, labels, poisoned = _world()
    rows = values[labels == 5].astype(np.float64)
    ours = pca_reference(rows, 10)
    theirs = PCA(10, svd_solver="full").fit_transform(rows)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-8)    # the same up to each axis's sign
    starts = kmeans_starts(ours, 10, seed=0, label=5)
    in_smaller, centres = kmeans_reference(ours, starts, 100)
    sklearn_labels = KMeans(2, n_init=10, random_state=0).fit_predict(ours)
    same = (sklearn_labels == sklearn_labels[np.argmax(in_smaller)]) == in_smaller
    assert same.all()                                                      # the same partition
    np.testing.assert_allclose(centres[1], ours[in_smaller].mean(axis=0))
    batched, batched_centres = kmeans_batched(ours[None], np.ones((1, len(ours)), bool), starts[None], 100)
    np.testing.assert_array_equal(batched[0], in_smaller)
    np.testing.assert_allclose(batched_centres[0], centres)


def test_silhouette_matches_scikit_learn_and_padding_does_not_change_kmeans():
    rng = np.random.default_rng(2)
    points = rng.normal(0, 1, (40, 3))
    split = points[:, 0] > 0.4
    assert silhouette(points, split) == pytest.approx(silhouette_reference(points, split), abs=1e-10)
    single = np.zeros(40, bool)
    single[7] = True                                                       # a singleton counts 0, as in sklearn
    assert silhouette(points, single) == pytest.approx(silhouette_reference(points, single), abs=1e-10)
    assert np.isnan(silhouette(points, np.zeros(40, bool)))
    # two classes of different sizes in one padded group give what each gives alone
    other = rng.normal(3, 1, (25, 3))
    padded = np.zeros((2, 40, 3))
    padded[0], padded[1, :25] = points, other
    mask = np.zeros((2, 40), bool)
    mask[0], mask[1, :25] = True, True
    starts = np.stack([kmeans_starts(points, 4, 0, 1), kmeans_starts(other, 4, 0, 2)])
    together, _ = kmeans_batched(padded, mask, starts, 50)
    np.testing.assert_array_equal(together[0], kmeans_reference(points, starts[0], 50)[0])
    np.testing.assert_array_equal(together[1, :25], kmeans_reference(other, starts[1], 50)[0])
    assert not together[1, 25:].any()


def test_the_decision_rules_and_exclusionary_reclassification():
    from goodnet.errors import OptionError

    values, labels, poisoned = _world()
    size_only = ActivationClustering(decision="size", size_threshold=0.2).fit(values, labels=labels)
    assert 5 in size_only.poisoned_classes().tolist()
    strict = ActivationClustering(silhouette_threshold=0.99).fit(values, labels=labels)
    assert strict.flagged_.size == 0
    with pytest.raises(OptionError, match="retrain"):
        ActivationClustering(exclusionary=True).fit(values, labels=labels)
    images = np.zeros((len(labels), 2, 2, 3), np.float32)
    images[:, 0, 0, 0] = np.arange(len(labels))                           # lets the fake model see which sample

    class Retrained:
        """Answers the source class for the poison (as a model trained without it would) or the label."""

        def __init__(self, answer):
            self.answer = answer

        def predict(self, batch):
            return self.answer[batch[:, 0, 0, 0].astype(int)]

    seen = {}

    def retrain_poison(kept_images, kept_labels):
        seen["kept"] = len(kept_labels)
        return Retrained(np.where(poisoned, 11, labels))

    confirmed = ActivationClustering(exclusionary=True).fit(Features(values, labels), images=images,
                                                             retrain=retrain_poison)
    assert seen["kept"] == len(labels) - poisoned.sum()                   # retrained without the suspicious cluster
    np.testing.assert_array_equal(confirmed.flagged_, np.flatnonzero(poisoned))
    row = confirmed.class_verdict_[list(confirmed.classes_).index(5)]
    assert row["exclusionary"] == {"own_label": 0, "most_other": 15, "other_class": 11, "ratio": 0.0}
    legitimate = ActivationClustering(exclusionary=True).fit(values, images=images, labels=labels,
                                                              retrain=lambda *_: Retrained(labels))
    assert legitimate.flagged_.size == 0 and "legitimate mode" in legitimate.class_verdict_[
        list(legitimate.classes_).index(5)]["reason"]


def test_small_classes_are_not_clustered_and_parameters_are_checked():
    from goodnet.errors import OptionError

    values, labels, _ = _world(sizes=(80, 10, 90, 70))
    ac = ActivationClustering().fit(values, labels=labels)
    row = ac.class_verdict_[list(ac.classes_).index(11)]
    assert not row["clustered"] and "fewer than 16" in row["reason"]
    assert (ac.clusters_[labels == 11] == -1).all()
    with pytest.raises(OptionError, match="size_threshold"):
        ActivationClustering(size_threshold=0.7).fit(values, labels=labels)
    with pytest.raises(OptionError, match="reduce"):
        ActivationClustering(reduce="tsne").fit(values, labels=labels)
    summary = ac.summary()
    assert summary["reductions"] == {"pca": 3} and summary["poisoned_classes"] == [5]
    assert row["reduction"] is None and ac.class_verdict_[0]["reduction"] == "pca"   # under 100 samples: PCA
    big = ActivationClustering(ica_min_samples=80).fit(values, labels=labels)
    assert set(big.reductions_.tolist()) == {"ica", "pca", ""}
    assert np.isnan(big.ica_silhouette_[big.reductions_ != "ica"]).all()
    assert np.isfinite(big.ica_silhouette_[big.reductions_ == "ica"]).all()


def test_large_classes_are_reduced_by_ica_and_judged_in_both_spaces():
    values, labels, poisoned = _world(seed=1, sizes=(150, 120, 200, 110), poison=(2, 20))
    ac = ActivationClustering().fit(values, labels=labels)
    assert set(ac.reductions_.tolist()) == {"ica"}
    np.testing.assert_array_equal(ac.flagged_, np.flatnonzero(poisoned))
    # a far-off 10 % cluster: clearly apart in the PCA coordinates, while whitening caps its ICA silhouette
    target = list(ac.classes_).index(5)
    assert ac.silhouette_[target] >= 0.5 and ac.ica_silhouette_[target] < ac.silhouette_[target]
    assert "(PCA)" in ac.class_verdict_[target]["reason"] and "(ICA)" in ac.class_verdict_[target]["reason"]
    clean_values, clean_labels, _ = _world(seed=1, sizes=(150, 120, 200, 110), poison=None)
    assert ActivationClustering().fit(clean_values, labels=clean_labels).flagged_.size == 0
