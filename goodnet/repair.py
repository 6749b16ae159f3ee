"""End-to-end repair: pruning, fine-pruning, GoodNet and run-time gates, chosen on validation data only.

:func:`repair` takes a suspect model and clean validation data (plus, for the
report, poisoned validation files) and returns the repaired model together
with the evidence.

Data discipline:

- the clean validation file is split per class into a *tune* part and a
  *hold-out* part (:func:`goodnet.defenses.fine_pruning.split_holdout`);
- the tune part ranks the channels and picks the X-point pruning steps, is
  what fine-tuning trains on, and calibrates STRIP (bank and threshold) and,
  when they gate candidates, BaDExpert (fine-tuned and calibrated on it) and
  the both gate (each detector on the tune part, its joint FRR checked on a
  split of it);
- the hold-out part decides fine-tuning's early stopping and gives every
  candidate's reported validation figures, on which the final choice is made;
- test files, when given, are read once at the end, after the choice, for the
  report only.

Candidates (each a model file in ``DIR/candidates``): the BadNet B; the pruned
models B'_X (the lab's X points of accuracy lost); the fine-pruned model FP;
the GoodNets G(B, B'_X) and G(B, FP) (N where B and the repair disagree);
their STRIP-gated versions (also N where STRIP, run on B, flags the input);
the STRIP-gated fine-pruned model (FP's class unless STRIP flags); and STRIP
alone (B's class unless STRIP flags). ``gate_detectors`` (``--gate-detectors``,
default ``strip``) names the detectors that gate candidates: ``strip``,
``badexpert`` (:mod:`goodnet.defenses.badexpert`) and ``both`` (flagged when
STRIP or BaDExpert flags, each at its share of the FRR:
:class:`goodnet.defenses.either.EitherDetector`); each adds its gated GoodNets
``goodnet_<detector>_X=..``, ``goodnet_<detector>_fp`` and gated models
``fine_pruned_<detector>``, ``badnet_<detector>`` (kinds ``goodnet_<detector>``
and ``<detector>``). Every gate is calibrated with STRIP's threshold method,
target FRR and confidence (``--threshold``, ``--frr``, ``--confidence``).
With ``cleanse`` (``--cleanse``), Neural
Cleanse runs on B with the tune part's images; its verdict is reported and,
when it flags classes, B fine-tuned to unlearn their reversed triggers (the
same recipe and hold-out rule as FP, nothing pruned) joins as ``nc_unlearned``
with its STRIP-gated form ``nc_unlearned_strip``.

Choice rule (:func:`choose`): the repaired model is a gated one (a
GoodNet or model that also answers N where a gate detector flags the input: the
``goodnet_strip_*``, ``fine_pruned_strip`` and ``badnet_strip`` candidates by
default, those of every detector in ``gate_detectors``)
unless ``gate="any"``, which lets every candidate compete; the others are
reported for comparison. A competing candidate is *eligible* when its
hold-out clean accuracy is at most ``max_accuracy_drop`` points below B's and,
if it can answer N, its hold-out false rejection rate is at most
``max_frr``. With poisoned validation files, each eligible candidate scores
its clean accuracy minus its mean attack success rate; the candidates within
``tie_margin`` points (default 2) of the best score are near-ties, and among
them the one with the lowest mean attack success rate wins (then the higher
score, fewer false rejections, the order above): a candidate that gives up at
most ``tie_margin`` points of accuracy, which is no more than the false
rejections the FRR bound already accepts, for a lower attack success rate is
preferred. Without them, the first eligible one in the order of
:data:`PREFERENCE` wins (the defenses that remove the backdoor and detect
triggers first). If none is eligible, the same ranking is applied to every
competing candidate and the report says that the bounds were relaxed.

STRIP is calibrated on the tune part at the target FRR ``frr`` (default 1 %,
STRIP's own default) with its certified threshold (``threshold_method``, see
:func:`goodnet.defenses.strip.calibrate`): the threshold's FRR is at most ``frr`` with
probability ``confidence`` (95 %), so the gate's FRR stays well within the
hold-out bound ``max_frr`` (2 %) instead of missing it by the sampling noise of
a low quantile of a few hundred tune entropies. The report records the
calibration (``report["strip"]["calibration"]``).

Every candidate's answers are derived from shared components (the answers of
B, B'_X and FP and the STRIP entropies under B, computed once per image set);
the tests check that they equal what each saved model file answers.
"""

import dataclasses
import logging
import os
import time

import numpy as np

from goodnet.base import InstanceOf, Interval, OneOf, SequenceOf
from goodnet.calibration import CALIBRATION_FIELDS
from goodnet.defenses.badexpert import BaDExpertOptions
from goodnet.defenses.combine import GATE_DETECTORS
from goodnet.defenses.either import EitherOptions
from goodnet.defenses.fine_pruning import FinePruneOptions, FinePruning, FineTuneRecipe, split_holdout
from goodnet.defenses.neural_cleanse import CleanseOptions
from goodnet.defenses.pruning import PruneOptions
from goodnet.defenses.strip import StripOptions
from goodnet.errors import OptionError
from goodnet.inference import Execution
from goodnet.metrics import score_predictions
from goodnet.options import option, validate_options
from goodnet.reports import (dataset_names, input_paths, percent, write_cleanse_outputs, write_repair_models,
                             write_repair_report)

