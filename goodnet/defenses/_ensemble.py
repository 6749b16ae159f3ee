"""What the training-time ensemble defenses share (:mod:`goodnet.defenses.bagging`,
:mod:`goodnet.defenses.partition_aggregation`).

- :class:`EnsembleOptions`: the number of members K (``--models``), once.
- :func:`train_members`: K DeepIDs, each trained on its own subset of the
  training set with :func:`goodnet.training.train_deepid` (member k seeded
  ``seed + k``), a progress bar over the members, each member's seconds. By
  default (``match_steps``) a member trained on a share s of the set trains
  for ``epochs / s`` epochs (:func:`member_epochs`): as many image passes,
  about as many optimisation steps, as one model on the whole set, so the
  members are trained as well as the single model they replace and the
  ensemble costs about K times its training time.
- :func:`merge_members`: the K members and a combining head as ONE plain
  functional Keras model: every member's layers are copied into one graph
  (names prefixed ``m<k>_``, weights copied) on one shared input, then the
  head: the mean of the members' softmax (:func:`average_head`, bagging) or
  their majority vote (:func:`vote_head`, DPA). Only Keras built-in layers, no
  nested model and no Lambda, so the file :func:`goodnet.models.save_model`
  writes is an ordinary lab-style ``.h5`` that ``eval.py``, ``goodnet grade``,
  Keras 3 and Keras 2 (tf-keras) load with a bare ``load_model``.
- :class:`_Ensemble`: the fitted state and the prediction methods both
  defenses have (``members_``, ``ensemble_``, ``member_seconds_``, ...).
"""

import dataclasses
import time

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, check_is_fitted
from goodnet.errors import OptionError
from goodnet.options import option

# The vote head's tie-break multiplies 0/1 indicators by class ranks up to the class count: exact in float32,
# and also where convolutions run in TensorFloat-32 (11 significant bits) up to this many classes.
EXACT_VOTE_CLASSES = 2048
# The vote head finds each member's top class by scaling (p - max p) so far that every non-maximal entry falls
# below -1 (see first_max_indicator).
GAP_SCALE = 2.0 ** 60


@dataclasses.dataclass(frozen=True)
class EnsembleOptions:
    """The options every ensemble defense shares: how many models it trains, and how long each."""

    models: int = option(10, "ensemble members K: bagging's bootstrap models, DPA's partitions (one model each)",
                         rule=Interval(int, 1), metavar="K")
    match_steps: bool = option(True, "train each member on its share of the training set for epochs / share epochs "
                                     "(bagging: / sample fraction, dpa: x K): about the steps of one model on the "
                                     "whole set; off: --epochs each", rule=InstanceOf(bool),
                               negative="--no-match-steps")


def member_epochs(epochs, share, match_steps=True):
    """A member's epochs: ``epochs``, or with ``match_steps`` ``ceil(epochs / share)``, for a member trained on
    ``share`` of the training set (bagging: the sample fraction; DPA: 1/K): as many image passes, and so about
    as many optimisation steps, as ``epochs`` epochs of one model on the whole set. It depends on the
    defense's parameters only, never on the data (a DPA model stays a function of its own partition).

    Example:
        >>> member_epochs(8, 0.5), member_epochs(8, 1 / 10), member_epochs(8, 0.5, match_steps=False)
        (16, 80, 8)
    """
    if not match_steps:
        return int(epochs)
    return max(int(epochs), int(np.ceil(epochs / share - 1e-9)))


def member_prefix(index, count):
    """The layer-name prefix of member ``index`` of ``count`` in the merged model (``m0_``, ``m07_``)."""
    return f"m{index:0{len(str(max(count - 1, 0)))}d}_"


def train_members(images, labels, num_classes, subsets, recipe, progress=None, description="members"):
    """Train one DeepID per subset with the recipe of ``goodnet train``.

    Args:
        images: training images (N, 55, 47, 3), pixels 0-255.
        labels: (N,) labels in 0..num_classes-1.
        num_classes: classes of every member (a member whose subset lacks a class still has its output).
        subsets: one index array per member (into ``images``), in the order the member sees them.
        recipe: :class:`goodnet.training.TrainOptions` of every member (its epochs: see :func:`member_epochs`);
            member k is trained with seed ``recipe.seed + k``.
        progress: a tqdm bar over the members: None once it takes a few seconds, True at once, False never.
        description: the bar's label.

    Returns:
        tuple: (list of :class:`goodnet.models.Classifier`, list of training seconds per member).
    """
    from goodnet.inference import progress_bar
    from goodnet.training import train_deepid

    members, seconds = [], []
    bar = progress_bar(len(subsets), f"{description} ({recipe.epochs} epochs each)", progress, unit="model")
    try:
        for index, subset in enumerate(subsets):
            start = time.perf_counter()
            member = train_deepid(images[subset], labels[subset], num_classes,
                                  dataclasses.replace(recipe, seed=recipe.seed + index))
            seconds.append(time.perf_counter() - start)
            members.append(member)
            bar.set_postfix_str(f"{len(subset)} images, {seconds[-1]:.1f} s")
            bar.update(1)
    finally:
        bar.close()
    return members, seconds


