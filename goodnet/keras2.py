"""Write Keras models as legacy HDF5 files that Keras 2 (tf-keras) and Keras 3 both open.

Keras 3's own ``model.save("x.h5")`` puts Keras 3's configuration dialect into
the legacy container: ``batch_shape`` input layers, ``DTypePolicy`` dtypes,
``module`` and ``registered_name`` entries, inbound nodes as call arguments
and, for a compiled model, a Keras 3 training configuration and optimizer
state. Keras 2 cannot rebuild that (``Unrecognized keyword arguments:
['batch_shape']``). This module writes instead the dialect of the lab's own
files (``bd_net.h5``, written by Keras 2.3.1), which tf-keras 2.21 and Keras 3
read (tested; for the DeepID the configuration is bd_net.h5's own):

- ``model_config``: ``{"class_name": "Model", "config": {"name", "layers",
  "input_layers", "output_layers"}}``; each layer ``{"class_name", "config",
  "name", "inbound_nodes"}`` with inbound nodes ``[[layer, node, tensor,
  kwargs], ...]``; input layers with ``batch_input_shape``; dtypes as names;
  initializers, regularizers and constraints as ``{"class_name", "config"}``.
- ``model_weights``: one group per layer (attribute ``weight_names``, values
  at ``<layer>/<weight name>:0``), trainable weights first, as both Keras
  versions read them back by order; attributes ``layer_names``,
  ``keras_version`` and ``backend``.

It writes from scratch (the configuration from ``model.get_config()``, the
weights with h5py) rather than converting Keras 3's file: converting would
rewrite every part of that file anyway and would have to strip the optimizer
state. No training configuration or optimizer state is written: the files
are for inference (``load_model`` then ``predict``). Keras 3 configuration
keys that Keras 2 lacks are left out when they hold their default value, and
refused otherwise, so a file that Keras 2 could not rebuild is never
written.

A GoodNet cannot be written so (see :data:`NESTED_MODELS` and
:func:`goodnet.export.export_goodnet`): :func:`save_h5` leaves it to Keras 3's writer, and
:func:`goodnet.export.export_goodnet` writes its two networks in this dialect with its gate
in JSON.

Example:
    >>> write_keras2_h5(build_deepid(10), "out/model.h5")
    >>> import tf_keras; tf_keras.models.load_model("out/model.h5").predict(images)
"""

import json
import logging

import numpy as np

from goodnet.errors import ModelError
from goodnet.files import json_default

logger = logging.getLogger(__name__)

DIALECT_VERSION = "2.3.1"      # the Keras version whose file dialect is written (the lab's bd_net.h5)
BACKEND = "tensorflow"
WRITER_ATTRIBUTE = "goodnet_writer"
MODEL_CLASS = "Model"          # Keras 2.3 knows only "Model"; 2.4+ and Keras 3 read it as "Functional"
# Keys Keras 3 writes that Keras 2.4+ understands but the Keras 2.3 dialect lacks: left out at these defaults.
NEWER_KERAS2_DEFAULTS = {"ragged": False, "groups": 1, "synchronized": False, "renorm": False,
                         "renorm_clipping": None, "renorm_momentum": 0.99}
# Keys Keras 2 does not take (of them tf-keras 2.21 knows only "optional"): left out at these defaults,
# refused at any other value.
KERAS3_ONLY_DEFAULTS = {"optional": False, "quantization_config": None, "input_axes": None, "output_axes": None,
                        "rms_scaling": False, "lora_rank": None, "lora_alpha": None}
# Keys Keras 3 renamed, per class: Keras 3 name -> Keras 2 name.
RENAMED_KEYS = {"InputLayer": {"batch_shape": "batch_input_shape"}, "LeakyReLU": {"negative_slope": "alpha"}}
MODEL_CLASSES = ("Functional", "Model", "Sequential")
# Tried with tf-keras 2.21 and Keras 3.15: Keras 2 numbers a nested model's first call node 1 (its
# construction is node 0), Keras 3 numbers it 0, and neither reads the other's numbering (tf-keras
# loops forever; Keras 3 reports a disconnected graph), so no nested model file opens in both.
NESTED_MODELS = "expected no nested model (Keras 2 and Keras 3 number its nodes differently)"
DTYPE_POLICIES = ("DTypePolicy", "FloatDTypePolicy")
# Policies written as their name. Not a mixed policy: Keras 2 writes it as {"class_name": "Policy", ...},
# which Keras 3.15 fails to read (tried); not a quantized one: Keras 2 has none.
PLAIN_DTYPES = ("float16", "bfloat16", "float32", "float64")
KERAS_TENSOR = "__keras_tensor__"


