"""Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao, "Neural Cleanse: Identifying and Mitigating
Backdoor Attacks in Neural Networks", IEEE S&P 2019): reverse-engineer a trigger for every candidate target
class and flag the classes whose trigger is abnormally small.

For every candidate target class t, the smallest mask m (H x W x 1, values in
[0, 1]) and pattern p (H x W x C, raw 0-255 pixels) such that the stamped
images x' = (1 - m) * x + m * p of clean images x are classified t:

    loss = cross-entropy(f(x' / divisor), t) + cost * |m|_1

with m = tanh(w_m) / (2 - eps) + 1/2 and p = 255 * (tanh(w_p) / (2 - eps) + 1/2)
(the paper's tanh parametrisation), Adam (learning rate 0.1, betas 0.5 and
0.9), and the paper's dynamic cost schedule, as in its public code:

- the cost starts at 0; once the reversed trigger's success (the share of the
  epoch's stamped images classified t, averaged over the epoch's steps) has
  been at least ``success`` (99 %) for ``patience`` epochs in a row, it is set
  to ``init_cost`` (1e-3) and the schedule's flags are cleared;
- it is multiplied by ``cost_multiplier`` (2) after ``patience`` epochs in a
  row at or above ``success``, divided by ``cost_multiplier ** 1.5`` after
  ``patience`` epochs in a row below;
- the best mask (smallest mean L1 over an epoch that reached ``success``) is
  kept: the mask the epoch's last step measured (the paper's code keeps the
  mask after that step's update, which no step measured);
- the run stops early once the cost has gone both up and down and the best
  norm has not improved for ``early_stop_patience`` (25) epochs, or after
  ``epochs`` epochs; a class that never reaches ``success`` keeps its last mask.

Detection: with the classes' L1 norms, median m0 and MAD = median |norm - m0|,
the anomaly index is |norm - m0| / (1.4826 * MAD); a class is flagged when its
norm is below the median and its index is above ``threshold`` (2).

Pitfalls of public implementations that this one avoids (see the primer):
the early stop keeps its guards (the cost is reset only while it is 0, the
stop needs both an up and a down move); success is the top-1 class equal to
the target, never a softmax compared with a one-hot label; the pattern lives in
raw 0-255 pixels and the model sees the stamped image through the classifier's
own scaling (``divisor``), so every class and every model is measured in the
same intensity range; the norm is the L1 of the saved mask itself.

Methods (``method``):

- "batched": K target classes optimised together in one compiled TensorFlow
  function: masks [K, H, W, 1], patterns [K, H, W, C], one network call on
  K x B stamped images, a per-class Adam, cost, counters and best snapshots
  updated with masked operations, finished classes frozen and their slot
  refilled by the next class. K comes from ``memory_mb``. The classes'
  optimisations do not interact (separate variables and loss terms, Adam is
  per parameter), so this equals K independent runs on the same batches;
- "loop": the straightforward reference, one class at a time (a Keras Adam, the
  schedule in plain Python), on the same batches with the same schedule;
- "scan" (default): successive halving for many classes. A coarse,
  fixed-budget pass scores every class: ``scan_epochs`` epochs of the same
  loss and cost moves, but the cost at ``scan_cost`` (1e-2) from the first
  step, Adam at ``scan_learning_rate`` (0.3) and no early stop, so that masks
  shrink to what each class needs within a few epochs (at the paper's 0.1 and
  a zero cost the first epochs leave every mask near its random start). The
  score is the best norm that reached ``success`` (else the last norm plus
  H x W). The lower 1 / ``halving`` by score continue (warm) for ``halving``
  times the budget, until ``tail`` classes are left. Those, and a
  systematic sample of ``reference`` of the other classes (evenly spaced in
  the coarse ranking), then run the full schedule from the start (exactly
  what "batched" computes for them). The median and MAD are those of the full
  norms of the tail (each counting once) and of the sample (each standing for
  the other classes it represents), and only fully optimised classes are
  flagged. With ``tail`` + ``reference`` covering every class, "scan" equals
  "batched"; otherwise the median and MAD are estimates whose sampling error
  shrinks as 1 / sqrt(``reference``), so a class whose index is close to
  ``threshold`` may be decided differently than by "batched".

Batches: epoch e of every class uses the same permutation of the clean images
(seeded by ``seed`` and e); its steps take consecutive ``batch_size`` slices
(wrapping around). The initial mask and pattern of class c are drawn from
``seed`` and c (uniform, as in the paper's code). So every method sees the same
batches and starts for the same class.

Example:
    >>> cleanse = NeuralCleanse(method="scan").fit(load_model("models/bd_net.h5"), clean_images)
    >>> cleanse.flagged_, cleanse.anomaly_index_[cleanse.flagged_]
"""

import dataclasses
import logging
import math

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, OneOf, SequenceOf, check_is_fitted
from goodnet.defenses.fine_pruning import FinePruneOptions, FinePruning
from goodnet.defenses.unlearning import stamp  # noqa: F401  (re-exported: stamping a reversed trigger)
from goodnet.errors import DataError, OptionError
from goodnet.inference import DEFAULT_BATCH, progress_bar
from goodnet.options import constraints_of, option

logger = logging.getLogger(__name__)

METHODS = ("scan", "batched", "loop")
MAD_CONSISTENCY = 1.4826      # MAD * 1.4826 estimates the standard deviation of a normal distribution
EPSILON = 1e-7                # Keras's epsilon: the tanh parametrisation, the cross-entropy clip, Adam
BETA_1, BETA_2 = 0.5, 0.9     # the paper's Adam
EARLY_STOP_THRESHOLD = 1.0    # the paper's code: an epoch counts as "no better" when best >= 1.0 x the best before
BYTES_PER_ACTIVATION = 4 * 3  # float32, kept for the backward pass plus its gradient and a temporary