logger = logging.getLogger(__name__)

PREFERENCE = ("fine_pruned_strip", "nc_unlearned_strip", "goodnet_strip_fp", "fine_pruned", "nc_unlearned",
              "goodnet_fp")
GATED_KINDS = tuple(f"goodnet_{name}" for name in GATE_DETECTORS) + GATE_DETECTORS
CANDIDATE_KINDS = ("model", "goodnet") + GATED_KINDS
STRIP_GATED_KINDS = ("goodnet_strip", "strip")
GATES = ("strip", "any")
DETECTOR_NAMES = {"strip": "STRIP", "badexpert": "BaDExpert", "both": "STRIP or BaDExpert"}


@dataclasses.dataclass
class Candidate:
    """One repaired-model candidate.

    Attributes:
        name: file stem, e.g. ``goodnet_strip_X=10``.
        kind: "model" (answers as the model does), "goodnet" (N where B and the
            repair disagree), "goodnet_strip" (also N where STRIP flags) or
            "strip" (the repair's answer unless STRIP flags); likewise
            "goodnet_badexpert" / "badexpert" and "goodnet_both" / "both" for
            the BaDExpert gate and the STRIP-or-BaDExpert gate.
        repair: the name of the underlying repaired model ("pruned_X=4", "fine_pruned", "badnet").
        description: one line for the report.
    """

    name: str
    kind: str
    repair: str
    description: str

    def answers(self, components, num_classes, threshold):
        """This candidate's answers from the shared components of one image set."""
        repaired = components.answers[self.repair]
        if self.kind == "model":
            return repaired
        bad = components.answers["badnet"]
        if self.kind == "goodnet":
            return np.where(bad == repaired, bad, num_classes)
        if self.detector == "strip":
            passes = components.entropy >= threshold
        else:
            passes = ~components.flags[self.detector]
        if self.kind.startswith("goodnet_"):
            return np.where((bad == repaired) & passes, bad, num_classes)
        return np.where(passes, repaired, num_classes)

    @property
    def flags_poisoned(self):
        return self.kind != "model"

    @property
    def strip_gated(self):
        """Whether STRIP alone gates this candidate (it answers N where STRIP flags the input)."""
        return self.kind in STRIP_GATED_KINDS

    @property
    def gated(self):
        """Whether a run-time detector gates this candidate (STRIP, BaDExpert or both)."""
        return self.kind in GATED_KINDS

    @property
    def detector(self):
        """The gate's detector ("strip", "badexpert", "both"), None for an ungated candidate."""
        return self.kind.split("_", 1)[1] if self.kind.startswith("goodnet_") else (
            self.kind if self.kind in GATE_DETECTORS else None)


@dataclasses.dataclass
class Components:
    """Answers of every base model, STRIP entropies under B, and the other gates' flags, for one image set."""

    answers: dict
    entropy: np.ndarray = None
    flags: dict = dataclasses.field(default_factory=dict)


def build_candidates(selected_drops, unlearned=False, detectors=("strip",)):
    """The candidate list for the pruned models at ``selected_drops`` (X values that were reached).

    ``unlearned``: add the Neural Cleanse unlearned model and its gated forms.
    ``detectors``: the gates (:data:`goodnet.defenses.combine.GATE_DETECTORS`); each adds its gated candidates,
    in this order.
    """
    candidates = [Candidate("badnet", "model", "badnet", "the suspect model B, unchanged")]
    for drop in selected_drops:
        candidates.append(Candidate(f"pruned_X={drop:g}", "model", f"pruned_X={drop:g}",
                                    f"B with conv channels pruned until accuracy dropped {drop:g} points"))
    candidates.append(Candidate("fine_pruned", "model", "fine_pruned", "fine-pruned: pruned, then fine-tuned"))
    if unlearned:
        candidates.append(Candidate("nc_unlearned", "model", "nc_unlearned", "B fine-tuned to unlearn the reversed "
                                    "triggers of the classes Neural Cleanse flagged"))
    for drop in selected_drops:
        candidates.append(Candidate(f"goodnet_X={drop:g}", "goodnet", f"pruned_X={drop:g}",
                                    f"GoodNet of B and pruned_X={drop:g}"))
    candidates.append(Candidate("goodnet_fp", "goodnet", "fine_pruned", "GoodNet of B and the fine-pruned model"))
    if len(set(detectors)) != len(detectors):
        raise OptionError(f"gate_detectors: expected each detector once, got {' '.join(detectors)}")
    for detector in detectors:
        candidates += _gated_candidates(selected_drops, unlearned, detector)
    return candidates


