"""Learned features of a training set: a classifier's last hidden layer, computed once, streamed, grouped by label.

The training-set detectors (activation clustering, spectral signatures, the
isolation-forest sanitiser in :mod:`goodnet.defenses`) all look at the same
thing: the representation the suspect model gives every training image at
its last hidden layer, split by training label. :func:`compute_features`
computes it once and hands the same :class:`Features` to every detector.

- The layer: by default the *last hidden layer*, the input of the model's
  classification layer (found by walking back from the output over a final
  softmax activation: ``activation_1``, the ReLU of ``fc_1 + fc_2``, in the
  lab's DeepID); any layer can be named (``layer=``). Its output is flattened.
- Streaming: images are read from the lab file in chunks
  (:class:`goodnet.data.LabFile`) and run through the compiled network in
  batches (:func:`goodnet.inference.compiled_forward`, so a classifier's
  :class:`goodnet.inference.Execution` applies); only the features stay.
- Larger than memory: with ``cache=DIR`` the features are written to
  ``DIR/features.npy`` (float32) and read back memory-mapped, so even the
  features of a training set need not fit in memory; the cache is reused
  when the model file, the data file, the scaling and the layer are the
  same (``DIR/key.json`` records them), and recomputed otherwise.
- Grouped by label: :meth:`Features.groups` gives each class's sample
  indices (:class:`ClassGroups`), the indices always into the file.

Example:
    >>> features = compute_features(badnet, "data/train.h5")          # activation_1, (N, 160)
    >>> groups = features.groups()
    >>> features.rows(groups.indices(0)).shape                         # class 0's features, float64
"""

import dataclasses
import hashlib
import json
import logging
import os

import numpy as np

from goodnet.base import InstanceOf, Interval
from goodnet.data import DEFAULT_CHUNK, LabData, LabFile, check_fits
from goodnet.errors import ModelError, OptionError
from goodnet.inference import DEFAULT_BATCH, compiled_forward, progress_bar
from goodnet.options import option

logger = logging.getLogger(__name__)

CACHE_FILES = ("features.npy", "predictions.npy", "key.json")
CACHE_VERSION = 1
SOFTMAX_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """Which features the training-set detectors share, and how they are computed (``goodnet inspect-data``)."""

    layer: str = option(None, "layer whose activations are the features", rule=InstanceOf(str), allow_none=True,
                        default_text="the last hidden layer: the input of the output layer (activation_1 in DeepID)")
    cache: str = option(None, "folder keeping the features on disk (float32 .npy, memory-mapped; reused when the "
                              "model, data, scaling and layer match)", rule=InstanceOf(str), allow_none=True,
                        metavar="DIR", default_text="none: in memory")
    chunk: int = option(DEFAULT_CHUNK, "images read from the training file at a time", rule=Interval(int, 1),
                        flag="--read-chunk")


# -- which layer -------------------------------------------------------------------------------------------------


def _producer(tensor):
    """The layer (operation) that produced a Keras tensor of a functional model."""
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history is not None else None


