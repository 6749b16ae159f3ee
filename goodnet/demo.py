"""``goodnet demo``: the built-in benchmark, a BadNet, and every defense goodnet has, end to end.

1. Build (or reuse) the benchmark under ``data/demo-<dataset>-seed<seed>/``.
2. Train (or reuse) the BadNet under ``models/demo-<dataset>-<trigger>[-pruning-aware]-seed<seed>.h5``
   with its card (``.json``).
3. Evaluate it; run the pruning defense (``out/prune``) and the end-to-end
   repair (pruning, fine-pruning, GoodNet, STRIP alone and STRIP-gated
   GoodNets; ``out/repair``); report every figure and write the plots.
4. With ``data_loop`` (``--data-loop``): the data loop on the BadNet's
   poisoned training set (:func:`goodnet.inspection.clean_and_retrain`):
   inspect it (activation clustering, spectral signatures, isolation forest;
   ``out/inspect``: the inspection's files), write the cleaned set (the
   recommended method's flags dropped; ``out/inspect/train_clean.h5`` with
   the kept rows' ground truth), retrain a DeepID on it with the attack's
   recipe, and compare its clean accuracy and ASR with the BadNet's and a
   model's trained on the benchmark's clean training set.

Cached files are goodnet's own (recognised by their ``benchmark.json`` or
card); anything else at those paths is never overwritten.

The options are :class:`DemoOptions`' fields (``goodnet demo``'s flags); the
data set, seed and identities default to the benchmark's
(:class:`goodnet.attacks.benchmarks.BenchmarkOptions`), the target, epochs
and poison rate to the attack's (:class:`goodnet.attacks.badnets.AttackOptions`).
"""

import dataclasses
import json
import logging
import os
import time

from goodnet.attacks.badnets import FRACTION, AttackOptions
from goodnet.attacks.benchmarks import DATASETS, BenchmarkOptions
from goodnet.base import InstanceOf, Interval, OneOf
from goodnet.errors import OptionError
from goodnet.options import option

logger = logging.getLogger(__name__)

