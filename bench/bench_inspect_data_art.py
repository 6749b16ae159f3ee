#!/usr/bin/env python3
"""goodnet's training-set detectors against ART's on the same model and the same activations (issue 19).

For each scenario a poisoned training set is built and a BadNet trained on
it with goodnet's attack kit (:func:`goodnet.attacks.badnets.train_badnet`,
the same as ``goodnet synth`` + ``goodnet attack``): the built-in ``digits``
benchmark with the ``patch`` trigger at several poison rates, and the
``faces`` benchmark with the ``sunglasses`` trigger (target class 0). The
last-hidden-layer activations (``activation_1``) of every training image
are computed once (:func:`goodnet.features.compute_features`) and handed
both to goodnet's detectors and to ART's (``adversarial-robustness-toolbox``,
the benchmark-only extra ``pip install -e ".[bench]"``), ART reading them
through a stand-in classifier whose ``get_activations`` returns them:

- activation clustering: goodnet's :class:`ActivationClustering` (its
  default ``reduce="auto"``: ICA for classes of at least 100 samples, PCA for
  smaller ones; and PCA or ICA throughout; k-means, size + silhouette
  verdict) against ART's ``ActivationDefence``
  (PCA to 10, k-means) with its ``cluster_analysis`` rules ``smaller`` (its
  default: the smaller cluster of every class), ``relative-size`` and
  ``silhouette-scores``;
- spectral signatures: goodnet's :class:`SpectralSignatures` against ART's
  ``SpectralSignatureDefense``, both removing 1.5 x epsilon per class with
  the same epsilon (``--eps``); goodnet's ``scope="suspicious"`` as an extra row;
- goodnet's :class:`IsolationSanitiser` (no ART counterpart).

Each row gives flagged samples, precision, recall and F1 against the
ground truth and the seconds of the detector alone (the activations are
shared). A last table times both tools on synthetic activations of many
classes (``--classes`` classes x ``--per-class`` samples x 160 dimensions,
one poisoned class) and goodnet's batched paths against its per-class references.

Usage:
    python bench/bench_inspect_data_art.py [--quick] [--eps 0.1] [--seed 0] [--json OUT.json]

``--quick``: one digits scenario (2000 images, 4 epochs) and 300 synthetic classes.
"""

import argparse
import json
import sys
import time

import numpy as np


class SharedActivations:
    """What ART's poisoning detectors need of a classifier, answering with precomputed activations.

    ``x`` passed to ART is the column of sample indices; ``get_activations``
    returns those samples' activations, so ART clusters exactly the
    features goodnet clusters.
    """

    def __init__(self, values, classes):
        self.values = np.asarray(values)
        self.nb_classes = int(classes)
        self.layer_names = ["activation_1"]

    def get_activations(self, x, layer=None, batch_size=128, framework=False):
        return self.values[np.asarray(x).reshape(-1).astype(np.int64)]


def _scenarios(quick):
    if quick:
        return [("digits", "patch", 0.03, {"train": 2000}, 4)]
    return [("digits", "patch", 0.01, {"train": 3000}, 6), ("digits", "patch", 0.03, {"train": 3000}, 6),
            ("digits", "patch", 0.05, {"train": 3000}, 6), ("faces", "sunglasses", 0.004, {"train": 30}, 8)]


def build(dataset, trigger, rate, sizes, epochs, seed):
    """(BadNet, poisoned training LabData, ground truth, clean test figures) from goodnet's attack kit."""
    from goodnet.attacks.badnets import AttackOptions, train_badnet
    from goodnet.attacks.benchmarks import generate
    from goodnet.attacks.triggers import apply_trigger

    identities = 40
    images, labels = generate(dataset, "train", seed=seed, size=sizes["train"], identities=identities)
    classes = 10 if dataset == "digits" else identities
    options = AttackOptions(triggers=(trigger,), targets=(0,), poison_rate=rate, epochs=epochs, seed=seed)
    badnet, info = train_badnet(images, labels, classes, options)
    test_images, test_labels = generate(dataset, "test", seed=seed, size=300 if dataset == "digits" else 5,
                                        identities=identities)
    accuracy = float(np.mean(badnet.predict(test_images) == test_labels))
    others = test_labels != 0
    asr = float(np.mean(badnet.predict(apply_trigger(trigger, test_images[others])) == 0))
    return badnet, info["training_set"], info["truth"], {"clean_accuracy": accuracy, "attack_success_rate": asr,
                                                         "classes": classes}