def _inputs_of(layer):
    """The layers feeding ``layer`` (its first call), in order."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return []
    tensors = nodes[0].input_tensors
    found = []
    for tensor in tensors:
        producer = _producer(tensor)
        if producer is not None and producer not in found:
            found.append(producer)
    return found


def _is_output_activation(layer):
    """A layer that only turns class scores into probabilities (a separate softmax or sigmoid)."""
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return True
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", str(layer.activation))
        return name in SOFTMAX_ACTIVATIONS
    return False


def last_hidden_layer(model, path=""):
    """The name of ``model``'s last hidden layer: the layer whose output the classification layer reads.

    Walks back from the model's output over a final softmax/sigmoid layer to
    the classification layer, then takes the one layer feeding it
    (``activation_1`` in the lab's DeepID, whose ``output`` Dense reads the
    ReLU of ``fc_1 + fc_2``).

    Raises:
        ModelError: the model has several outputs, or its classification
            layer reads several layers (name one with ``layer=``).
    """
    where = os.fspath(path) if path else f"model {model.name!r}"
    if len(model.outputs) != 1:
        raise ModelError(f"{where}: layer: expected one output to find the last hidden layer; name it (--layer)")
    head = _producer(model.outputs[0])
    if head is None:
        raise ModelError(f"{where}: layer: cannot trace the model's graph to find the last hidden layer; "
                         "name it (--layer)")
    while _is_output_activation(head):
        before = _inputs_of(head)
        if len(before) != 1:
            break
        head = before[0]
    before = _inputs_of(head)
    if len(before) != 1 or _is_input(before[0]):
        raise ModelError(f"{where}: layer: the output layer {head.name!r} does not read exactly one hidden layer; "
                         "name the layer (--layer)")
    return before[0].name


def _is_input(layer):
    import keras

    return isinstance(layer, keras.layers.InputLayer)


def feature_layer(model, layer=None, path=""):
    """The name of the layer whose activations are the features: ``layer``, checked, or :func:`last_hidden_layer`."""
    if layer is None:
        return last_hidden_layer(model, path)
    names = [entry.name for entry in model.layers]
    if layer not in names:
        where = os.fspath(path) if path else f"model {model.name!r}"
        shown = ", ".join(names[-6:])
        raise ModelError(f"{where}: layer: no layer named {layer!r} (the last layers are {shown})")
    return layer


def feature_function(classifier, layer):
    """A compiled function of raw pixels -> (flattened activations of ``layer``, class scores), concatenated.

    Runs as ``classifier``'s execution says; the features are the first
    ``dim`` columns of its output, the class scores the rest.

    Returns:
        tuple: (function, dim).
    """
    import keras

    model = classifier.model
    hidden = model.get_layer(layer).output
    dim = int(np.prod([int(size) for size in hidden.shape[1:]]))
    flat = keras.layers.Flatten(name="goodnet_features_flatten")(hidden) if len(hidden.shape) > 2 else hidden
    joined = keras.layers.Concatenate(name="goodnet_features_join")([flat, model.outputs[0]])
    return compiled_forward(keras.Model(model.inputs, joined), classifier.divisor, classifier.execution), dim


# -- the features ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ClassGroups:
    """The sample indices of each class, from a stable sort of the labels.

    Attributes:
        classes: the labels present, increasing (int64).
        order: every sample index, sorted by label (stable: file order within a class).
        starts: where each class's block begins in ``order``.
        counts: samples per class.
    """

    classes: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, labels):
        labels = np.asarray(labels, np.int64)
        order = np.argsort(labels, kind="stable").astype(np.int64)
        classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        return cls(classes.astype(np.int64), order, starts.astype(np.int64), counts.astype(np.int64))

    def __len__(self):
        return len(self.classes)

    def indices(self, position):
        """Sample indices (into the file, increasing) of the class at ``position`` in :attr:`classes`."""
        start = int(self.starts[position])
        return self.order[start:start + int(self.counts[position])]

    def position(self, label):
        """Where class ``label`` sits in :attr:`classes`."""
        found = int(np.searchsorted(self.classes, label))
        if found >= len(self.classes) or self.classes[found] != label:
            raise OptionError(f"class: {label} has no samples (classes present: {len(self.classes)})")
        return found


@dataclasses.dataclass
class Features:
    """Per-sample features of a data set and their labels.

    Attributes:
        values: (N, dim) float32 array (memory-mapped when cached on disk).
        labels: (N,) int64 training labels.
        predictions: (N,) int64 top-1 class the model gives each sample, or None.
        layer: the layer they come from.
        source: the data file (or "" for arrays).
    """

    values: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray = None
    layer: str = ""
    source: str = ""

    def __post_init__(self):
        values = self.values
        if getattr(values, "ndim", 0) != 2:
            raise OptionError(f"features: expected a 2-D array (samples, dimensions), got shape "
                             f"{getattr(values, 'shape', None)}")
        self.labels = np.asarray(self.labels)
        if self.labels.shape != (values.shape[0],):
            raise OptionError(f"labels: expected {values.shape[0]} labels (one per feature row), got shape "
                             f"{self.labels.shape}")
        if self.labels.size and not np.all(self.labels == np.round(self.labels)):
            raise OptionError("labels: expected whole-number class labels")
        self.labels = self.labels.astype(np.int64)
        if self.predictions is not None:
            self.predictions = np.asarray(self.predictions, np.int64)
        self._groups = None

    def __len__(self):
        return int(self.values.shape[0])

    @property
    def dim(self):
        """Feature dimensions."""
        return int(self.values.shape[1])

    def groups(self):
        """The per-class sample indices (:class:`ClassGroups`), computed once."""
        if self._groups is None:
            self._groups = ClassGroups.of(self.labels)
        return self._groups

    def rows(self, indices):
        """The features of samples ``indices`` as float64 (read from disk when memory-mapped)."""
        indices = np.asarray(indices, np.int64)
        return np.asarray(self.values[indices], dtype=np.float64)


def _open_source(data):
    """(LabFile or LabData, whether this call opened the file)."""
    if isinstance(data, (str, os.PathLike)):
        return LabFile(data), True
    return data, False


def _file_key(path):
    stat = os.stat(path)
    return {"path": os.path.abspath(os.fspath(path)), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _model_digest(classifier):
    """A digest of the model: its file's SHA-256 when it came from one, else of its weights."""
    from goodnet.files import sha256_file

    if classifier.path and os.path.isfile(classifier.path):
        return "file:" + sha256_file(classifier.path)
    digest = hashlib.sha256()
    for weight in classifier.model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return "weights:" + digest.hexdigest()