DEFAULT_TRIGGER = {"digits": "patch", "faces": "sunglasses"}


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What the demo builds and runs: every option's default, rule and help (``goodnet demo``'s flags), once."""

    dataset: str = option(BenchmarkOptions.dataset, "benchmark", rule=OneOf(DATASETS))
    trigger: str = option(None, "trigger", rule=InstanceOf(str), allow_none=True,
                          default_text=", ".join(f"{trigger} for {dataset}"
                                                 for dataset, trigger in DEFAULT_TRIGGER.items()))
    target: int = option(AttackOptions.targets[0], "attack target label", rule=Interval(int, 0))
    pruning_aware: bool = option(False, "use the pruning-aware BadNet", rule=InstanceOf(bool))
    seed: int = option(BenchmarkOptions.seed, "seed of the benchmark, the BadNet and the defenses",
                       rule=Interval(int, 0))
    epochs: int = option(AttackOptions.epochs, "BadNet training epochs", rule=Interval(int, 1))
    poison_rate: float = option(AttackOptions.poison_rate, "share of training images poisoned", rule=FRACTION,
                                cli=False)
    identities: int = option(BenchmarkOptions.identities, "faces: identities", rule=Interval(int, 1))
    copies: int = option(32, "STRIP copies per input", rule=Interval(int, 1))
    data_loop: bool = option(False, "also run the data loop: inspect the BadNet's poisoned training set, retrain on "
                                    "the cleaned set, and compare with the BadNet and a model trained on the clean "
                                    "set (two more trainings)", rule=InstanceOf(bool))
    sizes: dict = option(None, "benchmark sizes {split: images} (faces: per identity; None: the benchmark's)",
                         cli=False)
    data_dir: str = option("data", "where the benchmark is cached", rule=InstanceOf(str))
    models_dir: str = option("models", "where the BadNet is cached", rule=InstanceOf(str))
    out_dir: str = option(os.path.join("runs", "demo"), "results folder", rule=InstanceOf(str), flag="--out",
                          dest="out")

    def resolved_trigger(self):
        return self.trigger or DEFAULT_TRIGGER[self.dataset]


def benchmark_folder(options):
    """Build the demo benchmark unless it is cached; return (folder, description)."""
    from goodnet.attacks.benchmarks import TRIGGER_NAMES, read_benchmark, write_benchmark

    sized = "".join(f"-{key}{value}" for key, value in sorted((options.sizes or {}).items()))
    folder = os.path.join(options.data_dir, f"demo-{options.dataset}{sized}-seed{options.seed}")
    if os.path.isfile(os.path.join(folder, "benchmark.json")):
        description = read_benchmark(folder)
        if options.resolved_trigger() in description["triggers"]:
            return folder, description
    if os.path.exists(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, "benchmark.json")):
        raise OptionError(f"{folder}: exists and is not a goodnet benchmark; refusing to write into it")
    description = write_benchmark(folder, options.dataset, options.seed, sizes=options.sizes,
                                  identities=options.identities,
                                  triggers=TRIGGER_NAMES, targets=(options.target,), overwrite=True)
    return folder, description


def badnet_path(options):
    suffix = "-pruning-aware" if options.pruning_aware else ""
    sized = "".join(f"-{key}{value}" for key, value in sorted((options.sizes or {}).items()))
    name = f"demo-{options.dataset}{sized}-{options.resolved_trigger()}{suffix}-e{options.epochs}-seed{options.seed}.h5"
    return os.path.join(options.models_dir, name)


def load_splits(folder, description, trigger):
    """Clean and poisoned valid/test LabData of a benchmark folder."""
    from goodnet.data import load_h5

    classes = description["num_classes"]
    return {split: (load_h5(os.path.join(folder, f"{split}.h5"), num_classes=classes),
                    load_h5(os.path.join(folder, f"bd_{split}_{trigger}.h5"), num_classes=classes))
            for split in ("valid", "test")}


def badnet_model(options, folder, description, splits):
    """Train the demo BadNet unless it is cached; return (Classifier, card)."""
    from goodnet.attacks.badnets import attack_card, train_badnet
    from goodnet.data import load_h5
    from goodnet.files import write_text
    from goodnet.models import load_model, save_model

    path = badnet_path(options)
    card_path = os.path.splitext(path)[0] + ".json"
    if os.path.isfile(path) and os.path.isfile(card_path):
        return load_model(path), json.loads(open(card_path, encoding="utf-8").read())
    if os.path.exists(path):
        raise OptionError(f"{path}: exists without its goodnet card; refusing to overwrite it")
    train = load_h5(os.path.join(folder, "train.h5"), num_classes=description["num_classes"])
    attack = _attack_options(options)
    classifier, info = train_badnet(train.images, train.labels, description["num_classes"], attack)
    card = attack_card(classifier, attack, {key: description[key] for key in ("dataset", "seed", "sizes")},
                       splits["valid"][0], [splits["valid"][1]], splits["test"][0], [splits["test"][1]], info)
    save_model(classifier, path)
    write_text(card_path, json.dumps(card, indent=2) + "\n")
    classifier.path = path
    return classifier, card


def run_demo(options=None, progress=None):
    """Run the whole demo and return every figure it reports (JSON-ready).

    Example:
        >>> figures = run_demo(DemoOptions(dataset="digits"))
        >>> figures["clean_accuracy"], figures["attack_success_rate"]
    """
    from goodnet.metrics import evaluate
    from goodnet.defenses.pruning import run_pruning_defense
    from goodnet.repair import RepairOptions, repair

    options = options or DemoOptions()
    started = time.perf_counter()
    folder, description = benchmark_folder(options)
    splits = load_splits(folder, description, options.resolved_trigger())
    (valid, bad_valid), (test, bad_test) = splits["valid"], splits["test"]
    badnet, card = badnet_model(options, folder, description, splits)
    prepared = time.perf_counter()
    figures = {"dataset": options.dataset, "trigger": options.resolved_trigger(), "target": options.target,
               "pruning_aware": options.pruning_aware, "benchmark": folder, "badnet": badnet.path}
    base = evaluate(badnet, test, [bad_test])
    figures["clean_accuracy"] = base["clean_accuracy"]
    figures["attack_success_rate"] = base["attack_success_rate"]

    pruning = run_pruning_defense(badnet, valid, [bad_valid], os.path.join(options.out_dir, "prune"),
                                  progress=progress)
    figures["pruning"] = {}
    for drop, path in pruning["models"].items():
        from goodnet.models import load_model

        scored = evaluate(load_model(path), test, [bad_test])
        figures["pruning"][f"X={drop:g}"] = {"channels": pruning["defense"].selected_[drop],
                                             "clean_accuracy": scored["clean_accuracy"],
                                             "attack_success_rate": scored["attack_success_rate"]}
    figures["pruning"]["curve_png"] = pruning["summary"]["files"].get("png")

    report = repair(badnet, valid, [bad_valid], os.path.join(options.out_dir, "repair"),
                    RepairOptions(strip=dataclasses.replace(RepairOptions.strip, copies=options.copies),
                                  seed=options.seed), test=test, poisoned_test=[bad_test],
                    progress=progress)
    strip_alone = report["test"]["badnet_strip"]
    figures["strip"] = {"threshold": report["strip"]["threshold"], "copies": options.copies,
                        "false_rejection_rate": strip_alone["false_rejection_rate"],
                        "false_acceptance_rate": 1.0 - strip_alone["detection_rate"]}
    chosen = report["test"][report["chosen"]]
    figures["repair"] = {"chosen": report["chosen"], "model": report["files"].get("chosen"),
                         "clean_accuracy": chosen["clean_accuracy"],
                         "attack_success_rate": chosen["mean_attack_success_rate"],
                         "detection_rate": chosen.get("detection_rate", 0.0),
                         "false_rejection_rate": chosen.get("false_rejection_rate", 0.0),
                         "report": report["files"]["report_md"],
                         "candidates": {name: {"clean_accuracy": entry["clean_accuracy"],
                                               "attack_success_rate": entry["mean_attack_success_rate"],
                                               "detection_rate": entry.get("detection_rate"),
                                               "false_rejection_rate": entry.get("false_rejection_rate")}
                                        for name, entry in report["test"].items()}}
    figures["plots"] = {key: value for key, value in report["files"].items() if str(value).endswith(".png")}
    figures["card"] = card
    defended = time.perf_counter()
    figures["seconds"] = {"prepare": round(prepared - started, 1), "defenses": round(defended - prepared, 1)}
    if options.data_loop:
        figures["data_loop"] = data_loop(options, folder, description, badnet, test, bad_test, progress)
        figures["seconds"]["data_loop"] = round(time.perf_counter() - defended, 1)
    return figures


def data_loop(options, folder, description, badnet, test, bad_test, progress=None):
    """The data loop on the demo BadNet's poisoned training set; its figures (JSON-ready).

    The poisoned set is the attack's (:func:`goodnet.attacks.badnets.poison_training_set` with the BadNet's
    options: the same draws as its training, also when the BadNet was cached). The inspection's files go to
    ``out/inspect``, the cleaned set to ``out/inspect/train_clean.h5``.
    """
    from goodnet.attacks.badnets import poison_training_set
    from goodnet.data import load_h5
    from goodnet.inspection import clean_and_retrain, method_summary, write_clean_set, write_inspection_outputs
    from goodnet.reports import write_json
    from goodnet.training import TrainOptions

    classes = description["num_classes"]
    train = load_h5(os.path.join(folder, "train.h5"), num_classes=classes)
    info = poison_training_set(train.images, train.labels, classes, _attack_options(options))
    recipe = TrainOptions(epochs=options.epochs, seed=options.seed)
    figures, inspection, _, _ = clean_and_retrain(badnet, info["training_set"], classes, test, [bad_test],
                                                  truth=info["truth"], clean_training=train, recipe=recipe,
                                                  progress=progress)
    out = os.path.join(options.out_dir, "inspect")
    summary = {"inputs": {"model": badnet.path, "train": "the BadNet's poisoned training set", "scale": badnet.scale,
                          "scale_report": getattr(badnet, "scale_report", ""), "samples": len(train),
                          "classes": int(len(inspection.features.groups()))},
               "features": {"layer": inspection.features.layer, "dimensions": inspection.features.dim,
                            "cache": None},
               "methods": None, "timings_seconds": inspection.timings, "ground_truth": True}
    summary.update(method_summary(inspection))
    clean_path = os.path.join(out, "train_clean.h5")
    os.makedirs(out, exist_ok=True)
    summary["clean"] = write_clean_set(clean_path, info["training_set"], inspection, by=figures["by"],
                                       overwrite=None)
    files = write_inspection_outputs(out, inspection, summary)
    files["clean"] = clean_path
    summary["files"] = files
    write_json(files["inspect.json"], summary)
    figures["report"] = files["report.md"]
    figures["clean_set"] = clean_path
    return figures


def _attack_options(options):
    """The demo BadNet's AttackOptions (one source for its training and the data loop's poisoned set)."""
    return AttackOptions(triggers=(options.resolved_trigger(),), targets=(options.target,),
                         poison_rate=options.poison_rate, epochs=options.epochs, seed=options.seed,
                         pruning_aware=options.pruning_aware)
