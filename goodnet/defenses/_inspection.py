"""Shared machinery of the training-set detectors (activation clustering, spectral signatures, isolation forest).

- :func:`class_blocks`: the classes in groups of similar size, each group's
  features as one zero-padded float64 array (G, n_max, dim) with its counts,
  so a batched NumPy call serves a whole group while memory stays bounded;
- :func:`centred_svd_batched` / :func:`centred_svd_reference`: the class
  means and the right singular vectors of the *centred* class matrices,
  for a padded group at once or for one class; :func:`top_eigen_batched`:
  the top few of them from the eigen-decomposition of the smaller Gram
  matrix (spectral signatures' fast path);
- :func:`anomaly_index`: the MAD anomaly index of per-class statistics;
- :func:`detection_figures`: precision, recall and F1 of flagged samples
  against ground truth (and the ROC AUC of the scores, :func:`rank_auc`);
- :func:`top_counts`: the k highest scores of a class (ties: file order).

The detectors import it; nothing here knows about a particular detector.
"""

import numpy as np

BLOCK_BYTES = 64 * 2 ** 20   # float64 bytes of one padded group of classes
SIZE_RATIO = 1.25            # classes grouped together differ in size by at most this factor


def class_blocks(features, positions=None, block_bytes=BLOCK_BYTES, extra=0):
    """Yield ``(positions, padded, counts)``: groups of classes of similar size, features zero-padded.

    Args:
        features: :class:`goodnet.features.Features`.
        positions: positions (into ``features.groups().classes``) to cover (default: all).
        block_bytes: float64 bytes a group's padded array may take (a class larger than that is a group alone).
        extra: bytes per padded row that the caller will add (its own per-row arrays).

    Yields:
        tuple: positions (int64 array), padded float64 (G, n_max, dim) with
        rows past each class's count zero, counts (G,). Rows keep the class's
        sample order (file order).
    """
    groups = features.groups()
    positions = np.arange(len(groups)) if positions is None else np.asarray(positions, np.int64)
    if positions.size == 0:
        return
    counts = groups.counts[positions]
    order = positions[np.argsort(counts, kind="stable")]
    row_bytes = features.dim * 8 + extra
    start = 0
    while start < len(order):
        smallest = int(groups.counts[order[start]])
        stop = start + 1
        while stop < len(order):
            size = int(groups.counts[order[stop]])
            if size > SIZE_RATIO * smallest or size * row_bytes * (stop - start + 1) > block_bytes:
                break
            stop += 1
        chosen = order[start:stop]
        sizes = groups.counts[chosen]
        padded = np.zeros((len(chosen), int(sizes.max()), features.dim))
        for slot, position in enumerate(chosen):
            padded[slot, :sizes[slot]] = features.rows(groups.indices(position))
        yield chosen, padded, sizes
        start = stop


def valid_mask(counts, rows):
    """(G, rows) booleans: which padded rows hold a sample."""
    return np.arange(rows)[None, :] < np.asarray(counts)[:, None]


def centred_svd_batched(padded, counts):
    """Class means and SVD of the centred class matrices of a padded group (padding rows stay zero).

    Zero rows add nothing to ``C^T C``, so the singular values and right
    singular vectors of a padded centred matrix are those of the class's own.

    Returns:
        tuple: means (G, dim), centred (G, n_max, dim) with padding zero,
        singular values (G, r), right singular vectors (G, r, dim) with
        r = min(n_max, dim).
    """
    counts = np.asarray(counts)
    mask = valid_mask(counts, padded.shape[1])
    means = padded.sum(axis=1) / counts[:, None]
    centred = (padded - means[:, None, :]) * mask[:, :, None]
    _, values, vectors = np.linalg.svd(centred, full_matrices=False)
    return means, centred, values, fixed_signs(vectors)


def top_eigen_batched(padded, counts, k):
    """The top ``k`` principal directions of each centred class of a padded group, from the smaller Gram matrix.

    The right singular vectors of the centred matrix C (n x d) are the
    eigenvectors of C^T C (d x d); when n < d they are C^T u / sigma for the
    eigenvectors u of C C^T (n x n), with the same eigenvalues sigma^2. A
    symmetric eigen-decomposition of the smaller of the two costs a fraction
    of an SVD of C; zero padding rows add zero rows and columns to C C^T,
    which leave its top eigenpairs alone.

    Returns:
        tuple: centred (G, n_max, dim) with padding zero, eigenvalues
        sigma^2 (G, k) decreasing (0 past the rank), directions (G, k, dim)
        with :func:`fixed_signs` (zero where sigma is 0).
    """
    counts = np.asarray(counts)
    mask = valid_mask(counts, padded.shape[1])
    means = padded.sum(axis=1) / counts[:, None]
    centred = (padded - means[:, None, :]) * mask[:, :, None]
    rows, dim = centred.shape[1:]
    transposed = np.swapaxes(centred, 1, 2)
    if rows < dim:
        values, vectors = np.linalg.eigh(centred @ transposed)          # (G, n, n), increasing
        values, vectors = values[:, ::-1][:, :k], vectors[:, :, ::-1][:, :, :k]
        values = np.maximum(values, 0.0)
        sigma = np.sqrt(values)
        directions = np.swapaxes(transposed @ vectors, 1, 2)           # C^T u: (G, k, dim), norm sigma
        directions = directions / np.where(sigma > 0, sigma, 1.0)[:, :, None]
    else:
        values, vectors = np.linalg.eigh(transposed @ centred)          # (G, d, d), increasing
        values = np.maximum(values[:, ::-1][:, :k], 0.0)
        directions = np.swapaxes(vectors[:, :, ::-1][:, :, :k], 1, 2)
    width = directions.shape[1]
    if width < k:   # fewer samples than k directions
        values = np.concatenate([values, np.zeros((len(values), k - width))], axis=1)
        directions = np.concatenate([directions, np.zeros((len(values), k - width, dim))], axis=1)
    directions = np.where((values > 0)[:, :, None], fixed_signs(directions), 0.0)
    return centred, values, directions


