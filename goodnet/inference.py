"""One batched, compiled inference path for every goodnet component.

:func:`compiled_forward` turns a Keras model into a ``tf.function`` of raw
pixels; an :class:`Execution` says where and how it runs: on the CPU or the
GPU (``device``), replicated over several devices with
``tf.distribute.MirroredStrategy`` (``devices``), in mixed precision
(``precision``, never silently: its effect on predictions is measured by
:func:`precision_agreement`), and optionally compiled with XLA.
"""

import dataclasses
import logging
import os
import sys

import numpy as np

from goodnet.base import InstanceOf, Interval, OneOf
from goodnet.errors import OptionError
from goodnet.options import option

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 1024
PROGRESS_DELAY_SECONDS = 3.0


def progress_bar(total, description, enabled=None, unit="img"):
    """Return a tqdm progress bar (on stderr) that appears only for long work.

    Args:
        total: number of items.
        description: label shown left of the bar.
        enabled: True shows it at once, False never; None (default) shows it
            once the work has taken ``PROGRESS_DELAY_SECONDS``.
        unit: the unit name.

    Returns:
        tqdm.tqdm: the bar (a no-op when disabled).
    """
    from tqdm.auto import tqdm

    delay = 0.0 if enabled else PROGRESS_DELAY_SECONDS
    return tqdm(total=total, desc=description, unit=unit, disable=enabled is False, delay=delay,
                leave=False, dynamic_ncols=True)


def quiet_tensorflow():
    """Import TensorFlow with its C++ start-up chatter kept off the terminal.

    TensorFlow writes informational lines to file descriptor 2 before its
    logging is set up, whatever TF_CPP_MIN_LOG_LEVEL says, so the import runs
    with descriptor 2 sent to a temporary file, which is replayed only if
    the import fails.
    """
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DEVICE_KINDS = ("auto", "cpu", "gpu")
DEFAULT_STRATEGY = "default"
STRATEGIES = (DEFAULT_STRATEGY, "mirrored")   # one device (unless devices says more), or every visible one


