"""Activation clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by Activation
Clustering", AAAI SafeAI workshop 2019, arXiv:1811.03728, 2018).

A training-set detector: it takes the suspect model and the data set it was
trained on. For every class (by training label):

1. the activations of the model's last hidden layer for the class's
   samples (:mod:`goodnet.features`), flattened;
2. reduced to ``dims`` = 10 dimensions: ICA (``reduce="ica"``, the paper's
   FastICA, run on the PCA coordinates), PCA of the centred activations
   (``"pca"``, what most tools use), or not at all (``"none"``); by default
   (``"auto"``) ICA for classes of at least ``ica_min_samples`` (100)
   samples and PCA for smaller ones, where ICA's whitening of 10 components
   from a few dozen samples is mostly noise;
3. split in two by k-means (k = 2; ``n_init`` greedy k-means++ starts drawn from
   ``seed`` and the class label, Lloyd iterations, the lowest inertia wins);
4. judged: the class holds poison when its smaller cluster is small
   (relative size at most ``size_threshold``, 0.35) **and** the two
   clusters are well separated: the split's mean silhouette in the PCA
   coordinates (the activations' own geometry; with ``reduce="none"``, the
   centred activations) is at least ``silhouette_threshold`` (0.5), or, for
   a class reduced by ICA, its silhouette in the ICA coordinates is at least
   ``ica_silhouette_threshold`` (0.2: ICA's whitening gives every component
   unit variance, which bounds the silhouette by the poison's share, not
   its distance) (``decision="size-silhouette"``, the default;
   ``"size"`` or ``"silhouette"`` use one test alone). Optionally
   (``exclusionary=True``, with ``fit(..., retrain=...)``) exclusionary
   reclassification confirms it: a model retrained without the suspicious
   clusters classifies each of them; a cluster whose images it gives to
   another class rather than their label (l / p < ``exclusionary_threshold``)
   was poison, one it gives back to its label was a legitimate mode.

Only the smaller cluster of a class judged poisoned is flagged. A common
tool default (ART's ``cluster_analysis="smaller"``) flags the smaller
cluster of *every* class, so a clean training set loses a third of its
images; goodnet never does (tests/defenses/test_activation_clustering.py
checks that clean classes are not flagged).

Per sample, the score is the cluster margin ``(d_large - d_small) /
(d_large + d_small)`` in the reduced space (distances to the two k-means
centres): positive inside the smaller cluster, near 1 deep inside it; NaN in
classes too small to cluster (``min_class_size``).

Speed: ``method="batched"`` stacks classes of similar size into zero-padded
arrays and runs the PCA (one batched SVD) and the k-means starts and
iterations of a whole group at once; ``method="reference"`` is the plain
per-class loop (NumPy PCA and Lloyd iterations, scikit-learn's silhouette).
Both draw the same k-means++ starts and give the same clusters, verdicts and
flags (scores equal up to float rounding). The silhouette is computed on at
most ``silhouette_samples`` samples of a class (a fixed random subset).

Example:
    >>> ac = ActivationClustering().fit(badnet, "data/train.h5")
    >>> ac.poisoned_classes(), ac.flagged_                       # classes judged poisoned; sample indices
    >>> ActivationClustering().fit(features)                     # shared goodnet.features.Features
"""

import dataclasses
import logging

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, OneOf, check_is_fitted
from goodnet.defenses import _inspection
from goodnet.errors import OptionError
from goodnet.inference import DEFAULT_BATCH, progress_bar
from goodnet.options import constraints_of, option

logger = logging.getLogger(__name__)

REDUCTIONS = ("auto", "ica", "pca", "none")
DECISIONS = ("size-silhouette", "size", "silhouette")
METHODS = ("batched", "reference")
NOT_CLUSTERED = -1
# The two silhouette thresholds, measured on the BadNets of bench/bench_inspect_data_art.py: digits (200-400 images a
# class, ICA): poisoned classes 0.24-0.35 in the ICA coordinates, clean classes with a small cluster at most 0.18;
# faces (35 a class, PCA): poisoned 0.58-0.69 in the PCA coordinates, clean ones at most 0.46. A far-off 20 % cluster
# of synthetic activations scores 0.89 in the PCA coordinates but only 0.16 in the whitened ICA ones.