def centred_svd_reference(rows):
    """One class: its mean, centred matrix, singular values and right singular vectors (plain NumPy)."""
    rows = np.asarray(rows, np.float64)
    mean = rows.mean(axis=0)
    centred = rows - mean
    _, values, vectors = np.linalg.svd(centred, full_matrices=False)
    return mean, centred, values, fixed_signs(vectors)


def fixed_signs(vectors):
    """Singular vectors (..., r, d) with a fixed sign: each one's largest-magnitude entry positive.

    An SVD's vectors are defined up to sign, and batched and single LAPACK
    calls may choose differently; fixing it makes projections repeatable.
    """
    vectors = np.array(vectors, np.float64)
    largest = np.take_along_axis(vectors, np.abs(vectors).argmax(axis=-1)[..., None], axis=-1)
    return vectors * np.where(largest < 0, -1.0, 1.0)


def anomaly_index(values):
    """|value - median| / (1.4826 MAD), signed (positive above the median); NaN where undefined.

    Neural Cleanse's robust z-score (:func:`goodnet.defenses.neural_cleanse.anomaly_index`, the one
    implementation) with a sign; NaN entries are ignored and stay NaN, and fewer than three finite
    values give NaN everywhere.
    """
    from goodnet.defenses.neural_cleanse import anomaly_index as mad_index

    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    result = np.full(values.shape, np.nan)
    if finite.sum() < 3:
        return result
    index, median, _ = mad_index(values[finite])
    result[finite] = np.copysign(index, values[finite] - median)
    return result


def detection_figures(flagged, poisoned, scores=None):
    """Precision, recall and F1 of ``flagged`` samples against ground truth ``poisoned`` (booleans per sample).

    Precision is None when nothing is flagged, recall None without poison,
    F1 None when either is.

    Args:
        flagged: (N,) booleans, or sample indices.
        poisoned: (N,) booleans: the ground truth.
        scores: optional (N,) suspicion scores; adds the ROC AUC of the
            ranking (NaN scores count as the least suspicious).

    Returns:
        dict: ``flagged``, ``poisoned``, ``true_positives``, ``false_positives``,
        ``false_negatives``, ``precision``, ``recall``, ``f1`` (and ``auc``).
    """
    poisoned = np.asarray(poisoned, bool)
    flagged = np.asarray(flagged)
    if flagged.dtype != bool:
        mask = np.zeros(len(poisoned), bool)
        mask[flagged.astype(np.int64)] = True
        flagged = mask
    true_positives = int(np.sum(flagged & poisoned))
    false_positives = int(np.sum(flagged & ~poisoned))
    false_negatives = int(np.sum(~flagged & poisoned))
    precision = true_positives / (true_positives + false_positives) if flagged.any() else None
    recall = true_positives / (true_positives + false_negatives) if poisoned.any() else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    figures = {"flagged": int(flagged.sum()), "poisoned": int(poisoned.sum()), "true_positives": true_positives,
               "false_positives": false_positives, "false_negatives": false_negatives, "precision": precision,
               "recall": recall, "f1": f1}
    if scores is not None:
        figures["auc"] = rank_auc(scores, poisoned)
    return figures


def rank_auc(scores, positive):
    """ROC AUC of ``scores`` for ``positive`` (ties count half; NaN is the lowest score); None for one class only."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    count = int(positive.sum())
    return float((ranks[positive].sum() - count * (count + 1) / 2) / (count * (len(scores) - count)))


def top_counts(scores, count):
    """Booleans flagging the ``count`` highest ``scores`` (ties: the earlier sample first)."""
    scores = np.asarray(scores, np.float64)
    chosen = np.zeros(len(scores), bool)
    if count > 0:
        # stable sort of -scores keeps file order among equal scores
        chosen[np.argsort(-scores, kind="stable")[:count]] = True
    return chosen
