"""Certified thresholds on clean calibration scores: a target false rejection rate with a guarantee.

A run-time detector (STRIP, :mod:`goodnet.defenses.strip`; BaDExpert to come)
scores inputs and flags those whose score is below a threshold chosen on the
scores of clean calibration inputs. :func:`calibrate` chooses it for a target
false rejection rate (FRR) and says what the calibration set supports:

- "certified" (default): the k-th smallest of the n clean scores, with k the
  largest rank whose FRR is at most the target with probability
  ``confidence`` (an order-statistic / conformal bound, :func:`certified_rank`;
  Vovk et al., *Algorithmic Learning in a Random World*, 2005; Angelopoulos and
  Bates, *A Gentle Introduction to Conformal Prediction*, 2021);
- "normal": the target quantile of a normal distribution fitted to the scores
  (STRIP's paper, Gao et al., ACSAC 2019);
- "quantile": the empirical quantile.

Every method reports exact (Clopper-Pearson) bounds on the threshold's FRR
(:func:`frr_bounds`) in a :class:`Calibration`. The options' defaults live once,
in :class:`CalibrationOptions` (which a detector's option group extends, e.g.
:class:`goodnet.defenses.strip.StripOptions`).
"""

import dataclasses
import logging
import math
import statistics

import numpy as np

from goodnet.base import Interval, OneOf
from goodnet.errors import OptionError
from goodnet.options import option

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = ("certified", "normal", "quantile")


@dataclasses.dataclass(frozen=True)
class CalibrationOptions:
    """How a detector's threshold is calibrated on clean scores (the defaults of :func:`calibrate`)."""

    threshold_method: str = option(
        "certified", "certified: the order statistic of the clean calibration scores whose FRR is at most --frr "
        "with probability --confidence; normal: a normal fit (the STRIP paper's); quantile: the empirical quantile",
        rule=OneOf(THRESHOLD_METHODS), flag="--threshold")
    frr: float = option(0.01, "target false rejection rate on clean inputs",
                        rule=Interval(float, 0.0, 1.0, "neither"))
    confidence: float = option(0.95, "probability that the certified threshold's FRR is at most --frr; level of the "
                                     "reported FRR bounds", rule=Interval(float, 0.0, 1.0, "neither"))


_DEFAULTS = CalibrationOptions()
CALIBRATION_FIELDS = tuple(field.name for field in dataclasses.fields(CalibrationOptions))
"""The calibration fields every run-time detector's options share (STRIP's, BaDExpert's)."""
DEFAULT_WORDING = ("detector", "scores", "more clean calibration inputs")   # see Calibration.wording


def _check_rates(frr, confidence):
    """Raise OptionError (a ValueError) unless ``frr`` and ``confidence`` are in (0, 1)."""
    if not 0.0 < float(frr) < 1.0:
        raise OptionError(f"frr: expected a false rejection rate in (0, 1), got {frr}")
    if not 0.0 < float(confidence) < 1.0:
        raise OptionError(f"confidence: expected a probability in (0, 1), got {confidence}")


def certified_rank(n, frr, confidence=_DEFAULTS.confidence):
    """The largest rank k such that the k-th smallest of n clean scores certifies FRR <= ``frr``.

    Flagging inputs below the k-th smallest clean calibration score e_(k)
    rejects a new clean input with probability F(e_(k)), F the clean scores'
    distribution function. For continuous scores F(e_(k)) is Beta(k, n + 1 - k)
    distributed, and P(Beta(k, n + 1 - k) <= frr) = P(Binomial(n, frr) >= k),
    which decreases with k: the answer is the number of k in 1..n with
    P(Binomial(n, frr) >= k) >= ``confidence``. Ties among the scores only
    lower the rejection probability.

    Args:
        n: number of clean calibration scores.
        frr: target false rejection rate.
        confidence: required probability that the FRR is at most ``frr``.

    Returns:
        int: k in 1..n, or 0 when n is too small to certify the target at all
        (see :func:`calibration_size_needed`).
    """
    from scipy.special import bdtrc   # scipy.special: a fraction of scipy.stats's import time

    _check_rates(frr, confidence)
    if int(n) < 1:
        return 0
    tails = bdtrc(np.arange(int(n)), int(n), float(frr))   # P(Binomial(n, frr) > k - 1) for k = 1..n
    return int(np.count_nonzero(tails >= float(confidence)))


