"""One gate from two run-time detectors: an input is flagged when STRIP or BaDExpert flags it.

Their blind spots differ (STRIP misses triggers spread over the whole image,
BaDExpert needs the backdoor to survive fine-tuning on wrong labels), so the
gate flags an input when either detector does. The false rejection budget is
shared: each detector is calibrated at its share of the target FRR
(``strip_share`` for STRIP, the rest for BaDExpert) by the calibrated-quantile
rule of :mod:`goodnet.calibration`; the joint FRR is at most the sum of the
two (the union bound), so each detector's certificate at its share bounds the
gate's FRR by the target. The realised joint FRR is then measured on a second
clean split that neither detector was calibrated on (``check_fraction`` of
``fit``'s clean set, per class, or the ``check`` data given to ``fit``), with
its exact (Clopper-Pearson) bounds.

Example:
    >>> gate = EitherDetector(frr=0.01).fit(badnet, valid)
    >>> gate.check_["false_rejection_rate"], gate.predict_trojaned(poisoned.images)
"""

import dataclasses
import logging

import numpy as np

from goodnet.base import Defense, InstanceOf, Interval, check_is_fitted
from goodnet.calibration import CalibrationOptions, frr_bounds
from goodnet.errors import DataError
from goodnet.options import constraints_of, option

logger = logging.getLogger(__name__)

DETECTORS = ("strip", "badexpert")


@dataclasses.dataclass(frozen=True)
class EitherOptions:
    """How the combined gate shares the FRR budget and checks it (``goodnet detect --method both``)."""

    strip_share: float = option(0.5, "share of the FRR budget given to STRIP (the rest to BaDExpert)",
                                rule=Interval(float, 0.0, 1.0, "neither"))
    check_fraction: float = option(0.3, "share of each class of --valid held out to check the joint FRR when "
                                        "there is no --test", rule=Interval(float, 0.0, 1.0, "neither"))


_DEFAULTS = EitherOptions()
_CALIBRATION = CalibrationOptions()


