"""STRIP (Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks", ACSAC 2019).

Run-time detection of trojaned inputs. For an input x, make ``copies``
perturbed copies, each x superimposed with a different clean image drawn at
random from a held-out clean bank; the entropy of a copy is the Shannon entropy
(bits) of the network's softmax **over classes**; the input's entropy is the
mean over its copies. A trigger dominates the prediction whatever it is
superimposed with, so trojaned inputs have low entropy. ``fit`` learns the
entropy distribution of clean validation inputs and the threshold
``threshold_`` for a target false rejection rate (FRR). Inputs below the
threshold are flagged. By default the threshold is *certified*: the k-th
smallest of the n clean calibration entropies, with k the largest rank whose
FRR is at most the target with probability ``confidence`` (see
:func:`goodnet.calibration.calibrate`); the paper's normal fit and the plain
empirical quantile remain as options. The calibration's exact
(Clopper-Pearson) bounds on the FRR are kept in ``calibration_``.

Example:
    >>> strip = STRIP(copies=100, frr=0.01).fit(badnet, valid)
    >>> flagged = strip.predict_trojaned(poisoned.images)
    >>> STRIP.from_options(StripOptions(blend="alpha"))   # the same from an option group

Speed: all copies of a chunk of inputs are built, run through the compiled
network and reduced to entropies in one TensorFlow call; the chunk holds as
many inputs as fit in ``memory_mb``. There is no per-input Python loop. For the
alpha blend, when the network starts with a convolution, the blend is done on
that convolution's pre-activations (linear, so equal up to float rounding):
conv_1 runs once per input and once per bank image instead of once per copy
(the kernels: :mod:`goodnet.defenses._strip_kernels`). The optional early
stopping decides clear-cut inputs after a fraction of the copies (see
:meth:`STRIP.predict_trojaned`).

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

from goodnet.base import Defense, InstanceOf, Interval, OneOf, check_is_fitted
from goodnet.calibration import CalibrationOptions, calibrate
from goodnet.defenses import _strip_kernels
from goodnet.errors import OptionError
from goodnet.inference import Execution, progress_bar
from goodnet.options import constraints_of, option

logger = logging.getLogger(__name__)

BLENDS = ("add", "alpha")
DRAWS = ("random", "fixed")
PRECISIONS = ("float32", "bfloat16")
ENTROPY_WORDING = ("STRIP", "entropies", "more clean validation images or a smaller bank")   # Calibration.wording


@dataclasses.dataclass(frozen=True)
class StripOptions(CalibrationOptions):
    """Every option of :class:`STRIP`, with its default, rule and help text (``goodnet strip``'s defaults).

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


_DEFAULTS = StripOptions()


class STRIP(Defense):
    """The STRIP detector (the :mod:`goodnet.base` estimator contract).

    ``STRIP(**params).fit(classifier, clean, bank=None)``: the parameters are
    the fields of :class:`StripOptions` (their defaults, rules and meaning are
    there), plus ``progress``:

    - copies: N, perturbed copies per input (the paper evaluates N = 100).
    - blend: "add" (the paper's additive superimposition, saturated at 255) or
      "alpha" (``(1 - alpha) x + alpha clean``); alpha: the bank weight of "alpha".
    - draws: "random" (each input gets its own random bank images, the paper)
      or "fixed" (the same ``copies`` bank images for every input:
      deterministic, batch-independent; used inside model files).
    - threshold_method, frr, confidence: the calibration
      (:func:`goodnet.calibration.calibrate`): "certified" (default: the order
      statistic of the clean entropies whose FRR is at most ``frr`` with
      probability ``confidence``), "normal" (the paper's normal fit) or
      "quantile"; ``confidence`` is also the level of the reported bounds.
    - bank_size: clean images held out of ``fit``'s data as the bank when no
      bank is given (default: half of them, at most 1000, at least ``copies``).
    - seed: seed of the bank split and of the draws.
    - memory_mb: memory budget of one network call (sets the chunk size).
    - early_stop, early_copies, early_z: in :meth:`predict_trojaned`, also
      decide an input as soon as its running mean entropy is more than
      ``early_z`` standard errors from the threshold, looking every
      ``early_copies`` copies (optional, off by default: it can change a few decisions).
    - fast_alpha: for the "alpha" blend, blend the first convolution's
      pre-activations instead of the pixels when the network starts with a
      Conv2D (the same result up to float rounding, about a quarter less
      arithmetic on the lab network); False always runs the whole network on
      blended pixels. The "add" blend saturates at 255, which is not linear,
      so it always blends pixels.
    - precision: "float32" (default) or "bfloat16": run a bfloat16 copy of the
      network (its output layer kept in float32), about 1.5-2x faster on CPUs
      with AMX/AVX512-BF16; an approximation (optional, off by default):
      entropies move by up to about 0.01 bit on the lab BadNet and a few
      decisions can change (bench/bench_strip.py measures it). The
      classifier's execution precision (``mixed_float16`` or
      ``mixed_bfloat16``) is the other way to reduce precision; asking for
      both is an error.
    - progress: progress bar (None: after 3 s; False: never).

    Where it runs comes from ``classifier.execution`` (see
    :meth:`goodnet.models.Classifier.configure`): its device, its devices (the
    inputs of every network call split between MirroredStrategy replicas; the
    entropies are those of one device) and its precision.

    Attributes (after ``fit``):
        classifier_: the :class:`goodnet.models.Classifier` watched (the BadNet).
        execution_: the :class:`goodnet.inference.Execution` the detector runs under.
        bank_: the clean bank, raw pixels.
        fixed_indices_, fixed_bank_: the bank images every input uses when ``draws="fixed"``.
        clean_entropies_: entropies of the clean fit inputs.
        entropy_mean_, entropy_std_: their mean and standard deviation.
        threshold_: inputs with entropy below it are flagged as trojaned.
        calibration_: the :class:`goodnet.calibration.Calibration` that chose it
            (calibration size, rejections, FRR bounds, whether the target is certified).
        path_: "linear" (alpha blend of conv_1 pre-activations) or "direct" (pixels blended).
        last_copies_used_: after :meth:`predict_trojaned`, the copies each input used.

    Example:
        >>> strip = STRIP(copies=100, frr=0.01).fit(bad, valid.images)
        >>> flagged = strip.predict_trojaned(poisoned.images)
    """

    _parameter_constraints = {**constraints_of(StripOptions), "progress": [InstanceOf(bool), None]}

    def __init__(self, copies=_DEFAULTS.copies, blend=_DEFAULTS.blend, alpha=_DEFAULTS.alpha, draws=_DEFAULTS.draws,
                 threshold_method=_DEFAULTS.threshold_method, frr=_DEFAULTS.frr, confidence=_DEFAULTS.confidence,
                 bank_size=_DEFAULTS.bank_size, seed=_DEFAULTS.seed, memory_mb=_DEFAULTS.memory_mb,
                 early_stop=_DEFAULTS.early_stop, early_copies=_DEFAULTS.early_copies, early_z=_DEFAULTS.early_z,
                 fast_alpha=_DEFAULTS.fast_alpha, precision=_DEFAULTS.precision, progress=None):
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

    # -- fit ------------------------------------------------------------------------
    def bank_size_for(self, count):
        """Clean images :meth:`fit` holds out as the bank from ``count`` images when no bank is given."""
        return int(self.bank_size or max(int(self.copies), min(1000, int(count) // 2)))

    def fit(self, classifier, clean, bank=None):
        """Learn the clean entropy distribution and the threshold.

        Args:
            classifier: the :class:`goodnet.models.Classifier` to watch (the BadNet).
            clean: clean validation images, raw pixels (N, H, W, C), or a LabData.
            bank: optional clean bank (raw pixels); by default ``bank_size`` of
                ``clean`` are held out as the bank and the rest give the distribution.

        Returns:
            self
        """
        self._validate_params()
        images = _images(clean)
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
        if bank.shape[1:] != tuple(classifier.input_shape) or images.shape[1:] != bank.shape[1:]:
            raise OptionError(f"images: expected shape (N,) + {tuple(classifier.input_shape)}, "
                              f"got {images.shape} and bank {bank.shape}")
        if len(bank) < int(self.copies):
            raise OptionError(f"bank: expected at least copies={self.copies} clean images, got {len(bank)}")
        execution = Execution.of(classifier)
        if execution.precision != "float32" and self.precision != "float32":
            raise OptionError(f"precision: STRIP's {self.precision} copy and the execution precision "
                              f"{execution.precision} are two ways to reduce precision; choose one")
        self.classifier_, self.execution_ = classifier, execution
        self._kernel = _strip_kernels.CopyKernel(classifier, execution, bank, self.blend, self.alpha, self.precision,
                                                 self.memory_mb, linear=self.fast_alpha)
        self.path_ = self._kernel.path
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

    # -- draws and chunks ---------------------------------------------------------------
    def chunk_inputs(self, copies=None):
        """Inputs per network call so that all their copies fit in ``memory_mb``."""
        check_is_fitted(self, "classifier_")
        return _strip_kernels.chunk_inputs(self.classifier_.model, self.memory_mb, copies or self.copies)

    def stream_batch(self):
        """Images read at a time from an open file: a multiple of :meth:`chunk_inputs`, so that a streamed
        file goes through exactly the network calls that the same images in memory do."""
        return _strip_kernels.stream_batch(self.chunk_inputs())

    def _draws(self, seed=None):
        """A function ``count -> (count, copies)`` bank indices. Successive calls continue one stream of
        draws, so the rows drawn batch by batch for a file are those drawn at once for all its images."""
        if self.draws == "fixed":
            return lambda count: np.tile(self.fixed_indices_, (count, 1)).astype(np.int32)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        copies, bank_size = int(self.copies), len(self.bank_)

        def take(count):
            rows = []
            for start in range(0, count, 256):
                keys = rng.random((min(256, count - start), bank_size))
                rows.append(np.argpartition(keys, copies - 1, axis=1)[:, :copies])
            if not rows:
                return np.zeros((0, copies), np.int32)
            return np.concatenate(rows).astype(np.int32)

        return take

    def draw_indices(self, count, seed=None):
        """Bank indices (count, copies): distinct bank images per input (random) or the fixed set."""
        check_is_fitted(self, "bank_")
        return self._draws(seed)(count)

    # -- entropies ---------------------------------------------------------------------
    def per_copy_entropies(self, images, indices, description="STRIP"):
        """Entropy (bits) of each perturbed copy.

        Args:
            images: raw-pixel inputs (K, H, W, C).
            indices: (K, M) bank indices: copy m of input k is input k superimposed with ``bank_[indices[k, m]]``.
            description: progress-bar label.

        Returns:
            np.ndarray (K, M) float32.
        """
        check_is_fitted(self, "bank_")
        images = _images(images)
        indices = np.asarray(indices, dtype=np.int32)
        with progress_bar(len(images) * indices.shape[1], description, self.progress, unit="copy") as bar:
            return self._kernel(images, indices, bar)

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
        check_is_fitted(self, "bank_")
        return self._entropy(self._kernel, images, seed)

    def _entropy(self, kernel, images, seed):
        """:meth:`entropy` computed by ``kernel`` (this STRIP's, or a twin's)."""
        draws = self._draws(seed)
        if not _is_stream(images):
            images = _images(images)
            indices = draws(len(images))
            with progress_bar(len(images) * indices.shape[1], "STRIP", self.progress, unit="copy") as bar:
                return kernel(images, indices, bar).astype(np.float64).mean(axis=1)
        entropies = np.empty(len(images), np.float64)
        start = 0
        with progress_bar(len(images) * int(self.copies), "STRIP", self.progress, unit="copy") as bar:
            for batch, _ in images.batches(self.stream_batch()):
                block = kernel(batch, draws(len(batch)), bar)
                entropies[start:start + len(batch)] = block.astype(np.float64).mean(axis=1)
                start += len(batch)
        return entropies

    def precision_effect(self, images, seed=None):
        """Measure what this STRIP's reduced precision does, against float32, on ``images``.

        The float32 twin shares the bank, the draws, the path and the
        threshold; only the network's precision differs (``precision="bfloat16"``
        or the execution's mixed precision).

        Args:
            images: a sample of clean raw-pixel images (N, H, W, C) or a LabData.
            seed: seed of the draws (default: the estimator's seed).

        Returns:
            dict: ``strip_precision``, ``images``, ``max_entropy_difference``
            (bits) and ``decision_agreement`` (fraction of inputs flagged the
            same way at ``threshold_``).

        Example:
            >>> STRIP(precision="bfloat16").fit(badnet, valid).precision_effect(valid.images[:256])
        """
        check_is_fitted(self, "threshold_")
        images = _images(images)
        twin = self._kernel.twin(self.classifier_, dataclasses.replace(self.execution_, precision="float32"))
        reduced, reference = self.entropy(images, seed), self._entropy(twin, images, seed)
        precision = self.precision if self.precision != "float32" else self.execution_.precision
        return {"strip_precision": precision, "images": int(len(images)),
                "max_entropy_difference": float(np.max(np.abs(reduced - reference))) if len(images) else 0.0,
                "decision_agreement": float(np.mean((reduced < self.threshold_) == (reference < self.threshold_)))
                if len(images) else 1.0}

    # -- decisions ---------------------------------------------------------------------
    def early_stages(self):
        """Copies after which :meth:`predict_trojaned` looks at the undecided inputs: every ``early_copies``,
        then ``copies``."""
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
        check_is_fitted(self, "threshold_")
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
        return staged_decisions(lambda rows, done, stage: self.per_copy_entropies(
                                    images[rows], indices[rows, done:stage], f"STRIP ({stage} copies)"),
                                len(images), self.early_stages(), float(self.threshold_),
                                self.early_stop, float(self.early_z))

    def summary(self):
        """JSON-ready: the parameters and, once fitted, the threshold, its calibration and the entropy statistics."""
        entry = super().summary()
        if hasattr(self, "threshold_"):
            entry.update({"threshold": float(self.threshold_), "calibration": self.calibration_.describe(),
                          "clean_entropy_mean": self.entropy_mean_, "clean_entropy_std": self.entropy_std_,
                          "bank_size": int(len(self.bank_)), "path": self.path_})
        return entry


def staged_decisions(per_copy, count, stages, threshold, early_stop=False, early_z=3.0):
    """The staged stopping rule of :meth:`STRIP.predict_trojaned`.

    Args:
        per_copy: ``(rows, done, stage) -> (len(rows), stage - done)`` per-copy
            entropies of inputs ``rows`` for copies ``done`` to ``stage``.
        count: number of inputs.
        stages: increasing copy counts, the last one the full N.
        threshold: the entropy threshold.
        early_stop, early_z: also stop an input whose running mean is more than
            ``early_z`` standard errors from the threshold.

    Returns:
        (flagged bool (count,), copies used int64 (count,))
    """
    total = int(stages[-1])
    bound = total * threshold
    sums = np.zeros(count)
    squares = np.zeros(count)
    used = np.zeros(count, np.int64)
    flagged = np.zeros(count, bool)
    undecided = np.arange(count)
    done = 0
    for stage in stages:
        block = np.asarray(per_copy(undecided, done, stage)).astype(np.float64)
        sums[undecided] += block.sum(axis=1)
        squares[undecided] += np.square(block).sum(axis=1)
        used[undecided] = done = stage
        means = sums[undecided] / stage
        if stage == total:
            flagged[undecided] = sums[undecided] / total < threshold
            break
        clear = sums[undecided] >= bound                       # exact: cannot be flagged any more
        if early_stop:
            variance = np.maximum(squares[undecided] - stage * np.square(means), 0.0) / (stage - 1)
            spread = np.sqrt(variance * (total - stage) / (total * stage))
            confident = np.abs(means - threshold) > early_z * spread
            flagged[undecided[confident & ~clear]] = means[confident & ~clear] < threshold
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
