"""STRIP (Gao et al., ACSAC 2019): run-time detection of trojaned inputs.

For an input x, make ``copies`` perturbed copies, each x superimposed with a
different clean image drawn at random from a held-out clean bank; the entropy of
a copy is the Shannon entropy (bits) of the network's softmax **over classes**;
the input's entropy is the mean over its copies. A trigger dominates the
prediction whatever it is superimposed with, so trojaned inputs have low entropy.
``fit`` learns the entropy distribution of clean validation inputs and the
threshold ``threshold_`` for a target false rejection rate (FRR). Inputs below
the threshold are flagged. By default the threshold is *certified*: the k-th
smallest of the n clean calibration entropies, with k the largest rank whose FRR
is at most the target with probability ``confidence`` (see :func:`calibrate`);
the paper's normal fit and the plain empirical quantile remain as options. The
calibration's exact (Clopper-Pearson) bounds on the FRR are kept in
``calibration_``.

Speed: all copies of a chunk of inputs are built, run through the compiled
network and reduced to entropies in one TensorFlow call; the chunk holds as many
inputs as fit in ``memory_mb``. There is no per-input Python loop. For the
alpha blend, when the network starts with a convolution, the blend is done on
that convolution's pre-activations (linear, so equal up to float rounding):
conv_1 runs once per input and once per bank image instead of once per copy.
The optional early stopping decides clear-cut inputs after a fraction of the
copies (see :meth:`STRIP.predict_trojaned`).

Where it runs: the classifier's :class:`goodnet.inference.Execution` (set by
``classifier.configure``) places the work on its device; with several devices
each network call's inputs are split between replicas of the network
(``tf.distribute.MirroredStrategy``), every input's copies staying on one
replica; a mixed precision runs the network in that precision (see
:meth:`STRIP.fit`). :meth:`STRIP.entropy` and :meth:`STRIP.predict_trojaned`
also take an open :class:`goodnet.data.LabFile` and read it batch by batch,
keeping only per-input results, so memory stays bounded for any file size.

Note: ART's STRIP (``art.defences.transformer.poisoning.STRIP``) takes the
entropy along the wrong axis (over the copies instead of over the classes);
this module does not.
"""

import dataclasses
import logging

import numpy as np

from goodnet.base import InstanceOf, Interval, OneOf
from goodnet.calibration import THRESHOLD_METHODS, CalibrationOptions, _check_rates, calibrate
from goodnet.errors import OptionError
from goodnet.inference import progress_bar
from goodnet.options import option

logger = logging.getLogger(__name__)

BLENDS = ("add", "alpha")
DRAWS = ("random", "fixed")
PRECISIONS = ("float32", "bfloat16")
STREAM_IMAGES = 256  # about this many images read at a time from an open file
ENTROPY_WORDING = ("STRIP", "entropies", "more clean validation images or a smaller bank")   # Calibration.wording


@dataclasses.dataclass(frozen=True)
class StripOptions(CalibrationOptions):
    """Every option of STRIP, with its default, rule and help text (``goodnet strip``'s defaults).

    The calibration options (``threshold_method``, ``frr``, ``confidence``)
    come from :class:`goodnet.calibration.CalibrationOptions`. The fields are
    :class:`STRIP`'s parameters (``STRIP(**dataclasses.asdict(options))`` or
    :meth:`STRIP.from_options`) and ``goodnet strip``'s flags
    (:func:`goodnet.cli.options.add_options`). ``goodnet repair`` uses its own
    values (``StripOptions(blend="alpha", ...)``).
    """

    copies: int = option(100, "perturbed copies per input", rule=Interval(int, 1))
    blend: str = option("add", "superimposition: add (the paper's additive, saturated at 255) or alpha blend "
                               "((1 - alpha) input + alpha bank image)", rule=OneOf(BLENDS))
    alpha: float = option(0.5, "weight of the bank image for --blend alpha", rule=Interval(float, 0.0, 1.0, "neither"))
    draws: str = option("random", "random bank images per input (the paper) or the same ones for every input "
                                  "(fixed: deterministic, used inside model files)", rule=OneOf(DRAWS))
    bank_size: int = option(None, "clean images held out of --valid as the bank", rule=Interval(int, 1),
                            allow_none=True, default_text="half, at most 1000, at least --copies")
    seed: int = option(0, "seed of the bank split and the draws", rule=Interval(int, 0))
    memory_mb: int = option(1024, "memory budget of one network call (MB; sets the chunk size)", rule=Interval(int, 1))
    early_stop: bool = option(False, "decide clear-cut inputs early: look after every --early-copies copies",
                              rule=InstanceOf(bool))
    early_copies: int = option(10, "copies per early-stopping stage (stages 10, 20, ..., --copies)",
                               rule=Interval(int, 1))
    early_z: float = option(3.0, "early stopping's decision margin in standard errors",
                            rule=Interval(float, 0.0, closed="neither"), cli=False)
    fast_alpha: bool = option(True, "for the alpha blend, blend the first convolution's pre-activations (the same "
                                    "result up to float rounding, less arithmetic)", rule=InstanceOf(bool), cli=False)
    precision: str = option("float32", "bfloat16: a faster, approximate copy of the network",
                            rule=OneOf(PRECISIONS), flag="--strip-precision", dest="strip_precision")


