"""``goodnet combine --strip --gate-detector badexpert|both`` (and ``goodnet repair --repaired``): the gated
GoodNet file with a BaDExpert or a STRIP-or-BaDExpert gate, its flags from BaDExpertOptions / EitherOptions."""

import json

import numpy as np
import pytest

import test_cli_combine
from goodnet.cli import main

pair = test_cli_combine.pair   # the module-scoped B, B' and clean file labelled with B's answers
_parsed = test_cli_combine._parsed

QUICK = ["--copies", "4", "--bank-size", "12", "--expert-rates", "0.001", "0.01", "--expert-epochs", "2",
         "--aux-epochs", "1", "--threshold", "quantile", "--frr", "0.1", "--json", "--no-progress"]


def test_both_names_parse_the_same_gate_options():
    import goodnet.cli.combine
    import goodnet.cli.repair
    from goodnet.defenses.badexpert import BaDExpertOptions
    from goodnet.defenses.combine import GateOptions
    from goodnet.defenses.either import EitherOptions

    argv = ["b.h5", "--repaired", "p.h5", "--out", "g.h5", "--strip", "--valid", "v.h5", "--gate-detector", "both",
            "--expert-epochs", "3", "--combination", "expert", "--strip-share", "0.25"]
    parsed = goodnet.cli.combine.gate_options(_parsed(goodnet.cli.combine, argv))
    assert parsed == goodnet.cli.combine.gate_options(_parsed(goodnet.cli.repair, argv))
    assert parsed == (GateOptions("both"), BaDExpertOptions(expert_epochs=3, combination="expert"),
                      EitherOptions(strip_share=0.25))
    assert goodnet.cli.combine.gate_options(_parsed(goodnet.cli.combine, argv[:8]))[0] == GateOptions()


@pytest.mark.parametrize("detector", ["badexpert", "both"])
def test_combine_writes_the_gated_file_and_repair_repaired_writes_the_same(pair, detector, tmp_path, capsys):
    from goodnet.defenses.combine import goodnet_parts
    from goodnet.models import load_model

    outputs = {}
    for name in ("combine", "repair"):
        out = tmp_path / f"{name}.h5"
        code = main([name, pair["bad"], "--repaired", pair["repaired"], "--out", str(out), "--strip", "--valid",
                     pair["valid"], "--gate-detector", detector] + QUICK)
        assert code == 0
        report = json.loads(capsys.readouterr().out)
        assert report.pop("out") == str(out) and report["strip"] is True and report["gate_detector"] == detector
        loaded = load_model(out)
        parts = goodnet_parts(loaded)
        assert parts["detector"] == detector
        if detector == "badexpert":
            assert parts["threshold"] == pytest.approx(report["threshold"]) and report["combination"] == "taught"
        else:
            assert parts["threshold"] == pytest.approx([report["threshold"]["strip"], report["threshold"]["badexpert"]])
            assert report["shares"] == {"strip": pytest.approx(0.05), "badexpert": pytest.approx(0.05)}
            assert report["check"]["n"] > 0 and parts["gate"].copies == 4
        outputs[name] = report, loaded.predict(pair["images"])
    # one seed, one file: the two names fit the same detectors
    assert outputs["repair"][0] == outputs["combine"][0]
    np.testing.assert_array_equal(outputs["repair"][1], outputs["combine"][1])
    # the Keras 2 export has no BaDExpert gate: one line, exit 2, nothing written
    capsys.readouterr()   # what came before (a slow predict may have shown its progress bar on stderr)
    assert main(["export", "--model", str(tmp_path / "combine.h5"), "--out", str(tmp_path / "keras2")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"got a {detector} gate" in error[0] and error[0].startswith("goodnet export: error:")
    assert not (tmp_path / "keras2" / "gate.json").exists()


def test_gate_detector_without_strip_is_a_one_line_error(pair, tmp_path, capsys):
    for name in ("combine", "repair"):
        capsys.readouterr()
        assert main([name, pair["bad"], "--repaired", pair["repaired"], "--out", str(tmp_path / "x.h5"),
                     "--valid", pair["valid"], "--gate-detector", "badexpert"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "--gate-detector badexpert: expected --strip" in error[0]
    assert not (tmp_path / "x.h5").exists()