@dataclasses.dataclass(frozen=True)
class ActivationClusteringOptions:
    """Every option of :class:`ActivationClustering`, with its default, rule and help (``goodnet inspect-data``)."""

    dims: int = option(10, "activation clustering: dimensions the activations are reduced to", rule=Interval(int, 1),
                       flag="--ac-dims")
    reduce: str = option("auto", "activation clustering: reduction (ica: the paper's FastICA, pca, none; auto: ica "
                                 "for classes of at least --ac-ica-min samples, pca for smaller ones)",
                         rule=OneOf(REDUCTIONS), flag="--ac-reduce")
    ica_min_samples: int = option(100, "activation clustering: smallest class reduced by ICA under --ac-reduce auto",
                                  rule=Interval(int, 2), flag="--ac-ica-min")
    decision: str = option("size-silhouette", "activation clustering: a class holds poison when its smaller cluster "
                                              "is small and the clusters are separated (size-silhouette), or by one "
                                              "test alone", rule=OneOf(DECISIONS), flag="--ac-decision")
    size_threshold: float = option(0.35, "activation clustering: largest relative size of a poison cluster",
                                   rule=Interval(float, 0.0, 0.5, "right"), flag="--ac-size")
    silhouette_threshold: float = option(0.5, "activation clustering: a poisoned class's two clusters have at least "
                                              "this mean silhouette in the PCA coordinates",
                                         rule=Interval(float, -1.0, 1.0), flag="--ac-silhouette")
    ica_silhouette_threshold: float = option(0.2, "activation clustering: ... or, for a class reduced by ICA, at least "
                                                  "this one in the ICA coordinates", rule=Interval(float, -1.0, 1.0),
                                             flag="--ac-ica-silhouette")
    min_class_size: int = option(16, "activation clustering: classes with fewer samples are not clustered",
                                 rule=Interval(int, 3), flag="--ac-min-class-size",
                                 dest="ac_min_class_size")
    exclusionary: bool = option(False, "activation clustering: confirm by exclusionary reclassification (retrain "
                                       "without the suspicious clusters, reclassify them)", rule=InstanceOf(bool),
                                flag="--ac-exclusionary")
    exclusionary_threshold: float = option(1.0, "activation clustering: a cluster is poison when l / p is below this "
                                                "(l: its images given their label, p: the most given another class)",
                                           rule=Interval(float, 0.0, closed="neither"), flag="--ac-exclusionary-ratio")
    n_init: int = option(30, "activation clustering: greedy k-means++ starts per class (after ICA's whitening a "
                             "trigger's cluster is one of several local optima of k-means)", rule=Interval(int, 1),
                         flag="--ac-starts")
    max_iter: int = option(100, "activation clustering: Lloyd iterations per start at most", rule=Interval(int, 1),
                           cli=False)
    silhouette_samples: int = option(1000, "activation clustering: samples of a class the silhouette is computed on",
                                     rule=Interval(int, 4), cli=False)
    seed: int = option(0, "seed of the detectors' random draws (k-means starts, subsets, forests)",
                       rule=Interval(int, 0))
    method: str = option("batched", "activation clustering: batched over classes of similar size, or the plain "
                                    "per-class loop", rule=OneOf(METHODS), flag="--ac-method", dest="ac_method")


# -- the steps, one class at a time (the reference) and batched --------------------------------------------------


LOCAL_TRIALS = 8   # candidates for the second k-means++ centre (greedy k-means++, as scikit-learn's KMeans)


