"""Readers and writers for the CSAW-HackML-2020 lab's data files and images.

The lab's HDF5 files hold two datasets: ``data`` of shape (N, 3, 55, 47)
(channels first, pixels 0-255, float64, float32 or uint8) and ``label`` of
shape (N,). goodnet works on (N, 55, 47, 3) float32 images and int64 labels.

A *poisoned training file* (``goodnet attack`` writes the set it trained on)
is a lab-layout file whose ``label`` holds the labels trained on, plus its
ground truth, one entry per image (see :class:`PoisonTruth`):

- ``poisoned`` (uint8 0/1): the image carries a trigger;
- ``poison_trigger`` (int16): -1 for an image without trigger, else the index
  of its trigger in the file attribute ``goodnet_triggers`` (a JSON list of
  trigger names);
- ``flipped`` (uint8 0/1): the label was flipped (label-flipping attack);
- ``clean_label`` (int64): the label before poisoning and flipping.

The readers of images and labels (:class:`LabFile`, :func:`load_h5`) ignore
these datasets; :func:`load_poison_truth` reads them.
"""

import dataclasses
import json
import logging
import os

import numpy as np

from goodnet.errors import DataError, plain
from goodnet.files import atomic_write

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (55, 47, 3)
DEFAULT_CHUNK = 2048


def available_memory():
    """Bytes this process can still allocate without swapping: MemAvailable, capped by a cgroup limit.

    Returns:
        int or None: None where neither /proc/meminfo nor sysconf tells.
    """
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            limit = handle.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as handle:
            used = int(handle.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _size(nbytes):
    """Bytes as a short human-readable text (``62.0 GB``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def check_fits(path, field, what, nbytes):
    """Raise DataError when allocating ``nbytes`` for ``what`` would exceed the memory available.

    Called before a whole dataset is read, so a small file that declares
    millions of images gets a one-line refusal instead of an allocation failure.
    """
    available = available_memory()
    if available is not None and nbytes > available:
        _fail(path, field, f"{what} would need {_size(nbytes)} of memory, {_size(available)} is available "
              "(pass a smaller file, or one with fewer images)")


@dataclasses.dataclass
class LabData:
    """Images and labels read from one lab-layout file.

    Attributes:
        images: float32 array (N, 55, 47, 3), pixel values as stored (0-255).
        labels: int64 array (N,).
        path: the file they came from.
    """

    images: np.ndarray
    labels: np.ndarray
    path: str = ""

    def __len__(self):
        return len(self.labels)

    def subset(self, indices):
        """Return a LabData holding only ``indices`` (a slice or index array)."""
        return LabData(self.images[indices], self.labels[indices], self.path)

    def sample(self, count, seed=0):
        """A fixed random subset of at most ``count`` images (in file order), as :meth:`LabFile.sample` draws it."""
        return self.subset(sample_indices(len(self), count, seed))

    def check_classes(self, num_classes):
        """Raise DataError unless every label lies in 0..num_classes-1; return self."""
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            bad = self.labels[(self.labels < 0) | (self.labels >= num_classes)][0]
            _fail(self.path, "label", f"expected class labels in 0..{num_classes - 1} (the model's classes), found {plain(bad)}")
        return self


def sample_indices(size, count, seed=0):
    """Sorted indices of a fixed random subset of at most ``count`` of ``size`` items."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(size, size=min(count, size), replace=False))


def _fail(path, field, message):
    where = f"{path}: {field}: " if field else f"{path}: "
    raise DataError(where + message)


def _layout(path, dataset, image_shape):
    shape = tuple(dataset.shape)
    height, width, channels = image_shape
    if len(shape) != 4:
        _fail(path, "data", f"expected a 4-D array (N, {channels}, {height}, {width}), got shape {shape}")
    if shape[1:] == (channels, height, width):
        return "channels_first"
    if shape[1:] == (height, width, channels):
        return "channels_last"
    _fail(path, "data", f"expected images of {channels}x{height}x{width} (N, {channels}, {height}, {width}) "
          f"or (N, {height}, {width}, {channels}), got shape {shape}")


def _check_numeric(path, field, dtype):
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.bool_)):
        _fail(path, field, f"expected a numeric array, got dtype {dtype}")


