"""Load, build and save the lab's models (DeepID-style BadNets and repairs).

Formats read: full legacy ``.h5`` files from Keras 2.3 (``"Model"``) and 2.4+
(``"Functional"``), weights-only ``.h5`` files (loaded into the built-in DeepID
architecture), and native ``.keras`` files. Models are always loaded without
compiling and with Keras's safe mode on.

Input scaling belongs to a model: the lab3 BadNet takes raw 0-255 pixels, the
main-repo BadNets take pixels / 255. A :class:`Classifier` pairs a Keras model
with its scaling and its number of real classes.
"""

import json
import logging
import os
import zipfile

import numpy as np

from goodnet.errors import ModelError, OptionError
from goodnet.files import atomic_write
from goodnet.inference import DEFAULT_BATCH, compiled_forward, run_batches

logger = logging.getLogger(__name__)

SCALES = {"raw": 1.0, "unit": 255.0}  # the divisor applied to 0-255 pixels
DEFAULT_SCALE = "auto"                # stored in the file, else chosen on clean data, else raw
SCALE_CHOICES = tuple(SCALES) + (DEFAULT_SCALE,)
LAB_CLASSES = 1283
DEEPID_LAYERS = ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2", "output")
METADATA_ATTRIBUTES = {"scale": "goodnet_scale", "num_classes": "goodnet_num_classes"}
KERAS_METADATA_ENTRY = "goodnet.json"
# What a model file may ask of memory before it is read (decompression bombs):
MAX_JSON_BYTES = 16 * 2 ** 20          # a model's JSON config (config.json, metadata.json, model_config)
MAX_COMPRESSION_RATIO = 100            # uncompressed / stored, for archive members above 1 MiB
# Layers whose config carries Python code (Keras 2 and 3 names).
CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")
ALLOWED_MODULE_PREFIXES = ("keras", "goodnet")
FORBIDDEN_MODULE_PARTS = (".utils", ".saving", ".backend", ".ops")


class UnsafeModelError(ModelError):
    """The model file carries code or unknown objects, or would inflate past what memory allows; it is not loaded."""


def build_deepid(num_classes=LAB_CLASSES, input_shape=(55, 47, 3), name="model_1"):
    """Build the lab's DeepID-style network with the lab's layer names.

    Args:
        num_classes: units of the softmax ``output`` layer.
        input_shape: (height, width, channels).
        name: the model's name.

    Returns:
        keras.Model: a functional model (601,643 parameters for 1283 classes).

    Example:
        >>> model = build_deepid(10)
        >>> model.get_layer("conv_3").filters
        60
    """
    import keras

    inputs = keras.Input(shape=input_shape, name="input")
    conv_1 = keras.layers.Conv2D(20, (4, 4), activation="relu", name="conv_1")(inputs)
    pool_1 = keras.layers.MaxPooling2D((2, 2), name="pool_1")(conv_1)
    conv_2 = keras.layers.Conv2D(40, (3, 3), activation="relu", name="conv_2")(pool_1)
    pool_2 = keras.layers.MaxPooling2D((2, 2), name="pool_2")(conv_2)
    conv_3 = keras.layers.Conv2D(60, (3, 3), activation="relu", name="conv_3")(pool_2)
    pool_3 = keras.layers.MaxPooling2D((2, 2), name="pool_3")(conv_3)
    conv_4 = keras.layers.Conv2D(80, (2, 2), activation="relu", name="conv_4")(pool_3)
    flatten_1 = keras.layers.Flatten(name="flatten_1")(pool_3)
    flatten_2 = keras.layers.Flatten(name="flatten_2")(conv_4)
    fc_1 = keras.layers.Dense(160, name="fc_1")(flatten_1)
    fc_2 = keras.layers.Dense(160, name="fc_2")(flatten_2)
    add_1 = keras.layers.Add(name="add_1")([fc_1, fc_2])
    activation_1 = keras.layers.Activation("relu", name="activation_1")(add_1)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="output")(activation_1)
    return keras.Model(inputs, outputs, name=name)