def entropy_reference(probabilities):
    """Entropy (bits) over the last axis, plain NumPy (0 log 0 = 0)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, probabilities * np.log2(probabilities), 0.0)
    return -terms.sum(axis=-1)


def bytes_per_image(model):
    """Rough float32 memory one image needs in a forward pass (input plus every layer's output)."""
    values = int(np.prod(model.inputs[0].shape[1:])) * 3
    for layer in model.layers:
        try:
            shapes = layer.output.shape if not isinstance(layer.output, (list, tuple)) else layer.output[0].shape
            values += int(np.prod([size for size in shapes[1:] if size is not None]))
        except (AttributeError, ValueError, TypeError):
            continue
    return 4 * values


def _pre_activation(conv, images):
    """A Conv2D layer's output before its activation (convolution plus bias)."""
    import keras

    pre = conv.convolution_op(images, conv.kernel)
    if conv.use_bias:
        pre = pre + keras.ops.reshape(conv.bias, (1,) * (len(pre.shape) - 1) + (-1,))
    return pre


def bfloat16_copy(model):
    """A copy of a Keras model computing in bfloat16, except the layers giving its outputs (float32).

    Args:
        model: a functional or sequential Keras model.

    Returns:
        keras.Model with the same weights (rounded to bfloat16).
    """
    import keras

    output_ids = {id(tensor) for tensor in model.outputs}

    def clone(layer):
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer) and id(layer.output) not in output_ids:
            config["dtype"] = "bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _is_stream(images):
    """Whether ``images`` is an open lab file read batch by batch (a :class:`goodnet.data.LabFile`)."""
    return hasattr(images, "batches") and not hasattr(images, "images")


def _images(images, name="images"):
    if _is_stream(images):
        raise TypeError(f"{name}: expected images in memory here (an array or LabData), got an open file")
    images = getattr(images, "images", images)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise OptionError(f"{name}: expected images of shape (N, height, width, channels), got {images.shape}")
    return images


