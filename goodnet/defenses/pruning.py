"""The lab's pruning defense (Liu, Dolan-Gavitt and Garg, "Fine-Pruning: Defending Against Backdooring Attacks
on Deep Neural Networks", RAID 2018; the CSAW-HackML-2020 lab): rank a convolution's channels by clean
activation, prune the dormant ones first.

The sweep:

1. run the clean validation images, take the mean activation of every output
   channel of the chosen convolution, measured after the zero-preserving
   layers that follow it (its ReLU and max-pool: ``pool_3`` in the lab
   network; :func:`goodnet.surgery.rank_channels`'s rule);
2. prune channels in increasing order of that mean, setting the channel's
   kernel and bias to zero, and record clean accuracy and the attack success
   rate of every poisoned file after each channel;
3. keep the pruned model at which accuracy first dropped by X points.

The predictions after every step are the whole model's, computed without
re-running the whole model (``method``: "incremental", "masked-tail" or the
straightforward "full"; the engine is :mod:`goodnet.defenses._sweep`).
Files (``prune_curve.*``, ``model_X=*.h5``) are written by
:func:`goodnet.reports.write_prune_outputs`; :func:`run_pruning_defense` does both.

Example:
    >>> defense = PruningDefense(layer="conv_3").fit(load_model("models/bd_net.h5"), load_h5("data/valid.h5"),
    ...                                             [load_h5("data/bd_valid.h5")])
    >>> defense.selected_            # {2: 45, 4: 48, 10: 52} on the lab's data
    >>> model_2 = defense.pruned_classifier(defense.selected_[2])
"""

import dataclasses
import logging

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, OneOf, SequenceOf, check_is_fitted
from goodnet.defenses import _sweep as engine
from goodnet.errors import ModelError, OptionError
from goodnet.inference import DEFAULT_BATCH, Execution, run_batches
from goodnet.options import constraints_of, option
from goodnet.reports import dataset_names
from goodnet.surgery import _check_channels, mean_activation_ranking, prune_model

logger = logging.getLogger(__name__)

POLICIES = ("first-reached", "last-within")
METHODS = ("auto", "incremental", "masked-tail", "full")
DEFAULT_DROPS = (2, 4, 10)
DEFAULT_GUARD = 256.0


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    """The sweep's options: :class:`PruningDefense`'s parameters and ``goodnet prune``'s flags, defaults once."""

    layer: str = option("conv_3", "convolution to prune", rule=InstanceOf(str))
    drops: tuple = option(DEFAULT_DROPS, "accuracy drops in points at which models are saved",
                          rule=SequenceOf(Interval(float, 0, None, "neither")), type=float, metavar="X")
    policy: str = option("first-reached", "first-reached (the lab's rule): first model at least X points below; "
                         "last-within: last model still less than X points below", rule=OneOf(POLICIES))
    method: str = option("auto", "sweep method", rule=OneOf(METHODS),
                         default_text="auto: the fastest exact one that applies; full = re-run the whole model "
                                      "at every step")
    guard: float = option(DEFAULT_GUARD, "the incremental method's guard band, in float32 unit roundoffs",
                          rule=Interval(float, 0), cli=False)


def predict_pruned(classifier, layer, channel_sets, images, batch_size=DEFAULT_BATCH, progress=None):
    """Predictions of ``classifier`` with each set of ``layer``'s channels pruned, running the head once.

    Exact: the pruned channels are masked after the measurement layer and the
    rest of the network runs through the model's own Keras layers (the
    whole-model path is used when that shortcut does not apply). Runs as the
    classifier's execution says (see :class:`PruningDefense`).

    Args:
        classifier: a :class:`goodnet.models.Classifier`.
        layer: the convolution's name.
        channel_sets: sequence of channel-index collections.
        images: raw-pixel images (N, 55, 47, 3).
        batch_size: images per TensorFlow call.
        progress: progress bars (None: only for long work).

    Returns:
        np.ndarray: (len(channel_sets), N) predicted classes (int32).

    Example:
        >>> predict_pruned(bd_net, "conv_3", [[], ranking[:45]], valid.images)
    """
    model = classifier.model
    plan = engine.plan_sweep(model, layer, classifier.path)
    filters = int(plan.layer.filters)
    sets = [_check_channels(channels, filters, layer) for channels in channel_sets]
    images = np.asarray(images, np.float32)
    if not plan.shortcut:
        logger.warning("pruning %s: exact slow path (%s)", layer, plan.reason)
        results = []
        for channels in sets:
            pruned = classifier.with_model(prune_model(model, layer, channels, classifier.path))
            results.append(pruned.predict(images, batch_size, progress).astype(np.int32))
        return np.stack(results) if results else np.zeros((0, len(images)), np.int32)
    execution = Execution.of(classifier)
    activations = run_batches(engine.head_function(model, plan, classifier.divisor, execution), images, batch_size,
                              progress, "activations")
    with execution.placement():
        tail = engine.tail_function(model, plan)
        results = []
        for channels in sets:
            keep = np.ones(filters, np.float32)
            keep[channels] = 0.0
            results.append(engine.argmax_rows(tail, activations, keep, batch_size))
    return np.stack(results) if results else np.zeros((0, len(images)), np.int32)


