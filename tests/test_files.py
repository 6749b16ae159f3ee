"""Tests of goodnet.files: output modes under the umask, the manifest of goodnet's own files, output checks."""

import json
import os
import stat

import numpy as np
import pytest

from goodnet.errors import OutputError
from goodnet.files import (MANIFEST, atomic_write, overwriting, prepare_output_dir, prepare_output_file,
                           write_text, written_by_goodnet)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Run a test under a given umask: ``umask(0o022)``; the old one is restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_open_would_give(tmp_path, umask, mask):
    from goodnet.data import save_h5
    from goodnet.models import Classifier, build_deepid, save_model
    from goodnet.plots import strip_entropy_histogram

    umask(mask)
    expected = 0o666 & ~mask
    plain = tmp_path / "plain.txt"
    open(plain, "w").close()
    assert _mode(plain) == expected
    outputs = [write_text(tmp_path / "a.json", "{}"),
               save_h5(tmp_path / "d.h5", np.zeros((2, 55, 47, 3)), [0, 1]),
               save_model(Classifier(build_deepid(3)), tmp_path / "m.h5"),
               save_model(Classifier(build_deepid(3)), tmp_path / "m.keras"),
               strip_entropy_histogram(np.linspace(0, 1, 20), {"bd": np.linspace(0, 0.2, 20)}, 0.1,
                                       str(tmp_path / "h.png"))]
    for path in outputs:
        assert _mode(path) == expected, path
    assert _mode(tmp_path / MANIFEST) == expected


def test_goodnet_replaces_its_own_files_and_refuses_the_users(tmp_path):
    own = write_text(tmp_path / "prune_curve.csv", "a\n")
    write_text(own, "b\n")                                  # goodnet wrote it: replaced
    assert open(own).read() == "b\n" and written_by_goodnet(own)
    users = tmp_path / "model_X=2.h5"
    users.write_text("mine")
    os.chmod(users, 0o640)
    with pytest.raises(OutputError, match=r"model_X=2\.h5: a file goodnet did not write is in the way"):
        write_text(users, "goodnet's")
    assert users.read_text() == "mine" and _mode(users) == 0o640
    with open(own, "a") as handle:                           # the user edits goodnet's file: now it is theirs
        handle.write("edited")
    assert not written_by_goodnet(own)
    with pytest.raises(OutputError, match="did not write"):
        write_text(own, "c\n")
    with overwriting():                                      # --overwrite
        write_text(users, "goodnet's")
    assert users.read_text() == "goodnet's"
    with pytest.raises(OutputError, match="exists"):
        write_text(own, "d", overwrite=False)
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith(".")) == [MANIFEST]
    recorded = json.loads((tmp_path / MANIFEST).read_text())["files"]
    assert sorted(recorded) == ["model_X=2.h5", "prune_curve.csv"]


def test_a_failed_write_leaves_the_destination_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "r.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as temporary:
            open(temporary, "w").write("half")
            raise RuntimeError("stopped")
    assert open(path).read() == "old"
    assert sorted(os.listdir(tmp_path)) == [MANIFEST, "r.json"]


def test_output_checks_name_the_option_and_create_nothing(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"f: --out: expected a folder, found a file"):
        prepare_output_dir(tmp_path / "f")
    with pytest.raises(OutputError, match=r"--out: cannot create this folder: .* is a file"):
        prepare_output_dir(tmp_path / "f" / "sub")
    prepare_output_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "report.json").write_text("mine")
    with pytest.raises(OutputError, match=r"report\.json: --plot: a file goodnet did not write"):
        prepare_output_file(tmp_path / "d" / "report.json", "--plot")
    (tmp_path / "d" / "x.h5").mkdir()
    with pytest.raises(OutputError, match="a folder is in the way"):
        prepare_output_dir(tmp_path / "d", names=["x.h5"])
    assert sorted(os.listdir(tmp_path / "d")) == ["report.json", "x.h5"]