def _gated_candidates(selected_drops, unlearned, detector):
    """The candidates one gate adds (for STRIP: the names and wording goodnet always had)."""
    if detector not in GATE_DETECTORS:
        raise OptionError(f"gate_detectors: expected each of {GATE_DETECTORS}, got {detector!r}")
    gated = f"{DETECTOR_NAMES[detector]}-gated" if detector != "both" else "gated (STRIP or BaDExpert)"
    flags = f"{DETECTOR_NAMES[detector]} (on B) flags" if detector != "both" else \
        "STRIP or BaDExpert (on B) flags"
    candidates = []
    for drop in selected_drops:
        candidates.append(Candidate(f"goodnet_{detector}_X={drop:g}", f"goodnet_{detector}", f"pruned_X={drop:g}",
                                    f"{gated} GoodNet of B and pruned_X={drop:g}"))
    candidates.append(Candidate(f"goodnet_{detector}_fp", f"goodnet_{detector}", "fine_pruned",
                                f"{gated} GoodNet of B and the fine-pruned model"))
    candidates.append(Candidate(f"fine_pruned_{detector}", detector, "fine_pruned",
                                f"the fine-pruned model's answer unless {flags} the input"))
    if unlearned:
        candidates.append(Candidate(f"nc_unlearned_{detector}", detector, "nc_unlearned",
                                    f"the NC-unlearned model's answer unless {flags} the input"))
    alone = {"strip": "STRIP alone", "badexpert": "BaDExpert alone", "both": "STRIP or BaDExpert alone"}[detector]
    candidates.append(Candidate(f"badnet_{detector}", detector, "badnet",
                                f"{alone}: B's answer unless {flags.replace(' (on B)', '')} the input"))
    return candidates


def compute_components(base_models, strip, images, progress=None, description="", gates=None):
    """Answers of every base model, (if ``strip``) the STRIP entropies and each of ``gates``' flags, for one image set.

    ``gates``: {detector name: fitted BaDExpert or EitherDetector} for the gates other than STRIP.
    """
    answers = {name: classifier.predict(images, progress=progress) for name, classifier in base_models.items()}
    entropy = strip.entropy(images) if strip is not None else None
    flags = {name: np.asarray(detector.predict_trojaned(images)) for name, detector in (gates or {}).items()}
    logger.info("components computed for %s (%d images)", description or "images", len(images))
    return Components(answers, entropy, flags)


def candidate_figures(candidate, clean, poisoned, num_classes, threshold):
    """Figures of one candidate on a clean (labels, Components) pair and poisoned ones."""
    clean_labels, clean_components = clean
    poisoned_scores = [(name, candidate.answers(components, num_classes, threshold), labels)
                       for name, labels, components in poisoned]
    figures = score_predictions(candidate.answers(clean_components, num_classes, threshold), clean_labels,
                                poisoned_scores, num_classes, candidate.flags_poisoned)
    asr = [entry["attack_success_rate"] for entry in figures.get("poisoned", [])]
    figures["mean_attack_success_rate"] = float(np.mean(asr)) if asr else None
    return figures


def choose(candidates, figures, max_accuracy_drop=3.0, max_frr=0.02, tie_margin=2.0, gate="strip"):
    """Apply the documented choice rule (module docstring) to hold-out validation figures.

    Args:
        candidates: list of :class:`Candidate` (the first is the BadNet).
        figures: {name: validation figures}.
        max_accuracy_drop: points of hold-out clean accuracy a candidate may lose against B.
        max_frr: highest hold-out false rejection rate for candidates that answer N.
        tie_margin: points of clean accuracy minus ASR within which candidates are near-ties,
            decided by the lower attack success rate.
        gate: "strip" (only gated candidates compete: STRIP-gated, or gated by any detector
            the candidates have) or "any" (every repaired candidate).

    Returns:
        tuple: (chosen name, {name: reason it is not eligible}, rule used).
    """
    if gate not in GATES:
        raise OptionError(f"gate: expected one of {GATES}, got {gate!r}")
    baseline = figures["badnet"]["clean_accuracy"]
    reasons, eligible, competing = {}, [], []
    gated = _gated_word(candidates)
    for candidate in candidates[1:]:
        entry = figures[candidate.name]
        if gate == "strip" and not candidate.gated:
            reasons[candidate.name] = f"not {gated} (the repaired model is a {gated} one; gate 'any' " \
                                      "lets it compete)"
            continue
        competing.append(candidate)
        if entry["clean_accuracy"] < baseline - max_accuracy_drop / 100.0:
            reasons[candidate.name] = (f"clean accuracy {entry['clean_accuracy'] * 100:.2f}% is more than "
                                       f"{max_accuracy_drop:g} points below B's {baseline * 100:.2f}%")
        elif candidate.flags_poisoned and entry["false_rejection_rate"] > max_frr:
            reasons[candidate.name] = (f"false rejection rate {entry['false_rejection_rate'] * 100:.2f}% "
                                       f"above {max_frr * 100:g}%")
        else:
            eligible.append(candidate)
    relaxed = ""
    if not eligible:
        # Nothing meets both bounds: rank every competing candidate the same way, bounds relaxed.
        eligible, relaxed = competing, " (no candidate met the bounds: ranked every competing one, bounds relaxed)"
    if figures["badnet"].get("mean_attack_success_rate") is not None:
        order = {candidate.name: index for index, candidate in enumerate(candidates)}

        def score(candidate):
            entry = figures[candidate.name]
            return entry["clean_accuracy"] - entry["mean_attack_success_rate"]

        best = max(score(candidate) for candidate in eligible)
        near = [candidate for candidate in eligible if score(candidate) >= best - tie_margin / 100.0 - 1e-12]

        def key(candidate):
            entry = figures[candidate.name]
            return (entry["mean_attack_success_rate"], -score(candidate), entry.get("false_rejection_rate", 0.0),
                    order[candidate.name])

        return (min(near, key=key).name, reasons,
                f"lowest mean attack success rate among the eligible{' ' + gated if gate == 'strip' else ''} "
                f"candidates within {tie_margin:g} points of "
                f"the highest clean accuracy minus mean attack success rate" + relaxed)
    names = [candidate.name for candidate in eligible]
    for name in _preference(candidates):
        if name in names:
            return name, reasons, "first eligible in the preference order (no poisoned validation data)" + relaxed
    return names[0], reasons, "first eligible candidate (no poisoned validation data)" + relaxed