class STRIP:
    """The STRIP detector around one classifier (scikit-learn conventions).

    Args:
        classifier: the :class:`goodnet.models.Classifier` to watch (the BadNet).
        copies: N, perturbed copies per input (the paper evaluates N = 100).
        blend: "add" (the paper's additive superimposition, saturated at 255) or
            "alpha" (``(1 - alpha) x + alpha clean``).
        alpha: bank weight of the "alpha" blend.
        draws: "random" (each input gets its own random bank images, the paper)
            or "fixed" (the same ``copies`` bank images for every input:
            deterministic, batch-independent; used inside model files).
        threshold_method: "certified" (default: the order statistic of the
            clean entropies whose FRR is at most ``frr`` with probability
            ``confidence``, see :func:`calibrate`), "normal" (fit a normal
            distribution to clean entropies, take its ``frr`` quantile: the
            paper) or "quantile" (the empirical ``frr`` quantile).
        frr: target false rejection rate on clean inputs.
        confidence: for "certified", the probability that the threshold's FRR
            is at most ``frr``; for every method, the level of the reported
            bounds (``calibration_``).
        bank_size: clean images held out of ``fit``'s data as the bank when no
            bank is given (default: half of them, at most 1000, at least ``copies``).
        seed: seed of the bank split and of the draws.
        memory_mb: memory budget of one network call (sets the chunk size).
        early_stop: in :meth:`predict_trojaned`, also decide an input as soon as
            its running mean entropy is more than ``early_z`` standard errors
            from the threshold (optional, off by default: it can change a few
            decisions; see :meth:`predict_trojaned`).
        early_copies: copies per stage of :meth:`predict_trojaned` (10: stages 10, 20, ..., N).
        early_z: the decision margin in standard errors.
        fast_alpha: for the "alpha" blend, blend the first convolution's
            pre-activations instead of the pixels when the network starts with a
            Conv2D (the same result up to float rounding, about a quarter less
            arithmetic on the lab network); False always runs the whole network
            on blended pixels. The "add" blend saturates at 255, which is not
            linear, so it always blends pixels.
        precision: "float32" (default) or "bfloat16": run a bfloat16 copy of the
            network (its output layer kept in float32), about 1.5-2x faster on
            CPUs with AMX/AVX512-BF16; an approximation (optional, off by
            default): entropies move by up to about 0.01 bit on the lab BadNet
            and a few decisions can change (bench/bench_strip.py measures it).
            The classifier's execution precision (``mixed_float16`` or
            ``mixed_bfloat16``, Keras mixed policies) is the other way to reduce
            precision; asking for both is an error.
        progress: progress bar (None: after 3 s; False: never).

    Where it runs comes from ``classifier.execution`` (see
    :meth:`goodnet.models.Classifier.configure`): its device, its devices (the
    inputs of every network call split between MirroredStrategy replicas; the
    entropies are those of one device) and its precision.

    Attributes (after ``fit``):
        bank_: the clean bank, raw pixels.
        fixed_indices_, fixed_bank_: the bank images every input uses when ``draws="fixed"``.
        clean_entropies_: entropies of the clean fit inputs.
        entropy_mean_, entropy_std_: their mean and standard deviation.
        threshold_: inputs with entropy below it are flagged as trojaned.
        calibration_: the :class:`Calibration` that chose it (calibration
            size, rejections, FRR bounds, whether the target is certified).
        path_: "linear" (alpha blend of conv_1 pre-activations) or "direct" (pixels blended).
        execution_: the :class:`goodnet.inference.Execution` the detector runs under.

    Example:
        >>> strip = STRIP(bad, copies=100, frr=0.01).fit(valid.images)
        >>> flagged = strip.predict_trojaned(poisoned.images)
    """

    def __init__(self, classifier, copies=100, blend="add", alpha=0.5, draws="random",
                 threshold_method=StripOptions.threshold_method, frr=StripOptions.frr,
                 confidence=StripOptions.confidence,
                 bank_size=None, seed=0, memory_mb=1024, early_stop=False, early_copies=10,
                 early_z=3.0, fast_alpha=True, precision="float32", progress=None):
        self.classifier = classifier
        self.copies = copies
        self.blend = blend
        self.alpha = alpha
        self.draws = draws
        self.threshold_method = threshold_method
        self.frr = frr
        self.confidence = confidence
        self.bank_size = bank_size
        self.seed = seed
        self.memory_mb = memory_mb
        self.early_stop = early_stop
        self.early_copies = early_copies
        self.early_z = early_z
        self.fast_alpha = fast_alpha
        self.precision = precision
        self.progress = progress

    # -- parameters -----------------------------------------------------------------
    def _check_parameters(self):
        if int(self.copies) < 1:
            raise OptionError(f"copies: expected a positive number of perturbed copies, got {self.copies}")
        if self.blend not in BLENDS:
            raise OptionError(f"blend: expected one of {BLENDS}, got {self.blend!r}")
        if not 0.0 < float(self.alpha) < 1.0:
            raise OptionError(f"alpha: expected a blend weight in (0, 1), got {self.alpha}")
        if self.draws not in DRAWS:
            raise OptionError(f"draws: expected one of {DRAWS}, got {self.draws!r}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise OptionError(f"threshold_method: expected one of {THRESHOLD_METHODS}, got {self.threshold_method!r}")
        _check_rates(self.frr, self.confidence)
        if int(self.early_copies) < 1:
            raise OptionError(f"early_copies: expected a positive number of copies per stage, got {self.early_copies}")

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            raise OptionError("STRIP: not fitted: call fit(clean_validation_images) first")

    # -- the fast path --------------------------------------------------------------
    def _linear_split(self):
        """(first convolution, rest of the network) when the alpha blend can be done after conv_1, else None.

        The alpha blend is linear and so is a convolution before its activation:
        ``conv((1 - a) x + a b) = (1 - a) conv(x) + a conv(b)`` (the bias too, as
        the weights sum to 1). When the model's input feeds exactly one Conv2D
        (channels last, one group, float32), the pre-activation of every input and of
        every bank image is computed once and each copy only adds two of them.
        Results differ from blending pixels only by float rounding.
        """
        if self.blend != "alpha" or not self.fast_alpha:
            return None
        import keras

        model = self._network
        try:
            source = model.inputs[0]
            consumers = [layer for layer in model.layers
                         if any(tensor is source for node in layer._inbound_nodes for tensor in node.input_tensors)]
            if len(consumers) != 1 or type(consumers[0]) is not keras.layers.Conv2D:
                return None
            conv = consumers[0]
            if (conv.data_format != "channels_last" or conv.groups != 1 or len(conv._inbound_nodes) != 1
                    or conv.compute_dtype != "float32" or conv.kernel.dtype != "float32"):
                return None
            rest = keras.Model(conv.output, model.outputs, name=f"{model.name}_after_{conv.name}")
        except (AttributeError, ValueError, TypeError, IndexError) as error:
            logger.info("STRIP: direct path (the network cannot be split after its first layer: %s)", error)
            return None
        return conv, rest

    def _function(self):
        """Compiled: (inputs (K,H,W,C) raw, bank, indices (K,M)) -> per-copy entropies (K, M).

        On the linear path ``bank`` is ``alpha`` times the bank's conv_1 pre-activations (see :meth:`_linear_split`).
        """
        if getattr(self, "_compiled", None) is not None:
            return self._compiled
        import tensorflow as tf

        from goodnet.layers import entropy_bits

        model = self._network
        divisor = float(self.classifier.divisor)
        shape = tuple(self.classifier.input_shape)
        blend, alpha = self.blend, float(self.alpha)
        split = self._split
        jit_compile = self.execution_.jit_compile or None   # --xla: the whole per-copy function in XLA

        if split is not None:
            conv, rest = split
            pre_shape = tuple(int(size) for size in conv.output.shape[1:])

            @tf.function(reduce_retracing=True, jit_compile=jit_compile, input_signature=[
                tf.TensorSpec((None,) + shape, tf.float32), tf.TensorSpec((None,) + pre_shape, tf.float32),
                tf.TensorSpec((None, None), tf.int32)])
            def per_copy(images, bank_pre, indices):
                # bank_pre holds alpha * conv_1(bank) already, so each copy costs one gather and one add
                pre = (1.0 - alpha) * _pre_activation(conv, images / divisor if divisor != 1.0 else images)
                mixed = pre[:, None] + tf.gather(bank_pre, indices)   # (K, M, ...)
                flat = tf.reshape(mixed, (-1,) + pre_shape)
                scores = rest(conv.activation(flat), training=False)
                return tf.reshape(entropy_bits(scores), tf.shape(indices))
        else:
            @tf.function(reduce_retracing=True, jit_compile=jit_compile, input_signature=[
                tf.TensorSpec((None,) + shape, tf.float32), tf.TensorSpec((None,) + shape, tf.float32),
                tf.TensorSpec((None, None), tf.int32)])
            def per_copy(images, bank, indices):
                drawn = tf.gather(bank, indices)                      # (K, M, H, W, C)
                expanded = images[:, None]
                if blend == "add":
                    copies = tf.clip_by_value(expanded + drawn, 0.0, 255.0)
                else:
                    copies = (1.0 - alpha) * expanded + alpha * drawn
                flat = tf.reshape(copies, (-1,) + shape)
                if divisor != 1.0:
                    flat = flat / divisor
                scores = model(flat, training=False)
                return tf.reshape(entropy_bits(scores), tf.shape(indices))

        self._compiled = per_copy if self._strategy is None else self._replicated(per_copy)
        return self._compiled

    def _replicated(self, per_copy):
        """``per_copy`` run data-parallel: each call's inputs (and their index rows) are cut into consecutive
        parts of ``part_size``, one per MirroredStrategy replica, so that every replica runs exactly the call
        one device would run; every input's copies stay on one replica. Returns a NumPy array."""
        import tensorflow as tf

        from goodnet.inference import replica_parts

        strategy = self._strategy
        replicas = strategy.num_replicas_in_sync
        replica_step = per_copy.python_function   # strategy.run hands a tf.function the per-replica wrappers
        step = tf.function(lambda images, bank, indices: strategy.run(replica_step, args=(images, bank, indices)),
                           reduce_retracing=True, jit_compile=self.execution_.jit_compile or None)

        def function(images, bank, indices, part_size):
            images, indices = np.asarray(images, np.float32), np.asarray(indices, np.int32)
            parts = replica_parts(len(images), replicas, part_size)
            counts = [len(part) for part in parts]
            # A replica handed no input gets one stand-in input whose entropies are dropped.
            parts = [part if len(part) else np.arange(1) for part in parts]
            distribute = strategy.experimental_distribute_values_from_function
            image_parts = distribute(lambda context: tf.constant(images[parts[context.replica_id_in_sync_group]]))
            index_parts = distribute(lambda context: tf.constant(indices[parts[context.replica_id_in_sync_group]]))
            outputs = strategy.experimental_local_results(step(image_parts, bank, index_parts))
            return np.concatenate([np.asarray(output)[:count] for output, count in zip(outputs, counts)], axis=0)

        return function

    def _bank_operand(self):
        """The bank as the compiled function takes it: pixels, or conv_1 pre-activations on the linear path."""
        if getattr(self, "_bank_tensor", None) is None:
            import tensorflow as tf

            if self._split is None:
                self._bank_tensor = tf.constant(self.bank_, tf.float32)
            else:
                conv, _ = self._split
                divisor = float(self.classifier.divisor)
                alpha = float(self.alpha)
                def pre_function(images):   # eager: once per fit, so no function to trace again each fit
                    return alpha * _pre_activation(conv, images / divisor if divisor != 1.0 else images)

                size = max(1, self.chunk_inputs(1))
                parts = [pre_function(tf.constant(self.bank_[start:start + size], tf.float32))
                         for start in range(0, len(self.bank_), size)]
                self._bank_tensor = tf.concat(parts, axis=0)
            if self._strategy is not None:   # one copy of the bank on every replica's device, made once
                bank = self._bank_tensor
                self._bank_tensor = self._strategy.experimental_distribute_values_from_function(
                    lambda context: tf.identity(bank))
        return self._bank_tensor

    def chunk_inputs(self, copies=None):
        """Inputs per network call so that all their copies fit in ``memory_mb``."""
        copies = int(copies or self.copies)
        budget = int(self.memory_mb) * 2 ** 20 // bytes_per_image(self.classifier.model)
        return max(1, budget // copies)

    def per_copy_entropies(self, images, indices, description="STRIP"):
        """Entropy (bits) of each perturbed copy.

        Args:
            images: raw-pixel inputs (K, H, W, C).
            indices: (K, M) bank indices: copy m of input k is input k superimposed with ``bank_[indices[k, m]]``.
            description: progress-bar label.

        Returns:
            np.ndarray (K, M) float32.
        """
        if not hasattr(self, "bank_"):
            raise OptionError("STRIP: not fitted: call fit(clean_validation_images) first")
        images = _images(images)
        indices = np.asarray(indices, dtype=np.int32)
        with progress_bar(len(images) * indices.shape[1], description, self.progress, unit="copy") as bar:
            return self._per_copy(images, indices, bar)

    def _per_copy(self, images, indices, bar):
        """:meth:`per_copy_entropies` without the checks, updating ``bar``; runs where ``execution_`` says."""
        import tensorflow as tf

        with self.execution_.placement():
            bank = self._bank_operand()
            function = self._function()
            size = self.chunk_inputs(indices.shape[1])
            replicas = 1 if self._strategy is None else self._strategy.num_replicas_in_sync
            results = []
            for start in range(0, len(images), size * replicas):   # one chunk per device per call
                stop = start + size * replicas
                if replicas == 1:
                    scores = function(tf.constant(images[start:stop]), bank, tf.constant(indices[start:stop]))
                else:
                    scores = function(images[start:stop], bank, indices[start:stop], size)
                results.append(np.asarray(scores))
                bar.update(len(images[start:stop]) * indices.shape[1])
        if not results:
            return np.zeros((0, indices.shape[1]), np.float32)
        return np.concatenate(results, axis=0)

    def stream_batch(self):
        """Images read at a time from an open file: a multiple of :meth:`chunk_inputs`, so that a streamed
        file goes through exactly the network calls that the same images in memory do."""
        size = self.chunk_inputs()
        return size * max(1, STREAM_IMAGES // size)   # a multiple of the chunk for any number of devices

    def _draws(self, seed=None):
        """A function ``count -> (count, copies)`` bank indices. Successive calls continue one stream of
        draws, so the rows drawn batch by batch for a file are those drawn at once for all its images."""
        if self.draws == "fixed":
            return lambda count: np.tile(self.fixed_indices_, (count, 1)).astype(np.int32)
        rng = np.random.default_rng(self.seed if seed is None else seed)

        def take(count):
            rows = []
            for start in range(0, count, 256):
                keys = rng.random((min(256, count - start), len(self.bank_)))
                rows.append(np.argpartition(keys, self.copies - 1, axis=1)[:, :self.copies])
            if not rows:
                return np.zeros((0, self.copies), np.int32)
            return np.concatenate(rows).astype(np.int32)

        return take

    def draw_indices(self, count, seed=None):
        """Bank indices (count, copies): distinct bank images per input (random) or the fixed set."""
        return self._draws(seed)(count)

    # -- estimator API ----------------------------------------------------------------
    def bank_size_for(self, count):
        """Clean images :meth:`fit` holds out as the bank from ``count`` images when no bank is given."""
        return int(self.bank_size or max(int(self.copies), min(1000, int(count) // 2)))

    def fit(self, images, bank=None):
        """Learn the clean entropy distribution and the threshold.

        Args:
            images: clean validation images, raw pixels (N, H, W, C), or a LabData.
            bank: optional clean bank (raw pixels); by default ``bank_size`` of
                ``images`` are held out as the bank and the rest give the distribution.

        Returns:
            self
        """
        self._check_parameters()
        images = _images(images)
        rng = np.random.default_rng(self.seed)
        if bank is None:
            size = self.bank_size_for(len(images))
            if len(images) - size < 2:
                raise OptionError(f"images: expected more than {size + 1} clean images to hold out a bank of "
                                 f"{size} and fit the threshold, got {len(images)}")
            order = rng.permutation(len(images))
            bank, images = images[order[:size]], images[order[size:]]
        else:
            bank = _images(bank, "bank")
        if bank.shape[1:] != tuple(self.classifier.input_shape) or images.shape[1:] != bank.shape[1:]:
            raise OptionError(f"images: expected shape (N,) + {tuple(self.classifier.input_shape)}, "
                             f"got {images.shape} and bank {bank.shape}")
        if len(bank) < int(self.copies):
            raise OptionError(f"bank: expected at least copies={self.copies} clean images, got {len(bank)}")
        self._bank_tensor = None
        self._compiled = None
        self._network, self._strategy, self.execution_ = self._placed_network()
        self._split = self._linear_split()
        if self._split is not None and len(bank) * int(np.prod(self._split[0].output.shape[1:])) * 4 > \
                int(self.memory_mb) * 2 ** 20:
            self._split = None  # the bank's pre-activations would not fit the memory budget
        self.path_ = "direct" if self._split is None else "linear"
        self.bank_ = bank
        self.fixed_indices_ = np.sort(rng.choice(len(bank), int(self.copies), replace=False)).astype(np.int32)
        self.fixed_bank_ = bank[self.fixed_indices_]
        self.clean_entropies_ = self.entropy(images, seed=self.seed + 1)
        self.entropy_mean_ = float(np.mean(self.clean_entropies_))
        self.entropy_std_ = float(np.std(self.clean_entropies_, ddof=1))
        self.calibration_ = calibrate(self.clean_entropies_, self.frr, self.threshold_method, self.confidence,
                                      ENTROPY_WORDING)
        self.threshold_ = self.calibration_.threshold
        logger.info("STRIP: clean entropy %.4f +- %.4f bits over %d inputs; threshold %.4f (%s, FRR %.3g); %s",
                    self.entropy_mean_, self.entropy_std_, len(images), self.threshold_,
                    self.threshold_method, self.frr, self.calibration_.summary())
        return self

    def _placed_network(self):
        """(network to run, MirroredStrategy or None, Execution) from the classifier's execution and ``precision``."""
        import keras

        from goodnet.inference import Execution, with_precision

        execution = Execution.of(self.classifier)
        if execution.precision != "float32" and self.precision != "float32":
            raise OptionError(f"precision: STRIP's {self.precision} copy and the execution precision "
                             f"{execution.precision} are two ways to reduce precision; choose one")
        network = self.classifier.model
        if self.precision == "bfloat16":
            network = bfloat16_copy(network)
        elif execution.precision != "float32":
            network = with_precision(network, execution.precision)
        names = execution.device_names()
        if len(names) == 1:
            return network, None, execution
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy(names)
        with strategy.scope():
            replica = keras.models.clone_model(network)
        replica.set_weights(network.get_weights())
        return replica, strategy, execution

    def entropy(self, images, seed=None):
        """STRIP entropy (bits) of each input: the mean over its copies (float64, shape (N,)).

        Args:
            images: raw-pixel images (N, H, W, C), a LabData, or an open
                :class:`goodnet.data.LabFile`, read batch by batch
                (:meth:`stream_batch` images at a time; the result equals that
                of the same images in memory).
            seed: seed of the draws (default: the estimator's seed).

        Returns:
            np.ndarray: float64 entropies, one per input.
        """
        if not hasattr(self, "bank_"):
            raise OptionError("STRIP: not fitted: call fit(clean_validation_images) first")
        draws = self._draws(seed)
        if not _is_stream(images):
            images = _images(images)
            return self.per_copy_entropies(images, draws(len(images))).astype(np.float64).mean(axis=1)
        entropies = np.empty(len(images), np.float64)
        start = 0
        with progress_bar(len(images) * int(self.copies), "STRIP", self.progress, unit="copy") as bar:
            for batch, _ in images.batches(self.stream_batch()):
                block = self._per_copy(batch, draws(len(batch)), bar)
                entropies[start:start + len(batch)] = block.astype(np.float64).mean(axis=1)
                start += len(batch)
        return entropies

    def precision_effect(self, images, seed=None):
        """Measure what this STRIP's reduced precision does, against float32, on ``images``.

        The float32 twin shares the bank, the draws and the threshold; only the
        network's precision differs (``precision="bfloat16"`` or the
        execution's mixed precision).

        Args:
            images: a sample of clean raw-pixel images (N, H, W, C) or a LabData.
            seed: seed of the draws (default: the estimator's seed).

        Returns:
            dict: ``strip_precision``, ``images``, ``max_entropy_difference``
            (bits) and ``decision_agreement`` (fraction of inputs flagged the
            same way at ``threshold_``).

        Example:
            >>> STRIP(badnet, precision="bfloat16").fit(valid).precision_effect(valid.images[:256])
        """
        import copy

        if not hasattr(self, "bank_"):
            raise OptionError("STRIP: not fitted: call fit(clean_validation_images) first")
        images = _images(images)
        twin = copy.copy(self)
        twin.precision = "float32"
        twin.classifier = copy.copy(self.classifier).configure(dataclasses.replace(self.execution_,
                                                                                   precision="float32"))
        twin._bank_tensor, twin._compiled = None, None
        twin._network, twin._strategy, twin.execution_ = twin._placed_network()
        twin._split = None if self._split is None else twin._linear_split()   # the same path as this STRIP
        reduced, reference = self.entropy(images, seed), twin.entropy(images, seed)
        precision = self.precision if self.precision != "float32" else self.execution_.precision
        return {"strip_precision": precision, "images": int(len(images)),
                "max_entropy_difference": float(np.max(np.abs(reduced - reference))) if len(images) else 0.0,
                "decision_agreement": float(np.mean((reduced < self.threshold_) == (reference < self.threshold_)))
                if len(images) else 1.0}

    def early_stages(self):
        """Copies after which :meth:`predict_trojaned` looks at the undecided inputs: every ``early_copies``, then ``copies``."""
        step = max(2, int(self.early_copies))
        return list(range(step, int(self.copies), step)) + [int(self.copies)]

    def predict_trojaned(self, images, seed=None):
        """Whether each input is flagged as trojaned (its full-N entropy below ``threshold_``).

        The copies are run in stages (:meth:`early_stages`, e.g. 10, 20, ..., 100)
        on the same draws as :meth:`entropy` with this seed, and an input stops
        as soon as its decision is known:

        - exactly (always on): entropies are >= 0, so once the sum of an input's
          per-copy entropies reaches ``copies * threshold_`` its full-N mean
          cannot fall below the threshold: not flagged. The decisions are those
          of the full N (up to float rounding of the sums at an exact tie);
        - statistically (``early_stop=True`` only, it can change decisions):
          when the running mean is more than ``early_z`` standard errors from the
          threshold, the standard error being that of the difference between the
          full-N mean and the running mean, ``s sqrt((N - n) / (N n))`` with s the
          sample standard deviation of the n per-copy entropies so far.

        ``last_copies_used_`` records how many copies each input used.

        Args:
            images: raw-pixel images, a LabData, or an open
                :class:`goodnet.data.LabFile` (read batch by batch).
            seed: seed of the draws (default: the estimator's seed).

        Returns:
            np.ndarray: bool, one per input.
        """
        self._check_fitted()
        draws = self._draws(seed)
        if not _is_stream(images):
            images = _images(images)
            flagged, self.last_copies_used_ = self._decide(images, draws(len(images)))
            return flagged
        flagged, used = np.zeros(len(images), bool), np.zeros(len(images), np.int64)
        start = 0
        for batch, _ in images.batches(self.stream_batch()):
            stop = start + len(batch)
            flagged[start:stop], used[start:stop] = self._decide(batch, draws(len(batch)))
            start = stop
        self.last_copies_used_ = used
        return flagged

    def _decide(self, images, indices):
        """(flagged, copies used) of :meth:`predict_trojaned` for in-memory images and their draws."""
        total = int(self.copies)
        bound = total * float(self.threshold_)
        sums = np.zeros(len(images))
        squares = np.zeros(len(images))
        used = np.zeros(len(images), np.int64)
        flagged = np.zeros(len(images), bool)
        undecided = np.arange(len(images))
        done = 0
        for stage in self.early_stages():
            block = self.per_copy_entropies(images[undecided], indices[undecided, done:stage],
                                            f"STRIP ({stage} copies)").astype(np.float64)
            sums[undecided] += block.sum(axis=1)
            squares[undecided] += np.square(block).sum(axis=1)
            used[undecided] = done = stage
            means = sums[undecided] / stage
            if stage == total:
                flagged[undecided] = sums[undecided] / total < self.threshold_
                break
            clear = sums[undecided] >= bound                       # exact: cannot be flagged any more
            if self.early_stop:
                variance = np.maximum(squares[undecided] - stage * np.square(means), 0.0) / (stage - 1)
                spread = np.sqrt(variance * (total - stage) / (total * stage))
                confident = np.abs(means - self.threshold_) > float(self.early_z) * spread
                flagged[undecided[confident & ~clear]] = means[confident & ~clear] < self.threshold_
                clear |= confident
            undecided = undecided[~clear]
            if len(undecided) == 0:
                break
        return flagged, used


def evaluate_strip(strip, clean_images, poisoned, seed=None):
    """FRR on clean test inputs and FAR (poisoned inputs not flagged) per poisoned set.

    Args:
        strip: a fitted :class:`STRIP`.
        clean_images: clean test images (raw pixels).
        poisoned: list of (name, images).
        seed: seed of the draws (default: the estimator's seed + 2).

    Returns:
        dict: threshold, ``calibration`` (:meth:`Calibration.describe`), entropy statistics,
        ``false_rejection_rate``, ``clean_entropies``
        and ``poisoned`` (list of {file, false_acceptance_rate, detection_rate, entropies}).
    """
    seed = strip.seed + 2 if seed is None else seed
    clean_entropy = strip.entropy(clean_images, seed=seed)
    result = {"threshold": strip.threshold_, "threshold_method": strip.threshold_method, "target_frr": strip.frr,
              "calibration": strip.calibration_.describe(), "copies": int(strip.copies), "blend": strip.blend,
              "draws": strip.draws,
              "clean_entropy_mean": strip.entropy_mean_, "clean_entropy_std": strip.entropy_std_,
              "false_rejection_rate": float(np.mean(clean_entropy < strip.threshold_)),
              "clean_entropies": clean_entropy, "poisoned": []}
    for offset, (name, images) in enumerate(poisoned):
        entropies = strip.entropy(images, seed=seed + 1 + offset)
        flagged = float(np.mean(entropies < strip.threshold_))
        result["poisoned"].append({"file": name, "false_acceptance_rate": 1.0 - flagged, "detection_rate": flagged,
                                   "entropies": entropies})
    return result
