"""The attack x defense matrix: every attack's BadNet on the built-in benchmark against every defense.

:func:`run_matrix` (``goodnet matrix``):

1. builds the benchmark (:mod:`goodnet.attacks.benchmarks`; clean train/valid/test only) under
   ``DIR/cache/benchmark-<key>/``;
2. trains each attack's BadNet (one job per attack, :data:`ATTACKS`) and keeps it with its poisoned
   validation and test files and, where the attack has one, its poisoned training set and ground truth
   under ``DIR/cache/attacks/<attack>-<key>/``; the BadNet is shared by the attack's cells;
3. runs every defense (:data:`DEFENSES`) against every BadNet (one job per cell), choosing the defense's
   settings on clean validation data only (no poisoned validation data is given to any defense) and
   measuring on test: clean accuracy and ASR before and after, detection rate and FRR where the defended
   model answers N ("poisoned") or flags inputs, BackdoorBench's DER
   (:func:`goodnet.metrics.defense_effectiveness_rating`) and seconds;
4. writes ``matrix.csv``, ``matrix.json``, ``matrix.md``, ``matrix.html`` (self-contained: the table and the
   heatmaps embedded) and the heatmaps ``matrix_der.png`` and ``matrix_asr.png`` (defense x attack).

Caching: the benchmark, each BadNet and each cell are keyed by the SHA-256 of their inputs' description
(:data:`MATRIX_VERSION`, the benchmark options, the attack spec and its resolved options, the defense and
its resolved settings), so a re-run computes only what changed. A failing cell (or attack) is reported in
the table with its status and the first line of its error, is not cached, and does not stop the others.

Jobs run through :mod:`goodnet.executors`: this process (``workers=0``), a local spawn process pool
(``workers``) or a Dask cluster (``scheduler``); the cache folder must be on storage the workers share.

Adding an attack is one :class:`AttackSpec` entry in :data:`ATTACKS`: a builder (:data:`BUILDERS`: the
dirty-label family through :class:`goodnet.attacks.badnets.AttackOptions`, whose ``attack`` field also
selects clean-label and learnable-patch, and BaN) and the options it changes. A builder maps
(spec, clean splits, options) to an :class:`AttackResult`. Adding a defense is one entry in :data:`DEFENSES`
(a function of a :class:`CellContext` and its settings) and one in :func:`defense_settings`.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from goodnet.attacks.badnets import FRACTION, AttackOptions
from goodnet.attacks.benchmarks import DATASETS, BenchmarkOptions
from goodnet.base import InstanceOf, Interval, OneOf, SequenceOf
from goodnet.demo import DEFAULT_TRIGGER
from goodnet.errors import OptionError
from goodnet.options import option

logger = logging.getLogger(__name__)

MATRIX_VERSION = 1          # bump when a cell's computation changes: every cached cell is recomputed
QUICK = {"sizes": {"digits": {"train": 2000, "valid": 400, "test": 400},
                   "faces": {"train": 40, "valid": 10, "test": 10}},   # faces: per identity
         "identities": 20, "epochs": AttackOptions.epochs}
DEFENSE_NAMES = ("pruning", "fine-pruning", "strip", "goodnet", "repair", "neural-cleanse", "inspection", "bagging",
                 "dpa", "dp-sgd")
PARTIAL_EVERY = 300         # seconds between the files written while a matrix runs (pending cells marked)
OUTPUT_NAMES = ("matrix.csv", "matrix.json", "matrix.md", "matrix.html", "matrix_der.png", "matrix_asr.png")
COLUMNS = ("attack", "defense", "status", "error", "clean_accuracy_before", "asr_before", "clean_accuracy_after",
           "asr_after", "detection_rate", "false_rejection_rate", "der", "seconds", "cached", "notes")


# ----------------------------------------------------------------------------- attacks


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of the matrix: a builder of :data:`BUILDERS` and the options it sets.

    ``settings`` are (field, value) pairs of the builder's option dataclass (``AttackOptions`` for "badnet",
    ``BaNOptions`` for "ban"); ``triggers`` left unset is the data set's trigger (:data:`DEFAULT_TRIGGER`).
    """

    name: str
    builder: str
    settings: tuple = ()
    help: str = ""


def _dirty(trigger):
    return AttackSpec(trigger, "badnet", (("triggers", (trigger,)),), f"dirty-label BadNets, {trigger} trigger")


ATTACKS = {spec.name: spec for spec in (
    *(_dirty(trigger) for trigger in ("patch", "blend", "sunglasses", "corners", "adaptive", "random")),
    AttackSpec("pruning-aware", "badnet", (("pruning_aware", True),),
               "pruning-aware BadNet (Liu et al. 2018), the data set's trigger"),
    AttackSpec("clean-label", "badnet", (("attack", "clean-label"),),
               "clean-label (Turner et al. 2019), the data set's trigger"),
    AttackSpec("learnable-patch", "badnet", (("attack", "learnable-patch"),),
               "learnable patch optimised on a clean model"),
    AttackSpec("ban", "ban", (), "BaN (Salem et al. 2022): a generator's trigger at a random place"),
)}