@dataclasses.dataclass(frozen=True)
class Execution:
    """Where and how inference runs.

    The fields carry their defaults, rules and help text (the command line's
    execution options, ``goodnet.cli.add_execution_options``); the constructor
    checks them itself.

    Args:
        device: "cpu", "gpu" or "auto" (the GPU when TensorFlow sees one).
        devices: replicate the model over this many devices of that kind with
            ``tf.distribute.MirroredStrategy`` and split every batch between
            them (None or 1: one device; "all": every visible device of that kind).
        precision: "float32", "mixed_float16" or "mixed_bfloat16".
        jit_compile: compile the forward pass with XLA (one device only).

    Example:
        >>> Execution(device="gpu", devices=2, precision="mixed_float16")
    """

    device: str = option("auto", "run inference on the CPU, the GPU, or the GPU when TensorFlow sees one",
                         rule=OneOf(DEVICE_KINDS))
    devices: int = option(None, "split every batch across this many devices (tf.distribute.MirroredStrategy)",
                          rule=[Interval(int, 1), OneOf(("all",))], allow_none=True, cli=False)
    precision: str = option("float32", "compute precision; a mixed mode's effect on predictions is measured and "
                                       "reported", rule=OneOf(PRECISIONS))
    jit_compile: bool = option(False, "compile the forward pass with XLA", rule=InstanceOf(bool), flag="--xla",
                               dest="xla")

    def __post_init__(self):
        if self.device not in DEVICE_KINDS:
            raise OptionError(f"device: expected one of {', '.join(DEVICE_KINDS)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.devices is not None and self.devices != "all" and (
                isinstance(self.devices, bool) or not isinstance(self.devices, (int, np.integer)) or self.devices < 1):
            raise OptionError(f"devices: expected a positive number of devices or 'all', got {self.devices!r}")
        if self.jit_compile and (self.devices == "all" or int(self.devices or 1) > 1):
            # A replicated XLA cluster reads every replica's variables from the first device and fails.
            raise OptionError(f"jit_compile: XLA (--xla) runs on one device; drop it or use devices=1, "
                             f"got devices={self.devices}")

    def device_names_all(self):
        """Every visible logical device of the kind this execution uses."""
        import tensorflow as tf

        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
        if self.device == "gpu" and not gpus:
            raise OptionError("device: 'gpu' asked for, but TensorFlow sees no GPU "
                             "(install goodnet[gpu] and check the CUDA driver, or use --device cpu)")
        if self.device == "gpu" or (self.device == "auto" and gpus):
            return gpus
        return [device.name for device in tf.config.list_logical_devices("CPU")]

    def device_names(self):
        """The logical devices this execution uses, e.g. ['/device:GPU:0'] or two CPUs."""
        names = self.device_names_all()
        wanted = len(names) if self.devices == "all" else int(self.devices or 1)
        if wanted > len(names):
            kind = "GPU" if "GPU" in names[0] else "CPU"
            raise OptionError(f"devices: {wanted} asked for, TensorFlow sees {len(names)} logical {kind} device(s)")
        return names[:wanted]

    def describe(self):
        """A short human-readable description (for reports and bench output)."""
        names = self.device_names()
        extra = [] if self.precision == "float32" else [self.precision]
        if self.jit_compile:
            extra.append("XLA")
        strategy = "MirroredStrategy over " if len(names) > 1 else ""
        return f"{strategy}{', '.join(names)}" + (f" ({', '.join(extra)})" if extra else "")

    def placement(self):
        """A context in which TensorFlow work that is not a replicated forward pass runs.

        ``tf.device`` on the first device of :meth:`device_names` when a device
        kind is named ("cpu" or "gpu"); no scope for "auto" (TensorFlow's own
        placement: the GPU when it sees one). Replicated forward passes
        (:func:`compiled_forward` with several devices) place their replicas
        themselves.

        Returns:
            a context manager.
        """
        import contextlib

        if self.device == "auto":
            self.device_names()  # still check that the devices asked for exist
            return contextlib.nullcontext()
        import tensorflow as tf

        return tf.device(self.device_names()[0])

    @classmethod
    def from_settings(cls, strategy=DEFAULT_STRATEGY, **settings):
        """The execution that the command-line settings describe (``strategy="mirrored"``: all devices by default).

        Args:
            strategy: one of :data:`STRATEGIES`: "default" or "mirrored" (split
                batches over ``devices``, or all visible devices of the kind
                when ``devices`` is None).
            **settings: the fields (``device``, ``devices``, ``precision``,
                ``jit_compile``; see the class); a missing one keeps its default.

        Returns:
            Execution

        Example:
            >>> Execution.from_settings("mirrored", device="gpu")
        """
        if strategy not in STRATEGIES:
            raise OptionError(f"strategy: expected {' or '.join(map(repr, STRATEGIES))}, got {strategy!r}")
        if strategy == "mirrored" and settings.get("devices") is None:
            settings["devices"] = "all"
        if "jit_compile" in settings:
            settings["jit_compile"] = bool(settings["jit_compile"])
        return cls(**settings)

    @classmethod
    def of(cls, classifier):
        """The execution ``classifier`` was configured with (default: one device, float32).

        Example:
            >>> Execution.of(load_model("bd_net.h5")).describe()
        """
        return getattr(classifier, "execution", None) or cls()

    def single(self):
        """This execution on its first device only (same kind, precision and XLA setting)."""
        return dataclasses.replace(self, devices=None)

    def as_dict(self):
        """The settings as a JSON-ready dict (what a worker process needs to rebuild it)."""
        return dataclasses.asdict(self)


