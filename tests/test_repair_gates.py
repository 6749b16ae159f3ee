"""``repair`` with the BaDExpert and STRIP-or-BaDExpert gates (``gate_detectors``) on the tiny BadNet of
tests/test_repair.py: the gated candidates are offered, every file answers as the report's figures say, the
choice uses validation data only, the report names each candidate's gate and its realised hold-out FRR."""

import dataclasses
import json

import pytest

import test_repair
from goodnet.defenses.badexpert import BaDExpertOptions
from goodnet.repair import Candidate, RepairOptions, build_candidates, choose, repair
from test_repair import OPTIONS, lab_sets

badnet = test_repair.badnet   # the module-scoped tiny BadNet fixture
GATES = ("strip", "badexpert", "both")
FAST = BaDExpertOptions(expert_rates=(1e-3, 3e-3, 1e-2), aux_epochs=3)


@pytest.fixture(scope="module")
def gated(badnet, tmp_path_factory):
    clean, poisoned = lab_sets(2)
    test, poisoned_test = lab_sets(3)
    out = tmp_path_factory.mktemp("repair_gates")
    options = dataclasses.replace(OPTIONS, gate_detectors=GATES, badexpert=FAST)
    report = repair(badnet, clean, [poisoned], out, options, test=test, poisoned_test=[poisoned_test])
    return report, out, (test, poisoned_test)


def test_default_gates_are_strips_and_the_candidates_per_gate():
    assert RepairOptions().gate_detectors == ("strip",)
    assert build_candidates([2]) == build_candidates([2], detectors=("strip",))
    names = [c.name for c in build_candidates([2], detectors=("badexpert", "both"))]
    assert "fine_pruned_strip" not in names
    assert {"goodnet_badexpert_X=2", "goodnet_badexpert_fp", "fine_pruned_badexpert", "badnet_badexpert",
            "goodnet_both_X=2", "goodnet_both_fp", "fine_pruned_both", "badnet_both"} <= set(names)
    kinds = {c.name: (c.kind, c.detector, c.gated, c.strip_gated) for c in build_candidates([2], detectors=GATES)}
    assert kinds["goodnet_both_fp"] == ("goodnet_both", "both", True, False)
    assert kinds["badnet_badexpert"] == ("badexpert", "badexpert", True, False)
    assert kinds["goodnet_strip_X=2"] == ("goodnet_strip", "strip", True, True)
    assert kinds["goodnet_fp"] == ("goodnet", None, False, False)
    with pytest.raises(ValueError, match="gate_detectors: expected each of"):
        build_candidates([2], detectors=("neural",))
    with pytest.raises(ValueError, match="expected each detector once"):
        build_candidates([2], detectors=("both", "both"))


def test_choice_without_poisoned_data_follows_the_preference_under_another_gate():
    candidates = build_candidates([2], detectors=("badexpert",))
    table = {c.name: {"clean_accuracy": 0.96, "false_rejection_rate": 0.01, "mean_attack_success_rate": None}
             for c in candidates}
    chosen, reasons, rule = choose(candidates, table, 3.0, 0.02)
    assert chosen == "fine_pruned_badexpert" and "preference" in rule
    assert reasons["fine_pruned"].startswith("not gated")


def test_every_gated_candidate_is_offered_and_its_file_answers_as_reported(gated):
    from goodnet.defenses.combine import goodnet_parts
    from goodnet.metrics import evaluate
    from goodnet.models import load_model

    report, out, (test, poisoned_test) = gated
    candidates = [Candidate(**entry) for entry in report["candidates"]]
    names = {c.name for c in candidates}
    for gate in GATES:
        assert {f"goodnet_{gate}_X=2", f"goodnet_{gate}_fp", f"fine_pruned_{gate}", f"badnet_{gate}"} <= names
    for candidate in candidates[1:]:
        if not candidate.gated:
            continue
        classifier = load_model(out / "candidates" / f"{candidate.name}.h5")
        assert goodnet_parts(classifier)["detector"] == candidate.detector, candidate.name
        whole = evaluate(classifier, test, [poisoned_test])
        for key in ("clean_accuracy", "attack_success_rate", "detection_rate", "false_rejection_rate"):
            assert whole.get(key) == report["test"][candidate.name].get(key), (candidate.name, key)


def test_the_choice_is_a_gated_candidate_made_on_validation_figures_only(gated):
    report, _, _ = gated
    candidates = [Candidate(**entry) for entry in report["candidates"]]
    options = dataclasses.replace(OPTIONS, gate_detectors=GATES)
    chosen, _, _ = choose(candidates, report["validation"], options.max_accuracy_drop, options.max_frr,
                          options.tie_margin, options.gate)
    assert chosen == report["chosen"] and next(c for c in candidates if c.name == chosen).gated
    assert report["test"]["badnet"]["mean_attack_success_rate"] > 0.9
    assert report["test"][chosen]["mean_attack_success_rate"] < 0.2


def test_the_report_names_each_gate_and_its_realised_holdout_frr(gated):
    report, out, _ = gated
    assert list(report["gates"]) == list(GATES)
    for gate, entry in report["gates"].items():
        # B's answer unless the gate flags: its hold-out FRR is the share the gate flags
        assert entry["holdout_frr"] == pytest.approx(report["validation"][f"badnet_{gate}"]["false_rejection_rate"])
        assert entry["target_frr"] == OPTIONS.strip.frr and entry["holdout_images"] == report["split"]["holdout_images"]
    assert report["gates"]["both"]["shares"] == {"strip": pytest.approx(OPTIONS.strip.frr / 2),
                                                 "badexpert": pytest.approx(OPTIONS.strip.frr / 2)}
    assert tuple(report["options"]["gate_detectors"]) == GATES
    assert report["options"]["badexpert"]["aux_epochs"] == 3
    markdown = (out / "report.md").read_text()
    assert "| candidate | gate | clean acc % |" in markdown and "| goodnet_both_fp | STRIP or BaDExpert |" in markdown
    assert "- BaDExpert: hold-out FRR" in markdown and "- STRIP or BaDExpert: hold-out FRR" in markdown
    gate = json.loads((out / "report.json").read_text())["gates"]["badexpert"]
    assert gate["combination"] == "taught" and gate["expert_steps"] >= 1


def test_the_command_line_offers_the_gates(tmp_path, capsys):
    from goodnet.cli import build_parser, main
    from goodnet.cli.repair import repair_options

    argv = ["repair", "bad.h5", "--valid", "v.h5", "--out", str(tmp_path / "o")]
    options = repair_options(build_parser().parse_args(argv + ["--gate-detectors", "strip", "both",
                                                               "--expert-epochs", "2", "--strip-share", "0.3",
                                                               "--frr", "0.05"]))
    assert options.gate_detectors == ("strip", "both") and options.badexpert.expert_epochs == 2
    assert options.either.strip_share == 0.3 and options.badexpert_options().frr == 0.05
    assert options.badexpert_options().seed == options.seed
    assert repair_options(build_parser().parse_args(argv)).gate_detectors == ("strip",)
    with pytest.raises(SystemExit) as error:
        main(argv + ["--gate-detectors", "neural"])
    assert error.value.code == 2 and "invalid choice: 'neural'" in capsys.readouterr().err
    assert main(argv + ["--gate-detector", "both"]) == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and "--gate-detector both: expected --repaired" in message[0]
    assert main(argv + ["--badexpert-seed", "3"]) == 2       # the end-to-end form seeds BaDExpert with --seed
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and "--badexpert-seed 3: expected --repaired" in message[0]
    assert not (tmp_path / "o").exists()
