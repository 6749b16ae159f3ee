"""One contract test run over every defense (after scikit-learn's ``parametrize_with_checks``).

Adding a defense means adding one row to ``CASES``: how to make it with small
parameters, how to fit it on the tiny world below, what its result is (for the
same-seed check) and one call that needs a fitted defense.
``test_every_defense_has_a_row`` fails for a defense class without one.
"""

import copy
import dataclasses
import importlib
import inspect
import json
import pkgutil

import numpy as np
import pytest

import goodnet.defenses
from goodnet.base import Defense, NotFittedError, clone, is_fitted
from goodnet.defenses.activation_clustering import ActivationClustering
from goodnet.defenses.badexpert import BaDExpert, BaDExpertOptions
from goodnet.defenses.bagging import Bagging
from goodnet.defenses.dp_sgd import DPSGD
from goodnet.defenses.either import EitherDetector
from goodnet.defenses.fine_pruning import FinePruning, FineTuneRecipe
from goodnet.defenses.neural_cleanse import NeuralCleanse
from goodnet.defenses.partition_aggregation import PartitionAggregation
from goodnet.defenses.pruning import PruningDefense
from goodnet.defenses.sanitisation import IsolationSanitiser
from goodnet.defenses.spectral_signatures import SpectralSignatures
from goodnet.defenses.strip import STRIP, StripOptions
from goodnet.defenses.unlearning import TriggerSearch
from goodnet.training import TrainOptions
from square_task import coloured_squares


@dataclasses.dataclass
class Case:
    make: object     # () -> an unfitted defense with small parameters
    fit: object      # (defense, world) -> what defense.fit(...) returns
    result: object   # fitted defense -> a value (arrays, numbers, dicts of them) compared between same-seed fits
    use: object      # (defense, world) -> a call that needs a fitted defense


@dataclasses.dataclass
class World:
    classifier: object   # a tiny lab-shaped DeepID (4 classes, unit scale), seeded
    clean: object        # LabData: clean images and labels
    poisoned: object     # LabData: the same images with a patch, labelled 0


CASES = {}


def _row(cls, make, fit, result, use):
    CASES[cls] = Case(make, fit, result, use)


_row(PruningDefense,
     make=lambda: PruningDefense(drops=(2, 10), progress=False),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean, [world.poisoned]),
     result=lambda defense: {"clean_accuracy": defense.curve_.clean_accuracy,
                             "attack_success": defense.curve_.attack_success, "ranking": defense.ranking_,
                             "selected": {str(drop): step for drop, step in defense.selected_.items()}},
     use=lambda defense, world: defense.pruned_classifier(1))


_row(STRIP,
     make=lambda: STRIP(copies=4, bank_size=12, frr=0.1, progress=False),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean),
     result=lambda defense: {"threshold": defense.threshold_, "clean": defense.clean_entropies_,
                             "entropies": defense.entropy(defense.bank_[:6], seed=7)},
     use=lambda defense, world: defense.predict_trojaned(world.poisoned.images[:4], seed=1))

_row(BaDExpert,
     make=lambda: BaDExpert(expert_rates=(1e-3, 1e-2), expert_epochs=1, aux_epochs=1, frr=0.1),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean),
     result=lambda defense: {"threshold": defense.threshold_, "clean": defense.clean_scores_,
                             "ladder": [entry["accuracy"] for entry in defense.ladder_]},
     use=lambda defense, world: defense.predict_trojaned(world.poisoned.images[:4]))

_row(EitherDetector,
     make=lambda: EitherDetector(frr=0.2, strip=StripOptions(copies=4, bank_size=8),
                                 badexpert=BaDExpertOptions(expert_rates=(1e-2,), expert_epochs=1, aux_epochs=1),
                                 progress=False),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean),
     result=lambda defense: {"check": defense.check_["rejected"], "strip": defense.strip_.threshold_,
                             "badexpert": defense.badexpert_.clean_scores_},
     use=lambda defense, world: defense.predict_trojaned(world.poisoned.images[:4], seed=1))

_row(NeuralCleanse,
     make=lambda: NeuralCleanse(method="batched", classes=(0, 1, 3), samples=8, batch_size=4, epochs=3,
                                progress=False),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean, [world.poisoned]),
     result=lambda defense: {"norms": defense.norms_, "masks": defense.masks_, "patterns": defense.patterns_,
                             "success": defense.attack_success_, "flagged": defense.flagged_},
     use=lambda defense, world: defense.trigger(3))

_row(FinePruning,
     make=lambda: FinePruning(channels=(0, 3, 5), recipe=FineTuneRecipe(epochs=2, unlearn_steps=2)),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean, [world.poisoned]),
     result=lambda defense: {"best_epoch": defense.best_epoch_,
                             "losses": [record.loss for record in defense.history_]},
     use=lambda defense, world: defense.predict(world.clean.images[:4]))

_row(TriggerSearch,
     make=lambda: TriggerSearch(steps=3, batch_size=16),
     fit=lambda defense, world: defense.fit(world.classifier.model, world.clean.images, world.clean.labels,
                                            divisor=world.classifier.divisor),
     result=lambda defense: {"mask": defense.mask_, "pattern": defense.pattern_},
     use=lambda defense, world: defense.stamped(world.clean.images[:4]))