def with_precision(model, precision):
    """A clone of ``model`` computing in ``precision`` (a Keras dtype policy), weights copied.

    The output layer stays float32 so that softmax scores keep full range.
    """
    import keras

    if precision == "float32":
        return model
    last = model.layers[-1].name

    def clone_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name == last else keras.DTypePolicy(precision)
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def compiled_forward(model, divisor=1.0, execution=None):
    """Return a compiled function computing ``model(images / divisor)`` in inference mode.

    Unit scaling divides by 255 exactly as the lab's scripts do (float32
    division of 0-255 pixels gives the same values as the lab's float64
    division cast to float32; multiplying by 1/255 would not).
    The input signature has a free batch dimension, so batches of any size
    reuse one trace.

    Args:
        model: a Keras model.
        divisor: input scaling (1.0 for raw pixels, 255.0 for unit scaling).
        execution: an :class:`Execution` (default: one device, float32).

    Returns:
        callable: images (float32 array or tensor) -> float32 outputs. Its
        ``model`` attribute is the Keras model it runs (a reduced-precision
        clone, or the replica of a mirrored execution): a caller that changes
        weights between calls must change them there.
    """
    import tensorflow as tf

    execution = execution or Execution()
    names = execution.device_names()
    model = with_precision(model, execution.precision)
    input_shape = tuple(model.inputs[0].shape[1:])
    divisor = float(divisor)
    if len(names) > 1:
        return _mirrored_forward(model, divisor, names, execution.jit_compile)

    @tf.function(input_signature=[tf.TensorSpec((None,) + input_shape, tf.float32)], reduce_retracing=True,
                 jit_compile=execution.jit_compile or None)
    def forward(images):
        if divisor != 1.0:
            images = images / divisor
        return tf.cast(model(images, training=False), tf.float32)

    if execution.device == "auto":
        forward.model = model
        return forward

    def placed(images):
        with tf.device(names[0]):
            return forward(images)

    placed.model = model
    return placed


def mirrored_replica(model, names):
    """A ``tf.distribute.MirroredStrategy`` over device ``names`` and a replica of ``model`` made in its scope.

    Returns:
        (strategy, replica): the replica holds ``model``'s weights.
    """
    import keras
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(names)
    with strategy.scope():
        replica = keras.models.clone_model(model)
    replica.set_weights(model.get_weights())
    return strategy, replica


def replicated_step(strategy, replica_step, jit_compile=False):
    """``replica_step`` run on every replica of ``strategy``, data-parallel: a callable for :func:`run_replicated`.

    Args:
        strategy: a MirroredStrategy.
        replica_step: a function of per-replica tensors (a ``tf.function``'s
            ``python_function`` will do: ``strategy.run`` hands it per-replica values).
        jit_compile: compile the step with XLA.
    """
    import tensorflow as tf

    return tf.function(lambda *args: strategy.run(replica_step, args=args), reduce_retracing=True,
                       jit_compile=jit_compile or None)


def run_replicated(strategy, step, arrays, part_size=None, shared=()):
    """Cut ``arrays`` (same length) into one part per replica, run ``step`` on every replica, join the outputs.

    The parts are :func:`replica_parts` of the arrays' length (with
    ``part_size``, each replica runs exactly the call one device would run);
    a replica handed an empty part gets the first row as a stand-in, whose
    output is dropped.

    Args:
        strategy: the MirroredStrategy of ``step`` (:func:`replicated_step`).
        step: called as ``step(*array parts, *shared)``.
        arrays: NumPy arrays cut along their first axis.
        part_size: rows per replica (see :func:`replica_parts`).
        shared: values passed whole to every replica (e.g. a distributed tensor).

    Returns:
        np.ndarray: the outputs of every replica, in order.
    """
    import tensorflow as tf

    parts = replica_parts(len(arrays[0]), strategy.num_replicas_in_sync, part_size)
    counts = [len(part) for part in parts]
    parts = [part if len(part) else np.arange(1) for part in parts]
    distribute = strategy.experimental_distribute_values_from_function
    distributed = [distribute(lambda context, array=array: tf.constant(array[parts[context.replica_id_in_sync_group]]))
                   for array in arrays]
    outputs = strategy.experimental_local_results(step(*distributed, *shared))
    return np.concatenate([np.asarray(output)[:count] for output, count in zip(outputs, counts)], axis=0)