class _Converter:
    """Turns a Keras 3 functional configuration into the Keras 2 dialect; ``where`` names the file in errors."""

    def __init__(self, where):
        self.where = where

    def fail(self, layer, field, expected):
        raise ModelError(f"{self.where}: layer {layer}: {field}: {expected} (Keras 2 could not rebuild it)")

    def model(self, config):
        """A functional model's ``get_config()`` -> ``{"class_name": "Model", "config": ...}``."""
        converted = {"name": config["name"], "layers": [self.layer_entry(entry) for entry in config["layers"]],
                     "input_layers": self.endpoints(config["input_layers"]),
                     "output_layers": self.endpoints(config["output_layers"])}
        if config.get("trainable", True) is not True:
            converted["trainable"] = config["trainable"]
        return {"class_name": MODEL_CLASS, "config": converted}

    @staticmethod
    def endpoints(endpoints):
        """Keras 3 writes one endpoint as ``[name, node, tensor]``; Keras 2 always a list of them."""
        endpoints = list(endpoints)
        if endpoints and isinstance(endpoints[0], str):
            endpoints = [endpoints]
        return [list(endpoint) for endpoint in endpoints]

    def layer_entry(self, entry):
        name, class_name = entry["name"], entry["class_name"]
        if class_name in MODEL_CLASSES:
            self.fail(name, class_name, NESTED_MODELS)
        converted = self.serialized(entry, name)
        converted["name"] = name
        converted["inbound_nodes"] = [self.node(node, name) for node in entry["inbound_nodes"]]
        return converted

    def serialized(self, item, layer):
        """A Keras 3 serialized object ``{"module", "class_name", "config", "registered_name"}`` -> Keras 2."""
        class_name = item["class_name"]
        registered = item.get("registered_name")
        if registered not in (None, class_name):
            self.fail(layer, class_name, f"expected a Keras built-in object, got the custom {registered!r}")
        if class_name in DTYPE_POLICIES:
            return self.dtype(item["config"]["name"], layer)
        config = item["config"]
        if isinstance(config, dict):
            config = self.config(class_name, config, layer)
        return {"class_name": class_name, "config": config}

    def dtype(self, name, layer):
        if name not in PLAIN_DTYPES:
            self.fail(layer, "dtype", f"expected a plain dtype policy ({', '.join(PLAIN_DTYPES)}), got {name!r}")
        return name

    def config(self, class_name, config, layer):
        renamed = RENAMED_KEYS.get(class_name, {})
        converted = {}
        for key, value in config.items():
            if key in NEWER_KERAS2_DEFAULTS and value == NEWER_KERAS2_DEFAULTS[key]:
                continue
            if key in KERAS3_ONLY_DEFAULTS:
                if value == KERAS3_ONLY_DEFAULTS[key]:
                    continue
                self.fail(layer, f"{class_name} {key}", f"expected {KERAS3_ONLY_DEFAULTS[key]!r} (a Keras 3 "
                                                        f"option), got {value!r}")
            converted[renamed.get(key, key)] = self.value(value, layer)
        return converted

    def value(self, value, layer):
        if isinstance(value, dict) and "class_name" in value and "config" in value:
            return self.serialized(value, layer)
        if isinstance(value, dict):
            return {key: self.value(item, layer) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(item, layer) for item in value]
        return value

    def node(self, node, layer):
        """Keras 3 ``{"args": [...], "kwargs": {...}}`` -> Keras 2 ``[[layer, node, tensor, kwargs], ...]``."""
        args, kwargs = list(node.get("args", ())), dict(node.get("kwargs", {}))
        if len(args) != 1:
            self.fail(layer, "inbound node", f"expected one input argument (a tensor or a list of tensors), "
                                             f"got {len(args)}")
        tensors = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        kwargs = {key: item for key, item in kwargs.items() if item is not None}
        if any(self.is_tensor(item) for item in kwargs.values()):
            self.fail(layer, "inbound node", "expected call keyword arguments without tensors")
        entries = []
        for tensor in tensors:
            if not self.is_tensor(tensor):
                self.fail(layer, "inbound node", f"expected a tensor, got {type(tensor).__name__}")
            history = tensor["config"]["keras_history"]
            entries.append([history[0], int(history[1]), int(history[2]), kwargs])
        return entries

    @staticmethod
    def is_tensor(item):
        return isinstance(item, dict) and item.get("class_name") == KERAS_TENSOR


def functional(model, where="model"):
    """``model`` as a functional model (a built Sequential becomes one over the same layers)."""
    import keras

    if isinstance(model, keras.Sequential):
        if not model.inputs:
            raise ModelError(f"{where}: model: expected a built Sequential model (with an Input)")
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def _functional_config(model, where):
    """The Keras 3 functional configuration of ``model``; a subclassed model has none Keras 2 could use."""
    model = functional(model, where)
    try:
        config = model.get_config()
    except NotImplementedError:
        config = {}
    if not {"layers", "input_layers", "output_layers"} <= set(config):
        raise ModelError(f"{where}: model: expected a functional or Sequential Keras model, "
                         f"got the subclassed {type(model).__name__}")
    return model, config


