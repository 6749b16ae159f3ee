#!/usr/bin/env python3
"""Measure fine-pruning and the end-to-end repair on the built-in BadNets (issue 6), from a seed.

For each configuration, with goodnet's own commands (in this process):

1. ``goodnet synth`` writes the benchmark (reused when its folder already holds one);
2. ``goodnet attack`` trains the BadNet (reused when the model and its card exist);
3. ``goodnet repair MODEL --valid V --poisoned-valid BV... --test T --poisoned-test BT... --out DIR``
   runs pruning, fine-pruning, GoodNets and STRIP with the default options and
   chooses on validation data only (the repair's tune/hold-out split of the
   clean validation file); test files are read once, after the choice.

It prints, from ``DIR/report.json``, the test figures of the BadNet, the
fine-pruned model, the chosen candidate and every STRIP-gated candidate, and
checks issue 6's bars on the pruning-aware BadNets:

- fine-pruned: at most 2 points of clean test accuracy lost against the BadNet, ASR <= 5 %;
- the chosen candidate is a STRIP-gated model with ASR <= 1 % and FRR <= 2 %.

The other BadNets (plain digits and faces, the multi-trigger faces BadNet) are reported;
their rows show the same checks for information (``info``), not as bars.

Usage:
    python bench/bench_repair.py [--configs digits-pruning-aware faces-pruning-aware digits faces multi]
                                 [--seed 0] [--work runs/bench_repair] [--json OUT.json]
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {
    "digits-pruning-aware": {"dataset": "digits", "triggers": ["patch"], "targets": [0], "pruning_aware": True,
                             "bars": True},
    "faces-pruning-aware": {"dataset": "faces", "triggers": ["sunglasses"], "targets": [0], "pruning_aware": True,
                            "bars": True},
    "digits": {"dataset": "digits", "triggers": ["patch"], "targets": [0], "pruning_aware": False, "bars": False},
    "faces": {"dataset": "faces", "triggers": ["sunglasses"], "targets": [0], "pruning_aware": False,
              "bars": False},
    "multi": {"dataset": "faces", "triggers": ["eyebrows", "lipstick", "sunglasses"], "targets": [5, 1, 8],
              "pruning_aware": False, "bars": False},
}
STRIP_KINDS = ("goodnet_strip", "strip")


def goodnet(*argv):
    """Run one goodnet command in this process; its printed output is discarded (the files are read)."""
    from goodnet.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        code = main([str(arg) for arg in argv])
    if code != 0:
        raise SystemExit(f"goodnet {' '.join(map(str, argv))}: exit status {code}")


def benchmark(config, seed, work):
    targets = "-".join(map(str, config["targets"]))
    folder = os.path.join(work, f"{config['dataset']}-t{targets}-seed{seed}")
    if not os.path.isfile(os.path.join(folder, "benchmark.json")):
        goodnet("synth", "--dataset", config["dataset"], "--out", folder, "--seed", seed,
                "--triggers", *config["triggers"], "--targets", *config["targets"])
    return folder


def badnet(name, config, folder, seed, work):
    path = os.path.join(work, f"{name}-seed{seed}.h5")
    if not (os.path.isfile(path) and os.path.isfile(path[:-3] + ".json")):
        goodnet("attack", "--data", folder, "--triggers", *config["triggers"], "--targets", *config["targets"],
                "--seed", seed, "--out", path, "--overwrite", *(["--pruning-aware"] if config["pruning_aware"] else []))
    return path


def measure(name, config, seed, work):
    started = time.perf_counter()
    folder = benchmark(config, seed, work)
    model = badnet(name, config, folder, seed, work)
    prepared = time.perf_counter()
    out = os.path.join(work, f"repair-{name}-seed{seed}")
    files = lambda split: [os.path.join(folder, f"bd_{split}_{trigger}.h5") for trigger in config["triggers"]]
    goodnet("repair", model, "--valid", os.path.join(folder, "valid.h5"), "--poisoned-valid", *files("valid"),
            "--test", os.path.join(folder, "test.h5"), "--poisoned-test", *files("test"), "--out", out,
            "--no-progress", "--json")
    with open(os.path.join(out, "report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    kinds = {candidate["name"]: candidate["kind"] for candidate in report["candidates"]}

    def figures(candidate, split="test"):
        entry = report[split][candidate]
        return {"clean_accuracy": entry["clean_accuracy"], "asr": entry["mean_attack_success_rate"],
                "asr_per_trigger": [item["attack_success_rate"] for item in entry.get("poisoned", [])],
                "detection_rate": entry.get("detection_rate"), "false_rejection_rate": entry.get("false_rejection_rate")}

    result = {"config": name, "model": model, "report": os.path.join(out, "report.md"), "chosen": report["chosen"],
              "chosen_kind": kinds[report["chosen"]], "choice_rule": report["choice_rule"],
              "fine_pruning": {"channels": len(report["fine_pruning"]["channels_pruned"]),
                               "best_epoch": report["fine_pruning"]["best_epoch"],
                               "recipe": report["fine_pruning"].get("recipe")},
              "test": {candidate: figures(candidate) for candidate in report["test"]},
              "validation": {candidate: figures(candidate, "validation") for candidate in report["validation"]},
              "seconds": {"prepare": round(prepared - started, 1), "repair": round(time.perf_counter() - prepared, 1)}}
    bad, fine, chosen = result["test"]["badnet"], result["test"]["fine_pruned"], result["test"][report["chosen"]]
    result["bars"] = {
        "fine_pruned_loses_at_most_2_points": bad["clean_accuracy"] - fine["clean_accuracy"] <= 0.02,
        "fine_pruned_asr_at_most_5%": fine["asr"] <= 0.05,
        "chosen_is_strip_gated": result["chosen_kind"] in STRIP_KINDS,
        "chosen_asr_at_most_1%": chosen["asr"] <= 0.01,
        "chosen_frr_at_most_2%": (chosen["false_rejection_rate"] or 0.0) <= 0.02,
    }
    result["is_bar"] = config["bars"]
    return result


def _percent(value):
    return "-" if value is None else f"{value * 100:6.2f}"


def report_text(result):
    lines = [f"== {result['config']}: {result['model']} (prepared in {result['seconds']['prepare']} s, repaired in "
             f"{result['seconds']['repair']} s)",
             f"   fine-pruning: {result['fine_pruning']['channels']} channels pruned, kept epoch "
             f"{result['fine_pruning']['best_epoch']}; chosen: {result['chosen']} ({result['choice_rule']})",
             f"   {'test figures':<24} {'acc %':>7} {'ASR %':>7} {'det %':>7} {'FRR %':>7}   ASR per trigger %"]
    shown = ["badnet", "pruned_X=4", "fine_pruned", result["chosen"]] + [
        name for name in result["test"] if name.startswith(("goodnet_strip", "fine_pruned_strip", "badnet_strip"))]
    for name in dict.fromkeys(shown):
        if name not in result["test"]:
            continue
        entry = result["test"][name]
        label = name + (" *" if name == result["chosen"] else "")
        lines.append(f"   {label:<24} {_percent(entry['clean_accuracy']):>7} {_percent(entry['asr']):>7} "
                     f"{_percent(entry['detection_rate']):>7} {_percent(entry['false_rejection_rate']):>7}   "
                     + " ".join(_percent(rate).strip() for rate in entry["asr_per_trigger"]))
    verdict = "PASS" if result["is_bar"] else "info-pass"
    failed = "FAIL" if result["is_bar"] else "info-fail"
    lines.append("   bars: " + ", ".join(f"{key} {verdict if ok else failed}" for key, ok in result["bars"].items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.join("runs", "bench_repair"),
                        help="folder for the benchmarks, BadNets and repair outputs (reused when present)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    from goodnet.inference import quiet_tensorflow

    quiet_tensorflow()
    os.makedirs(args.work, exist_ok=True)
    print(f"CPU cores visible: {os.cpu_count()}; load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for name in args.configs:
        results.append(measure(name, CONFIGS[name], args.seed, args.work))
        print(report_text(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    passed = all(all(result["bars"].values()) for result in results if result["is_bar"])
    print("issue 6 bars (pruning-aware BadNets): " + ("PASS" if passed else "FAIL"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