def _figures(flagged, truth, seconds):
    from goodnet.defenses._inspection import detection_figures

    figures = detection_figures(flagged, truth)
    figures["seconds"] = seconds
    return figures


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def _guarded(tool, method, poisoned, run):
    """A row for a peer's detector, or the one line of the error it raised (a failure is a figure too)."""
    try:
        flagged, seconds = _timed(run)
    except Exception as error:  # the peer's bug, reported as such
        return tool, method, {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:70]}"}
    return tool, method, _figures(flagged, poisoned, seconds)


def art_activation_defence(values, labels, classes, analysis):
    from art.defences.detector.poison import ActivationDefence

    defence = ActivationDefence(SharedActivations(values, classes), np.arange(len(labels))[:, None], labels)
    _, clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis=analysis)
    return np.flatnonzero(np.asarray(clean) == 0)


def art_spectral(values, labels, classes, eps):
    from art.defences.detector.poison import SpectralSignatureDefense

    defence = SpectralSignatureDefense(SharedActivations(values, classes), np.arange(len(labels))[:, None], labels,
                                       expected_pp_poison=eps, eps_multiplier=1.5)
    _, clean = defence.detect_poison()
    return np.flatnonzero(np.asarray(clean) == 0)


def compare(features, truth, classes, eps, seed):
    """Rows (tool, method, figures) for every detector on the same activations."""
    from goodnet.defenses.activation_clustering import ActivationClustering
    from goodnet.defenses.sanitisation import IsolationSanitiser
    from goodnet.defenses.spectral_signatures import SpectralSignatures

    values, labels, poisoned = np.asarray(features.values), features.labels, truth.poisoned
    rows = []
    ac, seconds = _timed(lambda: ActivationClustering(seed=seed, progress=False).fit(features))
    reduction = "+".join(sorted(set(ac.reductions_.tolist()) - {""}))
    rows.append(("goodnet", f"activation clustering (default: auto = {reduction})",
                 _figures(ac.flagged_, poisoned, seconds)))
    for reduce in ("pca", "ica"):
        other, seconds = _timed(lambda: ActivationClustering(reduce=reduce, seed=seed, progress=False).fit(features))
        rows.append(("goodnet", f"activation clustering ({reduce})", _figures(other.flagged_, poisoned, seconds)))
    for analysis in ("smaller", "relative-size", "silhouette-scores"):
        rows.append(_guarded("ART", f"ActivationDefence ({analysis})", poisoned,
                             lambda: art_activation_defence(values, labels, classes, analysis)))
    spectral, seconds = _timed(lambda: SpectralSignatures(poison_rate=eps).fit(features))
    rows.append(("goodnet", f"spectral signatures (eps {eps:g}, every class)",
                 _figures(spectral.flagged_, poisoned, seconds)))
    scoped, seconds = _timed(lambda: SpectralSignatures(poison_rate=eps, scope="suspicious").fit(features))
    rows.append(("goodnet", f"spectral signatures (eps {eps:g}, suspicious classes)",
                 _figures(scoped.flagged_, poisoned, seconds)))
    rows.append(_guarded("ART", f"SpectralSignatureDefense (eps {eps:g})", poisoned,
                         lambda: art_spectral(values, labels, classes, eps)))
    isolation, seconds = _timed(lambda: IsolationSanitiser(seed=seed, progress=False).fit(features))
    rows.append(("goodnet", "isolation forest (global)", _figures(isolation.flagged_, poisoned, seconds)))
    extras = {"ac_poisoned_classes": ac.poisoned_classes().tolist(),
              "spectral_suspicious_classes": spectral.suspicious_classes().tolist()}
    return rows, extras