def kmeans_starts(points, n_init, seed, label, trials=LOCAL_TRIALS):
    """Greedy k-means++ starting centres for k = 2: ``(n_init, 2, m)``, drawn from ``seed`` and the class label.

    The first centre is a uniformly drawn sample; ``trials`` candidates for
    the second are drawn with probability proportional to their squared
    distance to it, and the one leaving the smallest potential (the sum of
    every sample's squared distance to its nearer centre) is kept: a small
    far-off cluster (a trigger's) then gets a centre of its own. When every
    sample sits on the first centre, the second is the first again. Both
    paths use these draws.
    """
    points = np.asarray(points, np.float64)
    count = len(points)
    draws = np.random.default_rng([int(seed), int(label) & 0x7FFFFFFF]).random((n_init, 1 + trials))
    first = np.minimum((draws[:, 0] * count).astype(np.int64), count - 1)
    squared = ((points[None, :, :] - points[first][:, None, :]) ** 2).sum(-1)
    cumulative = np.cumsum(squared, axis=1)
    total = cumulative[:, -1]
    second = first.copy()
    for start in range(n_init):
        if total[start] <= 0:
            continue
        candidates = np.minimum(np.searchsorted(cumulative[start], draws[start, 1:] * total[start], side="right"),
                                count - 1)
        potentials = [np.minimum(squared[start], ((points - points[candidate]) ** 2).sum(-1)).sum()
                      for candidate in candidates]
        second[start] = candidates[int(np.argmin(potentials))]
    return np.stack([points[first], points[second]], axis=1)


def kmeans_reference(points, starts, max_iter):
    """Two-means of one class from each start, plain Lloyd iterations; the lowest-inertia start wins.

    Returns:
        tuple: (in_smaller (n,) booleans: the sample is in the smaller cluster,
        centres (2, m): [larger, smaller]).
    """
    points = np.asarray(points, np.float64)
    best = None
    for start in starts:
        centres = np.array(start, np.float64)
        assignment = None
        for _ in range(max_iter):
            distances = np.stack([((points - centres[k]) ** 2).sum(-1) for k in (0, 1)], axis=-1)
            new = distances[:, 1] < distances[:, 0]
            if assignment is not None and np.array_equal(new, assignment):
                break
            assignment = new
            for k, members in ((0, ~assignment), (1, assignment)):
                if members.any():
                    centres[k] = points[members].mean(axis=0)
        distances = np.stack([((points - centres[k]) ** 2).sum(-1) for k in (0, 1)], axis=-1)
        assignment = distances[:, 1] < distances[:, 0]
        inertia = np.minimum(distances[:, 0], distances[:, 1]).sum()
        if best is None or inertia < best[0]:
            best = (inertia, assignment, centres)
    return _smaller_first(best[1], best[2])


def _smaller_first(assignment, centres):
    """(in_smaller, [larger centre, smaller centre]): relabel so that cluster 1 is the smaller one."""
    if assignment.sum() > len(assignment) - assignment.sum():
        return ~assignment, centres[::-1].copy()
    return assignment, centres


def kmeans_batched(points, mask, starts, max_iter):
    """Two-means of a padded group of classes, every start at once (the same iterations as the reference).

    Args:
        points: (G, n, m) padded points; mask: (G, n) valid rows; starts: (G, I, 2, m).

    Returns:
        tuple: in_smaller (G, n) booleans, centres (G, 2, m) [larger, smaller].
    """
    centres = np.array(starts, np.float64)
    weights = mask[:, None, :]
    assignment = None
    for _ in range(max_iter):
        distances = _distances(points, centres)
        new = (distances[..., 1] < distances[..., 0]) & weights
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        for k, members in ((0, ~assignment & weights), (1, assignment)):
            counts = members.sum(-1)
            sums = np.einsum("gin,gnm->gim", members.astype(np.float64), points)
            centres[:, :, k] = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None],
                                        centres[:, :, k])
    distances = _distances(points, centres)
    assignment = (distances[..., 1] < distances[..., 0]) & weights
    inertia = np.where(weights, np.minimum(distances[..., 0], distances[..., 1]), 0.0).sum(-1)
    best = np.argmin(inertia, axis=1)                         # first start among equal inertias, as the reference
    rows = np.arange(len(points))
    chosen, chosen_centres = assignment[rows, best], centres[rows, best]
    larger = chosen.sum(-1) > mask.sum(-1) - chosen.sum(-1)
    chosen = np.where(larger[:, None], ~chosen & mask, chosen)
    chosen_centres = np.where(larger[:, None, None], chosen_centres[:, ::-1], chosen_centres)
    return chosen, chosen_centres