def _check_labels(path, raw, num_classes):
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        _fail(path, "label", f"expected a 1-D array (N,), got shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.floating):
        if not np.all(np.isfinite(raw)):
            _fail(path, "label", "expected whole-number class labels, found NaN or infinite values")
        if not np.all(raw == np.round(raw)):
            index = int(np.flatnonzero(raw != np.round(raw))[0])
            _fail(path, "label", f"expected whole-number class labels, found {plain(raw[index])} (image {index})")
    labels = raw.astype(np.int64)
    if labels.size and labels.min() < 0:
        _fail(path, "label", f"expected class labels >= 0, found {plain(labels.min())}")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        _fail(path, "label", f"expected class labels in 0..{num_classes - 1} (the model's classes), found {plain(labels.max())}")
    return labels


class LabFile:
    """An open, validated lab-layout HDF5 file, read in chunks.

    Opening checks everything that can be checked without reading the pixels
    (format, fields, shapes, counts, labels); pixels are checked for NaN and
    infinity as they are read.

    Args:
        path: the HDF5 file.
        num_classes: if given, labels must lie in 0..num_classes-1.
        image_shape: (height, width, channels) expected.

    Example:
        >>> with LabFile("data/valid.h5") as lab:
        ...     for images, labels in lab.batches(1024):
        ...         ...
    """

    def __init__(self, path, num_classes=None, image_shape=IMAGE_SHAPE):
        import h5py

        self.path = os.fspath(path)
        self.image_shape = tuple(image_shape)
        if not os.path.exists(self.path):
            _fail(self.path, None, "file not found")
        if os.path.isdir(self.path):
            _fail(self.path, None, "is a directory, expected an HDF5 file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError:
            _fail(self.path, None, "not an HDF5 file, or truncated (expected a lab-layout .h5 with 'data' and 'label')")
        try:
            self._validate(num_classes)
        except BaseException:
            self._file.close()
            raise

    def _validate(self, num_classes):
        import h5py

        for field in ("data", "label"):
            if field not in self._file or not isinstance(self._file[field], h5py.Dataset):
                _fail(self.path, field, f"missing dataset '{field}' (expected lab layout: data (N, 3, 55, 47) and label (N,))")
        self._data = self._file["data"]
        _check_numeric(self.path, "data", self._data.dtype)
        _check_numeric(self.path, "label", self._file["label"].dtype)
        self.layout = _layout(self.path, self._data, self.image_shape)
        if self._data.shape[0] == 0:
            _fail(self.path, "data", "the file holds no images (expected N > 0)")
        label = self._file["label"]
        check_fits(self.path, "label", f"reading its {label.size:,} labels", label.size * label.dtype.itemsize)
        try:
            raw_labels = label[()]
        except OSError:
            _fail(self.path, "label", "could not be read (file truncated or corrupt)")
        raw_labels = np.asarray(raw_labels)
        if raw_labels.ndim == 0:
            _fail(self.path, "label", "expected a 1-D array (N,), got a scalar")
        if raw_labels.shape[0] != self._data.shape[0]:
            _fail(self.path, "label", f"expected {self._data.shape[0]} labels (one per image in 'data'), got {raw_labels.shape[0]}")
        self.labels = _check_labels(self.path, raw_labels, num_classes)

    def __len__(self):
        return int(self._data.shape[0])

    def check_classes(self, num_classes):
        """Raise DataError unless every label lies in 0..num_classes-1; return self."""
        LabData(None, self.labels, self.path).check_classes(num_classes)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Close the underlying HDF5 file."""
        self._file.close()

    def read_images(self, start, stop, out=None):
        """Read images [start, stop) as float32 (n, 55, 47, 3), checking pixels.

        Args:
            start: first index.
            stop: one past the last index.
            out: optional float32 array of shape (stop - start, 55, 47, 3) to fill.

        Returns:
            np.ndarray: the images.
        """
        try:
            block = self._data[start:stop]
        except OSError:
            _fail(self.path, "data", f"images {start}..{stop - 1} could not be read (file truncated or corrupt)")
        if self.layout == "channels_first":
            block = np.transpose(block, (0, 2, 3, 1))
        if out is None:
            out = np.empty((stop - start,) + self.image_shape, dtype=np.float32)
        out[...] = block
        if np.issubdtype(block.dtype, np.floating) and not np.all(np.isfinite(out)):
            bad = start + int(np.argwhere(~np.isfinite(out).reshape(len(out), -1).all(axis=1))[0][0])
            _fail(self.path, "data", f"expected finite pixel values, found NaN or infinity in image {bad}")
        return out

    def batches(self, batch_size=DEFAULT_CHUNK):
        """Yield ``(images, labels)`` in chunks of ``batch_size``; memory stays bounded."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield self.read_images(start, stop), self.labels[start:stop]

    def sample(self, count, seed=0):
        """A fixed random subset of at most ``count`` images, read without loading the file.

        Returns:
            LabData: the sampled images and labels (in file order).
        """
        indices = sample_indices(len(self), count, seed)
        images = np.empty((len(indices),) + self.image_shape, dtype=np.float32)
        for position, index in enumerate(indices):
            self.read_images(int(index), int(index) + 1, out=images[position:position + 1])
        return LabData(images, self.labels[indices], self.path)

    def read(self, chunk_size=DEFAULT_CHUNK):
        """Read the whole file into a :class:`LabData` (one float32 array, chunked reads).

        Raises:
            DataError: the images would not fit in the memory available.
        """
        check_fits(self.path, "data", f"declares {len(self):,} images; reading them",
                   len(self) * int(np.prod(self.image_shape)) * np.dtype(np.float32).itemsize)
        images = np.empty((len(self),) + self.image_shape, dtype=np.float32)
        for start in range(0, len(self), chunk_size):
            stop = min(start + chunk_size, len(self))
            self.read_images(start, stop, out=images[start:stop])
        return LabData(images, self.labels.copy(), self.path)


def load_h5(path, num_classes=None, chunk_size=DEFAULT_CHUNK, image_shape=IMAGE_SHAPE):
    """Load a lab-layout HDF5 file.

    ``data`` may be channels first (N, 3, 55, 47), as the lab stores it, or
    channels last; float64, float32 or integer; gzip-compressed or not. It is
    read in chunks, so a float64 file never needs more memory than its float32
    result.

    Args:
        path: the .h5 file.
        num_classes: if given, labels must lie in 0..num_classes-1.
        chunk_size: images read at a time.
        image_shape: (height, width, channels) expected.

    Returns:
        LabData: float32 images (N, 55, 47, 3) and int64 labels (N,).

    Raises:
        DataError: with a one-line message naming the file, the field and
            what was expected.

    Example:
        >>> clean = load_h5("data/valid.h5", num_classes=1283)
        >>> clean.images.shape
        (11547, 55, 47, 3)
    """
    with LabFile(path, num_classes=num_classes, image_shape=image_shape) as lab:
        return lab.read(chunk_size)


def save_h5(path, images, labels, dtype="uint8", layout="channels_first", compression=None, overwrite=False,
            extra=None, attributes=None):
    """Write images and labels as a lab-layout HDF5 file, atomically.

    Args:
        path: the output file.
        images: array (N, 55, 47, 3) with pixel values 0-255.
        labels: array (N,) of class labels.
        dtype: stored pixel dtype ("uint8", "float32" or "float64"); uint8
            values are rounded and clipped to 0-255.
        layout: "channels_first" (the lab's) or "channels_last".
        compression: None or "gzip".
        overwrite: replace an existing file (default: refuse).
        extra: optional ``{name: array}`` of further per-image datasets (first
            dimension N), stored as given (e.g. :meth:`PoisonTruth.datasets`).
        attributes: optional ``{name: value}`` of file attributes (str or number).

    Returns:
        str: ``path``.

    Example:
        >>> save_h5("data/tiny.h5", np.zeros((2, 55, 47, 3)), [0, 1])
        >>> save_h5("data/train_poisoned.h5", images, labels, **truth.datasets())
    """
    import h5py

    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise DataError(f"{path}: data: expected images (N, H, W, C), got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{path}: label: expected shape ({images.shape[0]},), got {labels.shape}")
    if layout not in ("channels_first", "channels_last"):
        raise DataError(f"{path}: layout: expected 'channels_first' or 'channels_last', got {layout!r}")
    extra = {name: np.asarray(value) for name, value in (extra or {}).items()}
    for name, value in extra.items():
        if name in ("data", "label"):
            raise DataError(f"{path}: {name}: an extra dataset may not replace the lab layout's own")
        if value.ndim == 0 or value.shape[0] != images.shape[0]:
            raise DataError(f"{path}: {name}: expected one entry per image ({images.shape[0]},...), "
                            f"got shape {value.shape}")
    if np.dtype(dtype) == np.uint8:
        images = np.clip(np.rint(images), 0, 255)
    stored = images.astype(dtype)
    if layout == "channels_first":
        stored = np.ascontiguousarray(np.transpose(stored, (0, 3, 1, 2)))
    with atomic_write(path, overwrite=overwrite) as temporary:
        with h5py.File(temporary, "w") as handle:
            handle.create_dataset("data", data=stored, compression=compression)
            handle.create_dataset("label", data=labels.astype(np.float64 if np.dtype(dtype).kind == "f" else np.int64))
            for name, value in extra.items():
                handle.create_dataset(name, data=value, compression=compression)
            for name, value in (attributes or {}).items():
                handle.attrs[name] = value
    return os.fspath(path)


TRUTH_FIELDS = ("poisoned", "poison_trigger", "flipped", "clean_label")
TRIGGERS_ATTRIBUTE = "goodnet_triggers"


@dataclasses.dataclass(frozen=True, eq=False)
class PoisonTruth:
    """Which images of a training set were poisoned or flipped, and how (the ground truth of an attack).

    Attributes:
        poisoned: bool array (N,): the image carries a trigger.
        trigger: int array (N,): -1 where not poisoned, else the index into ``trigger_names``.
        trigger_names: tuple of the triggers' names.
        flipped: bool array (N,): the label was flipped.
        clean_labels: int64 array (N,): the labels before poisoning and flipping.

    Build one with :meth:`from_indices`; read one with :func:`load_poison_truth`;
    write one with ``save_h5(path, images, labels, **truth.datasets())``.
    """

    poisoned: np.ndarray
    trigger: np.ndarray
    trigger_names: tuple
    flipped: np.ndarray
    clean_labels: np.ndarray

    def __post_init__(self):
        for name, dtype in (("poisoned", bool), ("trigger", np.int64), ("flipped", bool), ("clean_labels", np.int64)):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype))
        object.__setattr__(self, "trigger_names", tuple(self.trigger_names))
        _check_truth("PoisonTruth", self.poisoned, self.trigger, self.trigger_names, self.flipped, self.clean_labels)

    def __len__(self):
        return len(self.poisoned)

    @property
    def poisoned_indices(self):
        """Indices of the poisoned images (sorted)."""
        return np.flatnonzero(self.poisoned)

    @property
    def flipped_indices(self):
        """Indices of the images whose label was flipped (sorted)."""
        return np.flatnonzero(self.flipped)

    def counts(self):
        """``{"images", "poisoned", "flipped", "per_trigger": {name: count}}`` (a card's summary)."""
        return {"images": len(self), "poisoned": int(self.poisoned.sum()), "flipped": int(self.flipped.sum()),
                "per_trigger": {name: int(np.sum(self.trigger == index))
                                for index, name in enumerate(self.trigger_names)}}

    def subset(self, indices):
        """The ground truth of the images ``indices`` (a slice, index or boolean array), e.g. of a cleaned set."""
        return PoisonTruth(self.poisoned[indices], self.trigger[indices], self.trigger_names, self.flipped[indices],
                           self.clean_labels[indices])

    @classmethod
    def from_indices(cls, clean_labels, poisoned_indices=(), poisoned_triggers=(), trigger_names=(),
                     flipped_indices=()):
        """Build the ground truth of N = len(clean_labels) images from index lists.

        Args:
            clean_labels: (N,) labels before poisoning and flipping.
            poisoned_indices: indices of the poisoned images.
            poisoned_triggers: per poisoned index, the index of its trigger in ``trigger_names``.
            trigger_names: the triggers' names.
            flipped_indices: indices of the flipped labels.
        """
        clean_labels = np.asarray(clean_labels, np.int64)
        poisoned_indices = np.asarray(poisoned_indices, np.int64)
        poisoned_triggers = np.asarray(poisoned_triggers, np.int64)
        if poisoned_triggers.shape != poisoned_indices.shape:
            raise ValueError(f"expected one trigger per poisoned index ({poisoned_indices.shape}), "
                             f"got {poisoned_triggers.shape}")
        poisoned = np.zeros(len(clean_labels), bool)
        poisoned[poisoned_indices] = True
        trigger = np.full(len(clean_labels), -1, np.int64)
        trigger[poisoned_indices] = poisoned_triggers
        flipped = np.zeros(len(clean_labels), bool)
        flipped[np.asarray(flipped_indices, np.int64)] = True
        return cls(poisoned, trigger, tuple(str(name) for name in trigger_names), flipped, clean_labels)

    def datasets(self):
        """The ``extra`` and ``attributes`` arguments of :func:`save_h5` that store this ground truth."""
        return {"extra": {"poisoned": self.poisoned.astype(np.uint8), "poison_trigger": self.trigger.astype(np.int16),
                          "flipped": self.flipped.astype(np.uint8), "clean_label": self.clean_labels.astype(np.int64)},
                "attributes": {TRIGGERS_ATTRIBUTE: json.dumps(list(self.trigger_names))}}