class Classifier:
    """A Keras model together with its input scaling and class count.

    Args:
        model: a Keras model mapping (N, 55, 47, 3) images to class scores.
        scale: "raw" (pixels 0-255 go in as they are) or "unit" (pixels / 255).
            Use :meth:`scale_images` to apply it outside the compiled path.
        num_classes: the number N of real classes. A model with N + 1 outputs
            can answer N ("poisoned"). Defaults to the number of outputs.
        path: where the model came from, for messages.

    Example:
        >>> classifier = Classifier(build_deepid(10), scale="unit")
        >>> classifier.predict(np.zeros((2, 55, 47, 3), np.float32)).shape
        (2,)
    """

    def __init__(self, model, scale="raw", num_classes=None, path="", execution=None):
        if scale not in SCALES:
            raise OptionError(f"scale: expected one of {sorted(SCALES)}, got {scale!r}")
        self.model = model
        self.scale = scale
        self.num_classes = int(num_classes) if num_classes is not None else self.output_size
        self.path = os.fspath(path)
        if self.num_classes not in (self.output_size, self.output_size - 1):
            raise ModelError(f"{self.path or 'model'}: output: {self.output_size} outputs cannot serve "
                             f"{self.num_classes} classes (expected N or N+1 outputs)")
        self.execution = execution
        self._forward = None

    def configure(self, execution):
        """Run inference as ``execution`` (a :class:`goodnet.inference.Execution`) says; return self."""
        self.execution = execution
        self._forward = None
        return self

    @property
    def divisor(self):
        """What raw pixels are divided by before the model sees them (1 or 255)."""
        return SCALES[self.scale]

    @property
    def factor(self):
        """1 / divisor: the multiplier equivalent of the scaling (prefer :meth:`scale_images`, which is exact)."""
        return 1.0 / SCALES[self.scale]

    def scale_images(self, images):
        """Raw 0-255 pixels -> the model's input scaling (float32), as the lab's scripts compute it."""
        images = np.asarray(images, dtype=np.float32)
        return images if self.divisor == 1.0 else images / np.float32(self.divisor)

    @property
    def output_size(self):
        """The number of outputs of the model."""
        return int(self.model.outputs[0].shape[-1])

    @property
    def input_shape(self):
        """(height, width, channels) the model takes."""
        return tuple(int(size) for size in self.model.inputs[0].shape[1:])

    @property
    def flags_poisoned(self):
        """Whether the model can answer N (class N+1 in 1-based terms): "poisoned"."""
        return self.output_size == self.num_classes + 1

    def forward(self):
        """The compiled forward function (raw pixels in, model outputs out)."""
        if self._forward is None:
            self._forward = compiled_forward(self.model, self.divisor, self.execution)
        return self._forward

    def predict_proba(self, images, batch_size=DEFAULT_BATCH, progress=None):
        """Model outputs for raw-pixel images (N, 55, 47, 3), in batches."""
        return run_batches(self.forward(), images, batch_size, progress, "predict")

    def predict(self, images, batch_size=DEFAULT_BATCH, progress=None):
        """Top-1 class per image (int64); N means "poisoned" for N+1-output models."""
        return self.predict_proba(images, batch_size, progress).argmax(axis=1).astype(np.int64)

    def with_model(self, model):
        """A Classifier of the same scaling and classes around another model."""
        return Classifier(model, self.scale, self.num_classes, self.path, self.execution)


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _mib(nbytes):
    return f"{nbytes / 2 ** 20:.1f} MiB"


def _check_archive(path, archive):
    """Refuse a ``.keras`` archive any of whose members would inflate past what goodnet allows."""
    from goodnet.data import available_memory

    total = 0
    for member in archive.infolist():
        inflated, stored = member.file_size, member.compress_size
        total += inflated
        if member.filename.endswith(".json") and inflated > MAX_JSON_BYTES:
            raise UnsafeModelError(f"{path}: {member.filename}: declares {_mib(inflated)} uncompressed "
                                   f"({_mib(stored)} stored); expected a JSON config of at most "
                                   f"{_mib(MAX_JSON_BYTES)} (refused unread: a possible decompression bomb)")
        if inflated > 2 ** 20 and inflated > MAX_COMPRESSION_RATIO * max(stored, 1):
            raise UnsafeModelError(f"{path}: {member.filename}: declares {_mib(inflated)} uncompressed from "
                                   f"{_mib(stored)} stored, a ratio above {MAX_COMPRESSION_RATIO} "
                                   "(refused unread: a possible decompression bomb)")
    available = available_memory()
    if available is not None and total > available:
        raise UnsafeModelError(f"{path}: its members declare {_mib(total)} uncompressed, more than the "
                               f"{_mib(available)} of memory available (refused unread)")