@dataclasses.dataclass(frozen=True)
class CleanseOptions:
    """Every option of Neural Cleanse: :class:`NeuralCleanse`'s parameters and ``goodnet cleanse``'s flags.

    The schedule's defaults are the paper's (learning rate, cost, patience,
    multiplier, early stop); ``epochs``, ``samples``, ``batch_size`` and
    ``steps_per_epoch`` are smaller than the paper's (1000 epochs of 31 steps of
    32 images) so that a 1283-class scan fits on a CPU.
    """

    method: str = option("scan", "scan: coarse pass + successive halving + full schedule for the small-norm tail; "
                                 "batched: full schedule for every class, K at a time; loop: one class at a "
                                 "time (the reference)", rule=OneOf(METHODS))
    classes: tuple = option(None, "candidate target classes", rule=[SequenceOf(Interval(int, 0)), InstanceOf(range)],
                            allow_none=True,
                            type=int, nargs="+", default_text="every class")
    threshold: float = option(2.0, "anomaly index above which a class with a norm below the median is flagged",
                              rule=Interval(float, 0.0, closed="neither"))
    samples: int = option(256, "clean images used at most (a fixed random subset)", rule=Interval(int, 1))
    batch_size: int = option(32, "clean images per optimisation step", rule=Interval(int, 1),
                             flag="--cleanse-batch", dest="cleanse_batch")
    steps_per_epoch: int = option(1, "optimisation steps per epoch (the schedule decides once per epoch)",
                                  rule=Interval(int, 1))
    epochs: int = option(300, "most epochs per class (the paper: 1000)", rule=Interval(int, 1))
    learning_rate: float = option(0.1, "Adam learning rate on the tanh parameters",
                                  rule=Interval(float, 0.0, closed="neither"))
    init_cost: float = option(1e-3, "cost of the mask's L1 norm once the trigger first succeeds",
                              rule=Interval(float, 0.0, closed="neither"))
    success: float = option(0.99, "reversed-trigger success an epoch must reach to count",
                            rule=Interval(float, 0.0, 1.0, "right"))
    patience: int = option(5, "epochs in a row before the cost moves", rule=Interval(int, 1))
    cost_multiplier: float = option(2.0, "cost x this after patience successful epochs, / this^1.5 after "
                                         "patience failed ones", rule=Interval(float, 1.0, closed="neither"))
    early_stop_patience: int = option(25, "epochs without a better norm before a class stops (after the cost "
                                          "went up and down)", rule=Interval(int, 1))
    scan_epochs: int = option(8, "scan: epochs of the coarse pass over every class", rule=Interval(int, 1))
    scan_learning_rate: float = option(0.3, "scan: Adam learning rate of the coarse pass",
                                       rule=Interval(float, 0.0, closed="neither"))
    scan_cost: float = option(1e-2, "scan: the coarse pass's cost from its first step",
                              rule=Interval(float, 0.0, closed="neither"))
    halving: int = option(4, "scan: keep 1/this of the classes per round, for this times the epochs",
                          rule=Interval(int, 2))
    tail: int = option(24, "scan: classes with the smallest coarse norms given the full schedule",
                       rule=Interval(int, 1))
    reference: int = option(128, "scan: other classes (evenly spaced by coarse rank) given the full schedule for "
                                 "the median and MAD", rule=Interval(int, 3))
    memory_mb: int = option(1024, "memory budget of one network call (MB; sets K, the classes per call)",
                            rule=Interval(int, 1))
    seed: int = option(0, "seed of the clean subset, the batches and the initial masks", rule=Interval(int, 0))


# --------------------------------------------------------------------------- detection statistics


def weighted_median(values, weights=None):
    """The median of ``values``, each counted ``weights`` times (NumPy's median when the weights are equal).

    With unequal weights: the smallest value at which the cumulative weight
    reaches half the total, averaged with the next value when it reaches
    exactly half (the convention of an even count).
    """
    values = np.asarray(values, dtype=np.float64)
    if weights is None or np.all(np.asarray(weights) == np.asarray(weights).flat[0]):
        return float(np.median(values))
    weights = np.asarray(weights, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    cumulative = np.cumsum(weights)
    half = cumulative[-1] / 2.0
    position = int(np.searchsorted(cumulative, half))
    if np.isclose(cumulative[position], half, rtol=1e-12, atol=0.0) and position + 1 < len(values):
        return float((values[position] + values[position + 1]) / 2.0)
    return float(values[position])


def anomaly_index(norms, reference=None, weights=None):
    """The MAD anomaly index of every norm (Neural Cleanse, section IV).

    Args:
        norms: L1 norms, one per class.
        reference: indices (or a boolean mask) of the norms whose median and
            MAD are used (default: all of them).
        weights: how many classes each reference norm stands for (default 1
            each; the scan's sampled classes stand for the classes they represent).

    Returns:
        tuple: (index array, median, MAD). The index is
        |norm - median| / (1.4826 * MAD); with MAD 0 it is 0 for norms equal
        to the median and infinite for the others.

    Example:
        >>> index, median, mad = anomaly_index([10.0, 11.0, 12.0, 2.0])
    """
    norms = np.asarray(norms, dtype=np.float64)
    base = norms if reference is None else norms[np.asarray(reference)]
    if base.size == 0:
        raise OptionError("norms: expected at least one norm for the median")
    median = weighted_median(base, weights)
    mad = weighted_median(np.abs(base - median), weights)
    deviation = np.abs(norms - median)
    if mad > 0:
        index = deviation / (MAD_CONSISTENCY * mad)
    else:
        index = np.where(deviation > 0, np.inf, 0.0)
    return index, median, mad


def flag_classes(norms, index, median, threshold=2.0):
    """Boolean mask: norm below the median and anomaly index above ``threshold``."""
    return (np.asarray(norms) < median) & (np.asarray(index) > threshold)


# --------------------------------------------------------------------------- shared pieces


def _to_mask(w):
    import tensorflow as tf

    return tf.tanh(w) / (2.0 - EPSILON) + 0.5


def _from_unit(values):
    """The tanh parameters of values in [0, 1] (the paper's initialisation)."""
    return np.arctanh((np.asarray(values, np.float64) - 0.5) * (2.0 - EPSILON)).astype(np.float32)


def initial_trigger(shape, target, seed=0):
    """The initial (mask, pattern) of class ``target``: uniform in [0, 1] and [0, 255], seeded by (seed, target)."""
    height, width, channels = shape
    rng = np.random.default_rng([seed, 1, int(target)])
    mask = rng.random((height, width, 1))
    pattern = rng.random((height, width, channels)) * 255.0
    return mask.astype(np.float32), pattern.astype(np.float32)


def epoch_batches(count, epoch, steps, batch, seed=0):
    """Indices (steps, batch) of the clean images each step of ``epoch`` uses (the same for every class)."""
    order = np.random.default_rng([seed, 2, int(epoch)]).permutation(count)
    positions = (np.arange(steps)[:, None] * batch + np.arange(batch)[None, :]) % count
    return order[positions].astype(np.int32)


def scorer(model):
    """(function images -> scores, from_logits): the model's pre-softmax logits when it ends in a softmax.

    The cross-entropy is then computed from the logits: a softmax output
    clipped at 1e-7 has no gradient where the target's probability is below the
    clip, which is where a saturated model (the lab's raw-pixel BadNet) starts
    for almost every target. Other models are scored by their outputs
    (probabilities, clipped as Keras clips them).
    """
    import keras
    import tensorflow as tf

    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    try:
        if isinstance(last, keras.layers.Softmax) or (isinstance(last, keras.layers.Activation)
                                                      and activation == "softmax"):
            return keras.Model(model.inputs, last.input), True
        if isinstance(last, keras.layers.Dense) and activation == "softmax":
            body = keras.Model(model.inputs, last.input)

            def logits(images, training=False):
                features = body(images, training=training)
                scores = tf.matmul(tf.cast(features, last.kernel.dtype), last.kernel)
                return scores + last.bias if last.use_bias else scores

            return logits, True
    except (AttributeError, ValueError, TypeError) as error:   # a layer without a single symbolic input
        logger.info("Neural Cleanse: scoring the model's outputs (no logits: %s)", error)
    return model, False


def _cross_entropy(scores, targets, from_logits):
    """Per-image cross-entropy of ``targets`` (int, broadcast to ``scores[..., 0]``) under ``scores``."""
    import tensorflow as tf

    scores = tf.cast(scores, tf.float32)
    targets = tf.broadcast_to(targets, tf.shape(scores)[:-1])
    if from_logits:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=scores)
    chosen = tf.gather(scores, targets, axis=-1, batch_dims=len(scores.shape) - 1)
    return -tf.math.log(tf.clip_by_value(chosen, EPSILON, 1.0 - EPSILON))