def _distances(points, centres):
    """Squared distances (G, I, n, 2) of padded points (G, n, m) to centres (G, I, 2, m)."""
    return np.stack([((points[:, None, :, :] - centres[:, :, None, k, :]) ** 2).sum(-1) for k in (0, 1)], axis=-1)


def margin_scores(points, centres):
    """``(d_large - d_small) / (d_large + d_small)`` per point (0 where both distances are 0)."""
    large = np.sqrt(((points - centres[..., 0:1, :]) ** 2).sum(-1))
    small = np.sqrt(((points - centres[..., 1:2, :]) ** 2).sum(-1))
    total = large + small
    return np.where(total > 0, (large - small) / np.where(total > 0, total, 1.0), 0.0)


def silhouette_subset(count, limit, seed, label):
    """The positions (sorted) of the samples of a class its silhouette is computed on: all, or ``limit`` drawn."""
    if count <= limit:
        return np.arange(count)
    rng = np.random.default_rng([int(seed), int(label) & 0x7FFFFFFF, 1])
    return np.sort(rng.choice(count, size=limit, replace=False))


def silhouette(points, in_smaller):
    """Mean silhouette of a two-cluster labelling, vectorised NumPy (sklearn's convention: 0 for a singleton).

    Returns:
        float: NaN when one cluster is empty.
    """
    points = np.asarray(points, np.float64)
    labels = np.asarray(in_smaller, bool)
    sizes = np.array([np.sum(~labels), np.sum(labels)])
    if sizes.min() == 0:
        return float("nan")
    norms = (points ** 2).sum(-1)
    distances = np.sqrt(np.maximum(norms[:, None] + norms[None, :] - 2.0 * points @ points.T, 0.0))
    np.fill_diagonal(distances, 0.0)
    to_smaller = distances[:, labels].sum(1)
    to_larger = distances[:, ~labels].sum(1)
    own_size = np.where(labels, sizes[1], sizes[0])
    other_size = np.where(labels, sizes[0], sizes[1])
    own = np.where(labels, to_smaller, to_larger) / np.maximum(own_size - 1, 1)
    other = np.where(labels, to_larger, to_smaller) / other_size
    spread = np.maximum(own, other)
    values = np.where((own_size > 1) & (spread > 0), (other - own) / np.where(spread > 0, spread, 1.0), 0.0)
    return float(values.mean())


