"""Models goodnet writes open in Keras 2 (tf-keras) and Keras 3: goodnet.keras2, save_model, goodnet export.

The Keras 2 side runs in a subprocess that imports ``tf_keras as keras`` and
never goodnet, as a lab grader's script does; it loads every file once and
writes its predictions back. The Keras 3 side loads the same files with a bare
``keras.models.load_model`` in this process.
"""

import csv
import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

PATHS = ("bd_net", "pruned", "attack", "layers")   # plain models written by save_model
EXPORTS = ("goodnet", "gated")                      # GoodNets exported by goodnet export
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")

# The lab's evaluation logic (CSAW-HackML-2020 lab3 eval.py, raw pixels), run with ``keras`` bound to
# tf_keras in the subprocess and to Keras 3 here.
LAB_EVAL = '''
def data_loader(filepath):
    data = h5py.File(filepath, 'r')
    x_data = np.array(data['data'])
    y_data = np.array(data['label'])
    x_data = x_data.transpose((0,2,3,1))
    return x_data, y_data

def lab_accuracy(clean_data_filename, model_filename):
    x_test, y_test = data_loader(clean_data_filename)
    bd_model = keras.models.load_model(model_filename)
    clean_label_p = np.argmax(bd_model.predict(x_test, verbose=0), axis=1)
    return np.mean(np.equal(clean_label_p, y_test))*100
'''

TF_KERAS_SIDE = '''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import h5py
import numpy as np
import tf_keras as keras
job = json.load(open(sys.argv[1]))
exec(job["lab_eval"])
exec(job["loader"])
images = np.load(job["images"])
out = {}
for name, (path, inputs) in job["models"].items():
    out[name] = keras.models.load_model(path).predict(np.load(inputs), verbose=0)
for name, path in job["evals"].items():
    out["eval_" + name] = np.float64(lab_accuracy(job["data"], path))
for name, folder in job["exports"].items():
    out["export_" + name] = load_goodnet(folder)(images)
out["goodnet_imported"] = np.bool_(any(module.split(".")[0] == "goodnet" for module in sys.modules))
out["version"] = np.array(keras.__version__)
np.savez(job["out"], **out)
'''


def readme_loader(keras_module):
    """The README's ``load_goodnet`` source, importing ``keras_module`` as keras."""
    with open(README, encoding="utf-8") as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
    source = next(block for block in blocks if "def load_goodnet(" in block)
    assert "import tf_keras as keras" in source
    return source.replace("import tf_keras as keras", f"import {keras_module} as keras")


def _lab_rows(shared):
    from goodnet.data import load_image

    with open(shared / "images" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = np.stack([load_image(shared / "images" / row["file"]) for row in rows]).astype(np.float32)
    return rows, images


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _zeroed_channels(path, layer="conv_3"):
    """The conv_3 channels whose kernel and bias a peer's pruned file holds at zero."""
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"][layer][layer]
        kernel, bias = np.asarray(group["kernel:0"]), np.asarray(group["bias:0"])
    return [int(c) for c in np.flatnonzero((np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) == 0) & (bias == 0))]