_row(ActivationClustering,
     make=lambda: ActivationClustering(min_class_size=4, n_init=3, progress=False),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean),
     result=lambda defense: {"scores": defense.scores_, "flagged": defense.flagged_, "clusters": defense.clusters_},
     use=lambda defense, world: defense.poisoned_classes())

_row(SpectralSignatures,
     make=lambda: SpectralSignatures(poison_rate=0.2, progress=False),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean),
     result=lambda defense: {"scores": defense.scores_, "flagged": defense.flagged_},
     use=lambda defense, world: defense.suspicious_classes())

_row(IsolationSanitiser,
     make=lambda: IsolationSanitiser(n_estimators=10, per_class=True, progress=False),
     fit=lambda defense, world: defense.fit(world.classifier, world.clean),
     result=lambda defense: {"scores": defense.scores_, "flagged": defense.flagged_},
     use=lambda defense, world: defense.suspicious_classes())

_row(Bagging,
     make=lambda: Bagging(models=2, match_steps=False, recipe=TrainOptions(epochs=1, batch_size=16),
                          progress=False),
     fit=lambda defense, world: defense.fit(world.clean.images, world.clean.labels, 4),
     result=lambda defense: {"subsets": defense.subsets_, "weights": defense.ensemble_.model.get_weights()},
     use=lambda defense, world: defense.predict(world.clean.images[:4]))

_row(PartitionAggregation,
     make=lambda: PartitionAggregation(models=2, match_steps=False,
                                       recipe=TrainOptions(epochs=1, batch_size=16), progress=False),
     fit=lambda defense, world: defense.fit(world.clean.images, world.clean.labels, 4),
     result=lambda defense: {"partitions": defense.partitions_, "weights": defense.ensemble_.model.get_weights()},
     use=lambda defense, world: defense.certify(world.clean.images[:4]))

_row(DPSGD,
     make=lambda: DPSGD(batch_size=6, epochs=0.5, delta=1e-3, orders=(2.0, 4.0, 8.0), progress=False),
     fit=lambda defense, world: defense.fit(world.clean.images, world.clean.labels, 4, valid=world.clean),
     result=lambda defense: {"weights": defense.model_.model.get_weights(), "batches": defense.batch_sizes_,
                             "epsilon": [defense.epsilon_["classic"].epsilon, defense.epsilon_["tight"].epsilon]},
     use=lambda defense, world: defense.predict(world.clean.images[:4]))


def _defense_classes():
    """Every public Defense subclass defined in a module of goodnet.defenses."""
    found = set()
    for info in pkgutil.iter_modules(goodnet.defenses.__path__):
        module = importlib.import_module(f"goodnet.defenses.{info.name}")
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Defense) and value is not Defense and value.__module__ == module.__name__ \
                    and not value.__name__.startswith("_"):
                found.add(value)
    return found


@pytest.fixture(scope="module")
def world():
    import keras

    from goodnet.data import LabData
    from goodnet.models import Classifier, build_deepid

    keras.utils.set_random_seed(0)
    images, labels = coloured_squares(12, (5, 5), seed=0)
    patched = images.copy()
    patched[:, -6:, -6:, :] = 255.0
    model = build_deepid(4)
    return World(Classifier(model, scale="unit"), LabData(images, labels, path="clean.h5"),
                 LabData(patched, np.zeros_like(labels), path="poisoned.h5"))


def _same(first, second):
    if isinstance(first, dict):
        assert set(first) == set(second)
        for key in first:
            _same(first[key], second[key])
    elif isinstance(first, (list, tuple)) and not (first and isinstance(first[0], (int, float))):
        assert len(first) == len(second)
        for a, b in zip(first, second):
            _same(a, b)
    else:
        np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def _params_equal(first, second):
    assert set(first) == set(second)
    for name in first:
        _same(first[name], second[name])


def test_every_defense_has_a_row():
    missing = sorted(cls.__name__ for cls in _defense_classes() - set(CASES))
    assert not missing, f"defenses without a contract row in tests/defenses/test_contract.py: {missing}"


def test_the_default_constructor_only_stores_its_parameters():
    for cls in _defense_classes():
        defense = cls()
        assert sorted(vars(defense)) == sorted(cls._get_param_names()), cls.__name__
        assert not is_fitted(defense), cls.__name__
        assert repr(defense) == f"{cls.__name__}()"


@pytest.mark.parametrize("cls", sorted(CASES, key=lambda cls: cls.__name__), ids=lambda cls: cls.__name__)
def test_contract(cls, world):
    case = CASES[cls]
    defense = case.make()
    params = copy.deepcopy(defense.get_params())
    with pytest.raises(NotFittedError):
        case.use(defense, world)

    assert case.fit(defense, world) is defense, "fit must return self"
    _params_equal(defense.get_params(), params)      # fit changes no parameter
    assert is_fitted(defense)
    case.use(defense, world)
    json.dumps(defense.summary())                     # JSON-serialisable as it is
    assert repr(defense).startswith(f"{cls.__name__}(")

    copied = clone(defense)
    assert type(copied) is cls and copied is not defense
    _params_equal(copied.get_params(), params)
    assert not is_fitted(copied)
    with pytest.raises(NotFittedError):
        case.use(copied, world)

    _same(case.result(case.fit(copied, world)), case.result(defense))   # same seed, same result

    copied.set_params(**params)
    with pytest.raises(Exception, match="not a parameter"):
        copied.set_params(no_such_parameter=1)