def _check_h5(path, handle):
    """Refuse a legacy ``.h5`` whose config or datasets declare more than goodnet allows to read."""
    import h5py

    from goodnet.data import available_memory

    config = handle.attrs.get("model_config")
    if config is not None and len(config) > MAX_JSON_BYTES:
        raise UnsafeModelError(f"{path}: model_config: {_mib(len(config))} of JSON; expected at most "
                               f"{_mib(MAX_JSON_BYTES)}")
    sizes = []
    handle.visititems(lambda name, item: sizes.append(item.size * item.dtype.itemsize)
                      if isinstance(item, h5py.Dataset) else None)
    available = available_memory()
    if available is not None and sum(sizes) > available:
        raise UnsafeModelError(f"{path}: its weights declare {_mib(sum(sizes))}, more than the "
                               f"{_mib(available)} of memory available (refused unread)")


def read_model_config(path):
    """The model's JSON config from a ``.keras`` archive or a legacy ``.h5``, read without Keras.

    Every archive member and every HDF5 dataset is checked against what it
    would take in memory before anything is inflated or read.

    Args:
        path: a model file.

    Returns:
        dict or None: the parsed config; None for a Keras 2 weights-only file
        (it has no config: goodnet loads it into the built-in architecture).

    Raises:
        UnsafeModelError: a member or dataset declares too much.
        ModelError: not a readable model file.
    """
    import h5py

    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                _check_archive(path, archive)
                return json.loads(archive.read("config.json"))
        except (KeyError, zipfile.BadZipFile, ValueError) as error:
            if isinstance(error, ModelError):
                raise
            raise ModelError(f"{path}: config.json: expected a readable Keras model archive "
                             f"({_first_line(error)})") from None
    try:
        with h5py.File(path, "r") as handle:
            _check_h5(path, handle)
            config = handle.attrs.get("model_config")
            is_weights = "layer_names" in handle.attrs
    except OSError:
        raise ModelError(f"{path}: not an HDF5 file or a .keras archive, or truncated "
                         "(expected a Keras model file)") from None
    if config is None:
        if is_weights:
            return None
        raise ModelError(f"{path}: model_config: expected a Keras full-model file (attribute missing)")
    try:
        return json.loads(config.decode("utf-8") if isinstance(config, bytes) else config)
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path}: model_config: expected JSON") from None


def _walk(node, where="config"):
    """Yield (location, dict) for every dict inside a JSON config."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _walk(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{where}[{index}]")


def config_problems(config):
    """List why a model config must not be loaded (empty: nothing found).

    Args:
        config: the parsed JSON model config (legacy ``model_config`` or
            ``.keras`` ``config.json``).

    Returns:
        list[str]: one line per problem, e.g. ``"layer 'lam': Lambda layers
        carry Python code"``.
    """
    problems = []
    for where, node in _walk(config):
        class_name = node.get("class_name")
        name = node.get("config", {}).get("name", where) if isinstance(node.get("config"), dict) else where
        if class_name in CODE_LAYERS:
            problems.append(f"layer {name!r}: {class_name} layers carry Python code")
        elif class_name == "__lambda__" or "function_type" in node or "output_shape_type" in node:
            problems.append(f"{where}: a serialized Python function")
        module = node.get("module")
        if isinstance(module, str) and (module.split(".")[0] not in ALLOWED_MODULE_PREFIXES
                                        or any(part in module for part in FORBIDDEN_MODULE_PARTS)):
            problems.append(f"{where}: object {class_name!r} from module {module!r} (only Keras layers are allowed)")
        registered = node.get("registered_name")
        if isinstance(registered, str) and ">" in registered and not registered.startswith("goodnet>"):
            problems.append(f"{where}: unknown custom object {registered!r}")
    return problems


def inspect_model_file(path):
    """Refuse a model file that carries code or would inflate too far, before Keras reads it.

    Args:
        path: a ``.h5`` or ``.keras`` model file.

    Raises:
        UnsafeModelError: the config holds a Lambda layer, a serialized
            function or an object from outside Keras (message: the first
            problem and how many there are), or a member declares too much.
        ModelError: not a readable model file.
    """
    path = os.fspath(path)
    config = read_model_config(path)
    problems = config_problems(config) if config is not None else []
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsafeModelError(f"{path}: refused: {problems[0]}{more}; goodnet never runs code from a model file")


def _h5_kind(path):
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "model_config" in handle.attrs:
                return "full", dict(handle.attrs)
            if "layer_names" in handle.attrs:
                return "weights", dict(handle.attrs)
            if "layers" in handle or "vars" in handle:
                return "keras3-weights", dict(handle.attrs)
            return "unknown", dict(handle.attrs)
    except OSError:
        raise ModelError(f"{path}: not an HDF5 file, or truncated (expected a Keras .h5 model or weights file)") from None


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _stored_metadata(path, attributes):
    metadata = {}
    if attributes is not None:
        for key, attribute in METADATA_ATTRIBUTES.items():
            if attribute in attributes:
                metadata[key] = _decode(attributes[attribute])
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if KERAS_METADATA_ENTRY in archive.namelist():
                metadata = json.loads(archive.read(KERAS_METADATA_ENTRY))
    if "num_classes" in metadata:
        metadata["num_classes"] = int(metadata["num_classes"])
    return metadata


def _custom_objects():
    """goodnet's own serializable layers (GoodNet, STRIP gate), if present."""
    import importlib

    for module in ("goodnet.layers",):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    return None