def average_head(outputs, name="average"):
    """The mean of the members' softmax outputs (one Keras ``Average`` layer; a lone member passes through)."""
    import keras

    if len(outputs) == 1:
        return keras.layers.Activation("linear", name=name)(outputs[0])
    return keras.layers.Average(name=name)(outputs)


def first_max_indicator(probabilities, num_classes, prefix):
    """Keras built-in layers giving, per softmax row, the one-hot of its first largest entry (``np.argmax``'s).

    The rows must be probabilities (a softmax: their maximum is at least 1 / classes), for step 1:

    1. ``is_max = min(1, relu((p - max p) * 2^60 + 1))``: 1 where ``p`` equals the row's maximum, else 0
       (an entry below a maximum m >= 1 / classes lies at least half an ulp of m, 2^-25 / classes, below it,
       so the scaled gap is below -1 for up to 2^34 classes);
    2. ``rank = is_max * (classes - j)`` (a ``DepthwiseConv1D`` of fixed weights): the earliest maximal class
       has the largest rank;
    3. ``first = min(1, relu(rank - max rank + 1))``: 1 only there (ranks are whole numbers).

    Args:
        probabilities: a Keras tensor (batch, classes).
        num_classes: the classes.
        prefix: the layers' name prefix.

    Returns:
        tuple: (the one-hot tensor, the rank layer, whose weights :func:`set_rank_weights` must set).
    """
    import keras

    layers = keras.layers
    column = layers.Reshape((num_classes, 1), name=f"{prefix}column")(probabilities)
    top = layers.GlobalMaxPooling1D(name=f"{prefix}max")(column)
    gap = layers.Subtract(name=f"{prefix}gap")([probabilities, top])
    is_max = layers.ReLU(max_value=1.0, name=f"{prefix}is_max")(
        layers.Rescaling(GAP_SCALE, offset=1.0, name=f"{prefix}gap_scaled")(gap))
    rank_layer = layers.DepthwiseConv1D(1, use_bias=False, name=f"{prefix}rank", trainable=False)
    rank = layers.Reshape((num_classes,), name=f"{prefix}rank_flat")(
        rank_layer(layers.Reshape((1, num_classes), name=f"{prefix}row")(is_max)))
    best = layers.GlobalMaxPooling1D(name=f"{prefix}best")(layers.Reshape((num_classes, 1),
                                                                          name=f"{prefix}rank_column")(rank))
    first = layers.ReLU(max_value=1.0, name=f"{prefix}vote")(
        layers.Rescaling(1.0, offset=1.0, name=f"{prefix}rank_gap")(
            layers.Subtract(name=f"{prefix}rank_diff")([rank, best])))
    return first, rank_layer


def set_rank_weights(layer, num_classes):
    """The tie-break ranks ``classes - j`` of :func:`first_max_indicator` (class 0 ranks highest)."""
    layer.set_weights([np.arange(num_classes, 0, -1, dtype=np.float32).reshape(1, num_classes, 1)])


def vote_head(outputs, num_classes, name="vote_share"):
    """Majority vote of the members: per class, the share of members whose top class it is.

    Each member votes for the first largest entry of its softmax (:func:`first_max_indicator`); the output
    is (votes per class) / K, so its argmax is the class with most votes, the smaller class on a tie (the
    DPA rule), and ``round(output * K)`` gives the vote counts back exactly.

    Returns:
        tuple: (the output tensor, the rank layers to initialise with :func:`set_rank_weights`).
    """
    import keras

    votes, ranks = [], []
    for index, output in enumerate(outputs):
        vote, rank = first_max_indicator(output, num_classes, f"{member_prefix(index, len(outputs))}vote_")
        votes.append(vote)
        ranks.append(rank)
    total = keras.layers.Add(name="votes")(votes) if len(votes) > 1 else votes[0]
    return keras.layers.Rescaling(1.0 / len(outputs), name=name)(total), ranks


