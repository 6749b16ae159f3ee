"""Bagging against training-set poisoning (Breiman, "Bagging Predictors", Machine Learning 24, 1996; as a
poisoning defense: Biggio, Corona, Fumera, Giacinto and Roli, "Bagging Classifiers for Fighting Poisoning
Attacks in Adversarial Classification Tasks", MCS 2011).

A training-time defense: instead of one model on the (possibly poisoned)
training set, train K models, each on its own random sample of it, and
average their softmax outputs. A few poisoned or flipped samples land in only
some samples and sway only those members, so their effect on the average is
diluted (the course material's example: accuracy 0.72 under label flipping,
0.89 with 10 bagged models).

- ``models`` = K members (default 10), each a DeepID trained with the recipe
  of ``goodnet train`` (:func:`goodnet.training.train_deepid`, member k seeded
  ``seed + k``);
- ``sample_fraction`` (default 0.5): each member's sample holds
  ``round(sample_fraction * N)`` images;
- ``bootstrap`` (default True): drawn with replacement (a bootstrap sample,
  Breiman's bagging); False: without replacement (random subsets, the course
  material's "random halves");
- ``match_steps`` (default True): each member trains for ``epochs /
  sample_fraction`` epochs (16 for 8 on a half sample): as many image passes,
  about as many optimisation steps, as one model on the whole set, so it is
  trained as well as the model it replaces; bagging then takes about K times
  as long as one model. False: the recipe's epochs on each sample (faster,
  but every member takes fewer steps and ends less accurate).

The K members and the averaging head are saved as ONE ordinary Keras model
(``ensemble_``; see :func:`goodnet.defenses._ensemble.merge_members`): its
output is the mean of the members' softmax, its argmax the ensemble's answer.
:func:`average_reference` is the NumPy mean the merged model is tested against.

Example:
    >>> bagging = Bagging(models=10, sample_fraction=0.5).fit(train.images, train.labels, 10)
    >>> bagging.predict(valid.images)
    >>> save_model(bagging.ensemble_, "models/bagged.h5")    # eval.py / goodnet grade score it
"""

import dataclasses

import numpy as np

from goodnet.base import InstanceOf, Interval
from goodnet.defenses._ensemble import EnsembleOptions, _Ensemble, check_fit_data
from goodnet.options import constraints_of, option
from goodnet.training import TrainOptions


@dataclasses.dataclass(frozen=True)
class BaggingOptions(EnsembleOptions):
    """Every option of :class:`Bagging` but the training recipe, with its default, rule and help."""

    sample_fraction: float = option(0.5, "bagging: each model's sample, as a share of the training set",
                                    rule=Interval(float, 0.0, 1.0, "right"))
    bootstrap: bool = option(True, "bagging: draw each sample with replacement (a bootstrap sample)",
                             rule=InstanceOf(bool), negative="--no-bootstrap")


def bootstrap_samples(count, models, sample_fraction, bootstrap, seed):
    """The training-set indices of each member (sorted): ``round(sample_fraction * count)`` per member.

    Args:
        count: training images N.
        models: members K.
        sample_fraction: share of N per member, in (0, 1].
        bootstrap: with replacement (True) or without.
        seed: seed of the draws (one NumPy Generator for all members, drawn member after member).

    Returns:
        list of K int64 arrays.
    """
    size = int(round(sample_fraction * count))
    if size < 1:
        from goodnet.errors import OptionError

        raise OptionError(f"sample_fraction: {sample_fraction} of {count} images leaves no image per model")
    rng = np.random.default_rng(seed)
    if bootstrap:
        return [np.sort(rng.integers(0, count, size=size)) for _ in range(models)]
    return [np.sort(rng.choice(count, size=size, replace=False)) for _ in range(models)]


def average_reference(member_probabilities):
    """The bagged prediction the plain way: the mean over members of their softmax (K, N, C) -> (N, C)."""
    probabilities = np.asarray(member_probabilities, np.float64)
    total = np.zeros(probabilities.shape[1:])
    for member in probabilities:
        total += member
    return total / len(probabilities)


_DEFAULTS = BaggingOptions()


class Bagging(_Ensemble):
    """K DeepIDs on random samples of the training set, their softmax averaged (the :mod:`goodnet.base` contract).

    ``Bagging(**params).fit(images, labels, num_classes=None)``: a training-time defense; it takes the
    training set itself (raw pixels 0-255, e.g. a possibly poisoned lab file's) and trains the ensemble.

    Parameters: the fields of :class:`BaggingOptions` (``models``, ``sample_fraction``, ``bootstrap``,
    ``match_steps``: each member trains ``epochs / sample_fraction`` epochs), ``recipe`` (a :class:`goodnet.training.TrainOptions`: the members'
    epochs (see ``match_steps``), batch size, learning rate and seed; its seed also draws the samples) and
    ``progress`` (the bar over the members).

    Attributes (after ``fit``): those of the ensemble (``ensemble_``: the merged model to save, ``members_``,
    ``subsets_``: each member's sample, ``member_seconds_``, ``num_classes_``).

    Example:
        >>> bagging = Bagging(models=4, recipe=TrainOptions(epochs=4)).fit(images, labels, 10)
        >>> bagging.predict_proba(valid.images)            # the mean of the members' softmax
    """

    HEAD = "average"
    NAME = "bagging"
    _parameter_constraints = {**constraints_of(BaggingOptions), "recipe": [InstanceOf(TrainOptions)],
                              "progress": [InstanceOf(bool), None]}

    def __init__(self, models=_DEFAULTS.models, sample_fraction=_DEFAULTS.sample_fraction,
                 bootstrap=_DEFAULTS.bootstrap, match_steps=_DEFAULTS.match_steps, recipe=TrainOptions(),
                 progress=None):
        self.models = models
        self.sample_fraction = sample_fraction
        self.bootstrap = bootstrap
        self.match_steps = match_steps
        self.recipe = recipe
        self.progress = progress

    def fit(self, images, labels, num_classes=None):
        """Draw K samples and train one DeepID on each; merge them under the averaging head.

        Args:
            images: training images (N, 55, 47, 3), pixels 0-255.
            labels: (N,) labels.
            num_classes: classes of the task (default: the largest label + 1).

        Returns:
            self.
        """
        from goodnet.options import validate_options

        self._validate_params()
        validate_options(self.recipe, "Bagging.recipe")
        images, labels, num_classes = check_fit_data(images, labels, num_classes, "Bagging")
        subsets = bootstrap_samples(len(labels), self.models, self.sample_fraction, self.bootstrap, self.recipe.seed)
        return self._fit_members(images, labels, num_classes, subsets, self.sample_fraction, "bagging")

    def predict_proba_reference(self, images):
        """The mean of the members' softmax computed in NumPy (:func:`average_reference`): the merged model's
        output up to float rounding."""
        return average_reference(self.member_probabilities(images))

    def summary(self):
        summary = super().summary()
        if hasattr(self, "subsets_"):
            summary["distinct_images"] = [int(len(np.unique(subset))) for subset in self.subsets_]
        return summary