def synthetic(classes, per_class, dim=160, seed=0):
    """Activations of ``classes`` Gaussian classes, class 0 with a 20 % cluster of its own (a trigger's)."""
    from goodnet.data import PoisonTruth
    from goodnet.features import Features

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    values = np.maximum(rng.normal(0, 1, (len(labels), dim)) + rng.normal(0, 2, (classes, dim))[labels], 0)
    poisoned = np.zeros(len(labels), bool)
    poisoned[:per_class // 5] = True
    values[poisoned] += 4.0 * np.abs(rng.normal(0, 1, dim))
    truth = PoisonTruth.from_indices(labels, np.flatnonzero(poisoned), np.zeros(int(poisoned.sum()), np.int64),
                                     ("synthetic",))
    return Features(values.astype(np.float32), labels), truth


def timing(classes, per_class, eps, seed):
    from goodnet.defenses.activation_clustering import ActivationClustering
    from goodnet.defenses.spectral_signatures import SpectralSignatures

    features, truth = synthetic(classes, per_class, seed=seed)
    values, labels = np.asarray(features.values), features.labels
    rows = []
    for method in ("batched", "reference"):
        ac, seconds = _timed(lambda: ActivationClustering(method=method, seed=seed, progress=False).fit(features))
        rows.append(("goodnet", f"activation clustering ({method})", _figures(ac.flagged_, truth.poisoned, seconds)))
    rows.append(_guarded("ART", "ActivationDefence (smaller)", truth.poisoned,
                         lambda: art_activation_defence(values, labels, classes, "smaller")))
    for method in ("batched", "reference"):
        spectral, seconds = _timed(lambda: SpectralSignatures(poison_rate=eps, method=method).fit(features))
        rows.append(("goodnet", f"spectral signatures ({method})", _figures(spectral.flagged_, truth.poisoned,
                                                                            seconds)))
    rows.append(_guarded("ART", "SpectralSignatureDefense", truth.poisoned,
                         lambda: art_spectral(values, labels, classes, eps)))
    return rows


def _table(rows):
    def text(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"  {'tool':8s} {'method':52s} {'flagged':>8s} {'precision':>9s} {'recall':>7s} {'F1':>6s} "
             f"{'seconds':>8s}"]
    for tool, method, figures in rows:
        if "error" in figures:
            lines.append(f"  {tool:8s} {method:52s} failed: {figures['error']}")
            continue
        lines.append(f"  {tool:8s} {method:52s} {figures['flagged']:8d} {text(figures['precision']):>9s} "
                     f"{text(figures['recall']):>7s} {text(figures['f1']):>6s} {figures['seconds']:8.3f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small digits scenario, 300 synthetic classes")
    parser.add_argument("--eps", type=float, default=0.1, help="spectral signatures' epsilon, both tools (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the attack and the detectors")
    parser.add_argument("--classes", type=int, default=None, help="synthetic classes timed (default 1283, quick 300)")
    parser.add_argument("--per-class", type=int, default=50, help="synthetic samples per class (default 50)")
    parser.add_argument("--json", metavar="OUT.json", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    import art
    from goodnet.features import compute_features

    report = {"art_version": art.__version__, "eps": args.eps, "scenarios": []}
    print(f"ART {art.__version__}; spectral signatures' epsilon {args.eps:g} for both tools")
    for dataset, trigger, rate, sizes, epochs in _scenarios(args.quick):
        (badnet, train, truth, quality), seconds = _timed(lambda: build(dataset, trigger, rate, sizes, epochs,
                                                                         args.seed))
        features, feature_seconds = _timed(lambda: compute_features(badnet, train, progress=False))
        target = train.labels == 0
        share = float(truth.poisoned[target].mean())
        print(f"\n{dataset} / {trigger} at poison rate {rate:g}: {len(train)} training images, "
              f"{int(truth.poisoned.sum())} poisoned ({share * 100:.1f} % of target class 0); BadNet clean accuracy "
              f"{quality['clean_accuracy'] * 100:.1f} %, ASR {quality['attack_success_rate'] * 100:.1f} % "
              f"(trained in {seconds:.0f} s); activations {features.values.shape} in {feature_seconds:.2f} s, shared")
        rows, extras = compare(features, truth, quality["classes"], args.eps, args.seed)
        print(_table(rows))
        print(f"  goodnet AC poisoned classes {extras['ac_poisoned_classes']}; spectral suspicious classes "
              f"{extras['spectral_suspicious_classes']}")
        report["scenarios"].append({"dataset": dataset, "trigger": trigger, "poison_rate": rate,
                                    "images": len(train), "poisoned": int(truth.poisoned.sum()),
                                    "target_class_share": share, **quality, "feature_seconds": feature_seconds,
                                    "rows": [{"tool": tool, "method": method, **figures}
                                             for tool, method, figures in rows], **extras})
    classes = args.classes or (300 if args.quick else 1283)
    print(f"\nsynthetic activations: {classes} classes x {args.per_class} samples x 160 dimensions, class 0 with a "
          f"20 % cluster of its own")
    rows = timing(classes, args.per_class, args.eps, args.seed)
    print(_table(rows))
    report["timing"] = {"classes": classes, "per_class": args.per_class,
                        "rows": [{"tool": tool, "method": method, **figures} for tool, method, figures in rows]}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