# --------------------------------------------------------------------------- the curve and the selection


@dataclasses.dataclass
class PruneCurve:
    """Figures after every step of the sweep (step 0 = the unpruned model).

    Attributes:
        channels: channel pruned at each step (-1 at step 0).
        fraction_pruned: share of the layer's channels pruned after the step.
        clean_accuracy: clean validation accuracy after the step.
        attack_success: (steps + 1, files) ASR of each poisoned validation file.
        poisoned_names: names of the poisoned files (column labels).
    """

    channels: np.ndarray
    fraction_pruned: np.ndarray
    clean_accuracy: np.ndarray
    attack_success: np.ndarray
    poisoned_names: list

    @property
    def steps(self):
        return np.arange(len(self.channels))

    def rows(self):
        """One dict per step (what the CSV and JSON files hold)."""
        rows = []
        for step in self.steps:
            row = {"step": int(step), "channel": int(self.channels[step]),
                   "fraction_pruned": float(self.fraction_pruned[step]),
                   "clean_accuracy": float(self.clean_accuracy[step])}
            for index, name in enumerate(self.poisoned_names):
                row[f"attack_success_rate[{name}]"] = float(self.attack_success[step, index])
            rows.append(row)
        return rows


def select_steps(accuracy, drops=PruneOptions.drops, policy=PruneOptions.policy):
    """The steps whose pruned models are saved, one per accuracy drop X (in points).

    Args:
        accuracy: clean validation accuracy per step (step 0 unpruned), fractions.
        drops: X values in percentage points.
        policy: "first-reached" (the lab's convention): the first step whose
            accuracy is at least X points below step 0's; "last-within": the
            step before it, the last one still less than X points below.

    Returns:
        dict: {X: step or None (never reached by "first-reached")}.

    Example:
        >>> select_steps(np.array([0.99, 0.98, 0.96, 0.90]), drops=(2,))
        {2: 2}
    """
    if policy not in POLICIES:
        raise OptionError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    accuracy = np.asarray(accuracy, dtype=np.float64)
    chosen = {}
    for drop in drops:
        if not drop > 0:
            raise OptionError(f"drops: expected accuracy drops above 0 points, got {drop}")
        # Compare in points with a tolerance far below one image out of millions.
        reached = np.flatnonzero((accuracy[0] - accuracy[1:]) * 100.0 >= float(drop) - 1e-9) + 1
        if policy == "first-reached":
            chosen[drop] = int(reached[0]) if reached.size else None
        else:
            chosen[drop] = int(reached[0]) - 1 if reached.size else len(accuracy) - 1
    return chosen


# --------------------------------------------------------------------------- the estimator