@dataclasses.dataclass
class AttackResult:
    """What a builder returns: the BadNet, poisoned valid/test LabData lists, the poisoned training set
    (LabData) and its :class:`goodnet.data.PoisonTruth` where the attack has one (else None)."""

    classifier: object
    poisoned_valid: list
    poisoned_test: list
    training_set: object = None
    truth: object = None
    info: dict = dataclasses.field(default_factory=dict)


def attack_options(spec, options):
    """The resolved option dataclass of ``spec`` under the matrix ``options`` (what its cache key hashes)."""
    settings = dict(spec.settings)
    if spec.builder == "ban":
        from goodnet.attacks.ban import BaNOptions

        return BaNOptions(**{"targets": (options.target,), "poison_rate": options.poison_rate,
                             "epochs": options.resolved_epochs(), "seed": options.seed, **settings})
    values = {"triggers": (DEFAULT_TRIGGER[options.dataset],), "targets": (options.target,),
              "poison_rate": options.poison_rate, "epochs": options.resolved_epochs(), "seed": options.seed,
              **settings}
    return AttackOptions(**values).check_attack()


def _build_badnet(spec, attack, splits, num_classes):
    from goodnet.attacks.badnets import train_badnet
    from goodnet.attacks.benchmarks import poisoned_split
    from goodnet.attacks.learnable_patch import patch_poisoned_split
    from goodnet.data import LabData

    train = splits["train"]
    classifier, info = train_badnet(train.images, train.labels, num_classes, attack)
    poisoned = {}
    for split in ("valid", "test"):
        clean = splits[split]
        if attack.attack == "learnable-patch":
            pairs = [(info["patch"], attack.targets[0])]
            make = patch_poisoned_split
        else:
            pairs, make = attack.pairs(), poisoned_split
        poisoned[split] = [LabData(*make(clean.images, clean.labels, trigger, target), f"bd_{split}_{index}")
                           for index, (trigger, target) in enumerate(pairs)]
    return AttackResult(classifier, poisoned["valid"], poisoned["test"], info["training_set"], info["truth"],
                        {"training_seconds": info["training_seconds"]})


def _build_ban(spec, attack, splits, num_classes):
    from goodnet.attacks.ban import ban_poisoned_split, train_ban
    from goodnet.data import LabData

    train = splits["train"]
    classifier, info = train_ban(train.images, train.labels, num_classes, attack)
    poisoned = {split: [LabData(*ban_poisoned_split(splits[split].images, splits[split].labels, info["generator"],
                                                    attack, target, seed=attack.seed + offset), f"bd_{split}_{index}")
                        for index, target in enumerate(attack.targets)]
                for offset, split in enumerate(("valid", "test"), start=1)}
    return AttackResult(classifier, poisoned["valid"], poisoned["test"], None, None,
                        {"training_seconds": info["training_seconds"]})


BUILDERS = {"badnet": _build_badnet, "ban": _build_ban}


# ----------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class MatrixOptions:
    """What the matrix runs: every option's default, rule and help (``goodnet matrix``'s flags), once."""

    dataset: str = option(BenchmarkOptions.dataset, "benchmark", rule=OneOf(DATASETS))
    attacks: tuple = option(tuple(ATTACKS), "attacks (rows of the registry goodnet.matrix.ATTACKS)",
                            rule=SequenceOf(OneOf(tuple(ATTACKS))), choices=tuple(ATTACKS))
    defenses: tuple = option(DEFENSE_NAMES, "defenses (goodnet.matrix.DEFENSES)", rule=SequenceOf(OneOf(DEFENSE_NAMES)),
                             choices=DEFENSE_NAMES)
    out_dir: str = option(None, "results folder, required (the cache goes to DIR/cache)", rule=InstanceOf(str),
                          allow_none=True, flag="--out", dest="out", metavar="DIR", default_text="none")
    scheduler: str = option(None, "a Dask scheduler address (tcp://host:port): run the jobs on that cluster",
                            rule=InstanceOf(str), allow_none=True, metavar="ADDRESS")
    workers: int = option(1, "local worker processes (0: run in this process)", rule=Interval(int, 0))
    quick: bool = option(False, "small benchmark, few epochs, cheaper defense settings (for iteration)",
                         rule=InstanceOf(bool))
    seed: int = option(BenchmarkOptions.seed, "seed of the benchmark, the attacks and the defenses",
                       rule=Interval(int, 0))
    target: int = option(AttackOptions.targets[0], "attack target label", rule=Interval(int, 0))
    poison_rate: float = option(AttackOptions.poison_rate, "share of training images poisoned", rule=FRACTION)
    epochs: int = option(None, "BadNet training epochs", rule=Interval(int, 1), allow_none=True, type=int,
                         default_text=f"{QUICK['epochs']} with --quick, else the attack's")
    identities: int = option(None, "faces: identities", rule=Interval(int, 1), allow_none=True, type=int,
                             default_text=f"{QUICK['identities']} with --quick, else the benchmark's")
    sizes: dict = option(None, "benchmark sizes {split: images} (faces: per identity; None: the benchmark's, or "
                               "the quick ones)", cli=False)
    compute: bool = option(True, "compute what the cache lacks (--cached-only: only write the tables of what "
                                 "DIR/cache holds, the rest marked 'not computed')", rule=InstanceOf(bool),
                           negative="--cached-only")
    defense_overrides: dict = option(None, "{defense: {setting: value}} replacing defense_settings' values",
                                     cli=False)

    def resolved_epochs(self):
        return self.epochs or (QUICK["epochs"] if self.quick else AttackOptions.epochs)

    def benchmark(self):
        """The benchmark's resolved description: dataset, seed, sizes, identities."""
        from goodnet.attacks.benchmarks import DEFAULT_SIZES

        base = QUICK["sizes"][self.dataset] if self.quick else DEFAULT_SIZES[self.dataset]
        identities = self.identities or (QUICK["identities"] if self.quick else BenchmarkOptions.identities)
        return {"dataset": self.dataset, "seed": self.seed, "sizes": dict(base, **(self.sizes or {})),
                "identities": identities if self.dataset == "faces" else None}

    def check(self):
        if not self.out_dir:
            raise OptionError("out_dir: expected a results folder, got none")
        if not self.attacks or not self.defenses:
            raise OptionError("attacks, defenses: expected at least one of each")
        return self