def _cache_key(classifier, source, layer, count):
    data = _file_key(source.path) if getattr(source, "path", "") and os.path.isfile(source.path) else None
    if data is None:
        return None   # arrays in memory: nothing stable to key a cache on
    return {"version": CACHE_VERSION, "model": _model_digest(classifier), "scale": classifier.scale, "layer": layer,
            "data": data, "samples": int(count)}


def _read_cache(cache, key):
    """The cached (values memmap, predictions) when ``cache/key.json`` matches ``key``, else None."""
    paths = {name: os.path.join(cache, name) for name in CACHE_FILES}
    if key is None or not all(os.path.isfile(path) for path in paths.values()):
        return None
    try:
        with open(paths["key.json"], encoding="utf-8") as handle:
            stored = json.load(handle)
        if stored != key:
            return None
        values = np.load(paths["features.npy"], mmap_mode="r")
        predictions = np.load(paths["predictions.npy"])
    except (OSError, ValueError):
        return None
    if values.ndim != 2 or values.shape[0] != key["samples"] or predictions.shape != (key["samples"],):
        return None
    return values, predictions


def compute_features(classifier, data, labels=None, layer=None, batch_size=DEFAULT_BATCH, chunk=DEFAULT_CHUNK,
                     cache=None, progress=None):
    """The features of every sample of ``data`` at ``layer``, computed in one streamed pass.

    Args:
        classifier: a :class:`goodnet.models.Classifier` (its scaling and execution apply).
        data: a lab-layout file (path or open :class:`goodnet.data.LabFile`,
            read ``chunk`` images at a time), a :class:`goodnet.data.LabData`,
            or raw-pixel images (N, H, W, C) with ``labels``.
        labels: the labels, for images given as an array (default: the data's own).
        layer: the layer (default: :func:`last_hidden_layer`).
        batch_size: images per network call.
        chunk: images read from a file at a time.
        cache: a folder: write the features there (``features.npy`` float32,
            ``predictions.npy``, ``key.json``) and return them memory-mapped;
            reused when the key matches (files only).
        progress: progress bar (None: after 3 s; False: never).

    Returns:
        Features

    Raises:
        DataError: bad data file, or features that would not fit in memory without ``cache``.
        ModelError: no such layer.
    """
    from goodnet.files import atomic_write, write_text

    source, opened = _open_source(data)
    try:
        if isinstance(source, np.ndarray) or not hasattr(source, "labels"):
            images = np.asarray(source, np.float32)
            if labels is None:
                raise OptionError("labels: expected the labels of images given as an array")
            source = LabData(images, np.asarray(labels), "")
        elif labels is not None:
            raise OptionError("labels: the data carries its own labels; pass labels only with an image array")
        layer = feature_layer(classifier.model, layer, classifier.path)
        count = len(source)
        path = getattr(source, "path", "") or ""
        key = _cache_key(classifier, source, layer, count) if cache else None
        if cache:
            found = _read_cache(cache, key)
            if found is not None:
                logger.info("%s: features reused from %s", path, cache)
                return Features(found[0], source.labels, found[1], layer, path)
        forward, dim = feature_function(classifier, layer)
        predictions = np.empty(count, np.int64)
        where = path or "images"
        if cache:
            os.makedirs(cache, exist_ok=True)
            target = os.path.join(cache, "features.npy")
            with atomic_write(target) as temporary:
                values = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(count, dim))
                _fill(forward, source, values, predictions, dim, batch_size, chunk, progress)
                values.flush()
                del values
            with atomic_write(os.path.join(cache, "predictions.npy")) as temporary:
                np.save(temporary, predictions)
            if key is not None:
                write_text(os.path.join(cache, "key.json"), json.dumps(key, indent=1, sort_keys=True))
            values = np.load(target, mmap_mode="r")
        else:
            check_fits(where, "features", f"the {count:,} x {dim} features of layer {layer!r}", count * dim * 4)
            values = np.empty((count, dim), np.float32)
            _fill(forward, source, values, predictions, dim, batch_size, chunk, progress)
        return Features(values, np.asarray(source.labels), predictions, layer, path)
    finally:
        if opened:
            source.close()


