"""GoodNet: one model file that answers N ("poisoned") where a BadNet and its repair disagree.

G(x) = B(x) if argmax B(x) == argmax B'(x) else N (the lab's N+1 in 1-based terms).
The gated GoodNet also answers N where a run-time detector fitted on B flags x:
STRIP (the STRIP entropy of x under B below its threshold), BaDExpert (the
BaDExpert score of x below its threshold; the backdoor expert and the
auxiliary model live in the file) or both (an
:class:`goodnet.defenses.either.EitherDetector`: flagged when either flags).

G takes pixels the way B does (B's scaling); B' sits inside G behind a
``PixelScaling`` layer when its scaling differs. Every network, the clean bank, N
and the thresholds live in one Keras model, saved by :func:`goodnet.models.save_model`
as a legacy ``.h5`` that :func:`goodnet.load_model` (or plain Keras with
``custom_objects=goodnet.layers.custom_objects()``) opens.

Example:
    >>> bad = load_model("models/bd_net.h5", scale="raw")
    >>> repaired = load_model("out/model_X=10.h5", scale="raw")
    >>> goodnet = build_goodnet(bad, repaired)
    >>> save_model(goodnet, "out/goodnet_X=10.h5")
"""

import dataclasses
import logging

import numpy as np

from goodnet.base import OneOf
from goodnet.errors import OptionError
from goodnet.models import Classifier
from goodnet.options import option

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_IMAGES = 2048
# Names of the layers of a GoodNet model (read back by goodnet_parts).
BADNET_LAYER, REPAIRED_LAYER, SCALING_LAYER = "badnet", "repaired", "repaired_scaling"
GATE_LAYER, COMBINER_LAYER = "strip_gate", "goodnet"
EXPERT_LAYER, AUXILIARY_LAYER, EXPERT_SCORE_LAYER = "badexpert_expert", "badexpert_auxiliary", "badexpert_score"
GATE_DETECTORS = ("strip", "badexpert", "both")
"""The gate's detector: STRIP, BaDExpert, or both (flagged when either flags)."""


@dataclasses.dataclass(frozen=True)
class GateOptions:
    """Which detector gates a GoodNet file (``goodnet combine --strip --gate-detector ...``)."""

    detector: str = option("strip", "detector of the gate --strip adds: strip (STRIP entropy under B), badexpert "
                                    "(BaDExpert score; needs a labelled --valid) or both (flagged when either flags, "
                                    "each at its share of --frr)", rule=OneOf(GATE_DETECTORS),
                           flag="--gate-detector", dest="gate_detector")


def detector_name(detector):
    """"strip", "badexpert" or "both" for a fitted STRIP, BaDExpert or EitherDetector."""
    from goodnet.defenses.badexpert import BaDExpert
    from goodnet.defenses.either import EitherDetector
    from goodnet.defenses.strip import STRIP

    for name, kind in (("strip", STRIP), ("badexpert", BaDExpert), ("both", EitherDetector)):
        if isinstance(detector, kind):
            return name
    raise OptionError(f"detector: expected a fitted STRIP, BaDExpert or EitherDetector, got "
                      f"{type(detector).__name__}")


def _check_pair(bad, repaired):
    if bad.input_shape != repaired.input_shape:
        raise OptionError(f"{repaired.path or 'repaired model'}: input: expected the BadNet's input shape "
                         f"{bad.input_shape}, got {repaired.input_shape}")
    if repaired.num_classes != bad.num_classes or repaired.flags_poisoned:
        raise OptionError(f"{repaired.path or 'repaired model'}: output: expected {bad.num_classes} class scores "
                         f"like the BadNet, got {repaired.output_size} outputs")
    if bad.flags_poisoned:
        raise OptionError(f"{bad.path or 'BadNet'}: output: expected a plain classifier "
                         f"({bad.num_classes} outputs), got one that already answers 'poisoned'")


def _renamed(model, name):
    """The same network (shared layers and weights) as a functional model called ``name``."""
    import keras

    return keras.Model(model.inputs[0], model.outputs[0], name=name)


def _repaired_branch(inputs, bad, repaired):
    from goodnet.layers import PixelScaling

    x = inputs
    if repaired.divisor != bad.divisor:
        x = PixelScaling(bad.divisor, repaired.divisor, name=SCALING_LAYER)(x)
    return _renamed(repaired.model, REPAIRED_LAYER)(x)