# ----------------------------------------------------------------------------- defenses


def defense_settings(name, options):
    """The settings of defense ``name`` under ``options`` (JSON-ready; part of the cell's cache key)."""
    quick = options.quick
    epochs = options.resolved_epochs()
    settings = {
        "pruning": {"layer": "conv_3", "drop": 4.0},
        "goodnet": {"layer": "conv_3", "drop": 4.0},
        "fine-pruning": {"layer": "conv_3", "drop": 4.0, "holdout": 0.2, "epochs": 10 if quick else 60},
        "strip": {"copies": 32 if quick else 100, "frr": 0.05, "blend": "alpha"},
        "repair": {"epochs": 10 if quick else 60, "copies": 32 if quick else 100},
        "neural-cleanse": {"epochs": 60 if quick else 300, "samples": 128 if quick else 256,
                           "unlearn_epochs": 10 if quick else 60},
        "inspection": {"methods": ["ac", "spectral", "isolation"], "retrain_epochs": epochs},
        "bagging": {"models": 5 if quick else 10, "sample_fraction": 0.5, "epochs": epochs},
        "dpa": {"models": 5 if quick else 10, "epochs": epochs},
        "dp-sgd": {"target_epsilon": 8.0, "batch_size": 64 if quick else 256, "epochs": 10 if quick else 15},
    }[name]
    settings.update((options.defense_overrides or {}).get(name, {}))
    return settings


@dataclasses.dataclass
class CellContext:
    """What a defense function gets: the BadNet, the clean and poisoned splits, the training set, and more."""

    badnet: object
    valid: object
    poisoned_valid: list
    test: object
    poisoned_test: list
    training_set: object
    truth: object
    num_classes: int
    seed: int
    work_dir: str
    attack: str


class NotApplicable(Exception):
    """The defense does not apply to this attack (e.g. no poisoned training set to inspect)."""


def _scored(classifier, ctx):
    from goodnet.metrics import evaluate

    figures = evaluate(classifier, ctx.test, ctx.poisoned_test, progress=False)
    result = {"clean_accuracy": figures["clean_accuracy"], "attack_success_rate": _mean_asr(figures)}
    if figures.get("flags_poisoned"):
        result["detection_rate"] = figures["detection_rate"]
        result["false_rejection_rate"] = figures["false_rejection_rate"]
    return result


def _mean_asr(figures):
    return float(np.mean([entry["attack_success_rate"] for entry in figures["poisoned"]]))


def _pruned(ctx, settings):
    from goodnet.defenses.pruning import PruningDefense

    drop = float(settings["drop"])
    defense = PruningDefense(settings["layer"], drops=(drop,), progress=False).fit(ctx.badnet, ctx.valid)
    step = defense.selected_[drop]
    step = len(defense.ranking_) if step is None else step
    return defense, step, defense.pruned_classifier(step)


def defend_pruning(ctx, settings):
    """Prune ``layer`` until clean validation accuracy dropped ``drop`` points (the lab's rule)."""
    _, step, pruned = _pruned(ctx, settings)
    return {**_scored(pruned, ctx), "notes": {"channels_pruned": int(step)}}


def defend_goodnet(ctx, settings):
    """The lab's GoodNet: the BadNet and its pruned model; N where they disagree."""
    from goodnet.defenses.combine import build_goodnet

    _, step, pruned = _pruned(ctx, settings)
    return {**_scored(build_goodnet(ctx.badnet, pruned), ctx), "notes": {"channels_pruned": int(step)}}


def defend_fine_pruning(ctx, settings):
    """Prune to ``drop`` points on the tune part, fine-tune (the default recipe, ``epochs``), keep the best
    hold-out epoch."""
    from goodnet.defenses.fine_pruning import FinePruning, FineTuneRecipe, channels_to_prune, split_holdout
    from goodnet.defenses.pruning import PruningDefense

    tune_indices, holdout_indices = split_holdout(ctx.valid.labels, settings["holdout"], ctx.seed)
    tune, holdout = ctx.valid.subset(tune_indices), ctx.valid.subset(holdout_indices)
    sweep = PruningDefense(settings["layer"], drops=(float(settings["drop"]),), progress=False).fit(ctx.badnet, tune)
    channels = tuple(int(channel) for channel in channels_to_prune(sweep, float(settings["drop"])))
    fine = FinePruning(settings["layer"], channels, FineTuneRecipe(epochs=int(settings["epochs"])),
                       settings["holdout"], ctx.seed).fit(ctx.badnet, tune, holdout=holdout, progress=False)
    return {**_scored(fine.model_, ctx),
            "notes": {"channels_pruned": len(channels), "best_epoch": fine.best_epoch_}}