def _gated_word(candidates):
    """"STRIP-gated" when STRIP gates every gated candidate (the default), else "gated"."""
    detectors = {candidate.detector for candidate in candidates if candidate.gated}
    return "STRIP-gated" if detectors <= {"strip"} else "gated"


def _preference(candidates):
    """:data:`PREFERENCE`, each STRIP-gated name followed by the same candidate under the other gates present."""
    detectors = [name for name in GATE_DETECTORS if name != "strip"
                 and any(candidate.detector == name for candidate in candidates)]
    order = []
    for name in PREFERENCE:
        order.append(name)
        if "strip" in name:
            order += [name.replace("strip", detector) for detector in detectors]
    return order


@dataclasses.dataclass(frozen=True)
class RepairOptions:
    """Options of :func:`repair`, each default, rule and help text written once (``goodnet repair``'s flags).

    ``recipe`` is fine-pruning's recipe (``goodnet fineprune``'s defaults);
    ``strip`` the STRIP settings of the repair: STRIP's options with the alpha
    blend (adding saturates face images to white) and fixed draws (the model
    files are deterministic); its ``seed`` is replaced by the repair's ``seed``.
    ``gate_detectors`` the gates of the candidates; ``badexpert`` BaDExpert's
    settings for the badexpert and both gates (calibrated as STRIP is, see
    :meth:`badexpert_options`) and ``either`` the both gate's FRR share and
    check split.

    Example:
        >>> RepairOptions(recipe=FineTuneRecipe(epochs=20), strip=dataclasses.replace(RepairOptions.strip, copies=50))
        >>> RepairOptions(gate_detectors=("strip", "both"))   # STRIP-gated and STRIP-or-BaDExpert-gated candidates
    """

    layer: str = option(FinePruneOptions.layer, "convolution to prune", rule=InstanceOf(str))
    drops: tuple = option(PruneOptions.drops, "pruned candidates at X points of accuracy lost",
                          rule=SequenceOf(Interval(float, 0, closed="neither")), type=float, metavar="X")
    fineprune_drop: float = option(FinePruneOptions.drop, "fine-pruning prunes up to X points of accuracy lost, "
                                   "then fine-tunes", rule=Interval(float, 0, closed="neither"), type=float,
                                   metavar="X")
    holdout_fraction: float = option(FinePruneOptions.holdout_fraction, "share of each class held out",
                                     rule=Interval(float, 0, 1, "neither"), flag="--holdout", metavar="SHARE")
    recipe: FineTuneRecipe = option(FinePruneOptions.recipe, "the fine-tuning recipe")
    strip: StripOptions = option(StripOptions(blend="alpha", draws="fixed"), "STRIP on B (calibrated on the tune "
                                 "part)")
    max_accuracy_drop: float = option(3.0, "eligible candidates lose at most this many points of hold-out accuracy",
                                      rule=Interval(float, 0))
    max_frr: float = option(0.02, "eligible N+1 candidates reject at most this share of clean hold-out images",
                            rule=Interval(float, 0, 1))
    tie_margin: float = option(2.0, "eligible candidates within this many points of the best clean accuracy minus "
                                    "ASR are near-ties, won by the lowest ASR", rule=Interval(float, 0),
                               metavar="POINTS")
    gate: str = option("strip", "which candidates may be chosen: gated ones (by --gate-detectors; the others are "
                               "reported) or any", rule=OneOf(GATES))
    gate_detectors: tuple = option(("strip",), "detectors that gate candidates (each adds its gated GoodNets and "
                                   "models): strip, badexpert (BaDExpert on B, fitted on the labelled tune part), "
                                   "both (flagged when either flags, each at its share of --frr); all calibrated "
                                   "with --threshold, --frr and --confidence",
                                   rule=SequenceOf(OneOf(GATE_DETECTORS)), type=str, choices=GATE_DETECTORS,
                                   metavar="DETECTOR")
    cleanse: bool = option(False, "also run Neural Cleanse on B (tune part): report its verdict and, when it flags "
                                  "classes, add B fine-tuned to unlearn their reversed triggers (nc_unlearned) and "
                                  "its STRIP-gated form (nc_unlearned_strip) as candidates", rule=InstanceOf(bool))
    nc: CleanseOptions = option(CleanseOptions(), "Neural Cleanse's settings in the repair (its seed is the "
                                "repair's; library only: the command keeps the defaults)")
    badexpert: BaDExpertOptions = option(BaDExpertOptions(), "BaDExpert on B for the badexpert and both gates "
                                         "(its calibration is STRIP's, its seed the repair's)")
    either: EitherOptions = option(EitherOptions(), "the both gate: STRIP's share of the FRR and the tune part's "
                                   "check split")
    seed: int = option(FinePruneOptions.seed, "seed of the split, of fine-tuning, and of STRIP's bank and draws",
                       rule=Interval(int, 0))

    def strip_options(self):
        """The :class:`StripOptions` the repair's STRIP runs with (``strip`` with the repair's ``seed``)."""
        return dataclasses.replace(self.strip, seed=self.seed)

    def badexpert_options(self):
        """The :class:`BaDExpertOptions` of the repair's BaDExpert: ``badexpert`` with STRIP's calibration
        (threshold method, FRR, confidence) and the repair's ``seed``."""
        return dataclasses.replace(self.badexpert, seed=self.seed, threshold_method=self.strip.threshold_method,
                                   frr=self.strip.frr, confidence=self.strip.confidence)

    def cleanse_options(self):
        """The :class:`CleanseOptions` the repair's Neural Cleanse runs with (``nc`` with the repair's ``seed``)."""
        return dataclasses.replace(self.nc, seed=self.seed)

    def flat(self):
        """The options as one flat dict, the recipe's and STRIP's fields beside the others (``report["options"]``)."""
        flat = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "strip":
                flat.update({name: entry for name, entry in dataclasses.asdict(value).items() if name != "seed"})
            elif field.name == "nc":   # its fields share names with the recipe's: kept apart
                flat["nc"] = {name: entry for name, entry in dataclasses.asdict(value).items() if name != "seed"}
            elif field.name in ("badexpert", "either"):   # names shared with STRIP's: kept apart, STRIP's calibration
                flat[field.name] = {name: entry for name, entry in dataclasses.asdict(value).items()
                                    if name not in ("seed",) + CALIBRATION_FIELDS}
            elif dataclasses.is_dataclass(value):
                flat.update(dataclasses.asdict(value))
            else:
                flat[field.name] = value
        return flat