def silhouette_reference(points, in_smaller):
    """The same with scikit-learn's ``silhouette_score`` (NaN when one cluster is empty)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(in_smaller, bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(silhouette_score(np.asarray(points, np.float64), labels.astype(int)))


def pca_reference(rows, dims):
    """PCA of one class: its centred rows projected on the top ``dims`` right singular vectors (n, dims).

    Directions past the centred matrix's rank (n - 1) give zero coordinates.
    """
    _, centred, _, vectors = _inspection.centred_svd_reference(rows)
    vectors = _rank_limited(vectors[:dims], len(rows))
    coordinates = centred @ vectors.T
    return _pad_columns(coordinates, dims)


def _rank_limited(vectors, count):
    vectors = np.array(vectors, np.float64)
    vectors[max(count - 1, 0):] = 0.0
    return vectors


def _pad_columns(coordinates, dims):
    if coordinates.shape[-1] >= dims:
        return coordinates[..., :dims]
    pad = [(0, 0)] * (coordinates.ndim - 1) + [(0, dims - coordinates.shape[-1])]
    return np.pad(coordinates, pad)


def ica_reduce(coordinates, dims, seed):
    """The paper's reduction: FastICA of one class's PCA coordinates (n, dims) to independent components.

    The coordinates' zero-variance directions (a class smaller than dims + 1)
    are left out and their columns stay zero.
    """
    import warnings

    from sklearn.decomposition import FastICA

    coordinates = np.asarray(coordinates, np.float64)
    spread = coordinates.std(axis=0)
    live = np.flatnonzero(spread > 1e-12 * max(1.0, float(spread.max(initial=0.0))))
    reduced = np.zeros((len(coordinates), dims))
    if live.size == 0:
        return reduced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # FastICA's convergence warnings; the clusters are what matters
        sources = FastICA(n_components=live.size, random_state=seed, whiten="unit-variance", max_iter=1000,
                          tol=0.005).fit_transform(coordinates[:, live])
    reduced[:, :live.size] = sources
    return reduced


# -- the detector ------------------------------------------------------------------------------------------------


_DEFAULTS = ActivationClusteringOptions()


class ActivationClustering(Defense):
    """The activation-clustering detector (the :mod:`goodnet.base` estimator contract, a data defense).

    ``ActivationClustering(**params).fit(source, images=None, labels=None, retrain=None)``:
    ``source`` is a :class:`goodnet.models.Classifier` with ``images`` the
    training data (a lab file path, :class:`goodnet.data.LabFile`,
    :class:`goodnet.data.LabData`, or an image array with ``labels``), or
    precomputed :class:`goodnet.features.Features` (shared by several
    detectors), or a (N, d) feature array with ``labels``. With
    ``exclusionary=True``, ``retrain(images, labels)`` must return a
    classifier trained on the given data, and ``images`` must be the
    training images (LabData, file or array) even when ``source`` is Features.

    Parameters: the fields of :class:`ActivationClusteringOptions`, plus
    ``layer`` (the feature layer for a classifier), ``batch_size`` and ``progress``.

    Attributes (after ``fit``):
        layer_: the feature layer.
        classes_: the classes present (increasing).
        scores_: (N,) cluster margin (positive: in the smaller cluster; NaN: class not clustered).
        clusters_: (N,) int8: 1 smaller cluster, 0 larger, -1 not clustered.
        flagged_: sorted sample indices (into the file) of the smaller clusters of classes judged poisoned.
        relative_size_: (C,) smaller cluster's share of its class (NaN: not clustered).
        silhouette_: (C,) mean silhouette of the two clusters in the PCA coordinates (NaN: not clustered or
            one cluster).
        ica_silhouette_: (C,) the same in the ICA coordinates (NaN for classes not reduced by ICA).
        reductions_: (C,) the reduction each class got ("ica", "pca", "none"; "" when not clustered).
        poisoned_: (C,) booleans: the class's verdict.
        class_verdict_: one JSON-ready dict per class (sizes, silhouette, verdict and its reason).

    Example:
        >>> ac = ActivationClustering(reduce="pca").fit(features)
        >>> [row for row in ac.class_verdict_ if row["poisoned"]]
    """

    _parameter_constraints = {**constraints_of(ActivationClusteringOptions), "layer": [InstanceOf(str), None],
                              "batch_size": [Interval(int, 1)], "progress": [InstanceOf(bool), None]}

    def __init__(self, dims=_DEFAULTS.dims, reduce=_DEFAULTS.reduce, ica_min_samples=_DEFAULTS.ica_min_samples,
                 decision=_DEFAULTS.decision,
                 size_threshold=_DEFAULTS.size_threshold, silhouette_threshold=_DEFAULTS.silhouette_threshold,
                 ica_silhouette_threshold=_DEFAULTS.ica_silhouette_threshold,
                 min_class_size=_DEFAULTS.min_class_size, exclusionary=_DEFAULTS.exclusionary,
                 exclusionary_threshold=_DEFAULTS.exclusionary_threshold, n_init=_DEFAULTS.n_init,
                 max_iter=_DEFAULTS.max_iter, silhouette_samples=_DEFAULTS.silhouette_samples, seed=_DEFAULTS.seed,
                 method=_DEFAULTS.method, layer=None, batch_size=DEFAULT_BATCH, progress=None):
        self.dims = dims
        self.reduce = reduce
        self.ica_min_samples = ica_min_samples
        self.decision = decision
        self.size_threshold = size_threshold
        self.silhouette_threshold = silhouette_threshold
        self.ica_silhouette_threshold = ica_silhouette_threshold
        self.min_class_size = min_class_size
        self.exclusionary = exclusionary
        self.exclusionary_threshold = exclusionary_threshold
        self.n_init = n_init
        self.max_iter = max_iter
        self.silhouette_samples = silhouette_samples
        self.seed = seed
        self.method = method
        self.layer = layer
        self.batch_size = batch_size
        self.progress = progress

    def fit(self, source, images=None, labels=None, retrain=None):
        """Cluster every class, judge it, flag the smaller clusters of poisoned classes (see the class docstring)."""
        from goodnet.features import Features, features_of

        self._validate_params()
        if self.exclusionary and retrain is None:
            raise OptionError("exclusionary: expected retrain=(images, labels) -> classifier for exclusionary "
                              "reclassification")
        training = images if isinstance(source, Features) else None
        features = features_of(source, None if training is not None else images, labels, layer=self.layer,
                               batch_size=self.batch_size, progress=self.progress)
        groups = features.groups()
        count = len(groups)
        eligible_mask = groups.counts >= self.min_class_size
        if self.reduce == "auto":
            reductions = np.where(groups.counts >= self.ica_min_samples, "ica", "pca")
        else:
            reductions = np.full(count, self.reduce)
        self.reductions_ = np.where(eligible_mask, reductions, "").astype(str)
        scores = np.full(len(features), np.nan)
        clusters = np.full(len(features), NOT_CLUSTERED, np.int8)
        relative = np.full(count, np.nan)
        separation = np.full((count, 2), np.nan)      # silhouette in the PCA and in the ICA coordinates
        eligible = np.flatnonzero(eligible_mask)
        with progress_bar(len(eligible), "activation clustering", self.progress, unit="class") as bar:
            if self.method == "batched":
                self._batched(features, eligible, scores, clusters, relative, separation, bar)
            else:
                self._reference(features, eligible, scores, clusters, relative, separation, bar)
        poisoned, reasons = self._decide(groups, relative, separation)
        verdicts = [{"class": int(groups.classes[position]), "samples": int(groups.counts[position]),
                     "clustered": bool(np.isfinite(relative[position])),
                     "smaller_cluster": int(np.sum(clusters[groups.indices(position)] == 1)),
                     "reduction": str(self.reductions_[position]) or None,
                     "relative_size": _finite(relative[position]), "silhouette": _finite(separation[position, 0]),
                     "ica_silhouette": _finite(separation[position, 1]),
                     "poisoned": bool(poisoned[position]), "reason": reasons[position]} for position in range(count)]
        if self.exclusionary:
            self._exclusionary(features, groups, clusters, poisoned, verdicts,
                               images if training is None else training, retrain)
        flagged = np.zeros(len(features), bool)
        for position in np.flatnonzero(poisoned):
            indices = groups.indices(position)
            flagged[indices[clusters[indices] == 1]] = True
        self.layer_ = features.layer
        self.classes_ = groups.classes.copy()
        self.scores_ = scores
        self.clusters_ = clusters
        self.flagged_ = np.flatnonzero(flagged).astype(np.int64)
        self.relative_size_ = relative
        self.silhouette_ = separation[:, 0].copy()
        self.ica_silhouette_ = separation[:, 1].copy()
        self.poisoned_ = poisoned
        self.class_verdict_ = verdicts
        return self

    # -- the two paths ---------------------------------------------------------------------------------------

    def _reduce_reference(self, rows, reduction):
        """(points clustered, the PCA coordinates or centred activations the silhouette is measured in)."""
        if reduction == "none":
            centred = rows - rows.mean(axis=0)
            return centred, centred
        principal = pca_reference(rows, self.dims)
        return (ica_reduce(principal, self.dims, self.seed) if reduction == "ica" else principal), principal

    def _reference(self, features, eligible, scores, clusters, relative, separation, bar):
        groups = features.groups()
        for position in eligible:
            indices = groups.indices(position)
            label = groups.classes[position]
            points, principal = self._reduce_reference(features.rows(indices), self.reductions_[position])
            starts = kmeans_starts(points, self.n_init, self.seed, label)
            in_smaller, centres = kmeans_reference(points, starts, self.max_iter)
            subset = silhouette_subset(len(points), self.silhouette_samples, self.seed, label)
            values = (silhouette_reference(principal[subset], in_smaller[subset]),
                      silhouette_reference(points[subset], in_smaller[subset])
                      if self.reductions_[position] == "ica" else np.nan)
            self._record(position, indices, points, in_smaller, centres, values, scores, clusters, relative,
                         separation)
            bar.update(1)

    def _batched(self, features, eligible, scores, clusters, relative, separation, bar):
        groups = features.groups()
        dims = self.dims if self.reduce != "none" else features.dim
        extra = self.n_init * dims * 8 * 4
        for positions, padded, counts in _inspection.class_blocks(features, eligible, extra=extra):
            mask = _inspection.valid_mask(counts, padded.shape[1])
            if self.reduce != "none":
                _, centred, _, vectors = _inspection.centred_svd_batched(padded, counts)
                top = np.stack([_rank_limited(_pad_rows(vectors[slot, :self.dims], self.dims), counts[slot])
                                for slot in range(len(positions))])
                principal = np.einsum("gnd,gkd->gnk", centred, top)
                points = principal.copy()
                for slot, position in enumerate(positions):   # FastICA is one class at a time in both paths
                    if self.reductions_[position] == "ica":
                        points[slot, :counts[slot]] = ica_reduce(principal[slot, :counts[slot]], dims, self.seed)
            else:
                points = (padded - (padded.sum(axis=1) / counts[:, None])[:, None, :]) * mask[:, :, None]
                principal = points
            starts = np.stack([kmeans_starts(points[slot, :counts[slot]], self.n_init, self.seed,
                                             groups.classes[position]) for slot, position in enumerate(positions)])
            in_smaller, centres = kmeans_batched(points, mask, starts, self.max_iter)
            for slot, position in enumerate(positions):
                size = counts[slot]
                own, chosen = points[slot, :size], in_smaller[slot, :size]
                subset = silhouette_subset(size, self.silhouette_samples, self.seed, groups.classes[position])
                values = (silhouette(principal[slot, :size][subset], chosen[subset]),
                          silhouette(own[subset], chosen[subset]) if self.reductions_[position] == "ica" else np.nan)
                self._record(position, groups.indices(position), own, chosen, centres[slot], values, scores,
                             clusters, relative, separation)
                bar.update(1)

    @staticmethod
    def _record(position, indices, points, in_smaller, centres, values, scores, clusters, relative, separation):
        scores[indices] = margin_scores(points, centres)
        clusters[indices] = in_smaller.astype(np.int8)
        relative[position] = in_smaller.sum() / len(in_smaller)
        separation[position] = values

    # -- the verdicts ----------------------------------------------------------------------------------------

    def _decide(self, groups, relative, separation):
        poisoned = np.zeros(len(groups), bool)
        reasons = []
        for position in range(len(groups)):
            size, (value, ica_value) = relative[position], separation[position]
            if not np.isfinite(size):
                reasons.append(f"not clustered: fewer than {self.min_class_size} samples")
                continue
            if not np.isfinite(value) or size == 0:
                reasons.append("one cluster: every sample alike")
                continue
            small = size <= self.size_threshold
            apart_principal = value >= self.silhouette_threshold
            apart_ica = bool(np.isfinite(ica_value) and ica_value >= self.ica_silhouette_threshold)
            apart = apart_principal or apart_ica
            verdict = {"size-silhouette": small and apart, "size": small, "silhouette": apart}[self.decision]
            poisoned[position] = verdict
            space = "PCA" if self.reductions_[position] != "none" else "activation"
            separated = (f"silhouette {value:.3f} {'>=' if apart_principal else '<'} {self.silhouette_threshold:g} "
                         f"({space})")
            if np.isfinite(ica_value):
                separated += (f" {'or' if apart else 'and'} {ica_value:.3f} {'>=' if apart_ica else '<'} "
                              f"{self.ica_silhouette_threshold:g} (ICA)")
            words = [f"smaller cluster {size * 100:.1f} % {'<=' if small else '>'} {self.size_threshold * 100:g} %",
                     separated]
            if self.decision == "size":
                words = words[:1]
            elif self.decision == "silhouette":
                words = words[1:]
            reasons.append(("poisoned: " if verdict else "clean: ") + ", ".join(words))
        return poisoned, reasons

    def _exclusionary(self, features, groups, clusters, poisoned, verdicts, images, retrain):
        """Exclusionary reclassification of every suspicious cluster, with one model retrained without them all."""
        data = _training_images(images, features)
        suspects = np.flatnonzero(poisoned)
        if suspects.size == 0:
            return
        excluded = np.zeros(len(features), bool)
        for position in suspects:
            indices = groups.indices(position)
            excluded[indices[clusters[indices] == 1]] = True
        kept = np.flatnonzero(~excluded)
        retrained = retrain(data.images[kept], data.labels[kept])
        for position in suspects:
            indices = groups.indices(position)
            members = indices[clusters[indices] == 1]
            answers = np.asarray(retrained.predict(data.images[members]), np.int64)
            label = int(groups.classes[position])
            own = int(np.sum(answers == label))
            others = answers[answers != label]
            if others.size:
                values, counts = np.unique(others, return_counts=True)
                other, most = int(values[np.argmax(counts)]), int(counts.max())
            else:
                other, most = None, 0
            ratio = own / most if most else float("inf")
            confirmed = ratio < self.exclusionary_threshold
            poisoned[position] = confirmed
            verdict = verdicts[position]
            verdict.update({"poisoned": bool(confirmed), "exclusionary": {
                "own_label": own, "most_other": most, "other_class": other,
                "ratio": None if most == 0 else float(ratio)}})
            verdict["reason"] += (f"; exclusionary reclassification: {own} of {len(members)} given back to class "
                                  f"{label}, {most} to class {other}: "
                                  f"{'poison' if confirmed else 'a legitimate mode'}")

    # -- results ---------------------------------------------------------------------------------------------

    def poisoned_classes(self):
        """The classes judged to hold poison."""
        check_is_fitted(self)
        return self.classes_[self.poisoned_]

    def summary(self):
        """Parameters, the flagged count, the poisoned classes and the per-class table (JSON-ready)."""
        check_is_fitted(self)
        result = super().summary()
        result.update({"method": "ac", "layer": self.layer_, "samples": int(len(self.scores_)),
                       "reductions": {str(name): int(np.sum(self.reductions_ == name))
                                      for name in sorted(set(self.reductions_.tolist()) - {""})},
                       "flagged": int(len(self.flagged_)),
                       "poisoned_classes": [int(label) for label in self.poisoned_classes()],
                       "classes": self.class_verdict_})
        return result


def _pad_rows(vectors, rows):
    if len(vectors) >= rows:
        return vectors[:rows]
    return np.concatenate([vectors, np.zeros((rows - len(vectors), vectors.shape[1]))])


def _training_images(images, features):
    """The training images as a LabData in memory (exclusionary reclassification retrains on them)."""
    from goodnet.data import LabData, LabFile

    if images is None:
        raise OptionError("images: exclusionary reclassification needs the training images")
    if isinstance(images, LabData):
        data = images
    elif isinstance(images, LabFile):
        data = images.read()
    elif hasattr(images, "__fspath__") or isinstance(images, str):
        with LabFile(images) as lab:
            data = lab.read()
    else:
        data = LabData(np.asarray(images, np.float32), features.labels)
    if len(data) != len(features) or not np.array_equal(data.labels, features.labels):
        raise OptionError("images: expected the training images the features were computed on (same count and labels)")
    return data


def _finite(value):
    return float(value) if np.isfinite(value) else None