def defend_strip(ctx, settings):
    """STRIP on the BadNet, calibrated on clean validation images at ``frr``; flagged inputs answer N."""
    from goodnet.defenses.strip import STRIP

    strip = STRIP(copies=int(settings["copies"]), frr=float(settings["frr"]), blend=settings["blend"],
                  seed=ctx.seed, progress=False).fit(ctx.badnet, ctx.valid.images)
    n = ctx.num_classes

    def answers(data, seed):
        flags = strip.predict_trojaned(data.images, seed=seed)
        return np.where(flags, n, ctx.badnet.predict(data.images, progress=False)), flags

    clean_answers, clean_flags = answers(ctx.test, ctx.seed + 2)
    asr, detected, count = [], 0, 0
    for offset, data in enumerate(ctx.poisoned_test):
        poisoned_answers, flags = answers(data, ctx.seed + 3 + offset)
        asr.append(float(np.mean(poisoned_answers == data.labels)))
        detected, count = detected + int(flags.sum()), count + len(flags)
    return {"clean_accuracy": float(np.mean(clean_answers == ctx.test.labels)),
            "attack_success_rate": float(np.mean(asr)), "detection_rate": detected / count,
            "false_rejection_rate": float(np.mean(clean_flags)), "notes": {"threshold": float(strip.threshold_)}}


def defend_repair(ctx, settings):
    """goodnet repair (pruning, fine-pruning, GoodNet, STRIP; the choice on clean hold-out data only)."""
    from goodnet.defenses.fine_pruning import FineTuneRecipe
    from goodnet.repair import RepairOptions, repair

    options = RepairOptions(recipe=FineTuneRecipe(epochs=int(settings["epochs"])),
                            strip=dataclasses.replace(RepairOptions.strip, copies=int(settings["copies"])),
                            seed=ctx.seed)
    report = repair(ctx.badnet, ctx.valid, (), os.path.join(ctx.work_dir, "repair"), options, test=ctx.test,
                    poisoned_test=ctx.poisoned_test, progress=False)
    chosen = report["test"][report["chosen"]]
    result = {"clean_accuracy": chosen["clean_accuracy"], "attack_success_rate": chosen["mean_attack_success_rate"]}
    if "detection_rate" in chosen:
        result["detection_rate"] = chosen["detection_rate"]
        result["false_rejection_rate"] = chosen["false_rejection_rate"]
    return {**result, "notes": {"chosen": report["chosen"]}}


def defend_neural_cleanse(ctx, settings):
    """Neural Cleanse on clean validation images; when it flags classes, unlearn their reversed triggers
    (fine-tuning on clean validation data); otherwise the BadNet stays as it is."""
    from goodnet.defenses.fine_pruning import FineTuneRecipe
    from goodnet.defenses.neural_cleanse import CleanseOptions, NeuralCleanse, unlearning

    cleanse_options = CleanseOptions(epochs=int(settings["epochs"]), samples=int(settings["samples"]), seed=ctx.seed)
    cleanse = NeuralCleanse.from_options(cleanse_options, progress=False).fit(ctx.badnet, ctx.valid.images)
    flagged = [int(label) for label in cleanse.flagged_]
    notes = {"flagged_classes": flagged}
    model = ctx.badnet
    if cleanse.backdoored_:
        unlearned = unlearning(cleanse, recipe=FineTuneRecipe(epochs=int(settings["unlearn_epochs"])),
                               seed=ctx.seed).fit(ctx.badnet, ctx.valid, progress=False)
        model = unlearned.model_
    return {**_scored(model, ctx), "notes": notes}


def _training_set(ctx):
    if ctx.training_set is None:
        raise NotApplicable("no poisoned training set (the attack draws its poison during training)")
    return ctx.training_set


def defend_inspection(ctx, settings):
    """Inspect the poisoned training set with the BadNet (activation clustering, spectral signatures,
    isolation forest; the recommended method from their own verdicts), retrain on the cleaned set."""
    from goodnet.inspection import clean_and_retrain
    from goodnet.training import TrainOptions

    figures, _, _, _ = clean_and_retrain(ctx.badnet, _training_set(ctx), ctx.num_classes, ctx.test, ctx.poisoned_test,
                                         truth=ctx.truth, recipe=TrainOptions(epochs=int(settings["retrain_epochs"]),
                                                                              seed=ctx.seed),
                                         methods=tuple(settings["methods"]), progress=False)
    retrained = figures["models"]["retrained"]
    return {"clean_accuracy": retrained["clean_accuracy"], "attack_success_rate": retrained["attack_success_rate"],
            "notes": {"by": figures["by"], "removed": figures["removed"],
                      "poisoned_kept": figures.get("poisoned_kept")}}


def _ensemble(defense_class, ctx, settings, **params):
    from goodnet.training import TrainOptions

    train = _training_set(ctx)
    defense = defense_class(models=int(settings["models"]), recipe=TrainOptions(epochs=int(settings["epochs"]),
                                                                                seed=ctx.seed),
                            progress=False, **params).fit(train.images, train.labels, ctx.num_classes)
    return {**_scored(defense.ensemble_, ctx), "notes": {"models": int(settings["models"])}}