def calibration_size_needed(frr, confidence=_DEFAULTS.confidence):
    """The fewest clean calibration scores that can certify FRR <= ``frr`` at ``confidence``.

    Even the smallest score (k = 1) certifies the target only when
    1 - (1 - frr)^n >= confidence, that is n >= log(1 - confidence) / log(1 - frr)
    (299 for 1 % at 95 %, 598 for 0.5 %).
    """
    _check_rates(frr, confidence)

    def enough(n):
        return -math.expm1(n * math.log1p(-float(frr))) >= float(confidence)

    n = max(1, math.ceil(math.log1p(-float(confidence)) / math.log1p(-float(frr))))
    while n > 1 and enough(n - 1):   # the closed form up to float rounding, settled exactly
        n -= 1
    while not enough(n):
        n += 1
    return n


def frr_bounds(rejected, n, confidence=_DEFAULTS.confidence):
    """Exact (Clopper-Pearson) bounds on a false rejection rate from ``rejected`` of ``n`` clean inputs.

    Args:
        rejected: clean calibration inputs below the threshold.
        n: clean calibration inputs.
        confidence: level of the bounds.

    Returns:
        (upper, (lower, upper_two_sided)): the one-sided upper bound at
        ``confidence`` and the two-sided interval at ``confidence``. For a
        threshold at an order statistic (``rejected`` = k - 1) the one-sided
        bound is the ``confidence`` quantile of the FRR's Beta(k, n + 1 - k)
        law; for other thresholds it bounds the FRR of the next order
        statistic, which is at least the threshold's own.
    """
    from scipy.special import betaincinv   # the Beta quantile function

    rejected, n = int(rejected), int(n)
    if n < 1 or not 0 <= rejected <= n:
        raise OptionError(f"rejected: expected 0..n rejections of n >= 1 clean inputs, got {rejected} of {n}")
    tail = (1.0 - float(confidence)) / 2.0
    upper = 1.0 if rejected == n else float(betaincinv(rejected + 1, n - rejected, float(confidence)))
    lower = 0.0 if rejected == 0 else float(betaincinv(rejected, n - rejected + 1, tail))
    upper_two_sided = 1.0 if rejected == n else float(betaincinv(rejected + 1, n - rejected, 1.0 - tail))
    return upper, (lower, upper_two_sided)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How a detector's threshold was chosen on clean calibration scores, and what it guarantees.

    Attributes:
        threshold: inputs with a score below it are flagged.
        method: one of :data:`THRESHOLD_METHODS`.
        target_frr: the false rejection rate asked for.
        confidence: the level of the bounds (and of the certificate).
        n: clean calibration scores.
        rejected: of them, how many are below the threshold.
        rank: for "certified", the order statistic used (k-th smallest); else None.
        frr_upper_bound: one-sided upper bound on the threshold's FRR at ``confidence``.
        frr_interval: two-sided exact interval on the FRR at ``confidence``.
        target_confidence: P(FRR <= target) as the calibration supports it,
            P(Binomial(n, target) >= rejected + 1).
        certified: whether ``target_confidence`` reaches ``confidence``.
        n_needed: the fewest calibration scores that can certify the target
            (:func:`calibration_size_needed`).
        wording: (detector, what its scores are, how to get more of them) for
            :meth:`warning`, e.g. ("STRIP", "entropies", "more clean validation
            images or a smaller bank"); not part of :meth:`describe`.
    """

    threshold: float
    method: str
    target_frr: float
    confidence: float
    n: int
    rejected: int
    rank: object
    frr_upper_bound: float
    frr_interval: tuple
    target_confidence: float
    certified: bool
    n_needed: int
    wording: tuple = dataclasses.field(default=DEFAULT_WORDING, compare=False, repr=False)

    @property
    def too_small(self):
        """Whether the calibration set is too small to certify the target by any threshold."""
        return self.n < self.n_needed

    def warning(self):
        """A one-line warning when the calibration set is too small to certify the target, else None."""
        if not self.too_small:
            return None
        detector, scores, remedy = self.wording
        return (f"{detector} calibration: {self.n} clean {scores} cannot certify FRR <= {self.target_frr * 100:g} % "
                f"at {self.confidence * 100:g} % confidence: expected at least {self.n_needed} ({remedy}); the "
                f"{self.method} threshold's FRR is at most {self.frr_upper_bound * 100:.2f} % at that confidence")

    def summary(self):
        """One line: calibration rejections, interval, upper bound and whether the target is certified."""
        level = f"{self.confidence * 100:g} %"
        return (f"{self.rejected} of {self.n} clean calibration inputs below the threshold; FRR {level} interval "
                f"{self.frr_interval[0] * 100:.2f}-{self.frr_interval[1] * 100:.2f} %, at most "
                f"{self.frr_upper_bound * 100:.2f} % at {level} confidence "
                f"({'certified' if self.certified else 'not certified'}: target {self.target_frr * 100:g} %)")

    def describe(self):
        """JSON-ready dict of every attribute, plus ``summary`` and ``warning`` (None unless the set is too small)."""
        entry = dataclasses.asdict(self)
        del entry["wording"]
        entry["frr_interval"] = list(self.frr_interval)
        entry["summary"] = self.summary()
        entry["warning"] = self.warning()
        return entry


def calibrate(clean_scores, frr=_DEFAULTS.frr, method=_DEFAULTS.threshold_method, confidence=_DEFAULTS.confidence,
              wording=DEFAULT_WORDING):
    """Choose the score threshold for target false rejection rate ``frr`` on clean calibration scores.

    Methods:

    - "certified" (default): the k-th smallest score, k = :func:`certified_rank`:
      its FRR is at most ``frr`` with probability ``confidence`` over the draw of
      the calibration set (a conformal / order-statistic bound). When no rank
      certifies the target (fewer than :func:`calibration_size_needed`
      scores) the smallest score is used and a warning is logged;
    - "normal": the ``frr`` quantile of a normal distribution fitted to the
      scores (STRIP's paper);
    - "quantile": the empirical ``frr`` quantile (``numpy.quantile``).

    A normal fit or a plain quantile from a few hundred scores misses a 1 %
    target by sampling noise and by the scores' skew (STRIP entropies have a
    long low tail); the certified rank trades a little detection for the
    guarantee.

    Args:
        clean_scores: scores (STRIP: entropies) of clean calibration inputs (never test inputs).
        frr: target false rejection rate.
        method: one of :data:`THRESHOLD_METHODS`.
        confidence: probability required of the certificate; level of the reported bounds.
        wording: see :class:`Calibration` (how the too-small warning names things).

    Returns:
        Calibration
    """
    if method not in THRESHOLD_METHODS:
        raise OptionError(f"threshold_method: expected one of {THRESHOLD_METHODS}, got {method!r}")
    _check_rates(frr, confidence)
    values = np.asarray(clean_scores, dtype=np.float64).ravel()
    if len(values) < 1 or not np.all(np.isfinite(values)):
        raise OptionError(f"clean_scores: expected at least one finite score, got {len(values)} values")
    rank = None
    if method == "certified":
        rank = max(1, certified_rank(len(values), frr, confidence))
        threshold = float(np.partition(values, rank - 1)[rank - 1])
    elif method == "normal":
        if len(values) < 2:
            raise OptionError(f"clean_scores: the normal fit expects at least 2 scores, got {len(values)}")
        threshold = float(statistics.NormalDist(values.mean(), values.std(ddof=1)).inv_cdf(frr))
    else:
        threshold = float(np.quantile(values, frr))
    from scipy.special import bdtrc

    rejected = int(np.count_nonzero(values < threshold))
    upper, interval = frr_bounds(rejected, len(values), confidence)
    target_confidence = float(bdtrc(rejected, len(values), float(frr)))   # P(Binomial(n, frr) > rejected)
    calibration = Calibration(threshold=threshold, method=method, target_frr=float(frr),
                              confidence=float(confidence), n=int(len(values)), rejected=rejected, rank=rank,
                              frr_upper_bound=upper, frr_interval=tuple(interval),
                              target_confidence=target_confidence, certified=target_confidence >= float(confidence),
                              n_needed=calibration_size_needed(frr, confidence), wording=tuple(wording))
    if calibration.too_small:
        logger.warning("%s", calibration.warning())
    return calibration


def threshold_for(clean_scores, frr=_DEFAULTS.frr, method=_DEFAULTS.threshold_method,
                  confidence=_DEFAULTS.confidence):
    """The score threshold for target false rejection rate ``frr``: ``calibrate(...).threshold``.

    Args:
        clean_scores: scores (STRIP: entropies) of clean inputs.
        frr: target false rejection rate.
        method: "certified" (default), "normal" (quantile of a fitted normal, the STRIP paper) or "quantile"
            (empirical).
        confidence: for "certified", the probability that the FRR is at most ``frr``.

    Returns:
        float: the threshold.
    """
    return calibrate(clean_scores, frr, method, confidence).threshold