def repair(classifier, clean, poisoned=(), out_dir="repair", options=None, test=None, poisoned_test=(),
           protect=(), progress=None):
    """Repair a suspect model and write every candidate and the report into ``out_dir``.

    Args:
        classifier: the suspect model (:class:`goodnet.models.Classifier`).
        clean: clean validation :class:`goodnet.data.LabData`.
        poisoned: poisoned validation LabData (reported; used by the choice rule if given).
        out_dir: output folder.
        options: :class:`RepairOptions`.
        test: clean test LabData, evaluated once after the choice (report only).
        poisoned_test: poisoned test LabData (report only).
        protect: input paths never to overwrite.
        progress: progress bars (None: only for long work).

    Returns:
        dict: the report (also written as ``report.json`` and ``report.md``).

    Example:
        >>> report = repair(badnet, load_h5("valid.h5"), [load_h5("bd_valid.h5")], "out/repair")
        >>> report["chosen"], report["test"][report["chosen"]]
    """
    from goodnet.defenses.pruning import PruningDefense
    from goodnet.defenses.strip import STRIP

    options = validate_options(options or RepairOptions())
    os.makedirs(os.path.join(out_dir, "candidates"), exist_ok=True)
    protect = input_paths(clean, *poisoned, test, *poisoned_test, protect=protect)
    num_classes = classifier.num_classes
    tune_indices, holdout_indices = split_holdout(clean.labels, options.holdout_fraction, options.seed)
    tune, holdout = clean.subset(tune_indices), clean.subset(holdout_indices)
    poisoned_names = dataset_names(poisoned)

    # 1. The pruning sweep on the tune part: ranking and the X-point steps.
    defense = PruningDefense(options.layer, drops=tuple(options.drops), progress=progress).fit(
        classifier, tune, poisoned)
    pruned_steps = {drop: step for drop, step in defense.selected_.items() if step is not None}
    base_models = {"badnet": classifier}
    for drop, step in pruned_steps.items():
        base_models[f"pruned_X={drop:g}"] = defense.pruned_classifier(step)

    # 2. Fine-pruning: prune to the fine-pruning X step, fine-tune on the tune part, stop on the hold-out part.
    from goodnet.defenses.fine_pruning import channels_to_prune

    channels = tuple(int(channel) for channel in channels_to_prune(defense, options.fineprune_drop))
    fine = FinePruning(options.layer, channels, options.recipe, options.holdout_fraction, options.seed).fit(
        classifier, tune, poisoned, holdout=holdout)
    base_models["fine_pruned"] = fine.model_

    # 3. STRIP on B, calibrated on the tune part (fixed draws: the model files are deterministic); the other gates.
    strip = STRIP.from_options(options.strip_options(), progress=progress).fit(classifier, tune.images)
    gates = _fit_gates(classifier, tune, options, progress)

    # 3b. Neural Cleanse on B (tune images, labels unused); unlearning of the flagged classes' reversed triggers.
    cleanse, unlearned = None, None
    if options.cleanse:
        started = time.perf_counter()
        cleanse, unlearned = _cleanse_and_unlearn(classifier, tune, holdout, poisoned, options, progress)
        cleanse_seconds = time.perf_counter() - started   # Neural Cleanse and the unlearning
        if unlearned is not None:
            base_models["nc_unlearned"] = unlearned.model_

    # 4. Every candidate's hold-out validation figures, from shared components.
    candidates = build_candidates(list(pruned_steps), unlearned=unlearned is not None,
                                  detectors=tuple(options.gate_detectors))
    valid_clean = (holdout.labels, compute_components(base_models, strip, holdout.images, progress, "hold-out",
                                                      gates))
    valid_poisoned = [(name, data.labels, compute_components(base_models, strip, data.images, progress, name, gates))
                      for name, data in zip(poisoned_names, poisoned)]
    validation = {c.name: candidate_figures(c, valid_clean, valid_poisoned, num_classes, strip.threshold_)
                  for c in candidates}
    chosen, reasons, rule = choose(candidates, validation, options.max_accuracy_drop, options.max_frr,
                                   options.tie_margin, options.gate)

    # 5. Files: every candidate, the chosen model, curves, report.
    detectors = {"strip": strip, **gates}
    models = ((c.name, candidate_classifier(c, classifier, base_models, detectors)) for c in candidates[1:])
    files = write_repair_models(models, chosen, out_dir, protect)
    report = {"model": classifier.path, "scale": classifier.scale, "num_classes": num_classes,
              "options": options.flat(), "execution": Execution.of(classifier).describe(),
              "chosen": chosen, "choice_rule": rule,
              "not_eligible": reasons, "files": files,
              "split": {"tune_images": int(len(tune_indices)), "holdout_images": int(len(holdout_indices))},
              "pruning": {"ranking": defense.ranking_.tolist(), "selected_steps": {f"{d:g}": s for d, s in
                                                                                   defense.selected_.items()},
                          "curve": defense.curve_.rows()},
              "fine_pruning": {"channels_pruned": list(channels), "best_epoch": fine.best_epoch_,
                               "recipe": fine.resolved_recipe(),
                               "curve": fine.curve_rows(poisoned_names)},
              "strip": {"threshold": strip.threshold_, "calibration": strip.calibration_.describe(),
                        "copies": options.strip.copies, "blend": options.strip.blend,
                        "clean_entropy_mean": strip.entropy_mean_, "clean_entropy_std": strip.entropy_std_,
                        "holdout_entropies": valid_clean[1].entropy.tolist(),
                        "poisoned_entropies": {name: components.entropy.tolist()
                                               for name, _, components in valid_poisoned}},
              "gates": _gates_report(options, strip, gates, valid_clean[1]),
              "candidates": [dataclasses.asdict(c) for c in candidates], "validation": validation}
    if cleanse is not None:
        report["neural_cleanse"] = _cleanse_report(cleanse, unlearned, poisoned_names, cleanse_seconds)

    # 6. Test data, once, after the choice.
    if test is not None or poisoned_test:
        test_names = dataset_names(poisoned_test)
        test_clean = None
        if test is not None:
            test_clean = (test.labels, compute_components(base_models, strip, test.images, progress, "test", gates))
        test_poisoned = [(name, data.labels, compute_components(base_models, strip, data.images, progress, name,
                                                                gates))
                         for name, data in zip(test_names, poisoned_test)]
        report["test"] = {c.name: _test_figures(c, test_clean, test_poisoned, num_classes, strip.threshold_)
                          for c in candidates}
    if cleanse is not None:
        summary = {**cleanse.summary(), "inputs": {"model": classifier.path, "scale": classifier.scale}}
        report["files"]["neural_cleanse"] = write_cleanse_outputs(
            summary, cleanse.trigger_rows(tune.images[0]), os.path.join(out_dir, "neural_cleanse"), protect)
    write_repair_report(report, out_dir, defense, report_markdown(report), protect)
    return report