def _activation_bytes(model):
    """Bytes of activations one image needs through ``model`` (forward and backward), estimated from its layers."""
    total = 0
    for layer in model.layers:
        try:
            shapes = layer.output.shape if not isinstance(layer.output, (list, tuple)) else layer.output[0].shape
        except (AttributeError, ValueError):
            continue
        total += int(np.prod([size for size in shapes[1:] if size is not None]))
    return max(total, 1) * BYTES_PER_ACTIVATION


def slots_for_budget(model, batch, memory_mb, classes):
    """K: how many classes' K x ``batch`` images fit in ``memory_mb`` of activations (1 <= K <= ``classes``)."""
    per_slot = _activation_bytes(model) * batch
    return int(max(1, min(classes, (memory_mb * 2 ** 20) // per_slot)))


# --------------------------------------------------------------------------- the batched engine


@dataclasses.dataclass
class _Regime:
    """How a slot's class is optimised: the full schedule, or the scan's coarse fixed-budget pass."""

    start_cost: float
    early_stop: bool
    max_epochs: int
    learning_rate: float


class _Slots:
    """K target classes optimised together: per-slot variables, one compiled function per epoch.

    A slot's state is a dict of arrays (no leading K): the tanh parameters,
    their Adam moments and step count, the schedule's cost, counters and
    flags, the best mask and pattern and the epoch. :meth:`load` puts states
    into slots, :meth:`epoch` runs one epoch of every active slot and
    :meth:`unload` reads states back (a class may pause and resume: the
    scan's warm rounds).
    """

    FLOAT = ("w_mask", "w_pattern", "m_mask", "v_mask", "m_pattern", "v_pattern", "best_mask", "best_pattern")
    SCALARS = {"t": np.float32, "lr": np.float32, "target": np.int32, "cost": np.float32, "early_stop": bool,
               "max_epochs": np.int32, "cost_set": np.int32, "up": np.int32, "down": np.int32, "up_flag": bool,
               "down_flag": bool,
               "es_counter": np.int32, "es_best": np.float32, "reg_best": np.float32, "best_success": np.float32,
               "last_success": np.float32, "epoch": np.int32, "done": bool}

    def __init__(self, model, divisor, images, slots, shape, params, jit_compile=False):
        import tensorflow as tf

        self.model, self.from_logits = scorer(model)
        self.divisor = float(divisor)
        self.count = int(slots)
        self.shape = tuple(shape)
        self.params = params
        self.images = tf.constant(np.asarray(images, np.float32))
        height, width, channels = shape
        shapes = {"w_mask": (height, width, 1), "w_pattern": (height, width, channels)}
        shapes.update({"m_mask": shapes["w_mask"], "v_mask": shapes["w_mask"], "best_mask": shapes["w_mask"],
                       "m_pattern": shapes["w_pattern"], "v_pattern": shapes["w_pattern"],
                       "best_pattern": shapes["w_pattern"]})
        self.variables = {}
        for name in self.FLOAT:
            self.variables[name] = tf.Variable(tf.zeros((self.count,) + shapes[name]), trainable=False, name=name)
        for name, kind in self.SCALARS.items():
            dtype = tf.bool if kind is bool else tf.as_dtype(kind)
            self.variables[name] = tf.Variable(tf.zeros((self.count,), dtype), trainable=False, name=name)
        self._epoch = tf.function(self._epoch_body, reduce_retracing=True, jit_compile=jit_compile or None)
        self.class_epochs = 0   # epochs run, summed over the classes

    # -- states

    def fresh(self, target, regime):
        """The state of class ``target`` before its first step."""
        mask, pattern = initial_trigger(self.shape, target, self.params["seed"])
        state = {"w_mask": _from_unit(mask), "w_pattern": _from_unit(pattern / 255.0),
                 "m_mask": np.zeros_like(mask), "v_mask": np.zeros_like(mask),
                 "m_pattern": np.zeros_like(pattern), "v_pattern": np.zeros_like(pattern),
                 "best_mask": mask, "best_pattern": pattern}
        for name, kind in self.SCALARS.items():
            state[name] = np.zeros((), kind)
        state.update(target=np.int32(target), cost=np.float32(regime.start_cost),
                     lr=np.float32(regime.learning_rate),
                     early_stop=np.bool_(regime.early_stop), max_epochs=np.int32(regime.max_epochs),
                     es_best=np.float32(np.inf), reg_best=np.float32(np.inf))
        return state

    def load(self, slots, states):
        """Put ``states`` into ``slots`` (one scatter per variable)."""
        if not len(slots):
            return
        indices = np.asarray(slots, np.int32)[:, None]
        for name, variable in self.variables.items():
            values = np.stack([np.asarray(state[name]) for state in states])
            variable.scatter_nd_update(indices, values.astype(variable.dtype.as_numpy_dtype))

    def unload(self, slots):
        """The states in ``slots`` (copies)."""
        import tensorflow as tf

        indices = np.asarray(slots, np.int32)
        values = {name: tf.gather(variable, indices).numpy() for name, variable in self.variables.items()}
        return [{name: values[name][row] for name in values} for row in range(len(indices))]

    # -- one epoch

    def epoch(self, slots, epochs):
        """One epoch of every slot in ``slots`` (whose classes are at ``epochs``); returns their ``done`` flags."""
        import tensorflow as tf

        params = self.params
        batch = min(params["batch_size"], len(self.images))
        indices = np.stack([epoch_batches(len(self.images), epoch, params["steps_per_epoch"], batch, params["seed"])
                            for epoch in epochs])
        done = self._epoch(tf.constant(np.asarray(slots, np.int32)), tf.constant(indices))
        self.class_epochs += len(slots)
        return done.numpy()

    def _epoch_body(self, slots, indices):
        import tensorflow as tf

        v = self.variables
        height, width, channels = self.shape
        gather = {name: tf.gather(v[name], slots) for name in v}
        count = tf.shape(slots)[0]
        batch = tf.shape(indices)[2]
        target = gather["target"]
        cost = gather["cost"]
        lr = gather["lr"]
        w_mask, w_pattern = gather["w_mask"], gather["w_pattern"]
        m_mask, v_mask, m_pattern, v_pattern = (gather["m_mask"], gather["v_mask"], gather["m_pattern"],
                                                gather["v_pattern"])
        t = gather["t"]
        sums = tf.zeros((3, count))
        evaluated_mask, evaluated_pattern = _to_mask(w_mask), _to_mask(w_pattern) * 255.0
        for step in tf.range(tf.shape(indices)[1]):
            images = tf.gather(self.images, indices[:, step])          # [A, B, H, W, C]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch([w_mask, w_pattern])
                mask = _to_mask(w_mask)
                pattern = _to_mask(w_pattern) * 255.0
                evaluated_mask, evaluated_pattern = mask, pattern
                stamped = (1.0 - mask[:, None]) * images + (mask * pattern)[:, None]
                flat = tf.reshape(stamped, (-1, height, width, channels))
                if self.divisor != 1.0:
                    flat = flat / self.divisor
                scores = tf.cast(self.model(flat, training=False), tf.float32)
                scores = tf.reshape(scores, (count, batch, -1))
                cross_entropy = tf.reduce_mean(_cross_entropy(scores, target[:, None], self.from_logits), 1)
                regular = tf.reduce_sum(mask, axis=[1, 2, 3])
                loss = tf.reduce_sum(cross_entropy + cost * regular)
            g_mask, g_pattern = tape.gradient(loss, [w_mask, w_pattern])
            hits = tf.cast(tf.equal(tf.argmax(scores, axis=2, output_type=tf.int32), target[:, None]),
                           tf.float32)
            t = t + 1.0
            alpha = lr * tf.sqrt(1.0 - tf.pow(BETA_2, t)) / (1.0 - tf.pow(BETA_1, t))
            alpha = alpha[:, None, None, None]
            m_mask = m_mask + (g_mask - m_mask) * (1.0 - BETA_1)
            v_mask = v_mask + (tf.square(g_mask) - v_mask) * (1.0 - BETA_2)
            w_mask = w_mask - m_mask * alpha / (tf.sqrt(v_mask) + EPSILON)
            m_pattern = m_pattern + (g_pattern - m_pattern) * (1.0 - BETA_1)
            v_pattern = v_pattern + (tf.square(g_pattern) - v_pattern) * (1.0 - BETA_2)
            w_pattern = w_pattern - m_pattern * alpha / (tf.sqrt(v_pattern) + EPSILON)
            sums = sums + tf.stack([cross_entropy, regular, tf.reduce_mean(hits, axis=1)])
        steps = tf.cast(tf.shape(indices)[1], tf.float32)
        _, regular, success = tf.unstack(sums / steps)

        new = {"w_mask": w_mask, "w_pattern": w_pattern, "m_mask": m_mask, "v_mask": v_mask,
               "m_pattern": m_pattern, "v_pattern": v_pattern, "t": t, "last_success": success}
        new.update(self._schedule(gather, regular, success, evaluated_mask, evaluated_pattern))
        for name, value in new.items():
            v[name].scatter_nd_update(slots[:, None], tf.cast(value, v[name].dtype))
        return new["done"]

    def _schedule(self, state, regular, success, mask, pattern):
        """The paper's per-epoch schedule for every slot at once (masked updates of [A] vectors)."""
        import tensorflow as tf

        p = self.params
        patience = tf.constant(p["patience"], tf.int32)
        reached = success >= p["success"]
        # keep the best mask
        improved = reached & (regular < state["reg_best"])
        reg_best = tf.where(improved, regular, state["reg_best"])
        best_mask = tf.where(improved[:, None, None, None], mask, state["best_mask"])
        best_pattern = tf.where(improved[:, None, None, None], pattern, state["best_pattern"])
        best_success = tf.where(improved, success, state["best_success"])
        # early stop (only once a trigger reached the success threshold)
        found = reg_best < np.inf
        no_better = reg_best >= EARLY_STOP_THRESHOLD * state["es_best"]
        es_counter = tf.where(found, tf.where(no_better, state["es_counter"] + 1, 0), state["es_counter"])
        es_best = tf.minimum(reg_best, state["es_best"])
        stop = (state["early_stop"] & state["up_flag"] & state["down_flag"]
                & (es_counter >= p["early_stop_patience"]))
        # cost schedule: set it once the trigger succeeds at cost 0, then up or down
        cost, up, down = state["cost"], state["up"], state["down"]
        up_flag, down_flag = state["up_flag"], state["down_flag"]
        zero = tf.equal(cost, 0.0) & reached
        cost_set = tf.where(zero, state["cost_set"] + 1, 0)
        reset = zero & (cost_set >= patience)
        cost = tf.where(reset, tf.constant(p["init_cost"], tf.float32), cost)
        up = tf.where(reset, 0, up)
        down = tf.where(reset, 0, down)
        up_flag = up_flag & ~reset
        down_flag = down_flag & ~reset
        up = tf.where(reached, up + 1, 0)
        down = tf.where(reached, 0, down + 1)
        go_up = up >= patience
        go_down = ~go_up & (down >= patience)
        up = tf.where(go_up, 0, up)
        down = tf.where(go_down, 0, down)
        cost = tf.where(go_up, cost * p["cost_multiplier"], cost)
        cost = tf.where(go_down, cost / p["cost_multiplier"] ** 1.5, cost)
        up_flag = up_flag | go_up
        down_flag = down_flag | go_down
        epoch = state["epoch"] + 1
        done = stop | (epoch >= state["max_epochs"])
        # A stopped class keeps the schedule's state of its last epoch (the loop breaks before the cost moves).
        keep = lambda old, value: tf.where(stop, old, value)  # noqa: E731
        return {"reg_best": reg_best, "best_mask": best_mask, "best_pattern": best_pattern,
                "best_success": best_success, "es_counter": es_counter, "es_best": es_best,
                "cost": keep(state["cost"], cost), "cost_set": keep(state["cost_set"], cost_set),
                "up": keep(state["up"], up), "down": keep(state["down"], down),
                "up_flag": keep(state["up_flag"], up_flag), "down_flag": keep(state["down_flag"], down_flag),
                "epoch": epoch, "done": done}


def _run_slots(engine, jobs, on_done=None):
    """Run ``jobs`` ({class: state}) in ``engine``'s slots until each is done; return {class: final state}.

    Slots are filled in the order of ``jobs``; a slot whose class finishes
    is unloaded and refilled before the next epoch.
    """
    queue = list(jobs.items())
    queue.reverse()
    slot_class = {}
    epochs = {}
    finished = {}
    free = list(range(engine.count))

    def refill():
        slots, states = [], []
        while free and queue:
            key, state = queue.pop()
            if int(state["epoch"]) >= int(state["max_epochs"]):   # already at its budget: runs no epoch
                finish(key, state)
                continue
            slot = free.pop(0)
            slot_class[slot] = key
            epochs[slot] = int(state["epoch"])
            slots.append(slot)
            states.append(state)
        engine.load(slots, states)

    def finish(key, state):
        state["done"] = np.bool_(False)
        finished[key] = state
        if on_done is not None:
            on_done(key, state)

    def release(slots):
        if not slots:
            return
        for slot, state in zip(slots, engine.unload(slots)):
            key = slot_class.pop(slot)
            epochs.pop(slot)
            free.append(slot)
            finish(key, state)
        free.sort()

    refill()
    while slot_class:
        active = sorted(slot_class)
        done = engine.epoch(active, [epochs[slot] for slot in active])
        for slot in active:
            epochs[slot] += 1
        release([slot for slot, flag in zip(active, done) if flag])
        refill()
    return finished


# --------------------------------------------------------------------------- the loop reference


class _SingleClass:
    """The straightforward per-class run: one class's variables, a Keras Adam, the schedule in Python."""

    def __init__(self, model, divisor, images, shape, params):
        import keras
        import tensorflow as tf

        height, width, channels = shape
        self.params = params
        self.shape = shape
        self.images = np.asarray(images, np.float32)
        self.w_mask = tf.Variable(tf.zeros((height, width, 1)), name="w_mask")
        self.w_pattern = tf.Variable(tf.zeros((height, width, channels)), name="w_pattern")
        self.cost = tf.Variable(0.0, trainable=False, name="cost")
        self.optimizer = keras.optimizers.Adam(params["learning_rate"], beta_1=BETA_1, beta_2=BETA_2,
                                               epsilon=EPSILON)
        self.optimizer.build([self.w_mask, self.w_pattern])
        self.moments = [variable for variable in self.optimizer.variables
                        if variable.path.endswith(("_momentum", "_velocity"))]
        if len(self.moments) != 4:
            raise AssertionError(f"expected Adam's 4 moment variables, found {len(self.moments)}")
        divisor = float(divisor)
        score, from_logits = scorer(model)

        @tf.function(reduce_retracing=True)
        def step(batch, target):
            with tf.GradientTape() as tape:
                mask = _to_mask(self.w_mask)
                pattern = _to_mask(self.w_pattern) * 255.0
                stamped = (1.0 - mask) * batch + mask * pattern
                if divisor != 1.0:
                    stamped = stamped / divisor
                scores = tf.cast(score(stamped, training=False), tf.float32)
                cross_entropy = tf.reduce_mean(_cross_entropy(scores, target, from_logits))
                regular = tf.reduce_sum(mask)
                loss = cross_entropy + self.cost * regular
            gradients = tape.gradient(loss, [self.w_mask, self.w_pattern])
            self.optimizer.apply_gradients(zip(gradients, [self.w_mask, self.w_pattern]))
            hits = tf.equal(tf.argmax(scores, axis=1, output_type=tf.int32), target)
            return cross_entropy, regular, tf.reduce_mean(tf.cast(hits, tf.float32))

        self.step = step

    def current(self):
        return _to_mask(self.w_mask).numpy(), (_to_mask(self.w_pattern) * 255.0).numpy()

    def run(self, target, regime):
        """Optimise one class from its initial trigger; returns its final state (the batched engine's keys)."""
        import tensorflow as tf

        p = self.params
        mask, pattern = initial_trigger(self.shape, target, p["seed"])
        self.w_mask.assign(_from_unit(mask))
        self.w_pattern.assign(_from_unit(pattern / 255.0))
        self.optimizer.iterations.assign(0)
        for variable in self.moments:
            variable.assign(tf.zeros_like(variable))
        cost = float(regime.start_cost)
        self.cost.assign(cost)
        batch = min(p["batch_size"], len(self.images))
        mask_best, pattern_best, reg_best, best_success = None, None, np.inf, 0.0
        cost_set_counter = cost_up_counter = cost_down_counter = 0
        cost_up_flag = cost_down_flag = False
        early_stop_counter, early_stop_reg_best = 0, np.inf
        epoch = success = 0
        target_tensor = tf.constant(int(target), tf.int32)
        while epoch < regime.max_epochs:
            regs, hits = [], []
            for number, indices in enumerate(epoch_batches(len(self.images), epoch, p["steps_per_epoch"], batch,
                                                           p["seed"])):
                if number == p["steps_per_epoch"] - 1:
                    evaluated = self.current()   # the trigger the last step measures (kept if the epoch is the best)
                _, regular, accuracy = self.step(tf.constant(self.images[indices]), target_tensor)
                regs.append(float(regular))
                hits.append(float(accuracy))
            epoch += 1
            regular, success = np.mean(np.float32(regs)), np.mean(np.float32(hits))
            # keep the best mask
            if success >= p["success"] and regular < reg_best:
                mask_best, pattern_best = evaluated
                reg_best, best_success = regular, success
            # early stop
            if reg_best < np.inf:
                if reg_best >= EARLY_STOP_THRESHOLD * early_stop_reg_best:
                    early_stop_counter += 1
                else:
                    early_stop_counter = 0
            early_stop_reg_best = min(reg_best, early_stop_reg_best)
            if (regime.early_stop and cost_down_flag and cost_up_flag
                    and early_stop_counter >= p["early_stop_patience"]):
                break
            # cost schedule
            if cost == 0 and success >= p["success"]:
                cost_set_counter += 1
                if cost_set_counter >= p["patience"]:
                    cost = p["init_cost"]
                    cost_up_counter = cost_down_counter = 0
                    cost_up_flag = cost_down_flag = False
            else:
                cost_set_counter = 0
            if success >= p["success"]:
                cost_up_counter += 1
                cost_down_counter = 0
            else:
                cost_up_counter = 0
                cost_down_counter += 1
            if cost_up_counter >= p["patience"]:
                cost_up_counter = 0
                cost *= p["cost_multiplier"]
                cost_up_flag = True
            elif cost_down_counter >= p["patience"]:
                cost_down_counter = 0
                cost /= p["cost_multiplier"] ** 1.5
                cost_down_flag = True
            self.cost.assign(cost)
        last_mask, last_pattern = self.current()
        return {"best_mask": last_mask if mask_best is None else mask_best,
                "best_pattern": last_pattern if pattern_best is None else pattern_best,
                "w_mask": self.w_mask.numpy(), "w_pattern": self.w_pattern.numpy(),
                "reg_best": np.float32(reg_best), "best_success": np.float32(best_success),
                "last_success": np.float32(success), "epoch": np.int32(epoch), "cost": np.float32(cost),
                "target": np.int32(target)}


# --------------------------------------------------------------------------- the estimator


def _current_mask(state):
    """The mask a finished class reports: its best one, or its last one if it never reached the success."""
    if np.isfinite(state["reg_best"]):
        return np.asarray(state["best_mask"], np.float32), np.asarray(state["best_pattern"], np.float32)
    mask = np.tanh(state["w_mask"].astype(np.float64)) / (2.0 - EPSILON) + 0.5
    pattern = (np.tanh(state["w_pattern"].astype(np.float64)) / (2.0 - EPSILON) + 0.5) * 255.0
    return mask.astype(np.float32), pattern.astype(np.float32)


def _suspects(norms, count=3):
    """The ``count`` classes with the smallest norms so far, for the progress bar."""
    ordered = sorted(norms.items(), key=lambda item: item[1])[:count]
    return " ".join(f"{key}:{value:.0f}" for key, value in ordered)


class NeuralCleanse(Defense):
    """Neural Cleanse's detection (a :class:`goodnet.base.Defense`; the algorithm is the module's docstring).

    Args: the fields of :class:`CleanseOptions` (the same names and defaults), and
        batch_size_eval: images per inference call when the reversed triggers' success is measured.
        jit_compile: compile the batched epoch with XLA.
        progress: progress bars (None: only for long work; False: never).

    Attributes (after ``fit``):
        classifier_: the :class:`goodnet.models.Classifier` examined.
        classes_: the candidate classes (int64), in order.
        norms_: L1 norm of each class's reversed mask (the scan: the coarse
            score for classes not optimised to the end, see ``refined_``).
        refined_: whether each class ran the full schedule (all True except for the scan).
        anomaly_index_: MAD anomaly index per class (NaN where not refined).
        median_, mad_: the median and MAD the index uses.
        flagged_: the flagged classes (a subset of ``classes_``), most anomalous first.
        flagged_mask_: boolean per class.
        masks_: (classes, H, W, 1) reversed masks in [0, 1].
        patterns_: (classes, H, W, C) reversed patterns in raw 0-255 pixels.
        attack_success_: share of the clean images used that each class's
            reversed trigger sends to that class.
        reached_: whether each class's trigger reached ``success`` in some epoch.
        epochs_: epochs each class ran (the scan: its last run's).
        slots_: K, the classes optimised per call (1 for the loop).
        class_epochs_: epochs optimised, summed over the classes (all the scan's rounds included).
        clean_count_: clean images used.
        stages_: the scan's rounds ({"classes", "epochs"} each) and its refinement.
        tail_classes_, reference_classes_: the scan's tail and sample (empty and every class otherwise).

    Example:
        >>> cleanse = NeuralCleanse(classes=range(10), method="batched").fit(classifier, clean)
        >>> cleanse.summary()["verdict"]
    """

    _parameter_constraints = {**constraints_of(CleanseOptions), "batch_size_eval": [Interval(int, 1)],
                              "jit_compile": [InstanceOf(bool)], "progress": [InstanceOf(bool), None]}

    def __init__(self, method=CleanseOptions.method, classes=CleanseOptions.classes,
                 threshold=CleanseOptions.threshold, samples=CleanseOptions.samples,
                 batch_size=CleanseOptions.batch_size, steps_per_epoch=CleanseOptions.steps_per_epoch,
                 epochs=CleanseOptions.epochs, learning_rate=CleanseOptions.learning_rate,
                 init_cost=CleanseOptions.init_cost, success=CleanseOptions.success,
                 patience=CleanseOptions.patience, cost_multiplier=CleanseOptions.cost_multiplier,
                 early_stop_patience=CleanseOptions.early_stop_patience, scan_epochs=CleanseOptions.scan_epochs,
                 scan_learning_rate=CleanseOptions.scan_learning_rate, scan_cost=CleanseOptions.scan_cost,
                 halving=CleanseOptions.halving, tail=CleanseOptions.tail, reference=CleanseOptions.reference,
                 memory_mb=CleanseOptions.memory_mb, seed=CleanseOptions.seed, batch_size_eval=DEFAULT_BATCH,
                 jit_compile=False, progress=None):
        self.method = method
        self.classes = classes
        self.threshold = threshold
        self.samples = samples
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.init_cost = init_cost
        self.success = success
        self.patience = patience
        self.cost_multiplier = cost_multiplier
        self.early_stop_patience = early_stop_patience
        self.scan_epochs = scan_epochs
        self.scan_learning_rate = scan_learning_rate
        self.scan_cost = scan_cost
        self.halving = halving
        self.tail = tail
        self.reference = reference
        self.memory_mb = memory_mb
        self.seed = seed
        self.batch_size_eval = batch_size_eval
        self.jit_compile = jit_compile
        self.progress = progress

    # -- fitting

    def _images(self, classifier, clean):
        images = getattr(clean, "images", clean)
        images = np.asarray(images, dtype=np.float32)
        where = getattr(clean, "path", "") or "clean data"
        if images.ndim != 4 or tuple(images.shape[1:]) != classifier.input_shape:
            raise DataError(f"{where}: images: expected shape (N,) + {classifier.input_shape}, "
                            f"got {tuple(images.shape)}")
        if len(images) == 0:
            raise DataError(f"{where}: images: expected at least one clean image")
        if len(images) > self.samples:
            rng = np.random.default_rng([self.seed, 0])
            images = images[np.sort(rng.choice(len(images), self.samples, replace=False))]
        return images

    def _candidates(self, classifier):
        if self.classes is None:
            return np.arange(classifier.num_classes, dtype=np.int64)
        classes = np.asarray(list(self.classes), dtype=np.int64)
        bad = classes[(classes < 0) | (classes >= classifier.num_classes)]
        if bad.size:
            raise OptionError(f"classes: expected classes in 0..{classifier.num_classes - 1}, got {int(bad[0])}")
        if len(set(classes.tolist())) != len(classes):
            raise OptionError("classes: expected distinct classes")
        return classes

    def _params(self):
        return {name: getattr(self, name) for name in ("batch_size", "steps_per_epoch", "learning_rate",
                                                       "init_cost", "success", "patience", "cost_multiplier",
                                                       "early_stop_patience", "seed")}

    def fit(self, classifier, clean, poisoned=()):
        """Reverse-engineer a trigger per candidate class on ``clean`` and flag the outliers.

        Args:
            classifier: the :class:`goodnet.models.Classifier` to examine.
            clean: :class:`goodnet.data.LabData` or raw-pixel images (N, H, W, C); labels are not used.
            poisoned: not used (accepted for the model-defense signature).

        Returns:
            NeuralCleanse: self.
        """
        from goodnet.inference import Execution

        self._validate_params()
        images = self._images(classifier, clean)
        classes = self._candidates(classifier)
        self.classifier_ = classifier
        self.classes_ = classes
        self.clean_count_ = int(len(images))
        self.stages_ = []
        execution = Execution.of(classifier)
        with execution.placement():
            self.reference_classes_ = classes
            self.tail_classes_ = classes[:0]
            if self.method == "loop":
                states = self._fit_loop(classifier, images, classes)
                refined = np.ones(len(classes), bool)
                self.slots_ = 1
                self.class_epochs_ = int(sum(int(state["epoch"]) for state in states.values()))
            else:
                states, refined = self._fit_batched(classifier, images, classes)
            self._finish(classifier, images, classes, states, refined)
        return self

    def _full_regime(self):
        return _Regime(0.0, True, self.epochs, self.learning_rate)

    def _fit_loop(self, classifier, images, classes):
        runner = _SingleClass(classifier.model, classifier.divisor, images, classifier.input_shape, self._params())
        states = {}
        with progress_bar(len(classes), "cleanse (loop)", self.progress, unit="class") as bar:
            for target in classes:
                states[int(target)] = runner.run(int(target), self._full_regime())
                bar.update(1)
        return states

    def _engine(self, classifier, images, count):
        batch = min(self.batch_size, len(images))
        slots = slots_for_budget(classifier.model, batch, self.memory_mb, count)
        self.slots_ = slots
        return _Slots(classifier.model, classifier.divisor, images, slots, classifier.input_shape, self._params(),
                      self.jit_compile)

    def _fit_batched(self, classifier, images, classes):
        engine = self._engine(classifier, images, len(classes))
        everything = self.method == "batched" or len(classes) <= self.tail + self.reference
        if everything:
            states = self._full_runs(engine, classes, "cleanse")
            self.stages_.append({"stage": "full", "classes": int(len(classes)), "epochs": int(self.epochs)})
            refined = np.ones(len(classes), bool)
        else:
            states, refined = self._scan(engine, classes)
        self.class_epochs_ = int(engine.class_epochs)
        return states, refined

    def _full_runs(self, engine, classes, label):
        norms = {}
        with progress_bar(len(classes), label, self.progress, unit="class") as bar:
            def done(key, state):
                norms[key] = float(np.sum(_current_mask(state)[0]))
                bar.update(1)
                bar.set_postfix_str(f"smallest norms {_suspects(norms)}", refresh=False)

            regime = self._full_regime()
            jobs = {int(target): engine.fresh(int(target), regime) for target in classes}
            return _run_slots(engine, jobs, done)

    def _scan(self, engine, classes):
        """Coarse pass, successive halving, then the full schedule for the tail and a reference sample."""
        coarse = _Regime(self.scan_cost, False, self.scan_epochs, self.scan_learning_rate)
        states = {int(target): engine.fresh(int(target), coarse) for target in classes}
        scores = {}
        survivors = [int(target) for target in classes]
        budget = self.scan_epochs
        round_number = 0
        while True:
            with progress_bar(len(survivors), f"cleanse scan {round_number} ({budget} epochs)", self.progress,
                              unit="class") as bar:
                def done(key, state):
                    scores[key] = self._score(state)
                    bar.update(1)
                    bar.set_postfix_str(f"suspects {_suspects(scores)}", refresh=False)

                jobs = {}
                for key in survivors:
                    state = states[key]
                    state["max_epochs"] = np.int32(budget)
                    jobs[key] = state
                states.update(_run_slots(engine, jobs, done))
            self.stages_.append({"stage": f"scan {round_number}", "classes": len(survivors), "epochs": int(budget)})
            if len(survivors) <= self.tail:
                break
            keep = max(self.tail, math.ceil(len(survivors) / self.halving))
            survivors = sorted(survivors, key=lambda key: (scores[key], key))[:keep]
            for key in set(states) - set(survivors):
                states[key] = {name: states[key][name] for name in ("w_mask", "w_pattern", "best_mask",
                                                                    "best_pattern", "reg_best", "best_success",
                                                                    "last_success", "epoch")}
            if keep == self.tail:
                break
            budget *= self.halving
            round_number += 1
        ranking = sorted(scores, key=lambda key: (scores[key], key))
        tail = set(survivors)
        rest = [key for key in ranking if key not in tail]
        # A systematic sample of the other classes by coarse rank; each stands for len(rest) / reference classes.
        reference = {rest[int((index + 0.5) * len(rest) / self.reference)] for index in range(self.reference)}
        self.reference_classes_ = np.asarray(sorted(reference), np.int64)
        self.tail_classes_ = np.asarray(sorted(tail), np.int64)
        self._reference_weight = len(rest) / len(reference)
        refine = [key for key in ranking if key in tail or key in reference]
        full = self._full_runs(engine, refine, "cleanse full schedule")
        self.stages_.append({"stage": "full", "classes": len(refine), "epochs": int(self.epochs)})
        states.update(full)
        refined = np.asarray([int(target) in full for target in classes])
        return states, refined

    @staticmethod
    def _score(state):
        """The scan's ranking score: the best norm that reached the success, else the last norm + H x W."""
        mask, _ = _current_mask(state)
        norm = float(np.sum(mask))
        return norm if np.isfinite(state["reg_best"]) else norm + float(mask.size)

    def _finish(self, classifier, images, classes, states, refined):
        masks, patterns = zip(*(_current_mask(states[int(target)]) for target in classes))
        self.masks_ = np.stack(masks)
        self.patterns_ = np.stack(patterns)
        self.norms_ = self.masks_.reshape(len(classes), -1).sum(axis=1).astype(np.float64)
        self.reached_ = np.asarray([bool(np.isfinite(states[int(t)]["reg_best"])) for t in classes])
        self.epochs_ = np.asarray([int(states[int(t)]["epoch"]) for t in classes], np.int64)
        self.refined_ = np.asarray(refined, bool)
        weights = None
        if self.refined_.all():
            reference = np.arange(len(classes))
        else:   # the scan: the tail counts once, each sampled class for the classes it stands for
            reference = np.flatnonzero(self.refined_)
            weights = np.where(np.isin(classes[reference], self.reference_classes_), self._reference_weight, 1.0)
        index, self.median_, self.mad_ = anomaly_index(self.norms_, reference, weights)
        self.anomaly_index_ = np.where(self.refined_, index, np.nan)
        self.flagged_mask_ = self.refined_ & flag_classes(self.norms_, index, self.median_, self.threshold)
        order = np.argsort(-index[self.flagged_mask_], kind="stable")
        self.flagged_ = classes[self.flagged_mask_][order]
        self.attack_success_ = self._measure_success(classifier, images, classes)
        logger.info("Neural Cleanse: %d classes, median norm %.1f, MAD %.1f, flagged %s", len(classes),
                    self.median_, self.mad_, self.flagged_.tolist())

    def _measure_success(self, classifier, images, classes):
        """Share of ``images`` each class's reversed trigger sends to that class."""
        import tensorflow as tf

        forward = classifier.forward()
        success = np.zeros(len(classes))
        per_call = max(1, self.batch_size_eval // len(images))
        images_tensor = tf.constant(images)
        for start in range(0, len(classes), per_call):
            stop = min(start + per_call, len(classes))
            masks = tf.constant(self.masks_[start:stop])[:, None]
            patterns = tf.constant(self.patterns_[start:stop])[:, None]
            stamped = (1.0 - masks) * images_tensor[None] + masks * patterns
            outputs = np.asarray(forward(tf.reshape(stamped, (-1,) + tuple(images.shape[1:]))))
            predicted = outputs.argmax(axis=1).reshape(stop - start, len(images))
            success[start:stop] = np.mean(predicted == classes[start:stop, None], axis=1)
        return success

    # -- results

    @property
    def backdoored_(self):
        """Whether any class is flagged."""
        check_is_fitted(self)
        return bool(len(self.flagged_))

    def ranking(self):
        """Classes by suspicion: refined classes by decreasing anomaly index below the median, then the rest by norm."""
        check_is_fitted(self)
        below = self.refined_ & (self.norms_ < self.median_)
        index = np.where(below, np.nan_to_num(self.anomaly_index_, nan=0.0, posinf=np.finfo(float).max), -1.0)
        order = np.lexsort((self.norms_, -index))
        return self.classes_[order]

    def trigger(self, target):
        """(mask, pattern) reversed for class ``target``."""
        check_is_fitted(self)
        rows = np.flatnonzero(self.classes_ == int(target))
        if not rows.size:
            raise OptionError(f"target: {target} is not among the candidate classes")
        return self.masks_[rows[0]], self.patterns_[rows[0]]

    def trigger_rows(self, image, count=6):
        """Rows for :func:`goodnet.plots.plot_cleanse_triggers`: the ``count`` most suspicious classes' mask,
        pattern and ``image`` (one raw-pixel clean image) stamped with their trigger."""
        check_is_fitted(self)
        rows = []
        flagged = set(self.flagged_.tolist())
        for target in self.ranking()[:count]:
            mask, pattern = self.trigger(target)
            position = int(np.flatnonzero(self.classes_ == target)[0])
            index = self.anomaly_index_[position]
            label = (f"class {target}{' FLAGGED' if target in flagged else ''}\nnorm {self.norms_[position]:.1f}, "
                     f"index {'n/a' if np.isnan(index) else f'{index:.2f}'}")
            rows.append({"class": int(target), "label": label, "mask": mask, "pattern": pattern,
                         "stamped": stamp(np.asarray(image)[None], mask, pattern)[0]})
        return rows

    def flagged_triggers(self, classes=None):
        """(masks (T, H, W, 1), patterns (T, H, W, C)) of the flagged classes, or of ``classes``; for :func:`unlearning`."""
        check_is_fitted(self)
        classes = self.flagged_ if classes is None else np.asarray(classes, np.int64).reshape(-1)
        if not len(classes):
            raise OptionError("classes: no class is flagged, so there is no reversed trigger to unlearn")
        pairs = [self.trigger(target) for target in classes]
        return np.stack([mask for mask, _ in pairs]), np.stack([pattern for _, pattern in pairs])

    def summary(self):
        """A JSON-ready dict: per-class norm, index, success; the median, MAD, flagged classes and the verdict."""
        check_is_fitted(self)

        def number(value):
            return None if not np.isfinite(value) else float(value)

        rows = [{"class": int(target), "norm": float(norm), "anomaly_index": number(index),
                 "attack_success": float(success), "reached": bool(reached), "refined": bool(refined),
                 "epochs": int(epochs)}
                for target, norm, index, success, reached, refined, epochs in
                zip(self.classes_, self.norms_, self.anomaly_index_, self.attack_success_, self.reached_,
                    self.refined_, self.epochs_)]
        flagged = [int(target) for target in self.flagged_]
        return {**super().summary(), "model": self.classifier_.path, "clean_images": self.clean_count_,
                "images_per_step": min(int(self.batch_size), self.clean_count_), "slots": int(self.slots_),
                "class_epochs": self.class_epochs_, "median": self.median_, "mad": self.mad_,
                "index_threshold": float(self.threshold),
                "norm_threshold": self.median_ - self.threshold * MAD_CONSISTENCY * self.mad_,
                "flagged": flagged, "verdict": "backdoored" if flagged else "not flagged",
                "suspects": [int(target) for target in self.ranking()[:10]], "stages": self.stages_,
                "classes": rows}


# --------------------------------------------------------------------------- mitigation


def unlearning(cleanse, classes=None, recipe=FinePruneOptions.recipe, holdout_fraction=FinePruneOptions.holdout_fraction,
               seed=FinePruneOptions.seed):
    """Neural Cleanse's unlearning (section VI-B) as an unfitted :class:`~goodnet.defenses.fine_pruning.FinePruning`.

    Fine-tuning on clean images of which a share (``recipe.unlearn``; the paper
    stamps 20 %) carry the reversed triggers of the flagged classes, labels
    kept, teaches the model that those triggers mean nothing. Nothing is
    pruned; fine-pruning's loop, augmentation and hold-out rule (the kept epoch
    has the best hold-out accuracy) do the rest.

    Args:
        cleanse: a fitted :class:`NeuralCleanse`.
        classes: whose reversed triggers to unlearn (default: the flagged classes).
        recipe, holdout_fraction, seed: as :class:`~goodnet.defenses.fine_pruning.FinePruning`'s.

    Returns:
        FinePruning: call ``.fit(classifier, clean, poisoned=(), holdout=None)``.

    Example:
        >>> cleanse = NeuralCleanse().fit(badnet, valid.images)
        >>> unlearned = unlearning(cleanse).fit(badnet, valid).model_
    """
    return FinePruning(layer=FinePruneOptions.layer, channels=(), recipe=recipe, holdout_fraction=holdout_fraction,
                       seed=seed, triggers=cleanse.flagged_triggers(classes))
