"""Spectral signatures (Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018).

A training-set detector: it takes the suspect model and the data set it was
trained on and names the samples to remove before retraining. For every
class (by training label), with R the n x d matrix of the class's learned
representations (the model's last hidden layer, :mod:`goodnet.features`):

1. centre it: ``C = R - mean(R)``;
2. take v, the top right singular vector of C;
3. score every sample ``((r - mean) . v)^2``, its squared projection on v;
4. remove the ``floor(1.5 * epsilon * n)`` highest-scoring samples of the
   class (``factor`` = 1.5, epsilon = ``poison_rate``: the assumed upper
   bound on the share of poisoned samples in a class).

A backdoor's poisoned samples shift the class's representation along one
direction, which becomes the top singular direction of the centred matrix,
so they score highest. Centring matters: several public implementations
(ART's ``SpectralSignatureDefense`` among them) project the *uncentred*
representations on v; the projection then carries the class mean's
component along v, whose arbitrary sign and offset can push the poison to
the bottom of the ranking. This module always scores the centred
representation (tests/defenses/test_spectral_signatures.py keeps a case
where the uncentred projection ranks the poison last).

Per class, goodnet also records how far the top direction dominates:
``sigma_1^2 / sigma_2^2``, the variance along v over the variance along the
next direction (``spectral_ratio``), and its MAD anomaly index across
classes: a poisoned class stands out (``suspicious``; on the digits BadNets
of bench/bench_inspect_data_art.py, index 4-35 for the poisoned class, at
most 2 for clean ones). The paper removes from every class
(``scope="all"``, the default); ``scope="suspicious"`` removes only from
classes whose index exceeds ``index_threshold``.

Speed: classes of similar size are stacked into zero-padded arrays and
their top two directions found at once by a symmetric eigen-decomposition
of the smaller Gram matrix, C C^T or C^T C (``method="batched"``; zero rows
leave them unchanged; about a third of an SVD's time);
``method="reference"`` runs the plain per-class NumPy SVD loop. Both give
the same scores up to float rounding.

Example:
    >>> spectral = SpectralSignatures(poison_rate=0.1).fit(badnet, "data/train.h5")
    >>> spectral.flagged_          # sample indices into the file
    >>> SpectralSignatures().fit(features)   # shared goodnet.features.Features
"""

import dataclasses

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, OneOf, check_is_fitted
from goodnet.defenses import _inspection
from goodnet.inference import DEFAULT_BATCH
from goodnet.options import constraints_of, option

METHODS = ("batched", "reference")
SCOPES = ("all", "suspicious")


@dataclasses.dataclass(frozen=True)
class SpectralOptions:
    """Every option of :class:`SpectralSignatures`, with its default, rule and help (``goodnet inspect-data``)."""

    poison_rate: float = option(0.1, "assumed share of poisoned samples in a class (epsilon); spectral signatures "
                                     "remove factor x epsilon x n per class", rule=Interval(float, 0.0, 1.0, "right"),
                                metavar="EPS")
    factor: float = option(1.5, "spectral signatures remove factor x epsilon x n samples per class",
                           rule=Interval(float, 0.0, closed="neither"), flag="--spectral-factor")
    scope: str = option("all", "classes spectral signatures remove from: all (the paper) or suspicious (the top "
                               "direction's dominance sigma_1^2 / sigma_2^2 stands out)", rule=OneOf(SCOPES),
                        flag="--spectral-scope", dest="spectral_scope")
    index_threshold: float = option(3.5, "MAD anomaly index of sigma_1^2 / sigma_2^2 above which a class is "
                                         "suspicious", rule=Interval(float, 0.0, closed="neither"),
                                    flag="--spectral-index", dest="spectral_index")
    method: str = option("batched", "batched eigen-decomposition over classes of similar size, or the plain "
                                    "per-class SVD loop",
                         rule=OneOf(METHODS), flag="--spectral-method", dest="spectral_method")


def removal_count(samples, poison_rate, factor=1.5):
    """``floor(factor * poison_rate * samples)``, at most ``samples``: how many a class loses (the paper's rule)."""
    return int(min(samples, np.floor(factor * poison_rate * samples + 1e-9)))


def spectral_scores_reference(rows):
    """The paper's scores of one class, plain NumPy: ``((r - mean) . v)^2`` with v the top right singular vector.

    Returns:
        tuple: (scores (n,), v (d,), singular values).
    """
    rows = np.asarray(rows, np.float64)
    if len(rows) < 2:
        return np.zeros(len(rows)), np.zeros(rows.shape[1]), np.zeros(0)
    _, centred, values, vectors = _inspection.centred_svd_reference(rows)
    direction = vectors[0]
    return (centred @ direction) ** 2, direction, values


_DEFAULTS = SpectralOptions()


