"""goodnet.calibration: certified thresholds and FRR bounds against slow references, coverage on a skewed law."""

import statistics

import numpy as np
import pytest

from goodnet.calibration import (CalibrationOptions, calibrate, calibration_size_needed, certified_rank, frr_bounds,
                                 threshold_for)


def test_threshold_methods_match_references():
    rng = np.random.default_rng(4)
    values = rng.normal(2.0, 0.5, 1000)
    z = statistics.NormalDist().inv_cdf(0.01)
    assert threshold_for(values, 0.01, "normal") == pytest.approx(values.mean() + z * values.std(ddof=1))
    assert z == pytest.approx(-2.3263478740, abs=1e-8)
    assert threshold_for(values, 0.01, "quantile") == pytest.approx(np.sort(values)[int(0.01 * 999)], abs=0.02)
    with pytest.raises(ValueError, match="threshold_method"):
        threshold_for(values, 0.01, "mean")


def _reference_rank(n, frr, confidence):
    """Slow and obvious: the largest k whose order statistic's FRR, Beta(k, n + 1 - k), is <= frr w.p. confidence."""
    from scipy.stats import beta

    best = 0
    for k in range(1, n + 1):
        if beta.cdf(frr, k, n + 1 - k) >= confidence:
            best = k
    return best


def _plain_binomial_tail(n, frr, k):
    """P(Binomial(n, frr) >= k) summed term by term (plain math)."""
    import math

    return 1.0 - sum(math.comb(n, j) * frr ** j * (1 - frr) ** (n - j) for j in range(k))


@pytest.mark.parametrize("n, frr, confidence", [(350, 0.01, 0.95), (500, 0.01, 0.95), (900, 0.005, 0.95),
                                                (1000, 0.01, 0.9), (2000, 0.02, 0.99), (120, 0.05, 0.8),
                                                (350, 0.005, 0.95), (10, 0.01, 0.95)])
def test_certified_rank_and_threshold_match_a_slow_reference(n, frr, confidence):
    expected = _reference_rank(n, frr, confidence)
    assert certified_rank(n, frr, confidence) == expected
    if expected:
        assert _plain_binomial_tail(n, frr, expected) >= confidence > _plain_binomial_tail(n, frr, expected + 1)
    values = np.random.default_rng(n).gamma(3.0, 1.0, n)
    calibration = calibrate(values, frr, "certified", confidence)
    assert calibration.threshold == np.sort(values)[max(expected, 1) - 1]
    assert calibration.rank == max(expected, 1) and calibration.rejected == max(expected, 1) - 1
    assert calibration.certified == (expected > 0)
    if expected:   # the certificate: the FRR's Beta(k, n + 1 - k) quantile at the confidence is within the target
        from scipy.stats import beta

        assert calibration.frr_upper_bound == pytest.approx(beta.ppf(confidence, expected, n + 1 - expected))
        assert calibration.frr_upper_bound <= frr
    assert threshold_for(values, frr, "certified", confidence) == calibration.threshold


def test_calibration_size_needed_and_bounds_match_references():
    from scipy.stats import beta


    for frr, confidence in [(0.01, 0.95), (0.005, 0.95), (0.02, 0.9), (0.05, 0.99)]:
        # k = 1 (the smallest entropy) is the last rank to certify the target as n falls
        needed = next(n for n in range(1, 5000) if beta.cdf(frr, 1, n) >= confidence)
        assert calibration_size_needed(frr, confidence) == needed
    assert (calibration_size_needed(0.01), calibration_size_needed(0.005)) == (299, 598)
    upper, (lower, upper_two) = frr_bounds(3, 400, 0.95)
    assert upper == pytest.approx(beta.ppf(0.95, 4, 397)) and lower == pytest.approx(beta.ppf(0.025, 3, 398))
    assert upper_two == pytest.approx(beta.ppf(0.975, 4, 397)) and lower < 3 / 400 < upper < upper_two
    assert frr_bounds(0, 50)[1][0] == 0.0 and frr_bounds(50, 50)[0] == 1.0
    with pytest.raises(ValueError, match="rejected"):
        frr_bounds(5, 4)


@pytest.mark.parametrize("n", [350, 1000])
def test_certified_threshold_keeps_the_true_frr_within_the_target_with_the_confidence(n):
    """Entropies from a known left-skewed law: over many calibration sets, the share whose true FRR exceeds the
    target is at most 1 - confidence (up to sampling slack); the paper's normal fit and the plain quantile miss."""
    from scipy.stats import skewnorm


    law = skewnorm(-5.0, loc=2.5, scale=0.6)   # a long low tail, like STRIP entropies
    sets, frr, confidence = 1000, 0.01, 0.95
    draws = law.rvs(size=(sets, n), random_state=np.random.default_rng(n))
    true = {method: law.cdf([calibrate(values, frr, method, confidence).threshold for values in draws])
            for method in ("certified", "normal", "quantile")}
    slack = 3 * np.sqrt((1 - confidence) * confidence / sets)
    assert np.mean(true["certified"] > frr) <= 1 - confidence + slack
    assert np.mean(true["certified"]) > 0.2 * frr, "the certificate is not a trivially low threshold"
    assert np.mean(true["quantile"] > frr) > 0.3          # the plain quantile misses about half the time
    assert np.mean(true["normal"] > frr) > 0.5            # the normal fit ignores the skew


def test_too_small_calibration_set_warns_and_says_what_n_is_needed(caplog):
    import logging


    values = np.random.default_rng(2).gamma(3.0, 1.0, 298)
    with caplog.at_level(logging.WARNING, logger="goodnet.calibration"):
        small = calibrate(values, 0.01, "certified", 0.95)
    assert not small.certified and small.too_small and small.n_needed == 299
    assert small.threshold == values.min() and small.rank == 1
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "298" in warnings[0] and "at least 299" in warnings[0]
    assert small.describe()["warning"] == warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="goodnet.calibration"):
        enough = calibrate(np.append(values, 9.0), 0.01, "certified", 0.95)
    assert enough.certified and not enough.too_small and enough.describe()["warning"] is None
    assert not [record for record in caplog.records if record.levelno == logging.WARNING]


def test_the_warning_names_the_detector_and_its_scores():
    values = np.random.default_rng(2).gamma(3.0, 1.0, 80)
    strip = calibrate(values, 0.01, "certified", 0.95, ("STRIP", "entropies", "more clean validation images"))
    assert strip.warning().startswith("STRIP calibration: 80 clean entropies cannot certify FRR <= 1 %")
    assert "(more clean validation images)" in strip.warning() and "wording" not in strip.describe()
    assert calibrate(values, 0.01, "certified", 0.95).warning().startswith("detector calibration: 80 clean scores")
    assert strip == calibrate(values, 0.01, "certified", 0.95)   # the wording is not part of the result


def test_defaults_come_from_calibration_options():
    import inspect

    defaults = CalibrationOptions()
    assert (defaults.threshold_method, defaults.frr, defaults.confidence) == ("certified", 0.01, 0.95)
    signature = inspect.signature(calibrate).parameters
    assert (signature["frr"].default, signature["method"].default, signature["confidence"].default) == \
        (defaults.frr, defaults.threshold_method, defaults.confidence)
    for function in (certified_rank, calibration_size_needed, frr_bounds):
        assert inspect.signature(function).parameters["confidence"].default == defaults.confidence