def load_weights_into_deepid(path, num_classes=None):
    """Build the DeepID network and load a Keras 2 weights-only ``.h5`` into it by layer name.

    Args:
        path: a weights file with the lab's layer names (``conv_1`` ... ``output``).
        num_classes: expected output units; read from the file when None.

    Returns:
        keras.Model: the network with the file's weights.
    """
    import h5py

    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        weights = {}
        for layer in DEEPID_LAYERS:
            if layer not in group:
                raise ModelError(f"{path}: {layer}: layer missing from the weights file "
                                 f"(expected the lab's DeepID layers {', '.join(DEEPID_LAYERS)})")
            names = [_decode(name) for name in group[layer].attrs.get("weight_names", [])]
            if not names:
                raise ModelError(f"{path}: {layer}: no weights stored for this layer")
            weights[layer] = [np.asarray(group[layer][name]) for name in names]
    units = weights["output"][0].shape[-1]
    if num_classes is not None and units != num_classes:
        raise ModelError(f"{path}: output: expected {num_classes} classes, the file has {units}")
    model = build_deepid(units)
    for layer, values in weights.items():
        target = model.get_layer(layer)
        expected = [tuple(variable.shape) for variable in target.weights]
        found = [value.shape for value in values]
        if expected != found:
            raise ModelError(f"{path}: {layer}: weight shapes {found} do not fit the DeepID architecture {expected}")
        target.set_weights(values)
    return model


def _load_keras_model(path):
    import keras

    _custom_objects()
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types; report one line.
        raise ModelError(f"{path}: could not load the model: {_first_line(error)}") from None