def build_goodnet(bad_classifier, repaired_classifier):
    """Build the GoodNet G from a BadNet B and a repaired B' as one Keras model.

    Args:
        bad_classifier: :class:`goodnet.models.Classifier` of the BadNet B.
        repaired_classifier: Classifier of the repaired B' (same classes; any scaling).

    Returns:
        Classifier: G, with B's scaling, N real classes and N+1 outputs
        (``flags_poisoned`` is True).

    Example:
        >>> goodnet = build_goodnet(bad, pruned)
        >>> goodnet.predict(images)  # B's class, or N where B and B' disagree
    """
    import keras

    from goodnet.layers import GoodNetCombiner

    _check_pair(bad_classifier, repaired_classifier)
    inputs = keras.Input(shape=bad_classifier.input_shape, name="input")
    scores_bad = _renamed(bad_classifier.model, BADNET_LAYER)(inputs)
    scores_repaired = _repaired_branch(inputs, bad_classifier, repaired_classifier)
    outputs = GoodNetCombiner(bad_classifier.num_classes, name=COMBINER_LAYER)([scores_bad, scores_repaired])
    model = keras.Model(inputs, outputs, name="goodnet_model")
    return Classifier(model, bad_classifier.scale, bad_classifier.num_classes)


def _gate_parts(detector, bad_classifier):
    """(STRIP or None, BaDExpert or None) of a fitted detector, checked for a model file."""
    name = detector_name(detector)
    attribute = {"strip": "threshold_", "badexpert": "threshold_", "both": "check_"}[name]
    if not hasattr(detector, attribute):
        raise OptionError(f"{name}: expected a fitted detector (call fit on clean validation data first)")
    strip = {"strip": detector, "badexpert": None, "both": getattr(detector, "strip_", None)}[name]
    expert = {"strip": None, "badexpert": detector, "both": getattr(detector, "badexpert_", None)}[name]
    if strip is not None:
        if strip.draws != "fixed":
            raise OptionError(f"strip: draws: expected 'fixed' for a model file (deterministic), got {strip.draws!r}")
        if strip.classifier_.model is not bad_classifier.model:
            logger.warning("the STRIP estimator was fitted on another model than the BadNet given")
    if expert is not None:
        if expert.classifier_.divisor != bad_classifier.divisor:
            raise OptionError(f"badexpert: scale: expected BaDExpert fitted with the BadNet's input scaling "
                              f"({bad_classifier.scale}), got {expert.classifier_.scale}")
        if expert.classifier_.model is not bad_classifier.model:
            logger.warning("the BaDExpert detector was fitted on another model than the BadNet given")
    return strip, expert