def defend_bagging(ctx, settings):
    """Retrain on the poisoned training set as bagging: K DeepIDs on bootstrap samples, softmax averaged."""
    from goodnet.defenses.bagging import Bagging

    return _ensemble(Bagging, ctx, settings, sample_fraction=float(settings["sample_fraction"]))


def defend_dpa(ctx, settings):
    """Retrain on the poisoned training set as Deep Partition Aggregation: K DeepIDs on hash partitions, voting."""
    from goodnet.defenses.partition_aggregation import PartitionAggregation

    return _ensemble(PartitionAggregation, ctx, settings)


def defend_dp_sgd(ctx, settings):
    """Retrain on the poisoned training set with DP-SGD at a target epsilon (delta 1e-5, tight conversion)."""
    from goodnet.defenses.dp_sgd import DPSGD

    train = _training_set(ctx)
    defense = DPSGD(target_epsilon=float(settings["target_epsilon"]), batch_size=int(settings["batch_size"]),
                    epochs=float(settings["epochs"]), seed=ctx.seed, progress=False).fit(
        train.images, train.labels, ctx.num_classes)
    return {**_scored(defense.model_, ctx),
            "notes": {"epsilon": round(float(defense.epsilon_["tight"].epsilon), 3),
                      "noise_multiplier": round(float(defense.noise_multiplier_), 4)}}


DEFENSES = {"pruning": defend_pruning, "fine-pruning": defend_fine_pruning, "strip": defend_strip,
            "goodnet": defend_goodnet, "repair": defend_repair, "neural-cleanse": defend_neural_cleanse,
            "inspection": defend_inspection, "bagging": defend_bagging, "dpa": defend_dpa,
            "dp-sgd": defend_dp_sgd}


# ----------------------------------------------------------------------------- cache keys and files


def content_key(payload):
    """SHA-256 (hex, 24 characters) of a JSON-ready description."""
    text = json.dumps(payload, sort_keys=True, default=_json_value)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _json_value(value):
    if dataclasses.is_dataclass(value):
        return {"__type__": type(value).__name__, **dataclasses.asdict(value)}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON-ready: {type(value).__name__}")


def _write_json(path, payload):
    from goodnet.files import write_text

    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_value) + "\n")


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def prepare_benchmark(cache_dir, benchmark):
    """The benchmark's cached folder (written unless complete): train/valid/test.h5 and benchmark.json."""
    from goodnet.attacks.benchmarks import write_benchmark

    folder = os.path.join(cache_dir, "benchmark-" + content_key({"version": MATRIX_VERSION, **benchmark}))
    if not os.path.isfile(os.path.join(folder, "benchmark.json")):
        write_benchmark(folder, benchmark["dataset"], benchmark["seed"], sizes=benchmark["sizes"],
                        identities=benchmark["identities"] or BenchmarkOptions.identities, triggers=(), targets=(0,), overwrite=None)
    return folder


def load_benchmark(folder):
    """{split: LabData} and the class count of a benchmark folder."""
    from goodnet.attacks.benchmarks import read_benchmark
    from goodnet.data import load_h5

    description = read_benchmark(folder)
    classes = description["num_classes"]
    return {split: load_h5(os.path.join(folder, f"{split}.h5"), num_classes=classes)
            for split in ("train", "valid", "test")}, classes


def _attack_files(folder, count):
    return {"model": os.path.join(folder, "badnet.h5"), "record": os.path.join(folder, "attack.json"),
            "train": os.path.join(folder, "train_poisoned.h5"),
            "valid": [os.path.join(folder, f"bd_valid_{index}.h5") for index in range(count)],
            "test": [os.path.join(folder, f"bd_test_{index}.h5") for index in range(count)]}


@contextlib.contextmanager
def deterministic(seed):
    """Run a job as a fresh process would: Keras's global state cleared, TensorFlow's op determinism on (it
    stays on for the rest of the process), Python, NumPy, TensorFlow and Keras seeded, and Keras's default
    seeds drawn from a stream of their own (:func:`goodnet.training.own_seed_stream`) until the job ends.

    Why each: without clearing Keras's state the second BadNet a worker process trains differs from the same
    BadNet trained first, so the figures depended on which jobs had run before in that process. Without the
    own stream, a Dask worker's event-loop thread draws from Python's global ``random`` while the job builds
    its model (``dask.sizeof`` on each message it sends), and the first BadNet each worker trained started from
    other initial weights than in a local process (patch BadNet: 15.5 or 27.5 % clean accuracy against 18.5 %).
    """
    import keras
    import tensorflow as tf

    from goodnet.training import own_seed_stream, seed_everything

    keras.utils.clear_session()
    tf.config.experimental.enable_op_determinism()
    with own_seed_stream(seed):
        seed_everything(seed)
        yield


