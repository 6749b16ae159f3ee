"""Deep Partition Aggregation (Levine and Feizi, "Deep Partition Aggregation: Provable Defenses against General
Poisoning Attacks", ICLR 2021).

A training-time defense with a certificate. The training set is split into
K disjoint partitions by a hash of each sample; one model is trained on each
partition; a test input gets the class most models vote for, the smaller
class on a tie. An inserted, removed or relabelled training sample lies in
one partition only, so it can change at most one model and so one vote. With
``n_c`` the votes for class c and ``g`` the answer, the paper's Theorem 1
certifies the answer against any poisoning of at most

    rho(x) = floor( (n_g - max_{c != g} (n_c + [c < g])) / 2 )

training samples (``[c < g]`` is 1 when c is the smaller class, which would
win a tie): each changed model moves one vote from g to a rival, closing the
gap by 2. This is the authors' own rule (their ``certify.py``:
``(top - second - (second index <= top index)) / 2``, rounded down; the two
agree, see :func:`certify_reference`). The *certified accuracy* at radius r
is the share of test inputs classified correctly with ``rho >= r``
(:func:`certified_accuracy_curve`).

The hash (``partition_hash``):

- ``sha256`` (default): the SHA-256 digest of the image's pixels as
  little-endian float32, channels-last (H, W, C), row-major; its first 8 bytes,
  read as a big-endian unsigned integer, modulo K. Stable across machines,
  across uint8 and float32 files of the same pixels and across the order of
  the file; the label is not hashed, so a flipped label stays in its image's
  partition (a relabelled sample then changes one model, a changed image at
  most two: its old and its new partition).
- ``pixel-sum``: the sum of the pixel values (each rounded down to a whole
  number in 0-255) modulo K, as the authors' ``partition_data_norm_hash.py``
  partitions MNIST, CIFAR and GTSRB.

Within a partition the images are ordered by digest (then label), as the
authors order theirs by content, so each model depends only on the contents
of its partition, not on where they lie in the file; model k is trained with
the seed ``seed + k`` (:func:`goodnet.training.train_deepid`). By default
(``match_steps``) each model trains for K times the recipe's epochs on its
1/K of the data (as many image passes as one model on the whole set), so
DPA takes about K times as long as one model; a model's training depends only on its
partition, K and the recipe, as the certificate requires.

The K models and the vote are saved as ONE ordinary Keras model (``ensemble_``,
:func:`goodnet.defenses._ensemble.vote_head`): its output is the vote share
per class (votes / K), so its argmax is DPA's answer with the smaller-class
tie rule and ``round(output * K)`` gives the votes back. The vote and the
certificate have a vectorised path (:func:`vote_counts`, :func:`certify`) and a
per-item NumPy reference (:func:`vote_counts_reference`,
:func:`certify_reference`), tested to agree.

Example:
    >>> dpa = PartitionAggregation(models=50).fit(train.images, train.labels, 10)
    >>> predictions, radii = dpa.certify(test.images)
    >>> dpa.certified_accuracy(test.images, test.labels)["rows"]    # r, certified accuracy
"""

import dataclasses
import hashlib

import numpy as np

from goodnet.base import InstanceOf, OneOf, check_is_fitted
from goodnet.defenses._ensemble import EnsembleOptions, _Ensemble, check_fit_data
from goodnet.errors import OptionError
from goodnet.options import constraints_of, option
from goodnet.training import TrainOptions

HASHES = ("sha256", "pixel-sum")
METHODS = ("vectorised", "reference")


@dataclasses.dataclass(frozen=True)
class PartitionOptions(EnsembleOptions):
    """Every option of :class:`PartitionAggregation` but the training recipe (``models`` = the K partitions)."""

    partition_hash: str = option("sha256", "dpa: the hash that assigns each training image its partition: "
                                           "sha256 of its pixels, or the authors' pixel-sum", rule=OneOf(HASHES))


def image_digests(images):
    """SHA-256 digests of each image's pixels as little-endian float32, channels-last, row-major (bytes each)."""
    images = np.asarray(images)
    return [hashlib.sha256(np.ascontiguousarray(image, dtype="<f4").tobytes()).digest() for image in images]


