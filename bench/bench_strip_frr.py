#!/usr/bin/env python3
"""Measure STRIP's false rejection rate against its target on the built-in BadNets (issue 16, defect 8).

For each built-in BadNet (digits with the patch trigger, faces with the
sunglasses trigger), built with goodnet's own commands in ``--work`` (reused
when there)::

    goodnet synth --dataset digits --out WORK/digits
    goodnet attack --data WORK/digits --triggers patch --out WORK/digits_badnet.h5
    goodnet synth --dataset faces --out WORK/faces
    goodnet attack --data WORK/faces --triggers sunglasses --out WORK/faces_badnet.h5

and for each of STRIP's two uses:

- ``strip``: ``goodnet strip``'s defaults (additive blend, random draws, 100
  copies): the bank is half of the clean validation file, the other half calibrates;
- ``repair``: the end-to-end repair's STRIP (:class:`goodnet.repair.RepairOptions`:
  alpha blend, fixed draws, 100 copies) on the repair's tune part of the
  validation file (the per-class hold-out split of ``goodnet.defenses.fine_pruning.split_holdout``):
  half of the tune part is the bank, the other half calibrates; the hold-out
  part gives the FRR that the repair's ``max_frr`` bound (2 %) checks;

it calibrates the threshold with every method of :data:`goodnet.calibration.THRESHOLD_METHODS`
(``certified``, the paper's ``normal`` fit, the plain ``quantile``) at targets
of 1 % and 0.5 % on validation data only, and measures on the clean test file
(test FRR) and on the poisoned test file (detection rate).

Repeated splits: seeds 0 .. ``--seeds`` - 1 each draw a new split of the
validation file (bank / calibration, and for ``repair`` tune / hold-out) and
new draws, the rest being the same procedure. To afford 20 splits on a CPU, the
per-copy entropies are computed once per (image, bank image) pair through
STRIP's own per-copy function (:meth:`goodnet.defenses.strip.STRIP.per_copy_entropies`)
and reused across seeds:

- random draws: every image gets a random order of candidate bank images (the
  validation images other than itself, enough that a seed's bank holds ``copies``
  of them with a margin of 6 standard deviations, about 300 for 100 copies); a
  seed's draws for an image are its first ``copies`` candidates that are in that
  seed's bank: a uniformly random set of distinct bank images, as STRIP draws;
- fixed draws: one random order of validation images (as many); a seed's fixed
  bank images are the first ``copies`` of them in its bank: a uniformly random
  set of bank images, as STRIP chooses.

Each seed's entropies are therefore those STRIP computes for that split with
such draws (only the random-number stream differs). Seed 0 gives the first
table; the second table tells, over the seeds, how often the test FRR exceeds
the target and twice the target. ``--cli-check`` (on by default, off with
``--quick``) also runs ``goodnet strip`` itself with its defaults on each
BadNet and prints its calibration and test FRR next to the table's.

Usage:
    python bench/bench_strip_frr.py [--work /tmp/stripfrr] [--datasets digits faces] [--seeds 20]
                                    [--quick] [--no-cli-check] [--json OUT.json]

Detection is measured on a fixed random subset of 500 poisoned test images.
``--quick``: 10 copies, 240 validation / 300 test / 100 poisoned images, 3 seeds (minutes, for iteration).
"""

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATASETS = {"digits": "patch", "faces": "sunglasses"}   # built-in benchmark: its BadNet's trigger
TARGETS = (0.01, 0.005)
POISONED = 500     # poisoned test images scored (a fixed random subset; all of them when fewer)
MARGIN_SD = 6.0   # candidates per image: enough that a seed's bank holds ``copies`` of them, 6 s.d. below the mean


def goodnet(*argv):
    """Run one goodnet command in this process; return its standard output."""
    from goodnet.cli import main

    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main([str(arg) for arg in argv])
    if code != 0:
        raise SystemExit(f"goodnet {' '.join(map(str, argv))}: exit status {code}")
    return output.getvalue()