def _weight_names(layer, where):
    names = [f"{variable.path}:0" for variable in layer.trainable_weights + layer.non_trainable_weights]
    if len(set(names)) != len(names):
        raise ModelError(f"{where}: layer {layer.name}: weights: expected distinct weight names, got {names}")
    return names


def _encoded(names):
    """Names as Keras 2 stores them: fixed-length byte strings (an empty float array when there are none)."""
    return np.array([name.encode("utf8") for name in names]) if names else np.array([], dtype=np.float64)


def write_keras2_h5(model, path, where=None):
    """Write ``model`` (configuration and weights) to ``path`` in the Keras 2 legacy HDF5 dialect.

    Args:
        model: a Keras 3 functional or Sequential model of built-in layers.
        path: the ``.h5`` file to write (replaced).
        where: the name errors give the file (default ``path``).

    Returns:
        str: ``path``.

    Raises:
        ModelError: the model holds something Keras 2 cannot rebuild.

    Example:
        >>> write_keras2_h5(pruned_model, "out/model_X=10.h5")
    """
    import h5py
    import keras

    from goodnet import __version__

    where = where or path
    model, config = _functional_config(model, where)
    config = json.dumps(_Converter(where).model(config), default=json_default)
    layers = [(layer, _weight_names(layer, where)) for layer in model.layers]
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = config.encode("utf8")
        handle.attrs["keras_version"] = DIALECT_VERSION.encode("utf8")
        handle.attrs["backend"] = BACKEND.encode("utf8")
        handle.attrs[WRITER_ATTRIBUTE] = (f"goodnet {__version__} with Keras {keras.__version__}, "
                                          f"Keras {DIALECT_VERSION} dialect").encode("utf8")
        weights = handle.create_group("model_weights")
        weights.attrs["layer_names"] = _encoded([layer.name for layer, _ in layers])
        weights.attrs["keras_version"] = DIALECT_VERSION.encode("utf8")
        weights.attrs["backend"] = BACKEND.encode("utf8")
        for layer, names in layers:
            group = weights.create_group(layer.name)
            group.attrs["weight_names"] = _encoded(names)
            for name, variable in zip(names, layer.trainable_weights + layer.non_trainable_weights):
                group.create_dataset(name, data=keras.ops.convert_to_numpy(variable))
    return path


def obstacle(model):
    """Why ``model`` cannot be written in the Keras 2 dialect, or None when it can.

    Returns:
        tuple or None: (one-line reason, ``True`` when the reason is goodnet's
        own layers: a GoodNet file, which opens with goodnet and Keras 3 and
        is exported for Keras 2 by ``goodnet export``).
    """
    import keras

    custom = [layer for layer in model.layers if not type(layer).__module__.startswith("keras.")]
    if custom:
        names = ", ".join(f"{layer.name} ({type(layer).__module__}.{type(layer).__name__})" for layer in custom)
        return (f"layers {names}: not Keras built-ins",
                all(type(layer).__module__.split(".")[0] == "goodnet" for layer in custom))
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        return f"layers {', '.join(nested)}: {NESTED_MODELS}", False
    policies = [f"{layer.name} ({layer.dtype_policy.name})" for layer in model.layers
                if layer.dtype_policy.name not in PLAIN_DTYPES]
    if policies:
        return f"layers {', '.join(policies)}: expected plain dtype policies ({', '.join(PLAIN_DTYPES)})", False
    return None


def save_h5(model, path, where=None):
    """Write ``model`` as legacy ``.h5``: in the Keras 2 dialect when it can be, else Keras 3's own (logged).

    A model of Keras built-in layers gets the dialect both Keras 2 and Keras 3
    open with a bare ``load_model``. A model holding goodnet's own layers
    (GoodNet, STRIP gate), a nested model or anything else the dialect
    writer refuses is written by Keras 3 (``model.save``): it opens in Keras
    3 (with ``goodnet.layers`` for goodnet's layers) only; the log says so,
    at INFO for goodnet's layers and WARNING otherwise.

    Args:
        model: the Keras 3 model.
        path: the ``.h5`` file to write.
        where: the name messages give the file (default ``path``).

    Returns:
        str: "keras2" or "keras3", the dialect written.
    """
    where = where or path
    found = obstacle(model)
    if found is None:
        try:
            write_keras2_h5(model, path, where)
            return "keras2"
        except ModelError as error:   # something deeper than its layers (an initializer, an option)
            found = (str(error).removeprefix(f"{where}: "), False)
    reason, ours = found
    logger.log(logging.INFO if ours else logging.WARNING,
               "%s: written in Keras 3's h5 dialect, which Keras 2 cannot open: %s", where, reason)
    model.save(path)
    return "keras3"
