"""Bad input is a one-line error (exit 2); a bug in goodnet is a bug (traceback, exit 1). Hostile files built here."""

import json
import os
import zipfile

import h5py
import numpy as np
import pytest

from goodnet.cli import main
from goodnet.data import DataError, load_h5
from goodnet.errors import OptionError, plain
from goodnet.models import UnsafeModelError, load_model


def _cli(capsys, arguments):
    code = main(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(code, err):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_plain_prints_numbers_as_numbers():
    assert plain(np.float64(43.5)) == "43.5" and plain(np.int64(7)) == "7" and plain(np.float32(0.5)) == "0.5"
    assert plain(True) == "True" and plain("a") == "'a'"


@pytest.fixture
def huge_declared_file(tmp_path):
    """1.6 KB on disk, 2,000,000 declared images of the lab's shape (62 GB as float32)."""
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", shape=(2_000_000, 3, 55, 47), dtype="f4", chunks=(1, 3, 55, 47))
        handle.create_dataset("label", shape=(2_000_000,), dtype="f8", chunks=(4096,))
    assert os.path.getsize(path) < 10_000
    return path


def test_a_file_declaring_millions_of_images_is_refused_before_allocating(huge_declared_file, shared, tmp_path,
                                                                         capsys, monkeypatch):
    import goodnet.data

    monkeypatch.setattr(goodnet.data, "available_memory", lambda: 24 * 10 ** 9)
    with pytest.raises(DataError, match=r"huge\.h5: data: declares 2,000,000 images; reading them would need "
                                        r"62\.0 GB of memory, 24\.0 GB is available"):
        load_h5(huge_declared_file)
    model = str(shared / "models" / "bd_net.h5")
    for command in (["prune", "--model", model, "--out", str(tmp_path / "o")],
                    ["strip", "--model", model, "--no-plot"]):
        line = _one_line(*_cli(capsys, command + ["--valid", str(huge_declared_file)])[::2])
        assert "huge.h5: data: declares 2,000,000 images" in line and "62.0 GB" in line


def test_fractional_labels_are_reported_as_plain_numbers(make_lab_file):
    path = make_lab_file("frac.h5", np.zeros((3, 55, 47, 3)), np.array([1.0, 43.5, 2.0]), dtype="float32")
    with pytest.raises(DataError) as caught:
        load_h5(path)
    assert str(caught.value).endswith("label: expected whole-number class labels, found 43.5 (image 1)")
    assert "np." not in str(caught.value)


def _lambda_model():
    import keras

    inputs = keras.Input((55, 47, 3))
    scaled = keras.layers.Lambda(lambda images: images / 255.0, name="scale_it")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(scaled))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("extension", [".h5", ".keras"])
def test_lambda_layers_get_goodnets_own_refusal(shared, tmp_path, capsys, extension):
    path = tmp_path / f"lam{extension}"
    _lambda_model().save(path)
    with pytest.raises(UnsafeModelError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "layer 'scale_it': Lambda layers carry Python code" in message and "goodnet never runs code from a model file" in message
    assert "safe_mode" not in message and "\n" not in message
    line = _one_line(*_cli(capsys, ["eval", str(path), str(shared / "images" / "clean_950.png")])[::2])
    assert "scale_it" in line and "safe_mode" not in line


def _archive(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


@pytest.mark.parametrize("member", ["config.json", "metadata.json", "model.weights.h5"])
def test_every_archive_member_is_sized_before_it_is_inflated(shared, tmp_path, capsys, member):
    members = {"metadata.json": json.dumps({"keras_version": "3.0"}), "config.json": "{}", "model.weights.h5": b""}
    members[member] = b" " * (64 * 2 ** 20)             # 64 MiB of spaces: a ~64 KB member
    path = _archive(tmp_path / "bomb.keras", members)
    assert os.path.getsize(path) < 2 ** 20
    with pytest.raises(UnsafeModelError, match=rf"bomb\.keras: {member}: declares 64\.0 MiB uncompressed"):
        load_model(path)
    line = _one_line(*_cli(capsys, ["eval", str(path), str(shared / "images" / "clean_950.png")])[::2])
    assert member in line and "decompression bomb" in line


def test_a_bug_is_not_reported_as_bad_input(capsys, monkeypatch):
    import goodnet.cli.synth

    def broken(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(goodnet.cli.synth, "run", broken)
    code, _, err = _cli(capsys, ["synth", "--out", "unused"])
    assert code == 1
    assert "internal error: TypeError" in err and "bug in goodnet" in err and "Traceback" in err


def test_input_errors_stay_one_line(capsys, monkeypatch, tmp_path):
    import goodnet.cli.synth

    for error in (OptionError("--seed: expected a whole number, got 1.5"),
                  FileNotFoundError(2, "No such file or directory", str(tmp_path / "gone.h5"))):
        def failing(args, error=error):
            raise error

        monkeypatch.setattr(goodnet.cli.synth, "run", failing)
        line = _one_line(*_cli(capsys, ["synth", "--out", "unused"])[::2])
        assert line.startswith("goodnet synth: error: ")
    assert line.endswith("gone.h5: No such file or directory")


def test_out_is_checked_before_the_work_and_user_files_survive(shared, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "prune_curve.csv"
    mine.write_text("my own notes")
    os.chmod(mine, 0o600)
    # The model does not exist: the --out check must come first, before anything is loaded or swept.
    line = _one_line(*_cli(capsys, ["prune", "--model", str(tmp_path / "no_model.h5"), "--valid",
                                    str(tmp_path / "no_valid.h5"), "--out", str(out)])[::2])
    assert "prune_curve.csv: --out: a file goodnet did not write is in the way" in line and "--overwrite" in line
    assert mine.read_text() == "my own notes" and (os.stat(mine).st_mode & 0o777) == 0o600
    (tmp_path / "plain").write_text("x")
    line = _one_line(*_cli(capsys, ["synth", "--out", str(tmp_path / "plain" / "bench")])[::2])
    assert "--out: cannot create this folder" in line and "Errno" not in line