class PruningDefense(Defense):
    """The lab's pruning sweep over one convolution (a :class:`goodnet.base.Defense`).

    Args:
        layer: the convolution whose output channels are pruned.
        drops: accuracy drops X (points) at which models are selected.
        policy: "first-reached" or "last-within" (see :func:`select_steps`).
        method: "auto" (fastest exact method that applies), "incremental",
            "masked-tail" or "full" (the straightforward method).
        guard: the incremental method certifies a top-1 class when no other
            logit is within ``guard`` float32 unit roundoffs (times the
            image's logit scale) of it; the other images are re-run through
            the Keras tail (a huge guard sends every image there).
        batch_size: images per TensorFlow call (per device).
        progress: progress bars (None: only for long work).

    Where it runs comes from the classifier's execution (see
    :meth:`goodnet.models.Classifier.configure`): the pass up to the
    measurement layer (and, for ``method="full"``, every whole-model pass) is
    the compiled forward path, replicated over the execution's devices with
    each device running exactly one device's batches (identical results) and
    computed in its precision; the rest of the sweep (the fused TensorFlow
    calls of the incremental method, the masked Keras tail, the re-checks)
    runs in float32 on the execution's first device.

    Attributes (after ``fit``):
        classifier_: the :class:`goodnet.models.Classifier` it was fitted on (the BadNet).
        plan_: the :class:`goodnet.defenses._sweep.SweepPlan` (measurement
            layer and why a shortcut applies or not).
        method_: the method used; ``method_reason_`` why.
        mean_activations_: mean clean activation of each channel (float64).
        ranking_: channels in pruning order (increasing mean; ties by index).
        curve_: the :class:`PruneCurve`.
        clean_predictions_: (steps + 1, N) predicted classes, per step.
        poisoned_predictions_: list of (steps + 1, M) arrays, one per poisoned file.
        selected_: {X: step} chosen by ``policy`` (None: never reached).
        recomputed_rows_: images the sweep evaluated through Keras.
        certified_rows_: images the incremental method certified itself (0 for the other methods).
        execution_: the :class:`goodnet.inference.Execution` the sweep ran under.

    Example:
        >>> defense = PruningDefense(drops=(2, 4)).fit(load_model("bd_net.h5"), valid, [bd_valid])
        >>> defense.curve_.clean_accuracy[defense.selected_[2]]
    """

    _parameter_constraints = {**constraints_of(PruneOptions), "batch_size": [Interval(int, 1)],
                              "progress": [InstanceOf(bool), None]}

    def __init__(self, layer=PruneOptions.layer, drops=PruneOptions.drops, policy=PruneOptions.policy,
                 method=PruneOptions.method, guard=PruneOptions.guard, batch_size=DEFAULT_BATCH, progress=None):
        self.layer = layer
        self.drops = drops
        self.policy = policy
        self.method = method
        self.guard = guard
        self.batch_size = batch_size
        self.progress = progress

    # -- fitting

    def fit(self, classifier, clean, poisoned=()):
        """Rank the channels on ``clean`` and run the sweep.

        Args:
            classifier: the :class:`goodnet.models.Classifier` to repair (the BadNet).
            clean: :class:`goodnet.data.LabData`, clean validation images.
            poisoned: LabData of poisoned validation images (labels =
                attack targets), any number; measured, never used to choose.

        Returns:
            PruningDefense: self.
        """
        self._validate_params()
        if len(clean) == 0:
            raise OptionError(f"{clean.path or 'clean data'}: data: expected at least one clean image")
        self.classifier_ = classifier
        self.plan_ = engine.plan_sweep(classifier.model, self.layer, classifier.path)
        self.method_, self.method_reason_ = engine.choose_method(self.plan_, self.method)
        if self.method_reason_ and self.method_ == "full":
            logger.warning("pruning %s: exact slow path (%s)", self.layer, self.method_reason_)
        logger.info("pruning %s measured at %s, method %s", self.layer, self.plan_.measure.name, self.method_)

        self.execution_ = Execution.of(classifier)
        with self.execution_.placement():
            self._run_sweep(classifier, [clean] + list(poisoned))
        return self

    def _run_sweep(self, classifier, datasets):
        """The head pass, the ranking and the sweep (see :meth:`fit`); sets the fitted attributes."""
        model = classifier.model
        activations, sizes = engine.measured_activations(model, self.plan_, classifier.divisor, self.execution_,
                                                         datasets, self.batch_size, self.progress)
        if activations.ndim < 2:
            raise ModelError(f"{classifier.path or 'model'}: {self.plan_.measure.name}: expected channels last")
        self.ranking_, self.mean_activations_ = mean_activation_ranking(activations[:sizes[0]])

        if self.method_ == "full":
            del activations
            images = np.concatenate([np.asarray(data.images, np.float32) for data in datasets])
            result = engine.sweep_full(classifier, self.layer, images, self.ranking_, self.execution_,
                                       self.batch_size, self.progress)
        elif self.method_ == "incremental":
            result = engine.sweep_incremental(model, self.plan_, activations, self.ranking_, self.guard,
                                              self.batch_size, self.progress)
        else:
            result = engine.sweep_masked(model, self.plan_, activations, self.ranking_, self.batch_size,
                                         self.progress)
        self.recomputed_rows_, self.certified_rows_ = result.recomputed_rows, result.certified_rows
        parts = np.split(result.predictions, np.cumsum(sizes)[:-1], axis=1)
        self.clean_predictions_ = parts[0]
        self.poisoned_predictions_ = parts[1:]
        self.curve_ = self._curve(datasets)
        self.selected_ = select_steps(self.curve_.clean_accuracy, self.drops, self.policy)

    def _curve(self, datasets):
        channels = len(self.ranking_)
        steps = np.arange(channels + 1)
        clean = datasets[0]
        accuracy = np.mean(self.clean_predictions_ == clean.labels[None, :], axis=1)
        attack = np.stack([np.mean(predictions == data.labels[None, :], axis=1)
                           for predictions, data in zip(self.poisoned_predictions_, datasets[1:])], axis=1) \
            if len(datasets) > 1 else np.zeros((channels + 1, 0))
        return PruneCurve(np.concatenate([[-1], self.ranking_]).astype(np.int64), steps / channels,
                          accuracy, attack, dataset_names(datasets[1:]))

    # -- results

    def pruned_classifier(self, step):
        """The Classifier with the first ``step`` channels of ``ranking_`` pruned (a new Keras model)."""
        check_is_fitted(self)
        if not 0 <= int(step) <= len(self.ranking_):
            raise OptionError(f"step: expected 0..{len(self.ranking_)}, got {step}")
        model = prune_model(self.classifier_.model, self.layer, self.ranking_[:int(step)], self.classifier_.path)
        return self.classifier_.with_model(model)

    def selected_classifiers(self):
        """{X: pruned Classifier} for every selected step (steps never reached are left out)."""
        check_is_fitted(self)
        return {drop: self.pruned_classifier(step) for drop, step in self.selected_.items() if step is not None}

    def summary(self):
        """A JSON-ready dict: ranking, mean activations, curve rows and selections (``prune_curve.json``'s)."""
        check_is_fitted(self)
        return {"model": self.classifier_.path, "layer": self.layer, "measured_at": self.plan_.measure.name,
                "method": self.method_, "method_reason": self.method_reason_, "policy": self.policy,
                "channels": int(len(self.ranking_)), "ranking": self.ranking_.tolist(),
                "mean_activations": self.mean_activations_.tolist(),
                "baseline_accuracy": float(self.curve_.clean_accuracy[0]),
                "poisoned_files": list(self.curve_.poisoned_names),
                "selected": {str(drop): step for drop, step in self.selected_.items()},
                "execution": self.execution_.describe(), "curve": self.curve_.rows()}