def _many_layers_model():
    """Layer types beyond the DeepID's (pruning takes models with them), trained a step so statistics move."""
    import keras

    layers = keras.layers
    inputs = keras.Input((16, 12, 3), name="input")
    a = layers.Conv2D(8, 3, padding="same", name="c1", kernel_regularizer=keras.regularizers.L2(1e-3))(inputs)
    a = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(a))
    b = layers.LeakyReLU(0.2, name="leaky")(layers.Conv2D(8, 3, padding="same", name="c2",
                                                          kernel_initializer="he_normal")(inputs))
    c = layers.SpatialDropout2D(0.2, name="sd")(layers.DepthwiseConv2D(3, name="dw")(
        layers.AveragePooling2D(2, name="avg")(layers.Concatenate(name="cat")([a, b]))))
    d = layers.Dense(6, name="dd")(layers.Dropout(0.3, name="do")(layers.GlobalAveragePooling2D(name="gap")(c)))
    e = layers.Dense(6, name="de")(layers.Flatten(name="fl")(layers.MaxPooling2D(2, name="mp")(c)))
    f = layers.ELU(name="elu")(layers.Add(name="add")([d, e]))
    model = keras.Model(inputs, layers.Softmax(name="sm")(layers.Dense(5, name="out")(f)), name="many")
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.uniform(size=(8, 16, 12, 3)), np.arange(8) % 5, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module")
def written(shared, bd_net, tmp_path_factory):
    """Every kind of file goodnet writes, saved by goodnet, and the tf-keras subprocess's answers for them."""
    from goodnet.attacks.badnets import AttackOptions, train_badnet
    from goodnet.data import save_h5
    from goodnet.defenses.combine import build_gated_goodnet, build_goodnet
    from goodnet.export import export_goodnet
    from goodnet.models import Classifier, save_model
    from goodnet.surgery import prune_model
    from goodnet.defenses.strip import STRIP

    folder = tmp_path_factory.mktemp("keras2")
    rows, real = _lab_rows(shared)
    rng = np.random.default_rng(0)
    images = np.concatenate([real, rng.uniform(0, 255, (12,) + real.shape[1:]).astype(np.float32)])
    channels = _zeroed_channels(shared / "models" / "peer_repaired" / "lab3_B_prime_X=10.h5")
    pruned = bd_net.with_model(prune_model(bd_net.model, "conv_3", channels))
    labels = np.arange(40) % 4
    attack, _ = train_badnet(rng.uniform(0, 255, (40,) + real.shape[1:]).astype(np.float32), labels, 4,
                             AttackOptions(epochs=1, batch_size=8))
    layers = _many_layers_model()
    classifiers = {"bd_net": bd_net, "pruned": pruned, "attack": attack}
    paths = {name: save_model(classifier, folder / f"{name}.h5") for name, classifier in classifiers.items()}
    paths["layers"] = save_model(Classifier(layers, "unit"), folder / "layers.h5")
    inputs = {name: images for name in classifiers}
    inputs["layers"] = rng.uniform(size=(8, 16, 12, 3)).astype(np.float32)
    clean = [i for i, row in enumerate(rows) if row["content"] == "clean"]
    data = save_h5(folder / "clean.h5", real[clean], np.array([int(rows[i]["identity"]) for i in clean]),
                   dtype="float32")
    bank = real[[i for i, row in enumerate(rows) if row["content"] != "sunglasses"]]
    strip = STRIP(copies=len(bank), blend="alpha", alpha=0.5, draws="fixed", threshold_method="quantile",
                  frr=0.05).fit(bd_net, bank[:, :, ::-1], bank=bank)
    goodnets = {"goodnet": build_goodnet(bd_net, pruned), "gated": build_gated_goodnet(bd_net, pruned, strip)}
    exports = {}
    for name, goodnet in goodnets.items():
        paths[name] = save_model(goodnet, folder / f"goodnet_{name}.h5")
        exports[name] = os.fspath(folder / f"{name}_keras2")
        export_goodnet(goodnet, exports[name])
    for name in PATHS:
        np.save(folder / f"{name}_inputs.npy", inputs[name])
    np.save(folder / "images.npy", images)
    job = {"lab_eval": LAB_EVAL, "loader": readme_loader("tf_keras"), "images": os.fspath(folder / "images.npy"),
           "models": {name: [os.fspath(paths[name]), os.fspath(folder / f"{name}_inputs.npy")] for name in PATHS},
           "evals": {name: os.fspath(paths[name]) for name in ("bd_net", "pruned")}, "data": os.fspath(data),
           "exports": exports, "out": os.fspath(folder / "tf_keras.npz")}
    with open(folder / "job.json", "w") as handle:
        json.dump(job, handle)
    done = subprocess.run([sys.executable, "-c", TF_KERAS_SIDE, os.fspath(folder / "job.json")],
                          capture_output=True, text=True, timeout=600, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(job["out"]) as npz:
        answers = {key: npz[key] for key in npz.files}
    return {"paths": paths, "inputs": inputs, "classifiers": {**classifiers, "layers": Classifier(layers, "unit"),
                                                              **goodnets},
            "data": data, "exports": exports, "tf_keras": answers, "rows": rows}


@pytest.mark.filterwarnings("ignore:Argument `alpha` is deprecated")   # Keras 3 reading Keras 2's LeakyReLU
def test_plain_models_open_in_tf_keras_and_keras3_with_identical_predictions(written):
    import keras

    tf_keras = written["tf_keras"]
    assert str(tf_keras["version"]).startswith("2.") and not tf_keras["goodnet_imported"]
    for name in PATHS:
        expected = written["classifiers"][name].model.predict(written["inputs"][name], verbose=0)
        keras3 = keras.models.load_model(written["paths"][name]).predict(written["inputs"][name], verbose=0)
        np.testing.assert_allclose(tf_keras[name], expected, rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(keras3, expected, rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(tf_keras[name].argmax(1), keras3.argmax(1), err_msg=name)


def test_lab_evaluation_logic_scores_goodnet_files_alike_in_tf_keras_and_keras3(written):
    import keras

    from goodnet.data import load_h5

    namespace = {"keras": keras, "h5py": h5py, "np": np}
    exec(LAB_EVAL, namespace)
    clean = load_h5(written["data"])
    for name in ("bd_net", "pruned"):
        keras3 = namespace["lab_accuracy"](written["data"], os.fspath(written["paths"][name]))
        goodnet = 100 * np.mean(written["classifiers"][name].predict(clean.images) == clean.labels)
        assert written["tf_keras"][f"eval_{name}"] == keras3 == goodnet, name
    assert written["tf_keras"]["eval_bd_net"] == 100.0   # the BadNet knows every clean face


def test_written_h5_carries_the_lab_dialect_and_goodnet_attributes(written, shared):
    from goodnet.keras2 import DIALECT_VERSION
    from goodnet.models import METADATA_ATTRIBUTES, load_model

    with h5py.File(written["paths"]["bd_net"], "r") as mine, h5py.File(shared / "models" / "bd_net.h5", "r") as lab:
        assert set(mine) == {"model_weights"} and "training_config" not in mine.attrs
        assert _text(mine.attrs["keras_version"]) == DIALECT_VERSION == _text(lab.attrs["keras_version"])
        assert {METADATA_ATTRIBUTES["scale"], METADATA_ATTRIBUTES["num_classes"]} <= set(mine.attrs)
        config, reference = json.loads(mine.attrs["model_config"]), json.loads(lab.attrs["model_config"])
        for layer in reference["config"]["layers"]:   # Keras 3's Dense has no activity_regularizer
            if layer["class_name"] == "Dense":
                layer["config"].pop("activity_regularizer")
        assert config == reference
        assert list(mine["model_weights"].attrs["layer_names"]) == list(lab["model_weights"].attrs["layer_names"])
        assert (list(mine["model_weights/conv_1"].attrs["weight_names"])
                == list(lab["model_weights/conv_1"].attrs["weight_names"]))
    with h5py.File(written["paths"]["attack"], "r") as trained:   # compiled and trained: no optimizer state
        assert set(trained) == {"model_weights"} and "training_config" not in trained.attrs
    loaded = load_model(written["paths"]["attack"])
    assert (loaded.scale, loaded.num_classes) == ("unit", 4)


def test_goodnet_export_answers_as_the_goodnet_file_in_tf_keras_and_keras3(written):
    from goodnet.models import load_model

    namespace = {}
    exec(readme_loader("keras"), namespace)
    images = written["inputs"]["bd_net"]
    for name in EXPORTS:
        expected = load_model(written["paths"][name]).predict(images)
        assert 0 < np.sum(expected == 1283) < len(images), name   # some inputs flagged, some answered
        np.testing.assert_array_equal(written["tf_keras"][f"export_{name}"], expected, err_msg=name)
        np.testing.assert_array_equal(namespace["load_goodnet"](written["exports"][name])(images), expected,
                                      err_msg=name)
    with open(os.path.join(written["exports"]["gated"], "gate.json")) as handle:
        spec = json.load(handle)
    assert spec["answer"] == "badnet" and spec["strip"]["blend"] == "alpha" and spec["num_classes"] == 1283


def test_goodnet_files_stay_keras3_and_the_writer_refuses_what_keras2_cannot_rebuild(written, tmp_path, caplog):
    import logging

    import keras

    from goodnet.errors import ModelError
    from goodnet.keras2 import obstacle, write_keras2_h5
    from goodnet.layers import custom_objects
    from goodnet.models import Classifier, save_model

    goodnet = written["classifiers"]["goodnet"]
    reason, ours = obstacle(goodnet.model)
    assert ours and "goodnet.layers.GoodNetCombiner" in reason
    with pytest.raises(ModelError, match="G.h5: layer badnet: Functional: expected no nested model"):
        write_keras2_h5(goodnet.model, tmp_path / "G.h5", where="G.h5")
    with h5py.File(written["paths"]["goodnet"], "r") as handle:
        assert _text(handle.attrs["keras_version"]).startswith("3.")
    keras.models.load_model(written["paths"]["goodnet"], custom_objects=custom_objects(), compile=False)

    inner_input = keras.Input((3,))
    inner = keras.Model(inner_input, keras.layers.Dense(2, name="d")(inner_input), name="inner")
    outer_input = keras.Input((3,))
    nested = keras.Model(outer_input, keras.layers.Dense(2, name="head")(inner(outer_input)))
    with caplog.at_level(logging.WARNING, logger="goodnet.keras2"):
        path = save_model(Classifier(nested), tmp_path / "nested.h5")
    assert "Keras 2 cannot open" in caplog.text and "inner" in caplog.text
    assert keras.models.load_model(path).count_params() == nested.count_params()
    optional_input = keras.Input((3,), optional=True, name="maybe")
    optional = keras.Model(optional_input, keras.layers.Dense(2)(optional_input))
    with pytest.raises(ModelError, match="opt.h5: layer maybe: InputLayer optional: expected False"):
        write_keras2_h5(optional, tmp_path / "opt.h5", where="opt.h5")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="goodnet.keras2"):
        save_model(Classifier(optional), tmp_path / "opt.h5")   # saved all the same, by Keras 3, with a warning
    assert "layer maybe: InputLayer optional" in caplog.text


def test_export_command(written, tmp_path, capsys):
    from goodnet.cli import main
    from goodnet.files import MANIFEST
    from goodnet.export import EXPORT_FILES

    out = tmp_path / "export"
    assert main(["export", "--model", os.fspath(written["paths"]["gated"]), "--out", os.fspath(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(out)) == sorted([*EXPORT_FILES.values(), MANIFEST])
    assert report["spec"]["strip"]["bank"] == EXPORT_FILES["bank"]
    assert main(["export", "--model", os.fspath(written["paths"]["bd_net"]), "--out", os.fspath(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "layer goodnet: expected a GoodNet model" in error