def prepare(dataset, work):
    """The benchmark folder and the BadNet of ``dataset`` in ``work``, built with goodnet's commands if missing."""
    folder, model = os.path.join(work, dataset), os.path.join(work, f"{dataset}_badnet.h5")
    if not os.path.isfile(os.path.join(folder, "benchmark.json")):
        goodnet("synth", "--dataset", dataset, "--out", folder)
    if not os.path.isfile(model):
        goodnet("attack", "--data", folder, "--triggers", DATASETS[dataset], "--out", model)
    return folder, model


class PairEntropies:
    """Per-copy entropies H[image, candidate bank image] of one STRIP setting, computed once.

    Rows: the validation images, then the test images, then the poisoned ones.
    ``candidates[row]`` lists validation indices (the bank images that row may be
    superimposed with), ``values[row]`` their per-copy entropies.
    """

    def __init__(self, strip_options, classifier, valid, others, candidates, seed):
        from goodnet.defenses.strip import STRIP

        self.copies = int(strip_options["copies"])
        engine = STRIP(progress=False, seed=seed, **dict(strip_options, copies=1))
        engine.fit(classifier, valid[:2], bank=valid)    # the bank: every validation image; only per_copy_entropies is used
        self.images = np.concatenate([valid] + list(others))
        self.candidates = candidates
        started = time.perf_counter()
        self.values = engine.per_copy_entropies(self.images, candidates).astype(np.float64)
        self.seconds = time.perf_counter() - started

    def entropies(self, in_bank, rows):
        """Mean over each row's first ``copies`` candidates that are in the bank (``in_bank``: mask over validation)."""
        candidates, values = self.candidates[rows], self.values[rows]
        usable = in_bank[candidates]
        chosen = usable & (np.cumsum(usable, axis=1) <= self.copies)
        short = chosen.sum(axis=1) < self.copies
        if short.any():
            raise RuntimeError(f"{int(short.sum())} images have fewer than {self.copies} candidates in the bank: "
                               "raise MARGIN_SD")
        return (values * chosen).sum(axis=1) / self.copies


def load(dataset, work, quick):
    """(folder, model path, classifier, valid, test, poisoned test) of one built-in BadNet (``quick``: subsets)."""
    from goodnet.data import load_h5
    from goodnet.models import load_model

    folder, model = prepare(dataset, work)
    valid = load_h5(os.path.join(folder, "valid.h5"))
    test = load_h5(os.path.join(folder, "test.h5"))
    poisoned = load_h5(os.path.join(folder, f"bd_test_{DATASETS[dataset]}.h5"))
    pick = lambda data, count: data.subset(np.sort(np.random.default_rng(0).permutation(len(data.labels))[:count]))
    if quick:
        valid, test, poisoned = pick(valid, 240), pick(test, 300), pick(poisoned, 100)
    else:
        poisoned = pick(poisoned, POISONED)
    classifier = load_model(model, clean=valid)
    return folder, model, classifier, valid, test, poisoned