def partition_of(images, partitions, partition_hash="sha256", digests=None):
    """Each image's partition in 0..partitions-1 (see the module docstring for the two hashes).

    Args:
        images: (N, H, W, C) pixels 0-255.
        partitions: K.
        partition_hash: "sha256" or "pixel-sum".
        digests: the :func:`image_digests` of ``images`` if already computed.

    Returns:
        np.ndarray: (N,) int64.
    """
    if partition_hash not in HASHES:
        raise OptionError(f"partition_hash: expected one of {', '.join(HASHES)}, got {partition_hash!r}")
    if partition_hash == "pixel-sum":
        images = np.asarray(images)
        sums = np.floor(np.clip(images.reshape(len(images), -1), 0, 255)).astype(np.int64).sum(axis=1)
        return sums % int(partitions)
    digests = image_digests(images) if digests is None else digests
    return np.array([int.from_bytes(digest[:8], "big") % int(partitions) for digest in digests], np.int64)


def partition_subsets(images, labels, partitions, partition_hash="sha256"):
    """The K disjoint index arrays of DPA: partition by hash, each ordered by (digest, label).

    Returns:
        tuple: ((N,) partition of each image, list of K int64 index arrays).

    Raises:
        OptionError: a partition is empty (more partitions than the data fills).
    """
    digests = image_digests(images)
    assigned = partition_of(images, partitions, partition_hash, digests)
    labels = np.asarray(labels)
    empty = np.flatnonzero(np.bincount(assigned, minlength=int(partitions)) == 0)
    if len(empty):
        raise OptionError(f"models: {len(empty)} of {partitions} partitions hold no training image (the first: "
                          f"partition {empty[0]}; {len(assigned)} images); use fewer partitions")
    subsets = []
    for part in range(int(partitions)):
        members = np.flatnonzero(assigned == part)
        subsets.append(np.array(sorted(members, key=lambda index: (digests[index], int(labels[index]), index)),
                                np.int64))
    return assigned, subsets


# -- the vote and its certificate ----------------------------------------------------------------------------


def vote_counts(predictions, num_classes):
    """Votes per class: (N, K) member predictions -> (N, classes) int64 counts (vectorised)."""
    predictions = np.asarray(predictions, np.int64)
    rows = np.repeat(np.arange(len(predictions)), predictions.shape[1])
    counts = np.bincount(rows * num_classes + predictions.ravel(), minlength=len(predictions) * num_classes)
    return counts.reshape(len(predictions), num_classes).astype(np.int64)


def vote_counts_reference(predictions, num_classes):
    """:func:`vote_counts` one input and one vote at a time."""
    counts = np.zeros((len(predictions), num_classes), np.int64)
    for row, votes in enumerate(predictions):
        for vote in votes:
            counts[row, int(vote)] += 1
    return counts


def certify(counts):
    """DPA's answer and certificate per input, vectorised.

    Args:
        counts: (N, classes) votes per class.

    Returns:
        tuple: (answers (N,): the class with most votes, the smaller on a tie; certificates (N,):
        ``floor((n_g - max_{c != g} (n_c + [c < g])) / 2)``), both int64.
    """
    counts = np.asarray(counts, np.int64)
    rows = np.arange(len(counts))
    answers = counts.argmax(axis=1)
    rivals = counts + (np.arange(counts.shape[1])[None, :] < answers[:, None])
    rivals[rows, answers] = np.iinfo(np.int64).min
    certificates = (counts[rows, answers] - rivals.max(axis=1)) // 2
    return answers.astype(np.int64), certificates.astype(np.int64)


