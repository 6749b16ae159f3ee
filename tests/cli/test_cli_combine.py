"""``goodnet combine`` and the combine form of ``goodnet repair`` (``--repaired``): one command under two names."""

import argparse
import json

import numpy as np
import pytest

from goodnet.cli import main


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A small random DeepID B, another as B', and a clean file labelled with B's answers."""
    import keras

    from goodnet.data import save_h5
    from goodnet.models import Classifier, build_deepid, save_model

    folder = tmp_path_factory.mktemp("combine")
    keras.utils.set_random_seed(0)
    bad = Classifier(build_deepid(3), "raw")
    repaired = Classifier(build_deepid(3), "raw")
    images = np.random.default_rng(0).uniform(0, 255, (60, 55, 47, 3)).astype(np.float32)
    save_h5(folder / "valid.h5", images, bad.predict(images))
    return {"bad": str(save_model(bad, folder / "bad.h5")), "repaired": str(save_model(repaired, folder / "bp.h5")),
            "valid": str(folder / "valid.h5"), "images": images[:8]}


def _parsed(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_both_names_parse_the_same_strip_options():
    import goodnet.cli.combine
    import goodnet.cli.repair
    from goodnet.defenses.strip import StripOptions

    for extra in ([], ["--copies", "7", "--blend", "alpha", "--alpha", "0.3", "--threshold", "normal", "--frr", "0.05",
                       "--bank-size", "20", "--seed", "4"]):
        argv = ["b.h5", "--repaired", "p.h5", "--out", "g.h5", "--strip", "--valid", "v.h5"] + extra
        combined = goodnet.cli.combine.strip_options(_parsed(goodnet.cli.combine, argv))
        assert combined == goodnet.cli.combine.strip_options(_parsed(goodnet.cli.repair, argv))
        assert combined.draws == "fixed"
    assert combined == StripOptions(copies=7, blend="alpha", alpha=0.3, threshold_method="normal", frr=0.05,
                                    bank_size=20, seed=4, draws="fixed")
    assert goodnet.cli.combine.strip_options(_parsed(goodnet.cli.combine, argv[:5])).blend == StripOptions.blend


def test_repair_repaired_runs_goodnet_combine(pair, tmp_path, capsys):
    from goodnet.models import load_model

    outputs = {}
    for name in ("repair", "combine"):
        out = tmp_path / f"{name}.h5"
        code = main([name, pair["bad"], "--repaired", pair["repaired"], "--out", str(out), "--strip", "--valid",
                     pair["valid"], "--copies", "4", "--bank-size", "20", "--json", "--no-progress"])
        assert code == 0
        report = json.loads(capsys.readouterr().out)
        assert report.pop("out") == str(out) and report["strip"] is True and report["blend"] == "add"
        outputs[name] = report, load_model(out).predict(pair["images"])
    assert outputs["repair"][0] == outputs["combine"][0]
    np.testing.assert_array_equal(outputs["repair"][1], outputs["combine"][1])
    for name in ("repair", "combine"):
        capsys.readouterr()   # drop what came before (a progress bar of a slow predict above, on a loaded machine)
        assert main([name, pair["bad"], "--repaired", pair["repaired"], "--out", str(tmp_path / "x.h5"),
                     "--strip"]) == 2
        assert capsys.readouterr().err.startswith(f"goodnet {name}: error: --strip: expected --valid")