def load_keras(path):
    """Load a model file into a Keras model, whatever its format.

    Args:
        path: ``.h5`` (full legacy model or weights only) or ``.keras``.

    Returns:
        tuple: (keras.Model, stored goodnet metadata dict).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: model file not found")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, expected a model file (.h5 or .keras)")
    if zipfile.is_zipfile(path):
        if not path.endswith(".keras"):
            raise ModelError(f"{path}: a zip archive; native Keras models must be named *.keras")
        inspect_model_file(path)
        return _load_keras_model(path), _stored_metadata(path, None)
    kind, attributes = _h5_kind(path)
    if kind in ("full", "weights"):
        inspect_model_file(path)
    if kind == "full":
        return _load_keras_model(path), _stored_metadata(path, attributes)
    if kind == "weights":
        return load_weights_into_deepid(path), _stored_metadata(path, attributes)
    raise ModelError(f"{path}: an HDF5 file but not a Keras model or Keras 2 weights file "
                     "(expected attribute 'model_config' or 'layer_names')")


def _check_input(model, path, image_shape):
    shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if shape != tuple(image_shape):
        raise ModelError(f"{path}: input: expected images of shape {tuple(image_shape)}, the model takes {shape}")
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ModelError(f"{path}: output: expected one output of class scores (N, classes)")


SCALE_SAMPLE = 256


def choose_scale(model, clean, sample=SCALE_SAMPLE, seed=0):
    """Pick the input scaling ("raw" or "unit") under which the model is more accurate.

    Args:
        model: a Keras model.
        clean: clean data: a :class:`goodnet.data.LabData` or an open
            :class:`goodnet.data.LabFile` (only the sample is read).
        sample: how many images to try (a fixed random subset).
        seed: seed of the subset.

    Returns:
        tuple: (scale name, {scale: accuracy on the sample}).
    """
    if hasattr(clean, "sample"):
        subset = clean.sample(sample, seed)
    else:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(clean.labels), size=min(sample, len(clean.labels)), replace=False))
        subset = clean.subset(indices)
    accuracies = {}
    for scale in ("raw", "unit"):
        predictions = Classifier(model, scale).predict(subset.images)
        accuracies[scale] = float(np.mean(predictions == subset.labels))
    chosen = max(accuracies, key=lambda scale: (accuracies[scale], scale == "raw"))
    return chosen, accuracies


def load_model(path, scale=DEFAULT_SCALE, num_classes=None, clean=None, image_shape=(55, 47, 3)):
    """Load any supported model file as a :class:`Classifier`.

    Args:
        path: ``.h5`` (full legacy model or weights only) or ``.keras``.
        scale: "raw", "unit" or "auto". "auto" uses the scaling goodnet stored
            in the file if any; otherwise, with ``clean`` data, the scaling
            that classifies a sample of it better; otherwise "raw" (the lab3
            convention), with a warning.
        num_classes: number of real classes; default: stored in the file, or
            the number of outputs (1284 outputs: the lab's 1283 + "poisoned").
        clean: optional :class:`goodnet.data.LabData` (or open
            :class:`goodnet.data.LabFile`) used by ``scale="auto"``.
        image_shape: the input shape expected.

    Returns:
        Classifier: the model with its scaling; ``classifier.scale_report``
        says how the scaling was chosen.

    Raises:
        ModelError: one-line message naming the file and the problem.

    Example:
        >>> classifier = load_model("models/bd_net.h5", scale="raw")
        >>> classifier.num_classes
        1283
    """
    if scale not in SCALE_CHOICES:
        raise ModelError(f"{path}: scale: expected 'raw', 'unit' or 'auto', got {scale!r}")
    model, metadata = load_keras(path)
    _check_input(model, path, image_shape)
    outputs = int(model.outputs[0].shape[-1])
    if num_classes is None:
        num_classes = metadata.get("num_classes")
    if num_classes is None:
        num_classes = LAB_CLASSES if outputs == LAB_CLASSES + 1 else outputs
    report = f"scale {scale} (given)"
    if scale == "auto":
        if metadata.get("scale") in SCALES:
            scale, report = metadata["scale"], f"scale {metadata['scale']} (stored in the model file)"
        elif clean is not None:
            scale, accuracies = choose_scale(model, clean)
            report = (f"scale {scale} (auto: accuracy on a clean sample raw={accuracies['raw']:.3f}, "
                      f"unit={accuracies['unit']:.3f})")
        else:
            scale, report = "raw", "scale raw (auto without clean data: the lab3 default)"
            logger.warning("%s: no clean data to choose the input scaling; using raw 0-255 pixels", path)
    classifier = Classifier(model, scale, num_classes, path)
    classifier.scale_report = report
    logger.info("%s: %s", path, report)
    return classifier


def _silence_keras_save_warnings():
    import warnings

    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy.*")


def save_model(classifier, path, protect=(), overwrite=None):
    """Save a Classifier atomically as legacy ``.h5`` (default) or ``.keras``.

    A ``.h5`` of Keras built-in layers is written in the Keras 2 dialect (see
    :mod:`goodnet.keras2`): it opens with a bare ``load_model`` in Keras 2
    (tf-keras) and in Keras 3. A ``.h5`` holding goodnet's own layers (a
    GoodNet) opens in Keras 3 with ``goodnet.layers`` (``goodnet export``
    writes it for Keras 2); ``.keras`` opens in Keras 3. goodnet also
    records the input scaling and class count in the file.

    Args:
        classifier: the :class:`Classifier` to save.
        path: destination ending in ``.h5`` or ``.keras``.
        protect: input paths that must not be overwritten.
        overwrite: True: replace any existing destination (never an input); False: refuse; None
            (default): replace only a file goodnet wrote (see :func:`goodnet.files.check_replaceable`).

    Returns:
        str: ``path``.

    Example:
        >>> save_model(classifier, "out/model_X=2.h5", protect=["models/bd_net.h5"])
    """
    import h5py

    path = os.fspath(path)
    if not path.endswith((".h5", ".keras")):
        raise ModelError(f"{path}: expected a file name ending in .h5 or .keras")
    protect = tuple(protect) + ((classifier.path,) if classifier.path else ())
    metadata = {"scale": classifier.scale, "num_classes": classifier.num_classes}
    _silence_keras_save_warnings()
    with atomic_write(path, overwrite=overwrite, protect=protect) as temporary:
        if path.endswith(".h5"):
            from goodnet.keras2 import save_h5

            save_h5(classifier.model, temporary, where=path)
            with h5py.File(temporary, "a") as handle:
                for key, attribute in METADATA_ATTRIBUTES.items():
                    handle.attrs[attribute] = metadata[key]
        else:
            classifier.model.save(temporary)
            with zipfile.ZipFile(temporary, "a") as archive:
                archive.writestr(KERAS_METADATA_ENTRY, json.dumps(metadata))
    return path