def _check_truth(path, poisoned, trigger, trigger_names, flipped, clean_labels, labels=None):
    """Raise DataError (naming ``path`` and the field) unless the ground-truth arrays are consistent."""
    count = len(poisoned)
    for field, value in zip(TRUTH_FIELDS, (poisoned, trigger, flipped, clean_labels)):
        if np.ndim(value) != 1 or len(value) != count:
            _fail(path, field, f"expected one entry per image ({count},), got shape {np.shape(value)}")
    if not isinstance(trigger_names, tuple) or not all(isinstance(name, str) for name in trigger_names):
        _fail(path, TRIGGERS_ATTRIBUTE, f"expected a list of trigger names, got {trigger_names!r}")
    bad = np.flatnonzero(trigger != np.where(poisoned, trigger, -1))
    if len(bad):
        _fail(path, "poison_trigger", f"expected -1 for an image that is not poisoned, found {plain(trigger[bad[0]])} "
              f"(image {int(bad[0])})")
    bad = np.flatnonzero(poisoned & ((trigger < 0) | (trigger >= len(trigger_names))))
    if len(bad):
        _fail(path, "poison_trigger", f"expected a trigger index in 0..{len(trigger_names) - 1} (the "
              f"{len(trigger_names)} names of {TRIGGERS_ATTRIBUTE}) for a poisoned image, found "
              f"{plain(trigger[bad[0]])} (image {int(bad[0])})")
    if len(clean_labels) and clean_labels.min() < 0:
        _fail(path, "clean_label", f"expected class labels >= 0, found {plain(clean_labels.min())}")
    if labels is not None:
        bad = np.flatnonzero(~poisoned & ~flipped & (labels != clean_labels))
        if len(bad):
            _fail(path, "clean_label", f"expected the label of an image neither poisoned nor flipped, found "
                  f"{plain(clean_labels[bad[0]])} for label {plain(labels[bad[0]])} (image {int(bad[0])})")