def measure(dataset, setting, classifier, valid, test, poisoned, copies, seeds):
    """Every seed's calibration and test figures for one BadNet and one STRIP setting; returns a list of rows."""
    from goodnet.defenses.fine_pruning import split_holdout
    from goodnet.repair import RepairOptions
    from goodnet.calibration import THRESHOLD_METHODS, calibrate
    from goodnet.defenses.strip import STRIP

    repair = RepairOptions()
    if setting == "strip":
        reference = STRIP(copies=copies)          # goodnet strip's defaults
        options = {"copies": copies, "blend": reference.blend, "alpha": reference.alpha}
        tune_share = 1.0
    else:
        reference = STRIP(copies=copies, blend=repair.strip.blend, alpha=repair.strip.alpha, draws="fixed",
                          confidence=repair.strip.confidence)
        options = {"copies": copies, "blend": repair.strip.blend, "alpha": repair.strip.alpha}
        tune_share = 1.0 - repair.holdout_fraction
    count = len(valid.labels)
    bank_size = reference.bank_size_for(int(count * tune_share))
    share = bank_size / count
    width = copies
    while width < count - 1 and width * share - MARGIN_SD * np.sqrt(width * share * (1 - share)) < copies:
        width += 1
    rng = np.random.default_rng(1234)
    rows_total = count + len(test.labels) + len(poisoned.labels)
    if reference.draws == "random":
        candidates = np.empty((rows_total, width), np.int32)
        for row in range(rows_total):
            order = rng.permutation(count)
            candidates[row] = order[order != row][:width] if row < count else order[:width]
    else:
        candidates = np.tile(rng.permutation(count)[:width].astype(np.int32), (rows_total, 1))
    pairs = PairEntropies(options, classifier, valid.images, [test.images, poisoned.images], candidates, seed=0)
    test_rows = np.arange(count, count + len(test.labels))
    poisoned_rows = np.arange(count + len(test.labels), rows_total)
    results = []
    for seed in range(seeds):
        split = np.random.default_rng(seed)
        holdout = np.zeros(0, np.int64)
        if setting == "strip":
            tune = np.arange(count)
        else:
            tune, holdout = split_holdout(valid.labels, repair.holdout_fraction, seed)
        size = reference.bank_size_for(len(tune))
        order = split.permutation(tune)
        bank, calibration = order[:size], order[size:]
        in_bank = np.zeros(count, bool)
        in_bank[bank] = True
        calibration_entropies = pairs.entropies(in_bank, calibration)
        test_entropies = pairs.entropies(in_bank, test_rows)
        poisoned_entropies = pairs.entropies(in_bank, poisoned_rows)
        holdout_entropies = pairs.entropies(in_bank, holdout) if len(holdout) else None
        for method in THRESHOLD_METHODS:
            for target in TARGETS:
                fitted = calibrate(calibration_entropies, target, method, reference.confidence)
                row = {"dataset": dataset, "setting": setting, "seed": seed, "method": method, "target": target,
                       "threshold": fitted.threshold, "n": fitted.n, "upper_bound": fitted.frr_upper_bound,
                       "certified": fitted.certified, "n_needed": fitted.n_needed,
                       "test_frr": float(np.mean(test_entropies < fitted.threshold)),
                       "detection": float(np.mean(poisoned_entropies < fitted.threshold)),
                       "holdout_frr": None if holdout_entropies is None else
                       float(np.mean(holdout_entropies < fitted.threshold))}
                results.append(row)
    return results, pairs.seconds, pairs.values.size


def cli_check(dataset, folder, model):
    """``goodnet strip`` with its defaults on the BadNet: its calibration and test FRR (JSON)."""
    output = goodnet("strip", "--model", model, "--valid", os.path.join(folder, "valid.h5"),
                     "--test", os.path.join(folder, "test.h5"),
                     "--poisoned-test", os.path.join(folder, f"bd_test_{DATASETS[dataset]}.h5"),
                     "--no-plot", "--no-progress", "--json")
    report = json.loads(output)
    return {"dataset": dataset, "method": report["threshold_method"], "target": report["target_frr"],
            "threshold": report["threshold"], "calibration": report["calibration"],
            "test_frr": report["false_rejection_rate"], "detection": report["poisoned"][0]["detection_rate"]}


def _pct(value, width=7):
    return f"{'-':>{width}}" if value is None else f"{value * 100:{width}.2f}"


