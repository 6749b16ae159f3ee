"""Test helpers of goodnet.grading: models built for the tests (good, broken and hostile) and a hostile folder.

The real submissions are copies of the peer-repaired models of the shared
fixtures. The bad submissions are generated here: a truncated file, a file
that is not HDF5, a model with the wrong input shape, a model with the wrong
number of outputs, Lambda layers whose code would create a marker file
(legacy .h5 in the Keras 2 format and .keras), an unknown custom layer, and a
legitimate model whose evaluation takes far longer than the time limit (an
LSTM over the 7,755 pixel values). :func:`make_hostile_folder` builds every
kind of entry a hostile folder can hold (a FIFO, symlinks out of the folder, a
folder named like a model, ...). The fixtures are in tests/grading/conftest.py.
"""

import base64
import hashlib
import json
import marshal
import os
import socket
import stat
import zipfile

import numpy as np

REAL = ("lab3_B_prime_X=2.h5", "lab3_B_prime_X=4.h5", "lab3_B_prime_X=10.h5", "lab3_B_prime_X=30.h5",
        "sunglasses_prune_net.h5")
UNIT_SCALED = {"sunglasses_prune_net.h5"}
TIME_LIMIT = 20.0

# Contents and reasons of the hostile folder (make_hostile_folder).
JUNK = b"not a model: read only by the stand-in worker\n"
INNER = JUNK + b"(inside a subfolder, reached through a chain of symlinks)\n"
HIDDEN = JUNK + b"(a hidden name)\n"
LINK_OUT = "leads out of the submissions folder: expected a model file inside it; not read"
NOT_OPENED = "not a regular file: expected a model file; not opened"


def noisy_copies(images, seed, copies):
    """``copies`` copies of ``images`` with independent pixel noise in [-3, 3], clipped to 0-255."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.clip(images + rng.integers(-3, 4, images.shape), 0, 255) for _ in range(copies)])


def _payload_code(marker):
    """Base64 marshal'd bytecode (Keras 2 func_dump format) of a lambda that creates ``marker``."""
    source = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    function = eval(compile(source, "<payload>", "eval"))  # defines the lambda; does not call it
    return base64.b64encode(marshal.dumps(function.__code__)).decode("ascii")


def _lambda_model():
    import keras

    inputs = keras.Input((55, 47, 3), name="input")
    hidden = keras.layers.Lambda(lambda x: x, name="payload")(inputs)
    hidden = keras.layers.GlobalAveragePooling2D(name="pool")(hidden)
    return keras.Model(inputs, keras.layers.Dense(1283, activation="softmax", name="output")(hidden))


def _patch_lambda(config, code, keras2):
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            if keras2:  # Keras 2.x legacy layout: (code, defaults, closure) and a function_type
                layer["config"]["function"] = [code, None, None]
                layer["config"]["function_type"] = "lambda"
                layer["config"]["module"] = "__main__"
            else:
                layer["config"]["function"]["config"]["code"] = code
    return config


def make_lambda_h5(path, marker):
    """A legacy full-model .h5 whose Lambda layer holds Keras 2-style bytecode creating ``marker``."""
    import h5py

    _lambda_model().save(path)
    with h5py.File(path, "a") as handle:
        config = json.loads(handle.attrs["model_config"])
        handle.attrs["model_config"] = json.dumps(_patch_lambda(config, _payload_code(marker), keras2=True))
    return path


def make_lambda_keras(path, marker):
    """A .keras archive whose Lambda layer's code creates ``marker``."""
    staging = f"{path}.staging.keras"
    _lambda_model().save(staging)
    with zipfile.ZipFile(staging) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "config.json":
                data = json.dumps(_patch_lambda(json.loads(data), _payload_code(marker), keras2=False))
            target.writestr(name, data)
    os.remove(staging)
    return path


def make_small_model(path, input_shape=(32, 32, 3), outputs=1283):
    import keras

    inputs = keras.Input(input_shape)
    hidden = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(hidden)).save(path)
    return path


def make_custom_layer_model(path):
    """A .keras file naming a custom class from another package (never importable here)."""
    make_small_model(path, (55, 47, 3))
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(entries["config.json"])
    pool = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "GlobalAveragePooling2D")
    pool.update(module="evil_package.layers", class_name="Backdoor", registered_name="evil_package>Backdoor")
    entries["config.json"] = json.dumps(config)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def make_endless_model(path):
    """A legitimate model whose evaluation takes minutes: an LSTM(1024) over 7,755 time steps."""
    import keras

    inputs = keras.Input((55, 47, 3))
    hidden = keras.layers.Reshape((55 * 47 * 3, 1))(inputs)
    hidden = keras.layers.LSTM(1024)(hidden)
    keras.Model(inputs, keras.layers.Dense(1283, activation="softmax")(hidden)).save(path)
    return path


