"""Deep Partition Aggregation: the vote and certificate against per-item references and a brute-force check of
what the certificate promises, the hash partition (stable, disjoint, content-ordered), the voting head's
tie-break, and the fitted ensemble saved as one plain Keras model that loads and predicts as in memory."""

import hashlib
import itertools

import numpy as np
import pytest

from goodnet.defenses.partition_aggregation import (PartitionAggregation, certified_accuracy_curve, certify,
                                                    certify_reference, image_digests, partition_of,
                                                    partition_subsets, vote_counts, vote_counts_reference)
from goodnet.errors import OptionError
from goodnet.training import TrainOptions
from square_task import coloured_squares


def test_vote_counts_match_the_per_item_reference():
    rng = np.random.default_rng(0)
    predictions = rng.integers(0, 6, (300, 7))
    counts = vote_counts(predictions, 6)
    np.testing.assert_array_equal(counts, vote_counts_reference(predictions, 6))
    assert counts.dtype == np.int64 and np.all(counts.sum(axis=1) == 7)


def test_certificate_follows_the_paper_and_matches_the_reference():
    # (votes per class, answer, certificate): ties go to the smaller class, and a smaller rival needs one vote
    # less to win, so it counts one more: floor((n_g - max_{c != g} (n_c + [c < g])) / 2)
    cases = [([3, 3, 0], 0, 0), ([2, 3, 0], 1, 0), ([5, 2, 0], 0, 1), ([2, 4, 0], 1, 0), ([0, 4, 2], 1, 1),
             ([0, 0, 7], 2, 3), ([1, 0, 6], 2, 2), ([4, 4, 4], 0, 0), ([0, 9, 0], 1, 4), ([10, 0, 0], 0, 5)]
    counts = np.array([case[0] for case in cases])
    for method in (certify, certify_reference):
        answers, certificates = method(counts)
        np.testing.assert_array_equal(answers, [case[1] for case in cases])
        np.testing.assert_array_equal(certificates, [case[2] for case in cases])
    rng = np.random.default_rng(1)
    many = rng.integers(0, 4, (2000, 5))            # small counts: many ties
    for got, want in zip(certify(many), certify_reference(many)):
        np.testing.assert_array_equal(got, want)


def test_the_certificate_is_exactly_what_changing_that_many_models_cannot_overturn():
    """Brute force over every vote of 5 models on 3 classes: changing up to rho models never changes the answer,
    and some change of rho + 1 models does (the bound is tight)."""
    models, classes = 5, 3
    ballots = np.array(list(itertools.product(range(classes), repeat=models)))
    answers, certificates = certify(vote_counts(ballots, classes))
    distance = (ballots[:, None, :] != ballots[None, :, :]).sum(axis=2)
    for index in range(len(ballots)):
        rho = certificates[index]
        differs = answers != answers[index]
        assert not np.any(differs & (distance[index] <= rho)), ballots[index]
        assert np.any(differs & (distance[index] == rho + 1)), ballots[index]


def test_certified_accuracy_curve():
    answers = np.array([0, 1, 2, 2, 1])
    certificates = np.array([3, 0, 2, 1, 5])
    labels = np.array([0, 1, 2, 0, 0])              # the last two are wrong: they never count
    curve = certified_accuracy_curve(answers, certificates, labels)
    assert [row["radius"] for row in curve["rows"]] == [0, 1, 2, 3]
    assert [row["certified"] for row in curve["rows"]] == [3, 2, 2, 1]
    assert curve["clean_accuracy"] == pytest.approx(0.6) and curve["rows"][3]["certified_accuracy"] == 0.2
    assert curve["median_certified_radius"] == 0
    assert certified_accuracy_curve([1], [0], [0])["median_certified_radius"] is None
    with pytest.raises(OptionError, match="labels"):
        certified_accuracy_curve([], [], [])


def test_the_hash_partition_is_documented_stable_disjoint_and_content_ordered():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (60, 55, 47, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    parts = partition_of(images, 7)
    for index in (0, 17, 59):   # the documented hash: SHA-256 of little-endian float32 pixels, first 8 bytes
        digest = hashlib.sha256(images[index].astype("<f4").tobytes()).digest()
        assert parts[index] == int.from_bytes(digest[:8], "big") % 7
    np.testing.assert_array_equal(partition_of(images.astype(np.uint8), 7), parts)   # the file's dtype: no matter
    assert np.all(partition_of(images, 7, "pixel-sum") == images.reshape(60, -1).sum(axis=1).astype(np.int64) % 7)
    assigned, subsets = partition_subsets(images, labels, 7)
    np.testing.assert_array_equal(assigned, parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(subsets)), np.arange(60))      # disjoint, complete
    for part, subset in enumerate(subsets):
        assert np.all(parts[subset] == part)
    # another file order: the same images in each partition, in the same training order
    order = rng.permutation(60)
    _, shuffled = partition_subsets(images[order], labels[order], 7)
    for mine, theirs in zip(subsets, shuffled):
        np.testing.assert_array_equal(images[mine], images[order][theirs])
    digests = image_digests(images[:3])
    assert len(digests) == 3 and all(len(digest) == 32 for digest in digests)
    with pytest.raises(OptionError, match="77 of 80 partitions hold no training image"):
        partition_subsets(images[:3], labels[:3], 80)
    with pytest.raises(OptionError, match="partition_hash"):
        partition_of(images, 3, "md5")