def run_attack(job):
    """Train one attack's BadNet and keep it in ``job["folder"]``; its record (JSON-ready). A job function."""
    from goodnet.data import save_h5
    from goodnet.metrics import evaluate
    from goodnet.models import save_model

    spec, attack, folder = job["spec"], job["options"], job["folder"]
    started = time.perf_counter()
    splits, classes = load_benchmark(job["benchmark"])
    with deterministic(job["seed"]):
        built = BUILDERS[spec.builder](spec, attack, splits, classes)
    os.makedirs(folder, exist_ok=True)
    files = _attack_files(folder, len(built.poisoned_test))
    save_model(built.classifier, files["model"], overwrite=None)
    for split, datasets in (("valid", built.poisoned_valid), ("test", built.poisoned_test)):
        for path, data in zip(files[split], datasets):
            save_h5(path, data.images, data.labels, dtype="float32", overwrite=None)
    if built.training_set is not None:
        truth = built.truth.datasets() if built.truth is not None else {}
        save_h5(files["train"], built.training_set.images, built.training_set.labels, dtype="float32",
                overwrite=None, **truth)
    record = {"attack": spec.name, "key": job["key"], "poisoned_files": len(built.poisoned_test),
              "training_set": built.training_set is not None, "num_classes": classes,
              "training_seconds": round(float(built.info.get("training_seconds", 0.0)), 2)}
    for split, clean, poisoned in (("valid", splits["valid"], built.poisoned_valid),
                                   ("test", splits["test"], built.poisoned_test)):
        figures = evaluate(built.classifier, clean, poisoned, progress=False)
        record[split] = {"clean_accuracy": figures["clean_accuracy"], "attack_success_rate": _mean_asr(figures)}
    record["seconds"] = round(time.perf_counter() - started, 2)
    _write_json(files["record"], record)   # last: its presence means the folder is complete
    return record


def run_cell(job):
    """Run one defense against one cached BadNet; the cell's figures (JSON-ready). A job function."""
    from goodnet.data import load_h5, load_poison_truth
    from goodnet.metrics import defense_effectiveness_rating
    from goodnet.models import load_model

    record = job["attack_record"]
    files = _attack_files(job["attack_folder"], record["poisoned_files"])
    classes = record["num_classes"]
    splits, _ = load_benchmark(job["benchmark"])
    training_set, truth = None, None
    if record["training_set"]:
        training_set = load_h5(files["train"], num_classes=classes)
        truth = load_poison_truth(files["train"])
    work_dir = tempfile.mkdtemp(prefix="goodnet-matrix-cell-")
    try:
        ctx = CellContext(load_model(files["model"]), splits["valid"],
                          [load_h5(path, num_classes=classes) for path in files["valid"]], splits["test"],
                          [load_h5(path, num_classes=classes) for path in files["test"]], training_set, truth,
                          classes, job["seed"], work_dir, record["attack"])
        started = time.perf_counter()
        try:
            with deterministic(job["seed"]):
                after = DEFENSES[job["defense"]](ctx, job["settings"])
        except NotApplicable as reason:
            return {"status": "n/a", "error": str(reason), "seconds": round(time.perf_counter() - started, 2)}
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    before = record["test"]
    cell = {"status": "ok", "clean_accuracy_before": before["clean_accuracy"], "asr_before": before["attack_success_rate"],
            "clean_accuracy_after": after["clean_accuracy"], "asr_after": after["attack_success_rate"],
            "detection_rate": after.get("detection_rate"), "false_rejection_rate": after.get("false_rejection_rate"),
            "seconds": round(seconds, 2), "notes": after.get("notes", {})}
    cell["der"] = defense_effectiveness_rating(cell["clean_accuracy_before"], cell["asr_before"],
                                               cell["clean_accuracy_after"], cell["asr_after"])
    return cell


# ----------------------------------------------------------------------------- the run