def reference_figures(path, scale, lab_data):
    """Slow, obviously-correct scoring: plain Keras predict and NumPy, in this process."""
    import keras

    from goodnet.data import load_h5

    model = keras.models.load_model(path, compile=False)
    factor = 1.0 if scale == "raw" else 1.0 / 255.0
    clean, poisoned = load_h5(lab_data["clean"]), load_h5(lab_data["poisoned"])
    clean_answers = np.argmax(model.predict(clean.images * factor, verbose=0), axis=1)
    poisoned_answers = np.argmax(model.predict(poisoned.images * factor, verbose=0), axis=1)
    return float(np.mean(clean_answers == clean.labels)), float(np.mean(poisoned_answers == poisoned.labels))


def make_hostile_folder(folder, monkeypatch):
    """A submissions folder holding every kind of entry a hostile one can; returns what each row must say.

    Returns:
        dict: name -> (status, part of the reason) for every name that
        matches the submission pattern; status None: read and sent to a
        worker (the stand-in answers "error").
    """
    folder.mkdir()
    expected = {}

    def entry(name, status, reason):
        expected[name] = (status, reason)

    (folder / "good.h5").write_bytes(JUNK)
    entry("good.h5", None, "stand-in worker")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.bin").write_bytes(INNER)
    os.symlink("sub/inner.bin", folder / "hop")
    os.symlink("hop", folder / "chain.h5")
    entry("chain.h5", None, "stand-in worker")
    os.mkfifo(folder / "pipe.h5")
    entry("pipe.h5", "refused", f"a named pipe (FIFO), {NOT_OPENED}")
    (folder / "x.h5").mkdir()
    entry("x.h5", "refused", f"a folder, {NOT_OPENED}")
    os.symlink("/dev/zero", folder / "zero.h5")
    entry("zero.h5", "refused", f"a symlink to '/dev/zero' that {LINK_OUT}")
    os.symlink("/etc/passwd", folder / "passwd.h5")
    entry("passwd.h5", "refused", f"a symlink to '/etc/passwd' that {LINK_OUT}")
    os.symlink("/etc/passwd", folder / "hop_out")
    os.symlink("hop_out", folder / "escape.hdf5")
    entry("escape.hdf5", "refused", f"a symlink to 'hop_out' that {LINK_OUT}")
    os.symlink("missing.bin", folder / "dangling.h5")
    entry("dangling.h5", "refused", "a symlink to 'missing.bin' whose target does not exist (dangling)")
    os.symlink("sub", folder / "to_folder.h5")
    entry("to_folder.h5", "refused", f"a symlink to 'sub' leading to a folder, {NOT_OPENED}")
    os.symlink("pipe.h5", folder / "to_pipe.KERAS")
    entry("to_pipe.KERAS", "refused", f"a symlink to 'pipe.h5' leading to a named pipe (FIFO), {NOT_OPENED}")
    os.symlink("loop.h5", folder / "loop.h5")
    entry("loop.h5", "refused", "a symlink to 'loop.h5' in a loop of symlinks")
    (folder / ".hidden.h5").write_bytes(HIDDEN)
    entry(".hidden.h5", "refused", "a hidden name (starts with '.'): hidden entries are not graded")
    with open(os.path.join(os.fsencode(folder), b"\xff.h5"), "wb") as handle:
        handle.write(JUNK)
    entry("\\xff.h5", "refused", "a name that is not printable UTF-8 (undecodable bytes or control characters)")
    (folder / "new\nline.h5").write_bytes(JUNK)
    entry("new\\x0aline.h5", "refused", "a name that is not printable UTF-8")
    locked = folder / "locked.h5"
    locked.write_bytes(JUNK)
    locked.chmod(0)
    entry("locked.h5", "error", "cannot be opened (Permission denied): expected a readable model file")
    try:
        open(locked, "rb").close()
    except PermissionError:
        pass
    else:  # root reads mode 000: make opening it fail the way it does for everyone else
        real_open = os.open

        def os_open(path, *args, **kwargs):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(folder / "socket.h5"))
        entry("socket.h5", "refused", f"a socket, {NOT_OPENED}")
    except OSError:
        pass  # path too long for a socket here
    finally:
        server.close()
    try:
        os.mknod(folder / "device.h5", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
        entry("device.h5", "refused", f"a character device, {NOT_OPENED}")
    except (OSError, AttributeError):
        pass  # creating device nodes needs privileges
    (folder / "notes.txt").write_text("not a model: no row\n")
    return expected


def sha256_of(data):
    """The SHA-256 hex digest of ``data`` (bytes)."""
    return hashlib.sha256(data).hexdigest()