def test_the_voting_head_breaks_ties_within_a_model_toward_the_smaller_class():
    import keras

    from goodnet.defenses._ensemble import first_max_indicator, set_rank_weights

    inputs = keras.Input((5,))
    vote, rank = first_max_indicator(inputs, 5, "t_")
    model = keras.Model(inputs, vote)
    set_rank_weights(rank, 5)
    scores = np.array([[0.1, 0.3, 0.3, 0.2, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0, 1.0],
                       [0.25, 0.25 - 2 ** -26, 0.25, 0.25, 0.0], [0.0, 0.5 - 2 ** -25, 0.5, 2 ** -25, 0.0]],
                      np.float32)   # softmax rows (their maximum is at least 1 / classes), exact ties included
    np.testing.assert_array_equal(model.predict(scores, verbose=0), np.eye(5)[scores.argmax(axis=1)])


@pytest.fixture(scope="module")
def fitted():
    images, labels = coloured_squares(10, (5, 5), seed=0, classes=3)
    dpa = PartitionAggregation(models=3, match_steps=False, recipe=TrainOptions(epochs=2, batch_size=8),
                               progress=False)
    return dpa.fit(images, labels, 3), images, labels


def test_fit_trains_one_model_per_partition_and_votes(fitted):
    dpa, images, labels = fitted
    assert len(dpa.members_) == 3 and dpa.num_classes_ == 3 and dpa.member_epochs_ == 2
    np.testing.assert_array_equal(dpa.partitions_, partition_of(images, 3))
    assert [len(subset) for subset in dpa.subsets_] == list(np.bincount(dpa.partitions_, minlength=3))
    votes = dpa.votes(images)
    np.testing.assert_array_equal(votes, dpa.votes(images, method="reference"))
    np.testing.assert_array_equal(votes, vote_counts(dpa.member_predictions(images), 3))
    answers, certificates = dpa.certify(images)
    for got, want in zip((answers, certificates), dpa.certify(images, method="reference")):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dpa.predict(images), answers)
    curve = dpa.certified_accuracy(images, labels)
    assert curve["clean_accuracy"] == pytest.approx(np.mean(answers == labels))
    summary = dpa.summary()
    assert summary["partition_sizes"] == [len(subset) for subset in dpa.subsets_]
    assert len(summary["member_seconds"]) == 3
    with pytest.raises(OptionError, match="method"):
        dpa.votes(images, method="fast")


def test_the_saved_ensemble_is_one_plain_keras_model_that_predicts_as_in_memory(fitted, tmp_path):
    import keras

    from goodnet.keras2 import obstacle
    from goodnet.models import load_model, save_model
    from goodnet.plots import plot_certified_accuracy

    dpa, images, labels = fitted
    assert obstacle(dpa.ensemble_.model) is None           # built-in layers only: the Keras 2 dialect
    path = save_model(dpa.ensemble_, str(tmp_path / "dpa.h5"))
    loaded = load_model(path)
    assert loaded.scale == "unit" and loaded.num_classes == 3
    np.testing.assert_array_equal(loaded.predict_proba(images), dpa.predict_proba(images))
    plain = keras.models.load_model(path, compile=False)    # no goodnet needed
    np.testing.assert_array_equal(plain.predict(images / np.float32(255), verbose=0).argmax(1), dpa.predict(images))
    png = plot_certified_accuracy({"train": dpa.certified_accuracy(images, labels)}, tmp_path / "curve.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_parameters_are_refused():
    images, labels = coloured_squares(2, (5, 5), seed=0, classes=2)
    with pytest.raises(OptionError, match="models"):
        PartitionAggregation(models=0).fit(images, labels, 2)
    with pytest.raises(OptionError, match="partition_hash"):
        PartitionAggregation(partition_hash="md5").fit(images, labels, 2)
    with pytest.raises(OptionError, match="hold no training image"):
        PartitionAggregation(models=50).fit(images, labels, 2)
    with pytest.raises(OptionError, match="recipe: epochs"):
        PartitionAggregation(models=2, recipe=TrainOptions(epochs=0)).fit(images, labels, 2)