def run_pruning_defense(classifier, clean_valid, poisoned_valid, out_dir, layer=PruneOptions.layer,
                        drops=PruneOptions.drops, policy=PruneOptions.policy, method=PruneOptions.method,
                        batch_size=DEFAULT_BATCH, progress=None, protect=(), plot=True, extension=".h5",
                        guard=PruneOptions.guard):
    """Fit :class:`PruningDefense` and write everything the lab asks for into ``out_dir``.

    The files (``prune_curve.csv``, ``prune_curve.json``, ``prune_curve.png``
    and ``model_X=<X>.h5`` for every selected X; atomically, never over an
    input) are written by :func:`goodnet.reports.write_prune_outputs`.

    Args:
        classifier: the BadNet (:class:`goodnet.models.Classifier`).
        clean_valid: clean validation LabData.
        poisoned_valid: poisoned validation LabData list.
        out_dir: output folder (created).
        layer, drops, policy, method, guard, batch_size, progress: see :class:`PruningDefense`.
        protect: input paths that must never be overwritten (the data sets' own are added).
        plot: write the PNG.
        extension: ".h5" (legacy, opens in plain Keras) or ".keras".

    Returns:
        dict: ``defense`` (the fitted :class:`PruningDefense`), ``summary``
        (its JSON dict plus ``models`` and ``files``), ``models`` ({X: path}).

    Example:
        >>> result = run_pruning_defense(bd_net, valid, [bd_valid], "out/prune")
        >>> result["models"][2]
        'out/prune/model_X=2.h5'
    """
    from goodnet.reports import input_paths, write_prune_outputs

    defense = PruningDefense(layer, drops, policy, method, guard, batch_size, progress).fit(
        classifier, clean_valid, poisoned_valid)
    written = write_prune_outputs(defense, out_dir, protect=input_paths(clean_valid, *poisoned_valid, protect=protect),
                                  plot=plot, extension=extension)
    return {"defense": defense, **written}
