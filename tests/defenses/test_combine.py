"""goodnet.defenses.combine and ``goodnet repair``: GoodNet and STRIP-gated GoodNet against references, on real lab models."""

import csv
import json

import numpy as np
import pytest

from goodnet.defenses.strip import STRIP

POISONED = 1283


@pytest.fixture(scope="module")
def real_images(shared):
    from goodnet.data import load_image

    with open(shared / "images" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [row["file"] for row in rows]
    images = np.stack([load_image(shared / "images" / name) for name in names]).astype(np.float32)
    return names, images, rows


@pytest.fixture(scope="module")
def pruned_x2(shared):
    from goodnet.models import load_model

    return load_model(shared / "models" / "peer_repaired" / "lab3_B_prime_X=2.h5", scale="raw")


@pytest.fixture(scope="module")
def pruned_x10(shared):
    from goodnet.models import load_model

    return load_model(shared / "models" / "peer_repaired" / "lab3_B_prime_X=10.h5", scale="raw")


def _as_unit_classifier(classifier):
    """The same network behind an input multiplied by 255: a "unit"-scaled model with identical answers."""
    import keras

    from goodnet.models import Classifier

    inputs = keras.Input(classifier.input_shape)
    outputs = classifier.model(keras.layers.Rescaling(255.0)(inputs))
    return Classifier(keras.Model(inputs, outputs, name="unit_wrapper"), "unit", classifier.num_classes)


def _probe_images(real_images):
    """The real images plus random faces, so B and B' agree on some inputs and disagree on others."""
    rng = np.random.default_rng(0)
    return np.concatenate([real_images[1], rng.uniform(0, 255, (13,) + real_images[1].shape[1:]).astype(np.float32)])


def test_goodnet_matches_reference_and_round_trips(bd_net, pruned_x10, real_images, tmp_path):
    import keras

    from goodnet.defenses.combine import build_goodnet
    from goodnet.layers import custom_objects
    from goodnet.models import load_model, save_model

    images = _probe_images(real_images)
    bad, repaired = bd_net.predict(images), pruned_x10.predict(images)
    expected = np.where(bad == repaired, bad, POISONED)
    assert 0 < np.sum(expected == POISONED) < len(images), "the probe must exercise both branches"
    goodnet = build_goodnet(bd_net, pruned_x10)
    assert goodnet.flags_poisoned and goodnet.num_classes == POISONED and goodnet.scale == "raw"
    np.testing.assert_array_equal(goodnet.predict(images), expected)
    path = save_model(goodnet, tmp_path / "goodnet_X=10.h5")
    loaded = load_model(path)
    assert loaded.flags_poisoned and loaded.num_classes == POISONED and loaded.scale == "raw"
    np.testing.assert_array_equal(loaded.predict(images), expected)
    plain = keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    np.testing.assert_array_equal(np.asarray(plain(images)).argmax(1), expected)
    mixed = build_goodnet(bd_net, _as_unit_classifier(pruned_x10))  # B' of another scaling inside G
    np.testing.assert_array_equal(mixed.predict(images), expected)


def test_goodnet_rejects_mismatched_models(bd_net):
    from goodnet.defenses.combine import build_goodnet
    from goodnet.models import Classifier, build_deepid

    with pytest.raises(ValueError, match="output"):
        build_goodnet(bd_net, Classifier(build_deepid(10), "raw"))


def _real_strip(bd_net, names, images, **options):
    """STRIP on the real BadNet: bank = the clean images and their mirror images; threshold from the
    lipstick images (clean for this BadNet: it answers their identities) and their mirrors."""
    clean = [i for i, name in enumerate(names) if name.startswith("cl_") or name == "clean_950.png"]
    lipstick = [i for i, name in enumerate(names) if name.startswith("ano_")]
    bank = np.concatenate([images[clean], images[clean][:, :, ::-1]])
    fit = np.concatenate([images[lipstick], images[lipstick][:, :, ::-1]])
    settings = dict(copies=len(bank), blend="alpha", alpha=0.5, draws="fixed", threshold_method="quantile", frr=0.01)
    settings.update(options)
    return STRIP(**settings).fit(bd_net, fit, bank=bank)


def test_gated_goodnet_matches_reference_and_is_deterministic(bd_net, pruned_x10, real_images, tmp_path):
    from goodnet.defenses.combine import build_gated_goodnet, strip_entropy_model
    from goodnet.models import load_model, save_model

    names, real, _ = real_images
    images = _probe_images(real_images)
    strip = _real_strip(bd_net, names, real)
    entropy = strip.entropy(images)
    bad, repaired = bd_net.predict(images), pruned_x10.predict(images)
    expected = np.where((bad == repaired) & (entropy >= strip.threshold_), bad, POISONED)
    clear = np.abs(entropy - strip.threshold_) > 1e-4
    gated = build_gated_goodnet(bd_net, pruned_x10, strip, chunk_images=60)  # 5 inputs per chunk: padding used
    np.testing.assert_allclose(np.asarray(strip_entropy_model(gated)(images)), entropy, atol=1e-5)
    answers = gated.predict(images, batch_size=7)
    np.testing.assert_array_equal(answers[clear], expected[clear])
    path = save_model(gated, tmp_path / "gated.h5")
    loaded = load_model(path)
    assert loaded.flags_poisoned
    np.testing.assert_array_equal(loaded.predict(images, batch_size=32), answers)
    np.testing.assert_array_equal(loaded.predict(images[::-1], batch_size=3)[::-1], answers)


def test_gated_goodnet_on_real_images(bd_net, pruned_x2, real_images):
    """Real lab BadNet, the X=2 pruned model (which still answers 0 for every sunglasses image), and
    a bank of real clean images: every sunglasses image gets N, every clean image its identity."""
    from goodnet.defenses.combine import build_gated_goodnet

    names, images, rows = real_images
    assert all(pruned_x2.predict(images[[i for i, n in enumerate(names) if n.startswith("sun")]]) == 0)
    gated = build_gated_goodnet(bd_net, pruned_x2, _real_strip(bd_net, names, images))
    answers = dict(zip(names, gated.predict(images)))
    for row in rows:
        if row["content"] == "sunglasses":
            assert answers[row["file"]] == POISONED, row["file"]
        if row["content"] == "clean":
            assert answers[row["file"]] == int(row["identity"]), row["file"]


def test_repair_cli_writes_a_goodnet_that_eval_scores(shared, real_images, tmp_path, make_lab_file, capsys):
    from goodnet.cli import main

    names, images, rows = real_images
    clean = [i for i, row in enumerate(rows) if row["content"] == "clean"]
    sunglasses = [i for i, row in enumerate(rows) if row["content"] == "sunglasses"]
    clean_file = make_lab_file("clean.h5", images[clean], np.array([int(rows[i]["identity"]) for i in clean]))
    poisoned_file = make_lab_file("bd.h5", images[sunglasses], np.zeros(len(sunglasses), np.int64))
    out = tmp_path / "G.h5"
    code = main(["repair", str(shared / "models" / "bd_net.h5"), "--repaired",
                 str(shared / "models" / "peer_repaired" / "lab3_B_prime_X=10.h5"), "--scale", "raw",
                 "--out", str(out), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["strip"] is False
    assert main(["eval", str(clean_file), str(poisoned_file), str(out), "--json", "--no-progress"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["clean_accuracy"] == 1.0 and figures["false_rejection_rate"] == 0.0
    # X=10 still answers 0 for three of the six sunglasses images, so G flags the other three
    assert figures["detection_rate"] == pytest.approx(0.5)
    assert figures["attack_success_rate"] == pytest.approx(0.5)


def test_repair_cli_strip_and_errors(shared, real_images, tmp_path, make_lab_file, capsys):
    from goodnet.cli import main
    from goodnet.models import load_model

    names, images, rows = real_images
    valid = make_lab_file("valid.h5", np.concatenate([images, images[:, :, ::-1]]), np.zeros(38, np.int64))
    bad, repaired = str(shared / "models" / "bd_net.h5"), str(shared / "models" / "peer_repaired" / "lab3_B_prime_X=2.h5")
    out = tmp_path / "gated.h5"
    code = main(["repair", bad, "--repaired", repaired, "--out", str(out), "--strip", "--valid", str(valid),
                 "--copies", "10", "--bank-size", "20", "--scale", "raw", "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["strip"] is True and report["copies"] == 10
    assert report["target_frr"] == 0.01  # the combine form keeps the usual STRIP target
    gate = load_model(out).model.get_layer("strip_gate")
    assert gate.copies == 10 and gate.bank.shape == (10, 55, 47, 3)
    assert load_model(out).model.get_layer("goodnet").threshold == pytest.approx(report["threshold"])
    for argv in (["repair", bad, "--out", str(tmp_path / "x.h5")],
                 ["repair", bad, "--repaired", repaired, "--out", str(tmp_path / "y.h5"), "--strip"],
                 ["repair", bad, "--repaired", repaired, "--out", repaired],
                 ["repair", bad, "--repaired", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "z.h5")]):
        assert main(argv) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("goodnet repair: error:")
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_prune_goodnet_option_writes_a_goodnet_beside_each_model(shared, real_images, tmp_path, make_lab_file,
                                                                 capsys):
    from goodnet.cli import main
    from goodnet.models import load_model

    names, images, rows = real_images
    rng = np.random.default_rng(4)
    clean = [i for i, row in enumerate(rows) if row["content"] == "clean"]
    valid_images = np.clip(np.concatenate([images[clean]] * 4) + rng.normal(0, 4, (4 * len(clean),) + images.shape[1:]),
                           0, 255)
    valid_labels = np.tile([int(rows[i]["identity"]) for i in clean], 4)
    valid = make_lab_file("valid.h5", valid_images, valid_labels, dtype="float32")
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(shared / "models" / "bd_net.h5"), "--valid", str(valid), "--out", str(out),
                 "--drops", "10", "--goodnet", "--no-plot", "--json", "--scale", "raw"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and set(summary["goodnets"]) == set(summary["models"]) == {"10"}
    bad = load_model(shared / "models" / "bd_net.h5", scale="raw")
    pruned = load_model(summary["models"]["10"])
    goodnet = load_model(summary["goodnets"]["10"])
    assert goodnet.flags_poisoned and goodnet.scale == "raw"
    probe = _probe_images(real_images)
    bad_answer, pruned_answer = bad.predict(probe), pruned.predict(probe)
    np.testing.assert_array_equal(goodnet.predict(probe), np.where(bad_answer == pruned_answer, bad_answer, POISONED))