def _fit_gates(classifier, tune, options, progress):
    """{"badexpert": BaDExpert, "both": EitherDetector} for the gates other than STRIP in ``gate_detectors``,
    fitted on B with the labelled tune part (STRIP's calibration, the repair's seed)."""
    from goodnet.defenses.badexpert import BaDExpert
    from goodnet.defenses.either import EitherDetector

    gates = {}
    if "badexpert" in options.gate_detectors:
        gates["badexpert"] = BaDExpert.from_options(options.badexpert_options(), progress=progress).fit(classifier,
                                                                                                          tune)
    if "both" in options.gate_detectors:
        gates["both"] = EitherDetector(frr=options.strip.frr, strip_share=options.either.strip_share,
                                       check_fraction=options.either.check_fraction, strip=options.strip_options(),
                                       badexpert=options.badexpert_options(), seed=options.seed,
                                       progress=progress).fit(classifier, tune)
    return gates


def _gates_report(options, strip, gates, holdout):
    """``report["gates"]``: per gate detector, its threshold(s), target FRR and realised FRR on the hold-out part."""
    entries = {}
    for name in options.gate_detectors:
        flagged = holdout.entropy < strip.threshold_ if name == "strip" else holdout.flags[name]
        entry = {"detector": DETECTOR_NAMES[name], "target_frr": float(options.strip.frr),
                 "holdout_frr": float(np.mean(flagged)), "holdout_rejected": int(np.sum(flagged)),
                 "holdout_images": int(len(flagged))}
        if name == "strip":
            entry["threshold"] = float(strip.threshold_)
        elif name == "badexpert":
            detector = gates[name]
            entry.update({"threshold": float(detector.threshold_), "calibration": detector.calibration_.describe(),
                          "combination": detector.combination, "expert_rate": detector.expert_rate_,
                          "expert_accuracy": detector.expert_accuracy_, "expert_steps": detector.expert_steps_,
                          "auxiliary_accuracy": detector.auxiliary_accuracy_})
        else:
            detector = gates[name]
            entry.update({"threshold": {"strip": float(detector.strip_.threshold_),
                                        "badexpert": float(detector.badexpert_.threshold_)},
                          "shares": dict(detector.shares_), "check": dict(detector.check_)})
        entries[name] = entry
    return entries