def _read_flags(path, handle, field, count):
    """A 0/1 per-image dataset as a bool array."""
    raw = _read_vector(path, handle, field, count)
    if raw.dtype != np.bool_ and not np.all((raw == 0) | (raw == 1)):
        index = int(np.flatnonzero((raw != 0) & (raw != 1))[0])
        _fail(path, field, f"expected 0 or 1 per image, found {plain(raw[index])} (image {index})")
    return raw.astype(bool)


def _read_vector(path, handle, field, count, integer=False):
    import h5py

    if field not in handle or not isinstance(handle[field], h5py.Dataset):
        _fail(path, field, f"missing dataset '{field}' (a file with 'poisoned' holds {', '.join(TRUTH_FIELDS)})")
    dataset = handle[field]
    _check_numeric(path, field, dataset.dtype)
    check_fits(path, field, f"reading its {dataset.size:,} entries", dataset.size * dataset.dtype.itemsize)
    try:
        raw = np.asarray(dataset[()])
    except OSError:
        _fail(path, field, "could not be read (file truncated or corrupt)")
    if raw.shape != (count,):
        _fail(path, field, f"expected one entry per image ({count},), got shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        index = int(np.flatnonzero(~(np.isfinite(raw) & (raw == np.round(raw))))[0])
        _fail(path, field, f"expected whole numbers, found {plain(raw[index])} (image {index})")
    return raw.astype(np.int64) if integer else raw


def load_poison_truth(path):
    """Read the ground truth of a poisoned training file (see the module's description of the format).

    Args:
        path: a lab-layout .h5 file.

    Returns:
        PoisonTruth or None: None when the file has no ``poisoned`` dataset.

    Raises:
        DataError: not a lab-layout file, or ground truth of the wrong shape or values (one line
            naming the file and the field).

    Example:
        >>> truth = load_poison_truth("models/badnet_train_poisoned.h5")
        >>> truth.counts()["poisoned"]
    """
    with LabFile(path) as lab:
        handle = lab._file
        if "poisoned" not in handle:
            return None
        count = len(lab)
        poisoned = _read_flags(lab.path, handle, "poisoned", count)
        trigger = _read_vector(lab.path, handle, "poison_trigger", count, integer=True)
        flipped = _read_flags(lab.path, handle, "flipped", count)
        clean_labels = _read_vector(lab.path, handle, "clean_label", count, integer=True)
        raw_names = handle.attrs.get(TRIGGERS_ATTRIBUTE)
        if raw_names is None:
            if poisoned.any():
                _fail(lab.path, TRIGGERS_ATTRIBUTE, "missing file attribute (a JSON list of trigger names)")
            names = []
        else:
            expected = f"expected a JSON list of trigger names, got {str(raw_names)[:60]!r}"
            try:
                names = json.loads(raw_names.decode() if isinstance(raw_names, bytes) else str(raw_names))
            except (ValueError, UnicodeDecodeError):
                _fail(lab.path, TRIGGERS_ATTRIBUTE, expected)
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                _fail(lab.path, TRIGGERS_ATTRIBUTE, expected)
        _check_truth(lab.path, poisoned, trigger, tuple(names), flipped, clean_labels, labels=lab.labels)
        return PoisonTruth(poisoned, trigger, tuple(names), flipped, clean_labels)


def load_image(path, resize=False, image_shape=IMAGE_SHAPE):
    """Load a PNG/JPEG image as a float32 RGB array (55, 47, 3), values 0-255.

    Args:
        path: the image file.
        resize: resize other sizes to 55x47 (bilinear) instead of failing.
        image_shape: (height, width, channels) expected.

    Returns:
        np.ndarray: float32 (55, 47, 3).

    Raises:
        DataError: not an image, or of another size while ``resize`` is False.

    Example:
        >>> load_image("images/clean_950.png").shape
        (55, 47, 3)
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    height, width, _ = image_shape
    if not os.path.isfile(path):
        _fail(path, None, "image file not found")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (width, height):
                if not resize:
                    _fail(path, "size", f"expected a {width}x{height} (width x height) image, got "
                          f"{image.size[0]}x{image.size[1]}; pass --resize to resize it")
                image = image.resize((width, height), Image.BILINEAR)
            return np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError):
        _fail(path, None, "not a readable PNG/JPEG image")


def is_image_file(path):
    """Return True if ``path`` looks like an image by its extension."""
    return os.path.splitext(os.fspath(path))[1].lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif")