class EitherDetector(Defense):
    """STRIP or BaDExpert: flagged when either flags (the :mod:`goodnet.base` estimator contract).

    Parameters: ``frr`` (the gate's target), ``strip_share`` and
    ``check_fraction`` (:class:`EitherOptions`), ``strip`` and ``badexpert``
    (:class:`goodnet.defenses.strip.StripOptions` and
    :class:`goodnet.defenses.badexpert.BaDExpertOptions`, their ``frr``
    replaced by the share; None: the defaults), ``seed`` (the check split),
    ``progress``.

    Attributes (after ``fit``):
        strip_, badexpert_: the fitted detectors.
        shares_: {"strip": FRR, "badexpert": FRR} each was calibrated at.
        check_: the joint FRR on the check split: ``false_rejection_rate``, ``rejected``, ``n``,
            ``frr_upper_bound``, ``frr_interval``, ``confidence``, per-detector rates and ``source``.
    """

    _parameter_constraints = {"frr": list(constraints_of(CalibrationOptions)["frr"]),
                              **constraints_of(EitherOptions), "seed": [Interval(int, 0)],
                              "strip": [InstanceOf(object), None], "badexpert": [InstanceOf(object), None],
                              "progress": [InstanceOf(bool), None]}

    def __init__(self, frr=_CALIBRATION.frr, strip_share=_DEFAULTS.strip_share,
                 check_fraction=_DEFAULTS.check_fraction, strip=None, badexpert=None, seed=0, progress=None):
        self.frr = frr
        self.strip_share = strip_share
        self.check_fraction = check_fraction
        self.strip = strip
        self.badexpert = badexpert
        self.seed = seed
        self.progress = progress

    def fit(self, classifier, clean, check=None):
        """Fit both detectors at their shares of ``frr`` and measure the joint FRR on clean check data.

        Args:
            classifier: the :class:`goodnet.models.Classifier` to watch.
            clean: labelled clean validation data (:class:`goodnet.data.LabData`).
            check: clean data for the joint FRR check (a LabData or an open LabFile); default:
                ``check_fraction`` of ``clean`` held out per class (then never used to fit).

        Returns:
            self
        """
        from goodnet.data import LabData
        from goodnet.defenses.badexpert import BaDExpert, BaDExpertOptions
        from goodnet.defenses.fine_pruning import split_holdout
        from goodnet.defenses.strip import STRIP, StripOptions

        self._validate_params()
        strip_options = self.strip if self.strip is not None else StripOptions()
        expert_options = self.badexpert if self.badexpert is not None else BaDExpertOptions()
        for name, value, kind in (("strip", strip_options, StripOptions), ("badexpert", expert_options,
                                                                         BaDExpertOptions)):
            if not isinstance(value, kind):
                raise DataError(f"EitherDetector: {name}: expected a {kind.__name__} or None, got "
                                f"{type(value).__name__}")
        self.shares_ = {"strip": float(self.frr) * float(self.strip_share),
                        "badexpert": float(self.frr) * (1.0 - float(self.strip_share))}
        source = "given"
        if check is None:
            labels = np.asarray(clean.labels)
            fit_part, check_part = split_holdout(labels, float(self.check_fraction), int(self.seed))
            check = clean.subset(check_part) if hasattr(clean, "subset") else LabData(
                clean.images[check_part], labels[check_part])
            clean = clean.subset(fit_part) if hasattr(clean, "subset") else LabData(
                clean.images[fit_part], labels[fit_part])
            source = f"held out of the validation data ({len(check_part)} of {len(labels)})"
        self.strip_ = STRIP.from_options(dataclasses.replace(strip_options, frr=self.shares_["strip"]),
                                         progress=self.progress).fit(classifier, clean.images)
        self.badexpert_ = BaDExpert.from_options(dataclasses.replace(expert_options, frr=self.shares_["badexpert"]),
                                                 progress=self.progress).fit(classifier, clean)
        flags = self.flags(check, seed=self.strip_.seed + 2)   # STRIP's test draws, as goodnet strip and detect
        joint = flags["strip"] | flags["badexpert"]
        confidence = float(strip_options.confidence)
        upper, interval = frr_bounds(int(joint.sum()), len(joint), confidence)
        self.check_ = {"source": source, "n": int(len(joint)), "rejected": int(joint.sum()),
                       "false_rejection_rate": float(joint.mean()), "target_frr": float(self.frr),
                       "frr_upper_bound": upper, "frr_interval": list(interval), "confidence": confidence,
                       "strip_false_rejection_rate": float(flags["strip"].mean()),
                       "badexpert_false_rejection_rate": float(flags["badexpert"].mean())}
        logger.info("either gate: joint FRR %.4f on %d clean check inputs (at most %.4f at %g confidence)",
                    self.check_["false_rejection_rate"], len(joint), upper, confidence)
        return self

    def flags(self, images, seed=None):
        """{"strip": flags, "badexpert": flags} for each input (images, LabData or an open LabFile)."""
        check_is_fitted(self, "badexpert_")
        return {"strip": np.asarray(self.strip_.predict_trojaned(images, seed=seed)),
                "badexpert": np.asarray(self.badexpert_.predict_trojaned(images))}

    def predict_trojaned(self, images, seed=None):
        """Whether each input is flagged by STRIP or by BaDExpert."""
        flags = self.flags(images, seed)
        return flags["strip"] | flags["badexpert"]

    def summary(self):
        """JSON-ready: the parameters and, once fitted, both detectors' summaries and the joint check."""
        entry = super().summary()
        if hasattr(self, "check_"):
            entry.update({"shares": dict(self.shares_), "check": dict(self.check_),
                          "strip": self.strip_.summary(), "badexpert": self.badexpert_.summary()})
        return entry