class SpectralSignatures(Defense):
    """The spectral-signature detector (the :mod:`goodnet.base` estimator contract, a data defense).

    ``SpectralSignatures(**params).fit(source, images=None, labels=None)``:
    ``source`` is a :class:`goodnet.models.Classifier` with ``images`` the
    training data (a lab file path, :class:`goodnet.data.LabFile`,
    :class:`goodnet.data.LabData`, or an image array with ``labels``), or
    precomputed :class:`goodnet.features.Features` (shared by several
    detectors), or a (N, d) feature array with ``labels``.

    Parameters: the fields of :class:`SpectralOptions` (``poison_rate``,
    ``factor``, ``scope``, ``index_threshold``, ``method``), plus ``layer``
    (the feature layer for a classifier; default its last hidden layer),
    ``batch_size`` and ``progress``.

    Attributes (after ``fit``):
        layer_: the feature layer.
        classes_: the classes present (increasing).
        scores_: (N,) per-sample score ``((r - mean) . v)^2`` within its class.
        flagged_: sorted sample indices (into the file) removed.
        removed_per_class_: (C,) how many each class lost.
        directions_: (C, d) each class's top singular vector v.
        spectral_ratio_: (C,) sigma_1^2 / sigma_2^2 of the centred class matrix (NaN: no spread).
        anomaly_index_: (C,) MAD anomaly index of ``spectral_ratio_`` across classes.
        suspicious_: (C,) booleans: index above ``index_threshold``.
        class_verdict_: one JSON-ready dict per class.

    Example:
        >>> spectral = SpectralSignatures(poison_rate=0.05).fit(features)
        >>> np.setdiff1d(np.arange(len(features)), spectral.flagged_)   # what to retrain on
    """

    _parameter_constraints = {**constraints_of(SpectralOptions), "layer": [InstanceOf(str), None],
                              "batch_size": [Interval(int, 1)], "progress": [InstanceOf(bool), None]}

    def __init__(self, poison_rate=_DEFAULTS.poison_rate, factor=_DEFAULTS.factor, scope=_DEFAULTS.scope,
                 index_threshold=_DEFAULTS.index_threshold, method=_DEFAULTS.method, layer=None,
                 batch_size=DEFAULT_BATCH, progress=None):
        self.poison_rate = poison_rate
        self.factor = factor
        self.scope = scope
        self.index_threshold = index_threshold
        self.method = method
        self.layer = layer
        self.batch_size = batch_size
        self.progress = progress

    def fit(self, source, images=None, labels=None):
        """Score every sample and choose the ones to remove (see the class docstring for ``source``)."""
        from goodnet.features import features_of

        self._validate_params()
        features = features_of(source, images, labels, layer=self.layer, batch_size=self.batch_size,
                               progress=self.progress)
        groups = features.groups()
        count = len(groups)
        scores = np.zeros(len(features))
        directions = np.zeros((count, features.dim))
        ratios = np.full(count, np.nan)
        if self.method == "batched":
            self._batched(features, scores, directions, ratios)
        else:
            for position in range(count):
                indices = groups.indices(position)
                class_scores, direction, values = spectral_scores_reference(features.rows(indices))
                scores[indices] = class_scores
                directions[position] = direction
                ratios[position] = _ratio(values)
        index = _inspection.anomaly_index(ratios)
        suspicious = np.nan_to_num(index, nan=-np.inf) > self.index_threshold
        removed = np.zeros(count, np.int64)
        flagged = np.zeros(len(features), bool)
        verdicts = []
        for position in range(count):
            indices = groups.indices(position)
            take = self.scope == "all" or suspicious[position]
            removed[position] = removal_count(len(indices), self.poison_rate, self.factor) if take else 0
            chosen = indices[_inspection.top_counts(scores[indices], int(removed[position]))]
            flagged[chosen] = True
            verdicts.append({"class": int(groups.classes[position]), "samples": int(len(indices)),
                             "removed": int(removed[position]),
                             "score_threshold": float(scores[chosen].min()) if len(chosen) else None,
                             "spectral_ratio": _finite(ratios[position]), "anomaly_index": _finite(index[position]),
                             "suspicious": bool(suspicious[position])})
        self.layer_ = features.layer
        self.classes_ = groups.classes.copy()
        self.scores_ = scores
        self.flagged_ = np.flatnonzero(flagged).astype(np.int64)
        self.removed_per_class_ = removed
        self.directions_ = directions
        self.spectral_ratio_ = ratios
        self.anomaly_index_ = index
        self.suspicious_ = suspicious
        self.class_verdict_ = verdicts
        return self

    def _batched(self, features, scores, directions, ratios):
        groups = features.groups()
        for positions, padded, counts in _inspection.class_blocks(features):
            centred, energies, vectors = _inspection.top_eigen_batched(padded, counts, 2)
            top = vectors[:, 0, :]
            projections = np.einsum("gnd,gd->gn", centred, top)
            for slot, position in enumerate(positions):
                indices = groups.indices(position)
                if counts[slot] < 2:
                    continue
                scores[indices] = projections[slot, :counts[slot]] ** 2
                directions[position] = top[slot]
                ratios[position] = _ratio(np.sqrt(energies[slot]))

    def suspicious_classes(self):
        """The classes whose sigma_1^2 / sigma_2^2 stands out (MAD index above ``index_threshold``)."""
        check_is_fitted(self)
        return self.classes_[self.suspicious_]

    def summary(self):
        """Parameters, the flagged count, the suspicious classes and the per-class table (JSON-ready)."""
        check_is_fitted(self)
        result = super().summary()
        result.update({"method": "spectral", "layer": self.layer_, "samples": int(len(self.scores_)),
                       "flagged": int(len(self.flagged_)),
                       "suspicious_classes": [int(label) for label in self.suspicious_classes()],
                       "classes": self.class_verdict_})
        return result


def _ratio(values):
    """sigma_1^2 / sigma_2^2 (NaN for a class without spread; infinite with a single direction of spread)."""
    energy = np.asarray(values, np.float64) ** 2
    if len(energy) == 0 or energy[0] <= 0:
        return np.nan
    if len(energy) < 2 or energy[1] <= 0:
        return np.inf
    return float(energy[0] / energy[1])


def _finite(value):
    return float(value) if np.isfinite(value) else None