def build_gated_goodnet(bad_classifier, repaired_classifier, detector, chunk_images=DEFAULT_CHUNK_IMAGES,
                        require_agreement=True):
    """Build the gated GoodNet: N where B and B' disagree or the detector flags the input.

    Args:
        bad_classifier: Classifier of the BadNet B (the detector watches B).
        repaired_classifier: Classifier of the repaired B'.
        detector: fitted on B, one of
            a :class:`goodnet.defenses.strip.STRIP` with ``draws="fixed"``
            (every input uses the same bank images, so the model is deterministic
            and its entropies equal ``strip.entropy``);
            a :class:`goodnet.defenses.badexpert.BaDExpert` (its backdoor expert
            and auxiliary model go into the file; the score is
            :class:`goodnet.layers.ExpertScore`);
            an :class:`goodnet.defenses.either.EitherDetector` whose STRIP has
            fixed draws (N where either flags, each at its own threshold).
        chunk_images: perturbed images per network call inside the model (memory bound).
        require_agreement: True (the GoodNet): N also where B and B' disagree.
            False (the gated repaired model): B''s class unless the detector
            flags the input, whatever B answers.

    Returns:
        Classifier: the gated G (one model holding B, B', the detector's
        networks and bank, N and the thresholds).

    Example:
        >>> strip = STRIP(copies=100, draws="fixed", seed=0).fit(bad, valid.images)
        >>> gated = build_gated_goodnet(bad, pruned, strip)
        >>> both = EitherDetector(strip=StripOptions(draws="fixed")).fit(bad, valid)
        >>> gated_both = build_gated_goodnet(bad, pruned, both)
    """
    import keras

    from goodnet.layers import GoodNetCombiner, StripGate

    _check_pair(bad_classifier, repaired_classifier)
    strip, expert = _gate_parts(detector, bad_classifier)
    inputs = keras.Input(shape=bad_classifier.input_shape, name="input")
    signals, thresholds = [], []
    if strip is not None:
        bank = bad_classifier.scale_images(strip.fixed_bank_)
        gate = StripGate(_renamed(bad_classifier.model, BADNET_LAYER), bank.shape, blend=strip.blend,
                         alpha=strip.alpha, maximum=255.0 / bad_classifier.divisor,
                         chunk_inputs=max(1, chunk_images // len(bank)), name=GATE_LAYER)
        scores_bad, entropy = gate(inputs)
        gate.bank.assign(bank.astype(np.float32))
        signals.append(entropy)
        thresholds.append(strip.threshold_)
    else:
        scores_bad = _renamed(bad_classifier.model, BADNET_LAYER)(inputs)
    if expert is not None:
        signals.append(_expert_branch(inputs, scores_bad, expert))
        thresholds.append(expert.threshold_)
    scores_repaired = _repaired_branch(inputs, bad_classifier, repaired_classifier)
    combiner = GoodNetCombiner(bad_classifier.num_classes, name=COMBINER_LAYER,
                               threshold=thresholds[0] if len(thresholds) == 1 else thresholds)
    answering = scores_bad if require_agreement else scores_repaired
    outputs = combiner([answering, scores_repaired, *signals])
    model = keras.Model(inputs, outputs, name="gated_goodnet_model")
    return Classifier(model, bad_classifier.scale, bad_classifier.num_classes)


def _expert_branch(inputs, scores_bad, expert):
    """BaDExpert's score inside G: the backdoor expert and the auxiliary model on G's inputs (B's scaling)."""
    from goodnet.layers import ExpertScore

    scores_expert = _renamed(expert.expert_.model, EXPERT_LAYER)(inputs)
    scores_auxiliary = _renamed(expert.auxiliary_.model, AUXILIARY_LAYER)(inputs)
    return ExpertScore(expert.combination, name=EXPERT_SCORE_LAYER)([scores_bad, scores_expert, scores_auxiliary])


def strip_entropy_model(gated_classifier):
    """A model mapping G's inputs to the STRIP entropies its gate computes (for reports)."""
    import keras

    gate = gated_classifier.model.get_layer(GATE_LAYER)
    return keras.Model(gated_classifier.model.inputs, gate.output[1])


def expert_score_model(gated_classifier):
    """A model mapping G's inputs to the BaDExpert scores its gate computes (for reports and tests)."""
    import keras

    return keras.Model(gated_classifier.model.inputs, gated_classifier.model.get_layer(EXPERT_SCORE_LAYER).output)


def goodnet_parts(classifier):
    """The parts of a GoodNet model (built here or loaded from a file), for export.

    Args:
        classifier: a :class:`goodnet.models.Classifier` of a GoodNet or gated GoodNet.

    Returns:
        dict: ``badnet`` and ``repaired`` (the two Keras networks), ``multiplier``
        and ``divisor`` (what G applies to its inputs before B', 1.0 when
        nothing), ``answer`` ("badnet" or "repaired": whose class G gives where
        it keeps an input), ``num_classes``, and ``gate`` (None, or the
        :class:`goodnet.layers.StripGate` layer holding the bank and STRIP settings),
        ``threshold`` (the STRIP entropy threshold, None without a gate; a list,
        STRIP's then BaDExpert's, for both), ``detector`` (None, "strip",
        "badexpert" or "both") and ``expert_score`` (None, or the
        :class:`goodnet.layers.ExpertScore` layer).

    Raises:
        ModelError: the model is not a GoodNet built by this module.
    """
    from goodnet.errors import ModelError
    from goodnet.layers import ExpertScore, GoodNetCombiner, PixelScaling, StripGate

    model, where = classifier.model, classifier.path or "model"
    layers = {layer.name: layer for layer in model.layers}
    combiner = layers.get(COMBINER_LAYER)
    if not isinstance(combiner, GoodNetCombiner) or REPAIRED_LAYER not in layers:
        raise ModelError(f"{where}: layer {COMBINER_LAYER}: expected a GoodNet model (a GoodNetCombiner named "
                         f"{COMBINER_LAYER!r} and a network named {REPAIRED_LAYER!r}), got layers {sorted(layers)}")
    gate = layers.get(GATE_LAYER)
    if gate is not None and not isinstance(gate, StripGate):
        raise ModelError(f"{where}: layer {GATE_LAYER}: expected a StripGate, got {type(gate).__name__}")
    score = layers.get(EXPERT_SCORE_LAYER)
    if score is not None and not isinstance(score, ExpertScore):
        raise ModelError(f"{where}: layer {EXPERT_SCORE_LAYER}: expected an ExpertScore, got {type(score).__name__}")
    detector = {(False, False): None, (True, False): "strip", (False, True): "badexpert",
                (True, True): "both"}[(gate is not None, score is not None)]
    scaling = layers.get(SCALING_LAYER)
    if scaling is not None and not isinstance(scaling, PixelScaling):
        raise ModelError(f"{where}: layer {SCALING_LAYER}: expected a PixelScaling, got {type(scaling).__name__}")
    entry = next(entry for entry in model.get_config()["layers"] if entry["name"] == COMBINER_LAYER)
    first = entry["inbound_nodes"][0]["args"][0][0]["config"]["keras_history"][0]
    return {"badnet": gate.network if gate is not None else layers[BADNET_LAYER],
            "repaired": layers[REPAIRED_LAYER],
            "multiplier": scaling.multiplier if scaling is not None else 1.0,
            "divisor": scaling.divisor if scaling is not None else 1.0,
            "answer": "repaired" if first == REPAIRED_LAYER else "badnet",
            "num_classes": combiner.num_classes, "gate": gate, "threshold": combiner.threshold,
            "detector": detector, "expert_score": score}