def _chunks(source, chunk):
    """(start, images) blocks of at most ``chunk`` images from a LabFile or LabData."""
    if hasattr(source, "read_images"):
        for start in range(0, len(source), chunk):
            yield start, source.read_images(start, min(start + chunk, len(source)))
    else:
        for start in range(0, len(source), chunk):
            yield start, np.asarray(source.images[start:start + chunk], np.float32)


def _fill(forward, source, values, predictions, dim, batch_size, chunk, progress):
    """Run the network over ``source`` chunk by chunk, batch by batch; write features and top-1 classes."""
    replicas = getattr(forward, "replicas", 1)
    step = batch_size * replicas
    with progress_bar(len(source), "features", progress) as bar:
        for start, images in _chunks(source, chunk):
            for offset in range(0, len(images), step):
                batch = images[offset:offset + step]
                output = np.asarray(forward(batch, part_size=batch_size) if replicas > 1 else forward(batch))
                first = start + offset
                values[first:first + len(batch)] = output[:, :dim]
                predictions[first:first + len(batch)] = output[:, dim:].argmax(axis=1)
                bar.update(len(batch))


def features_of(source, images=None, labels=None, layer=None, batch_size=DEFAULT_BATCH, progress=None):
    """What a training-set detector's ``fit`` was given, as :class:`Features`.

    Args:
        source: :class:`Features` (used as they are: detectors share one
            pass), a :class:`goodnet.models.Classifier` (then ``images`` is
            the data: a path, LabFile, LabData or an image array with
            ``labels``), or a (N, dim) feature array with ``labels``.
        images, labels: see above.
        layer: for a classifier, the layer (default: the last hidden layer).
        batch_size, progress: for a classifier, see :func:`compute_features`.

    Returns:
        Features
    """
    if isinstance(source, Features):
        if images is not None:
            raise OptionError("images: features are already computed; pass images only with a classifier")
        if labels is not None and not np.array_equal(np.asarray(labels), source.labels):
            raise OptionError("labels: differ from the labels the features were computed with")
        return source
    if hasattr(source, "model") and hasattr(source, "divisor"):
        if images is None:
            raise OptionError("images: expected the training data to compute the classifier's features on")
        return compute_features(source, images, labels=labels, layer=layer, batch_size=batch_size, progress=progress)
    values = np.asarray(source)
    if values.ndim != 2:
        raise OptionError(f"fit: expected a Classifier, Features or a (samples, dimensions) feature array, got "
                          f"{type(source).__name__} of shape {getattr(values, 'shape', None)}")
    if labels is None:
        raise OptionError("labels: expected one label per feature row")
    if not np.all(np.isfinite(values)):
        raise OptionError("features: expected finite values, found NaN or infinity")
    return Features(values.astype(np.float32, copy=False), labels)