class _Progress:
    """Cells done and in flight: a tqdm bar on a terminal's stderr, else one line per finished cell."""

    def __init__(self, total, mode):
        self.total, self.done, self.running, self.mode = total, 0, {}, mode
        self.bar = None
        if mode is None:
            mode = sys.stderr.isatty()
        self.enabled = bool(mode)
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="matrix cells", unit="cell", file=sys.stderr)

    def _text(self):
        names = sorted(self.running)
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"{len(names)} queued or running" + (f" ({shown})" if names else "")

    def start(self, name):
        self.running[name] = True
        if self.bar is not None:
            self.bar.set_postfix_str(self._text())

    def finish(self, name, status, count=1):
        self.running.pop(name, None)
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            self.bar.set_postfix_str(self._text())
        elif self.enabled:
            print(f"matrix: {self.done}/{self.total} cells done ({name}: {status}); {self._text()}", file=sys.stderr,
                  flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def plan(options):
    """The jobs of a matrix: (benchmark description, {attack: (spec, options, key)}, {(attack, defense): settings})."""
    benchmark = options.benchmark()
    attacks = {}
    for name in options.attacks:
        spec = ATTACKS[name]
        resolved = attack_options(spec, options)
        attacks[name] = (spec, resolved, content_key({"version": MATRIX_VERSION, "benchmark": benchmark,
                                                     "spec": spec, "options": resolved}))
    settings = {defense: defense_settings(defense, options) for defense in options.defenses}
    return benchmark, attacks, settings


def cell_key(attack_key, defense, settings, seed):
    return content_key({"version": MATRIX_VERSION, "attack": attack_key, "defense": defense, "settings": settings,
                        "seed": seed})


def run_matrix(options, executor=None, progress=None):
    """Run the matrix and write its files into ``options.out_dir``; returns the result (``matrix.json``'s).

    Args:
        options: :class:`MatrixOptions`.
        executor: a :class:`goodnet.executors.Executor` (default: from ``options.scheduler`` / ``workers``).
        progress: None (a bar on a terminal, else nothing), True (a bar, or one line per cell), False.

    Example:
        >>> result = run_matrix(MatrixOptions(dataset="digits", attacks=("patch",), defenses=("strip",),
        ...                                   out_dir="runs/matrix", quick=True))
        >>> result["cells"][0]["der"]
    """
    from goodnet.executors import make_executor
    from goodnet.options import validate_options

    options = validate_options(options).check()
    started = time.perf_counter()
    out_dir = options.out_dir
    cache_dir = os.path.join(out_dir, "cache")
    os.makedirs(cache_dir, exist_ok=True)
    benchmark, attacks, settings = plan(options)
    benchmark_folder = prepare_benchmark(cache_dir, benchmark)
    cells = {(attack, defense): {"attack": attack, "defense": defense, "status": "pending"}
             for attack in options.attacks for defense in options.defenses}
    bar = _Progress(len(cells), progress)
    own = executor is None
    executor = executor or make_executor(options.scheduler, options.workers)
    attack_seconds = {}
    written = [time.perf_counter()]

    def assemble():
        rows = [{column: cells[attack, defense].get(column) for column in COLUMNS}
                for attack in options.attacks for defense in options.defenses]
        return {"version": MATRIX_VERSION, "options": {field.name: getattr(options, field.name)
                                                       for field in dataclasses.fields(options)},
                "benchmark": benchmark, "executor": executor.where,
                "attacks": {name: {"spec": dataclasses.asdict(spec), "key": key, **attack_seconds.get(name, {})}
                            for name, (spec, _, key) in attacks.items()},
                "defense_settings": settings, "cells": rows,
                "wall_seconds": round(time.perf_counter() - started, 1)}

    def submit_cells(attack, record, folder):
        for defense in options.defenses:
            cells[attack, defense].update(clean_accuracy_before=record["test"]["clean_accuracy"],
                                          asr_before=record["test"]["attack_success_rate"])
            key = cell_key(attacks[attack][2], defense, settings[defense], options.seed)
            path = os.path.join(cache_dir, "cells", key + ".json")
            if os.path.isfile(path):
                cells[attack, defense].update(_read_json(path), cached=True)
                bar.finish(f"{attack} x {defense}", "cached")
                continue
            if not options.compute:
                cells[attack, defense].update(status="not computed", cached=False)
                bar.finish(f"{attack} x {defense}", "not computed")
                continue
            job = {"attack_record": record, "attack_folder": folder, "benchmark": benchmark_folder,
                   "defense": defense, "settings": settings[defense], "seed": options.seed}
            executor.submit(("cell", attack, defense, path), run_cell, job)
            bar.start(f"{attack} x {defense}")

    try:
        for attack, (spec, resolved, key) in attacks.items():
            folder = os.path.join(cache_dir, "attacks", f"{attack}-{key}")
            record_path = os.path.join(folder, "attack.json")
            if os.path.isfile(record_path):
                record = _read_json(record_path)
                attack_seconds[attack] = {"seconds": record["seconds"], "cached": True}
                submit_cells(attack, record, folder)
            elif not options.compute:
                for defense in options.defenses:
                    cells[attack, defense].update(status="not computed", cached=False)
                bar.finish(f"{attack} (BadNet)", "not computed", len(options.defenses))
            else:
                job = {"spec": spec, "options": resolved, "folder": folder, "benchmark": benchmark_folder,
                       "key": key, "seed": options.seed}
                executor.submit(("attack", attack, folder), run_attack, job)
                bar.start(f"{attack} (BadNet)")
        for result in executor.results():
            kind = result.tag[0]
            if kind == "attack":
                _, attack, folder = result.tag
                bar.running.pop(f"{attack} (BadNet)", None)
                if result.ok:
                    attack_seconds[attack] = {"seconds": result.value["seconds"], "cached": False}
                    submit_cells(attack, result.value, folder)
                else:
                    logger.error("attack %s failed:\n%s", attack, result.traceback)
                    for defense in options.defenses:
                        cells[attack, defense].update(status="attack failed", error=result.error, cached=False)
                    bar.finish(f"{attack} (BadNet)", "failed", len(options.defenses))
            else:
                _, attack, defense, path = result.tag
                if result.ok:
                    cells[attack, defense].update(result.value, cached=False)
                    if result.value["status"] in ("ok", "n/a"):   # both are the cell's answer; a failure is not
                        _write_json(path, result.value)
                else:
                    logger.error("cell %s x %s failed:\n%s", attack, defense, result.traceback)
                    cells[attack, defense].update(status="failed", error=result.error, cached=False)
                bar.finish(f"{attack} x {defense}", cells[attack, defense]["status"])
            if time.perf_counter() - written[0] > PARTIAL_EVERY:   # a long run leaves readable files on the way
                write_outputs(assemble(), out_dir)
                written[0] = time.perf_counter()
    finally:
        bar.close()
        if own:
            executor.close()
    result = assemble()
    result["files"] = write_outputs(result, out_dir)
    return result


# ----------------------------------------------------------------------------- reports


def _percent(value):
    return "" if value is None else f"{100 * value:.1f}"


def table_rows(result):
    """The table's rows as strings (percent for rates, three digits for DER)."""
    rows = []
    for cell in result["cells"]:
        ok = cell["status"] == "ok"
        status = cell["status"] if ok or not cell.get("error") else f"{cell['status']}: {cell['error']}"
        rows.append([cell["attack"], cell["defense"], status,
                     _percent(cell["clean_accuracy_before"]), _percent(cell["asr_before"]),
                     _percent(cell["clean_accuracy_after"]), _percent(cell["asr_after"]),
                     _percent(cell["detection_rate"]), _percent(cell["false_rejection_rate"]),
                     "" if cell["der"] is None else f"{cell['der']:.3f}",
                     "" if cell["seconds"] is None else f"{cell['seconds']:.1f}"])
    return rows


HEADER = ("attack", "defense", "status", "ACC before %", "ASR before %", "ACC after %", "ASR after %",
          "detection %", "FRR %", "DER", "seconds")


def markdown(result):
    lines = [f"# Attack x defense matrix ({result['benchmark']['dataset']})", "",
             f"Benchmark: {json.dumps(result['benchmark'])}; executor: {result['executor']}; "
             f"wall time {result['wall_seconds']} s. DER = (max(0, ASR before - ASR after) - max(0, ACC before - "
             "ACC after) + 1) / 2, on test; every defense's settings chosen on clean validation data.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(value.replace("|", "/") for value in row) + " |" for row in table_rows(result)]
    return "\n".join(lines) + "\n"


def grid(result, column):
    """(defenses, attacks, array defense x attack of ``column``; NaN where the cell has no figure)."""
    attacks = list(dict.fromkeys(cell["attack"] for cell in result["cells"]))
    defenses = list(dict.fromkeys(cell["defense"] for cell in result["cells"]))
    values = np.full((len(defenses), len(attacks)), np.nan)
    for cell in result["cells"]:
        if cell.get(column) is not None:
            values[defenses.index(cell["defense"]), attacks.index(cell["attack"])] = cell[column]
    return defenses, attacks, values


def plot_heatmap(result, column, path, title, scale=1.0, fmt="{:.2f}", cmap="viridis", limits=(0, 1)):
    from goodnet.plots import new_figure, save_figure

    defenses, attacks, values = grid(result, column)
    figure, axes = new_figure(max(4.0, 1.0 + 0.9 * len(attacks)), max(2.5, 1.0 + 0.5 * len(defenses)))
    image = axes.imshow(values * scale, cmap=cmap, vmin=limits[0] * scale, vmax=limits[1] * scale, aspect="auto")
    axes.set_xticks(range(len(attacks)), attacks, rotation=35, ha="right")
    axes.set_yticks(range(len(defenses)), defenses)
    for row in range(len(defenses)):
        for column_index in range(len(attacks)):
            value = values[row, column_index]
            text = "-" if np.isnan(value) else fmt.format(value * scale)
            axes.text(column_index, row, text, ha="center", va="center", color="black", fontsize=8)
    figure.colorbar(image, ax=axes)
    axes.set_title(title)
    axes.set_xlabel("attack")
    axes.set_ylabel("defense")
    return save_figure(figure, path)


def html(result, images):
    import base64
    import html as escape

    header = "".join(f"<th>{escape.escape(name)}</th>" for name in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{escape.escape(value)}</td>" for value in row) + "</tr>"
                   for row in table_rows(result))
    pictures = ""
    for path in images:
        with open(path, "rb") as handle:
            data = base64.b64encode(handle.read()).decode("ascii")
        pictures += f'<p><img alt="{escape.escape(os.path.basename(path))}" src="data:image/png;base64,{data}"></p>'
    title = f"goodnet attack x defense matrix ({escape.escape(result['benchmark']['dataset'])})"
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;"
            "text-align:right}td:nth-child(-n+3){text-align:left}</style></head><body>"
            f"<h1>{title}</h1><p>{escape.escape(markdown(result).splitlines()[2])}</p>"
            f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>{pictures}</body></html>\n")


def write_outputs(result, out_dir):
    """Write matrix.csv/.json/.md/.html and the two heatmaps into ``out_dir``; {name: path}."""
    from goodnet.files import write_text
    from goodnet.reports import write_csv

    paths = {name: os.path.join(out_dir, name) for name in OUTPUT_NAMES}
    rows = [{**cell, "notes": json.dumps(cell.get("notes") or {}, sort_keys=True)} for cell in result["cells"]]
    write_csv(paths["matrix.csv"], rows, list(COLUMNS))
    plot_heatmap(result, "der", paths["matrix_der.png"], "DER (higher is better; 0.5: no change)", cmap="RdYlGn")
    plot_heatmap(result, "asr_after", paths["matrix_asr.png"], "ASR after the defense (%)", scale=100.0,
                 fmt="{:.0f}", cmap="RdYlGn_r")
    write_text(paths["matrix.md"], markdown(result))
    write_text(paths["matrix.html"], html(result, [paths["matrix_der.png"], paths["matrix_asr.png"]]))
    payload = dict(result, files=paths)
    _write_json(paths["matrix.json"], payload)
    return paths