def _cleanse_and_unlearn(classifier, tune, holdout, poisoned, options, progress):
    """(fitted NeuralCleanse, fitted unlearning FinePruning or None when nothing is flagged)."""
    from goodnet.defenses.neural_cleanse import NeuralCleanse, unlearning

    cleanse = NeuralCleanse.from_options(options.cleanse_options(), progress=progress).fit(classifier, tune.images)
    logger.info("Neural Cleanse on B: %s (flagged %s)", "backdoored" if cleanse.backdoored_ else "not flagged",
                cleanse.flagged_.tolist())
    if not cleanse.backdoored_:
        return cleanse, None
    unlearned = unlearning(cleanse, recipe=options.recipe, holdout_fraction=options.holdout_fraction,
                           seed=options.seed).fit(classifier, tune, poisoned, holdout=holdout)
    return cleanse, unlearned


def _cleanse_report(cleanse, unlearned, poisoned_names, seconds):
    """``report["neural_cleanse"]``: the verdict, the flagged classes and, if any, the unlearning's curve."""
    rows = {int(target): position for position, target in enumerate(cleanse.classes_)}

    def index(target):
        value = cleanse.anomaly_index_[rows[target]]
        return float(value) if np.isfinite(value) else None

    entry = {"verdict": "backdoored" if cleanse.backdoored_ else "not flagged",
             "flagged": [{"class": int(target), "norm": float(cleanse.norms_[rows[int(target)]]),
                          "anomaly_index": index(int(target))} for target in cleanse.flagged_],
             "suspects": [int(target) for target in cleanse.ranking()[:5]], "classes": int(len(cleanse.classes_)),
             "median": float(cleanse.median_), "mad": float(cleanse.mad_), "method": cleanse.method,
             "seconds": seconds}
    if unlearned is not None:
        entry["unlearning"] = {"best_epoch": unlearned.best_epoch_, "curve": unlearned.curve_rows(poisoned_names)}
    return entry


def _test_figures(candidate, clean, poisoned, num_classes, threshold):
    if clean is not None:
        return candidate_figures(candidate, clean, poisoned, num_classes, threshold)
    scores = [(name, candidate.answers(components, num_classes, threshold), labels)
              for name, labels, components in poisoned]
    figures = score_predictions(None, None, scores, num_classes, candidate.flags_poisoned)
    figures["mean_attack_success_rate"] = float(np.mean([e["attack_success_rate"] for e in figures["poisoned"]]))
    return figures


def candidate_classifier(candidate, classifier, base_models, detectors):
    """The Keras model (as a Classifier) that implements ``candidate``.

    ``detectors``: {gate detector name: fitted STRIP, BaDExpert or EitherDetector}; a lone STRIP
    stands for {"strip": it}.
    """
    from goodnet.defenses.combine import build_gated_goodnet, build_goodnet

    if not isinstance(detectors, dict):
        detectors = {"strip": detectors}
    repaired = base_models[candidate.repair]
    if candidate.kind == "model":
        return repaired
    if candidate.kind == "goodnet":
        return build_goodnet(classifier, repaired)
    return build_gated_goodnet(classifier, repaired, detectors[candidate.detector],
                               require_agreement=candidate.kind.startswith("goodnet_"))