def _mirrored_forward(model, divisor, names, jit_compile):
    """Data-parallel inference: the batch is split across ``names`` with MirroredStrategy."""
    import tensorflow as tf

    strategy, replica = mirrored_replica(model, names)

    def replica_step(images):
        if divisor != 1.0:
            images = images / divisor
        return tf.cast(replica(images, training=False), tf.float32)

    step = replicated_step(strategy, replica_step, jit_compile)

    def forward(images, part_size=None):
        return run_replicated(strategy, step, [np.asarray(images, dtype=np.float32)], part_size)

    forward.model = replica
    forward.replicas = len(names)
    return forward


def replica_parts(count, replicas, part_size=None):
    """Index ranges of ``count`` items for ``replicas`` replicas.

    With ``part_size``, consecutive parts of that size (the last ones shorter
    or empty): each replica then runs exactly the batch one device would run
    with that batch size, so results are identical to one device's. Without
    it, ``count`` is split as evenly as possible.

    Returns:
        list of ``replicas`` index arrays.
    """
    if part_size is None:
        return np.array_split(np.arange(count), replicas)
    if count > part_size * replicas:
        raise AssertionError(f"part_size: {count} items do not fit in {replicas} parts of {part_size}")
    return [np.arange(min(start, count), min(start + part_size, count))
            for start in range(0, part_size * replicas, part_size)]


PRECISION_SAMPLE = 1024   # clean images on which a reduced precision is compared with float32


def precision_agreement(model, divisor, images, precision, batch_size=DEFAULT_BATCH, execution=None):
    """Measure what a reduced precision does to predictions on ``images``.

    Args:
        model: a Keras model.
        divisor: input scaling (1.0 or 255.0).
        images: raw-pixel images (a sample).
        precision: the reduced precision ("mixed_float16" or "mixed_bfloat16").
        batch_size: images per call.
        execution: where both passes run (its first device; default: TensorFlow's choice).

    Returns:
        dict: ``precision``, ``images``, ``top1_agreement`` (fraction of
        images whose top-1 class is unchanged) and ``max_abs_score_difference``.
    """
    base = (execution or Execution()).single()
    reference = run_batches(compiled_forward(model, divisor, dataclasses.replace(base, precision="float32")),
                            images, batch_size, False)
    reduced = run_batches(compiled_forward(model, divisor, dataclasses.replace(base, precision=precision)),
                          images, batch_size, False)
    return {"precision": precision, "images": int(len(images)),
            "top1_agreement": float(np.mean(reference.argmax(axis=1) == reduced.argmax(axis=1))),
            "max_abs_score_difference": float(np.max(np.abs(reference - reduced)))}


def run_batches(function, images, batch_size=DEFAULT_BATCH, progress=None, description="predict"):
    """Apply ``function`` to ``images`` batch by batch and concatenate the results.

    A replicated function (:func:`compiled_forward` over several devices)
    gets ``batch_size`` images per replica per call, each replica exactly the
    batch one device would get, so its results equal one device's.

    Args:
        function: a callable taking a float32 batch and returning a tensor.
        images: array (N, ...).
        batch_size: images per call (per device).
        progress: see :func:`progress_bar`.
        description: progress-bar label.

    Returns:
        np.ndarray: the outputs for all N images.
    """
    images = np.asarray(images, dtype=np.float32)
    replicas = getattr(function, "replicas", 1)
    outputs = []
    with progress_bar(len(images), description, progress) as bar:
        # A replicated function takes one batch of batch_size per replica per call.
        for start in range(0, len(images), batch_size * replicas):
            batch = images[start:start + batch_size * replicas]
            outputs.append(np.asarray(function(batch, part_size=batch_size) if replicas > 1 else function(batch)))
            bar.update(len(batch))
    if not outputs:
        raise OptionError("images: expected at least one image, got an empty array")
    return np.concatenate(outputs, axis=0)