def certify_reference(counts):
    """:func:`certify` the plain way: per input, the paper's Theorem 1 written out over the classes."""
    answers, certificates = [], []
    for row in np.asarray(counts, np.int64):
        best = 0
        for label in range(1, len(row)):
            if row[label] > row[best]:          # a tie keeps the smaller class
                best = label
        rival = max(int(row[label]) + (1 if label < best else 0) for label in range(len(row)) if label != best)
        gap = int(row[best]) - rival
        answers.append(best)
        certificates.append(gap // 2)          # gap >= 0: a tie with a smaller class would have won
    return np.array(answers, np.int64), np.array(certificates, np.int64)


def certified_accuracy_curve(answers, certificates, labels):
    """The certified accuracy at every radius: the share of inputs answered correctly with certificate >= r.

    Args:
        answers, certificates: from :func:`certify`.
        labels: (N,) true labels.

    Returns:
        dict: ``rows`` (one ``{"radius": r, "certified_accuracy": a, "certified": count}`` for r = 0 .. the
        largest certificate of a correct answer; r = 0 is the clean accuracy), ``images``, ``clean_accuracy``
        and ``median_certified_radius`` (the largest r whose certified accuracy is at least 50 %; None when
        the clean accuracy is below 50 %).
    """
    answers, certificates, labels = (np.asarray(value, np.int64) for value in (answers, certificates, labels))
    if not len(labels):
        raise OptionError("labels: expected at least one input to certify, got none")
    certified = np.where(answers == labels, certificates, -1)
    largest = max(int(certified.max()), 0)
    rows = [{"radius": radius, "certified": int(np.sum(certified >= radius)),
             "certified_accuracy": float(np.mean(certified >= radius))} for radius in range(largest + 1)]
    median = [row["radius"] for row in rows if row["certified_accuracy"] >= 0.5]
    return {"images": int(len(labels)), "clean_accuracy": rows[0]["certified_accuracy"],
            "median_certified_radius": max(median) if median else None, "rows": rows}


_DEFAULTS = PartitionOptions()


class PartitionAggregation(_Ensemble):
    """Deep Partition Aggregation: one DeepID per hash partition, majority vote, certificates (the contract).

    ``PartitionAggregation(**params).fit(images, labels, num_classes=None)``: a training-time defense; it
    takes the training set itself (raw pixels 0-255) and trains the ensemble.

    Parameters: the fields of :class:`PartitionOptions` (``models``: the number of partitions K, one model
    each; ``partition_hash``; ``match_steps``: each model trains K times the recipe's epochs on its 1/K of
    the data), ``recipe`` (a :class:`goodnet.training.TrainOptions`:
    the models' epochs (see ``match_steps``), batch size, learning rate and seed; model k uses ``seed + k``)
    and ``progress`` (the bar over the models).

    Attributes (after ``fit``): those of the ensemble (``ensemble_``: the merged voting model to save,
    ``members_``, ``subsets_``: each partition's indices in training order, ``member_seconds_``,
    ``num_classes_``), and ``partitions_``: (N,) the partition of each training image.

    Example:
        >>> dpa = PartitionAggregation(models=20).fit(images, labels, 10)
        >>> dpa.certified_accuracy(test.images, test.labels)["median_certified_radius"]
    """

    HEAD = "vote"
    NAME = "dpa"
    _parameter_constraints = {**constraints_of(PartitionOptions), "recipe": [InstanceOf(TrainOptions)],
                              "progress": [InstanceOf(bool), None]}

    def __init__(self, models=_DEFAULTS.models, partition_hash=_DEFAULTS.partition_hash,
                 match_steps=_DEFAULTS.match_steps, recipe=TrainOptions(), progress=None):
        self.models = models
        self.partition_hash = partition_hash
        self.match_steps = match_steps
        self.recipe = recipe
        self.progress = progress

    def fit(self, images, labels, num_classes=None):
        """Partition the training set by hash and train one DeepID per partition; merge them under the vote.

        Args:
            images: training images (N, 55, 47, 3), pixels 0-255.
            labels: (N,) labels.
            num_classes: classes of the task (default: the largest label + 1).

        Returns:
            self.

        Raises:
            OptionError: bad parameters, or a partition without an image.
        """
        from goodnet.options import validate_options

        self._validate_params()
        validate_options(self.recipe, "PartitionAggregation.recipe")
        images, labels, num_classes = check_fit_data(images, labels, num_classes, "PartitionAggregation")
        self.partitions_, subsets = partition_subsets(images, labels, self.models, self.partition_hash)
        return self._fit_members(images, labels, num_classes, subsets, 1.0 / self.models, "dpa")

    def votes(self, images, method="vectorised"):
        """Votes per class (N, classes) int64.

        ``method="vectorised"``: read off the merged model's output (vote share x K); ``"reference"``: each
        member's top class (``np.argmax``) counted one at a time (:func:`vote_counts_reference`).
        """
        check_is_fitted(self, "ensemble_")
        if method not in METHODS:
            raise OptionError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        if method == "reference":
            return vote_counts_reference(self.member_predictions(images), self.num_classes_)
        return np.rint(self.predict_proba(images) * len(self.members_)).astype(np.int64)

    def certify(self, images, method="vectorised"):
        """DPA's answer and certificate for each image: (answers, certificates), int64 (see :func:`certify`)."""
        counts = self.votes(images, method)
        return certify(counts) if method == "vectorised" else certify_reference(counts)

    def certified_accuracy(self, images, labels, method="vectorised"):
        """The certified-accuracy curve on labelled images (:func:`certified_accuracy_curve`)."""
        answers, certificates = self.certify(images, method)
        return certified_accuracy_curve(answers, certificates, labels)

    def summary(self):
        summary = super().summary()
        if hasattr(self, "partitions_"):
            summary["partition_sizes"] = [int(value) for value in np.bincount(self.partitions_,
                                                                              minlength=len(self.members_))]
        return summary