def table_seed0(rows):
    header = (f"{'dataset':<7} {'setting':<7} {'method':<9} {'target%':>7} {'threshold':>9} {'calib n':>7} "
              f"{'bound%':>7} {'cert':>4} {'holdout FRR%':>12} {'test FRR%':>9} {'detect%':>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        if row["seed"] != 0:
            continue
        lines.append(f"{row['dataset']:<7} {row['setting']:<7} {row['method']:<9} {_pct(row['target'])} "
                     f"{row['threshold']:9.4f} {row['n']:7d} {_pct(row['upper_bound'])} "
                     f"{'yes' if row['certified'] else 'no':>4} {_pct(row['holdout_frr'], 12)} "
                     f"{_pct(row['test_frr'], 9)} {_pct(row['detection'])}")
    return lines


def table_seeds(rows):
    header = (f"{'dataset':<7} {'setting':<7} {'method':<9} {'target%':>7} {'seeds':>5} {'mean FRR%':>9} "
              f"{'max FRR%':>8} {'>target':>7} {'>2x':>5} {'holdout>2%':>10} {'mean det%':>9}")
    lines = [header, "-" * len(header)]
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["setting"], row["method"], row["target"]), []).append(row)
    for (dataset, setting, method, target), group in groups.items():
        frr = np.array([row["test_frr"] for row in group])
        holdout = [row["holdout_frr"] for row in group if row["holdout_frr"] is not None]
        lines.append(f"{dataset:<7} {setting:<7} {method:<9} {_pct(target)} {len(group):5d} "
                     f"{_pct(frr.mean(), 9)} {_pct(frr.max(), 8)} {np.mean(frr > target) * 100:6.0f}% "
                     f"{np.mean(frr > 2 * target) * 100:4.0f}% "
                     f"{(f'{np.mean(np.array(holdout) > 0.02) * 100:9.0f}%' if holdout else f'{chr(45):>10}')} "
                     f"{_pct(np.mean([row['detection'] for row in group]), 9)}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/stripfrr", help="folder of the benchmarks and BadNets (reused)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--settings", nargs="+", choices=("strip", "repair"), default=["strip", "repair"])
    parser.add_argument("--seeds", type=int, default=None, help="random validation splits (default 20; quick 3)")
    parser.add_argument("--copies", type=int, default=None, help="STRIP copies (default 100; quick 10)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for iteration")
    parser.add_argument("--no-cli-check", action="store_true", help="do not run goodnet strip itself")
    parser.add_argument("--json", help="also write every row as JSON here")
    args = parser.parse_args(argv)
    logging.getLogger("goodnet.calibration").setLevel(logging.ERROR)   # too-small calibrations show in the table (cert)
    seeds = args.seeds or (3 if args.quick else 20)
    copies = args.copies or (10 if args.quick else 100)
    rows, checks = [], []
    for dataset in args.datasets:
        folder, model, classifier, valid, test, poisoned = load(dataset, args.work, args.quick)
        for setting in args.settings:
            started = time.perf_counter()
            found, seconds, pairs = measure(dataset, setting, classifier, valid, test, poisoned, copies, seeds)
            rows += found
            print(f"# {dataset} {setting}: {pairs} per-copy entropies in {seconds:.0f} s; {seeds} seeds in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        if not args.quick and not args.no_cli_check:
            started = time.perf_counter()
            checks.append(cli_check(dataset, folder, model))
            print(f"# {dataset}: goodnet strip in {time.perf_counter() - started:.0f} s", flush=True)
        report(rows, checks, copies, seeds, args.json)   # so far: every finished BadNet
    return 0


def report(rows, checks, copies, seeds, path):
    """Print both tables and the goodnet strip checks; write every row as JSON to ``path`` (if given)."""
    from goodnet.calibration import CalibrationOptions, calibration_size_needed

    needed = ", ".join(f"{target * 100:g} %: {calibration_size_needed(target)}" for target in TARGETS)
    print(f"\nSeed 0 ({copies} copies; calibration on validation data only; bound: the calibration's one-sided "
          f"{CalibrationOptions().confidence * 100:g} % upper bound on the FRR; cert: bound <= target; calibration entropies "
          f"needed to certify {needed}):")
    print("\n".join(table_seed0(rows)))
    print(f"\nOver {seeds} random validation splits (share of seeds whose test FRR exceeds the target, twice "
          "the target; repair: share whose hold-out FRR exceeds max_frr 2 %):")
    print("\n".join(table_seeds(rows)))
    for check in checks:
        calibration = check["calibration"]
        print(f"\ngoodnet strip on the {check['dataset']} BadNet (defaults: {check['method']}, target "
              f"{check['target'] * 100:g} %): threshold {check['threshold']:.4f}, {calibration['summary']}; "
              f"test FRR {check['test_frr'] * 100:.2f} %, detection {check['detection'] * 100:.2f} %")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"rows": rows, "cli_checks": checks, "copies": copies, "seeds": seeds}, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