def _table(figures, candidates, chosen):
    poisoned = [entry["file"] for entry in next(iter(figures.values())).get("poisoned", [])]
    header = ["candidate", "gate", "clean acc %"] + [f"ASR {name} %" for name in poisoned] + ["detection %",
                                                                                               "FRR %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for candidate in candidates:
        entry = figures[candidate.name]
        name = f"**{candidate.name}** (chosen)" if candidate.name == chosen else candidate.name
        cells = [name, DETECTOR_NAMES.get(candidate.detector, "-"), percent(entry.get("clean_accuracy"))]
        cells += [percent(item["attack_success_rate"]) for item in entry.get("poisoned", [])]
        cells += [percent(entry.get("detection_rate")), percent(entry.get("false_rejection_rate"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cleanse_line(entry):
    """The report's Neural Cleanse sentence."""
    text = (f"Neural Cleanse on B ({entry['classes']} classes, tune images): **{entry['verdict']}** (median norm "
            f"{entry['median']:.2f}, MAD {entry['mad']:.2f})")
    if not entry["flagged"]:
        return text + "; nothing to unlearn, so no NC-unlearned candidate. Details: `neural_cleanse/report.md`."
    flagged = ", ".join(f"class {row['class']} (index "
                        f"{'inf' if row['anomaly_index'] is None else format(row['anomaly_index'], '.2f')})"
                        for row in entry["flagged"])
    return (text + f"; flagged {flagged}: their reversed triggers were unlearned (`nc_unlearned`, kept epoch "
            f"{entry['unlearning']['best_epoch']}). Details: `neural_cleanse/report.md`.")


def _gate_lines(gates):
    """The report's lines on the gates other than STRIP alone (the STRIP line says STRIP's) and every gate's
    realised hold-out FRR."""
    if not gates:
        return []
    lines = ["Gates (each detector fitted on B with the tune part; realised FRR on the hold-out part):", ""]
    for name, entry in gates.items():
        text = (f"- {entry['detector']}: hold-out FRR {entry['holdout_frr'] * 100:.2f}% "
                f"({entry['holdout_rejected']} of {entry['holdout_images']}; target {entry['target_frr']:g})")
        if name == "badexpert":
            text += (f", threshold {entry['threshold']:.4f} ({entry['combination']} score; expert rate "
                     f"{entry['expert_rate']:g}, expert clean accuracy {entry['expert_accuracy'] * 100:.1f}%)")
        elif name == "both":
            text += (f", thresholds {entry['threshold']['strip']:.4f} bits and {entry['threshold']['badexpert']:.4f} "
                     f"at FRR shares {entry['shares']['strip']:g} / {entry['shares']['badexpert']:g}; joint FRR "
                     f"{entry['check']['false_rejection_rate'] * 100:.2f}% on its check split of the tune part")
        lines.append(text)
    return lines + [""]


def report_markdown(report):
    """The Markdown report: what was done, the choice and the figures per candidate."""
    candidates = [Candidate(**entry) for entry in report["candidates"]]
    split = report["split"]
    lines = [f"# goodnet repair of `{os.path.basename(report['model']) or 'model'}`", "",
             f"Chosen: **{report['chosen']}** (`{report['files'].get('chosen', '')}`), "
             f"rule: {report['choice_rule']}.", "",
             f"Clean validation split per class: {split['tune_images']} images to rank, prune, fine-tune and "
             f"calibrate STRIP; {split['holdout_images']} held out for early stopping, the figures below and the "
             "choice. Test data (if any) was read once, after the choice.", "",
             f"STRIP on B: {report['strip']['copies']} copies ({report['strip']['blend']} blend), threshold "
             f"{report['strip']['threshold']:.4f} bits at target FRR {report['options']['frr']:g} "
             f"({report['options']['threshold_method']} threshold: {report['strip']['calibration']['summary']}).",
             ""]
    lines += _gate_lines(report.get("gates", {}))
    if "neural_cleanse" in report:
        lines += [_cleanse_line(report["neural_cleanse"]), ""]
    lines += ["## Candidates", ""]
    lines += [f"- `{c.name}`: {c.description}" for c in candidates]
    lines += ["", "## Validation (hold-out clean part; poisoned validation files)", ""]
    lines += _table(report["validation"], candidates, report["chosen"])
    if report["not_eligible"]:
        lines += ["", "Not eligible:", ""] + [f"- `{name}`: {why}" for name, why in report["not_eligible"].items()]
    if "test" in report:
        lines += ["", "## Test (read once, after the choice)", ""]
        lines += _table(report["test"], candidates, report["chosen"])
    lines += ["", "Plots: `prune_curve.png`, `fineprune_curve.png`, `strip_entropy.png`, `candidates.png`.", ""]
    return "\n".join(lines)