def merge_members(members, head, num_classes, name="ensemble"):
    """The members and a head as one plain functional Keras model (layers copied, names prefixed ``m<k>_``).

    Args:
        members: Keras models taking the same input (the members' own models are left untouched).
        head: "average" (:func:`average_head`) or "vote" (:func:`vote_head`).
        num_classes: the members' classes.
        name: the merged model's name.

    Returns:
        tuple: (the merged keras.Model, the list of member sub-models: the copied layers of each member,
        input to softmax, sharing the merged model's weights).
    """
    import keras

    if head not in ("average", "vote"):
        raise OptionError(f"head: expected 'average' or 'vote', got {head!r}")
    shape = tuple(int(size) for size in members[0].inputs[0].shape[1:])
    inputs = keras.Input(shape=shape, name="input")
    outputs = []
    for index, member in enumerate(members):
        prefix = member_prefix(index, len(members))

        def renamed(layer, prefix=prefix):
            return layer.__class__.from_config({**layer.get_config(), "name": prefix + layer.name})

        copy = keras.models.clone_model(member, input_tensors=inputs, clone_function=renamed)
        for layer in member.layers:
            if not isinstance(layer, keras.layers.InputLayer):
                copy.get_layer(prefix + layer.name).set_weights(layer.get_weights())
        outputs.append(copy.outputs[0])
    if head == "average":
        merged = keras.Model(inputs, average_head(outputs), name=name)
    else:
        output, ranks = vote_head(outputs, num_classes)
        merged = keras.Model(inputs, output, name=name)
        for rank in ranks:
            set_rank_weights(rank, num_classes)
    return merged, [keras.Model(inputs, output, name=f"{name}_member_{index}") for index, output in
                    enumerate(outputs)]


class _Ensemble(Defense):
    """The fitted state and predictions of an ensemble defense (subclasses: ``fit`` chooses the subsets).

    Attributes (after ``fit``):
        ensemble_: the :class:`goodnet.models.Classifier` of the merged model (pixels / 255): what is saved.
        members_: one Classifier per member (sub-models of the merged model: the same weights).
        subsets_: the training-set indices each member was trained on.
        member_seconds_: each member's training time (seconds).
        member_epochs_: the epochs of every member (see ``match_steps``, :func:`member_epochs`).
        num_classes_: the classes.
    """

    HEAD = "average"
    NAME = "ensemble"

    def _fit_members(self, images, labels, num_classes, subsets, share, description):
        from goodnet.models import Classifier

        self.num_classes_ = int(num_classes)
        self.member_epochs_ = member_epochs(self.recipe.epochs, share, self.match_steps)
        recipe = dataclasses.replace(self.recipe, epochs=self.member_epochs_)
        members, self.member_seconds_ = train_members(images, labels, num_classes, subsets, recipe, self.progress,
                                                      description)
        merged, parts = merge_members([member.model for member in members], self.HEAD, self.num_classes_,
                                      self.NAME)
        self.subsets_ = [np.asarray(subset, np.int64) for subset in subsets]
        self.ensemble_ = Classifier(merged, "unit", self.num_classes_)
        self.members_ = [Classifier(part, "unit", self.num_classes_) for part in parts]
        return self

    def predict_proba(self, images, batch_size=None):
        """The merged model's outputs for raw-pixel images (N, 55, 47, 3)."""
        check_is_fitted(self, "ensemble_")
        return self.ensemble_.predict_proba(images, **({} if batch_size is None else {"batch_size": batch_size}))

    def predict(self, images, batch_size=None):
        """The ensemble's class per image (the merged model's argmax), int64."""
        return self.predict_proba(images, batch_size).argmax(axis=1).astype(np.int64)

    def member_probabilities(self, images):
        """Each member's softmax: (K, N, classes)."""
        check_is_fitted(self, "members_")
        return np.stack([member.predict_proba(images) for member in self.members_])

    def member_predictions(self, images):
        """Each member's top class (the first on a tie, as ``np.argmax``): (N, K) int64."""
        return self.member_probabilities(images).argmax(axis=2).T.astype(np.int64)

    def summary(self):
        summary = super().summary()
        if hasattr(self, "ensemble_"):
            summary.update(members=len(self.members_), num_classes=self.num_classes_,
                           member_images=[int(len(subset)) for subset in self.subsets_],
                           member_epochs=int(self.member_epochs_),
                           member_seconds=[round(float(value), 3) for value in self.member_seconds_])
        return summary


def check_fit_data(images, labels, num_classes, owner):
    """The training data as float32 images and int64 labels, and the class count (default: largest label + 1)."""
    from goodnet.training import check_training_data

    labels = np.asarray(labels)
    if num_classes is None and labels.size and np.issubdtype(labels.dtype, np.integer):
        num_classes = max(int(labels.max()) + 1, 2)
    images, labels = check_training_data(images, labels, num_classes, where=f"{owner}.fit")
    return images, labels, int(num_classes)
