"""The DP-SGD privacy accountant: goodnet's own RDP against the definition and dp-accounting, the published MNIST
figures under both conversions, monotonicity, the noise search and the option rules."""

import dataclasses
import math

import numpy as np
import pytest

from goodnet import privacy
from goodnet.errors import OptionError
from goodnet.options import validate_options
from goodnet.privacy import (DEFAULT_ORDERS, PrivacyOptions, classic_epsilon, dp_accounting_epsilon,
                             dp_accounting_rdp, epsilon_of, noise_for_epsilon, privacy_budget, rdp_composed,
                             rdp_sampled_gaussian, steps_for, tight_epsilon, validate_privacy_options)

MNIST = PrivacyOptions(examples=60000, batch_size=256, noise_multiplier=1.1, epochs=60, delta=1e-5)
SETTINGS = [(256 / 60000, 1.1), (0.01, 0.7), (0.05, 2.0), (0.001, 4.0)]   # (q, noise multiplier)
ORDERS = np.array(DEFAULT_ORDERS)
INTEGER = np.array([float(order).is_integer() for order in DEFAULT_ORDERS])


def test_steps_round_up_in_exact_arithmetic():
    assert 60 * 60000 / 256 == 14062.5 and steps_for(60000, 256, 60) == 14063
    assert steps_for(1000, 100, 0.3) == 3 and steps_for(1000, 100, 0.1) == 1   # 0.3 * 10 is 3.0000000000000004
    assert steps_for(1000, 100, 0.31) == 4 and steps_for(10, 10, 1e-9) == 1
    assert privacy.sampling_probability(60000, 256) == 256 / 60000


@pytest.mark.parametrize("q, sigma", SETTINGS + [(0.3, 1.0), (0.9, 0.5)])
def test_series_is_the_integral_of_the_definition(q, sigma):
    orders = [1.1, 1.5, 2.0, 2.5, 3.0, 3.7, 8.0, 8.8, 10.9, 32.0, 63.0, 256.0]
    series = rdp_sampled_gaussian(q, sigma, orders)
    integral = rdp_sampled_gaussian(q, sigma, orders, method="integral")
    np.testing.assert_allclose(series, integral, rtol=1e-9)
    assert np.all(np.diff(series) > 0)    # RDP grows with the order


def test_the_series_falls_back_to_the_integral_where_it_converges_too_slowly():
    # q = 0.3 at order 1.1: the terms decay only polynomially, past 2^16 terms
    assert privacy._log_a_fractional(0.3, 1.0, 1.1) is None
    value = rdp_sampled_gaussian(0.3, 1.0, [1.1])[0]
    assert math.isfinite(value) and value == rdp_sampled_gaussian(0.3, 1.0, [1.1], method="integral")[0]


def test_special_cases():
    np.testing.assert_allclose(rdp_sampled_gaussian(1.0, 2.0, [2, 4.5]), [2 / 8, 4.5 / 8])   # no subsampling
    assert np.all(rdp_sampled_gaussian(0.0, 2.0, [2, 4.5]) == 0)
    assert np.all(np.isinf(rdp_sampled_gaussian(0.1, 0.0, [2, 4.5])))
    # subsampling only helps: below the Gaussian's alpha / (2 sigma^2) at every order
    assert np.all(rdp_sampled_gaussian(0.1, 1.0, ORDERS) < ORDERS / 2)
    np.testing.assert_allclose(rdp_composed(0.01, 1.0, 7, [3.5]), 7 * rdp_sampled_gaussian(0.01, 1.0, [3.5]))


@pytest.mark.parametrize("q, sigma", SETTINGS)
def test_own_rdp_agrees_with_dp_accounting(q, sigma):
    steps = 1000
    ours = rdp_composed(q, sigma, steps, ORDERS)
    theirs = dp_accounting_rdp(q, sigma, steps, ORDERS)
    np.testing.assert_allclose(ours[INTEGER], theirs[INTEGER], rtol=1e-9)
    # Fractional orders: dp-accounting 0.6 adds the series' terms with |C(alpha, i)| (an upper bound); ours keeps
    # the signs and is the integral of the definition (above). Where the negative terms are negligible (high
    # fractional orders) the two agree; everywhere dp-accounting's is the same series summed without signs.
    # (The unsigned series is compared where it converges within its 2^16 terms.)
    fractional = ORDERS[~INTEGER]
    unsigned = [privacy._log_a_fractional(q, sigma, alpha, signed=False) for alpha in fractional]
    summed = np.array([value is not None for value in unsigned])
    unsigned = steps * np.array([value for value in unsigned if value is not None]) / (fractional[summed] - 1)
    assert summed.sum() >= 80    # of 90
    assert np.all(theirs[~INTEGER] >= ours[~INTEGER] * (1 - 1e-9))
    assert (np.allclose(theirs[~INTEGER][summed], unsigned, rtol=1e-6)
            or np.allclose(theirs[~INTEGER], ours[~INTEGER], rtol=1e-6))
    high = fractional > 9
    np.testing.assert_allclose(ours[~INTEGER][high], theirs[~INTEGER][high], rtol=1e-6)


def test_binomial_signs():
    from scipy.special import binom

    i = np.arange(12)
    for alpha in (1.1, 2.5, 3.7):
        assert np.array_equal(privacy._binomial_signs(alpha, i), np.sign(binom(alpha, i)))


def test_published_mnist_setting():
    budget = privacy_budget(MNIST)
    assert budget.steps == 14063 and budget.sampling_probability == 256 / 60000
    assert round(budget.classic.epsilon, 2) == 3.01      # TensorFlow Privacy's published figure
    assert round(budget.tight.epsilon, 2) == 2.60        # dp-accounting's RdpAccountant
    assert (budget.classic.order, budget.tight.order) == (8.8, 8.1)
    assert budget.classic.label == "RDP, classic conversion (Mironov 2017)"
    assert budget.tight.label == "RDP, dp-accounting's conversion (tighter)"
    # the tight conversion restated on goodnet's own RDP gives the same epsilon (the best order is fractional)
    rdp = rdp_composed(256 / 60000, 1.1, 14063, ORDERS)
    epsilon, order = tight_epsilon(ORDERS, rdp, 1e-5)
    assert order == 8.1 and epsilon == pytest.approx(budget.tight.epsilon, rel=1e-6)
    assert budget.warnings() == []


def test_classic_conversion_by_hand():
    # orders 2 and 3 with RDP 1 and 2, delta e^-2: 1 + 2/1 = 3 and 2 + 2/2 = 3.0 -> 3; with RDP 1 and 1.5: 2.5 at 3
    assert classic_epsilon([2, 3], [1, 2], math.exp(-2)) == (pytest.approx(3.0), 2.0)
    assert classic_epsilon([2, 3], [1, 1.5], math.exp(-2)) == (pytest.approx(2.5), 3.0)
    with pytest.raises(OptionError, match="delta"):
        classic_epsilon([2], [1], 0.0)
    with pytest.raises(OptionError, match="orders"):
        classic_epsilon([1.0], [1], 0.5)


def test_tight_conversion_is_dp_accounting_s():
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    generator = np.random.default_rng(0)
    for _ in range(20):
        orders = np.sort(generator.uniform(1.005, 100, 30))
        rdp = generator.uniform(0, 3, 30) * orders
        delta = 10 ** generator.uniform(-9, -2)
        ours, theirs = tight_epsilon(orders, rdp, delta), compute_epsilon(orders, rdp, delta)
        assert ours[0] == pytest.approx(theirs[0], rel=1e-12) and ours[1] == theirs[1]
        assert ours[0] < classic_epsilon(orders, rdp, delta)[0]   # tighter than the classic conversion
    assert tight_epsilon([2.0], [1e-12], 0.5)[0] == 0.0           # the KL bound already gives delta


@pytest.mark.parametrize("conversion", ["classic", "tight"])
def test_epsilon_falls_with_noise_and_grows_with_epochs(conversion):
    setting = dataclasses.replace(MNIST, epochs=5)
    by_noise = [epsilon_of(dataclasses.replace(setting, noise_multiplier=noise), conversion).epsilon
                for noise in (0.6, 0.8, 1.1, 1.5, 3.0)]
    by_epochs = [epsilon_of(dataclasses.replace(setting, epochs=epochs), conversion).epsilon
                 for epochs in (0.5, 1, 5, 20)]
    by_delta = [epsilon_of(dataclasses.replace(setting, delta=delta), conversion).epsilon for delta in (1e-7, 1e-5)]
    assert np.all(np.diff(by_noise) < 0) and np.all(np.diff(by_epochs) > 0) and by_delta[0] > by_delta[1]


@pytest.mark.parametrize("conversion", ["classic", "tight"])
def test_noise_for_epsilon_round_trip(conversion):
    for target in (1.0, 3.0):
        found = noise_for_epsilon(target, MNIST, conversion)
        assert found.conversion == conversion and found.epsilon <= target
        below = epsilon_of(dataclasses.replace(MNIST, noise_multiplier=found.noise_multiplier * (1 - 1e-5)),
                           conversion)
        assert below.epsilon > target                         # the smallest such noise, to the tolerance
    reached = epsilon_of(MNIST, conversion).epsilon           # the noise 1.1 reaches its own epsilon back
    found = noise_for_epsilon(reached, dataclasses.replace(MNIST, noise_multiplier=3.0), conversion)
    assert found.noise_multiplier == pytest.approx(1.1, rel=1e-5)


def test_noise_for_epsilon_refuses_what_it_cannot_reach():
    with pytest.raises(OptionError, match="target_epsilon: no noise multiplier up to 10000"):
        noise_for_epsilon(1e-9, MNIST)
    with pytest.raises(OptionError, match="reached already at noise multiplier 0.01"):
        noise_for_epsilon(1e12, MNIST)
    for bad in (0, -1.0, math.nan, math.inf, True, "3"):
        with pytest.raises(OptionError, match="target_epsilon: expected a number > 0"):
            noise_for_epsilon(bad, MNIST)


def test_options_defaults_and_rules():
    assert validate_options(PrivacyOptions()) == PrivacyOptions() and PrivacyOptions().examples is None
    assert (MNIST.batch_size, MNIST.noise_multiplier, MNIST.epochs, MNIST.delta) == (256, 1.1, 60, 1e-5)
    assert PrivacyOptions().orders == DEFAULT_ORDERS and len(DEFAULT_ORDERS) == 156
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    assert DEFAULT_ORDERS == tuple(float(order) for order in DEFAULT_RDP_ORDERS)
    assert validate_privacy_options(MNIST) is MNIST
    cases = [({"examples": None}, "examples: required"),
             ({"batch_size": 60001}, "batch_size: expected at most examples (60000), got 60001"),
             ({"delta": 1.0}, "delta: expected a number in (0, 1), got 1.0"),
             ({"delta": 0.0}, "delta: expected a number in (0, 1)"),
             ({"noise_multiplier": 0.0}, "noise_multiplier: expected a number > 0"),
             ({"epochs": 0}, "epochs: expected a number > 0"),
             ({"examples": 0}, "examples: expected an integer >= 1"),
             ({"orders": (2.0, 1.0)}, "orders: expected a non-empty sequence, each a number > 1"),
             ({"orders": ()}, "orders: expected a non-empty sequence")]
    for change, message in cases:
        options = dataclasses.replace(MNIST, **change)
        with pytest.raises(OptionError) as error:
            validate_privacy_options(options)
        assert str(error.value).startswith(message)
        with pytest.raises(OptionError) as error:
            validate_privacy_options(options, flags=True)
        assert str(error.value).startswith("--" + message.replace("_", "-").replace("examples (", "--examples ("))
        with pytest.raises(OptionError):
            privacy_budget(options)


def test_rdp_input_errors():
    with pytest.raises(OptionError, match="method"):
        rdp_sampled_gaussian(0.1, 1.0, [2], method="fast")
    with pytest.raises(OptionError, match="q: expected a sampling rate"):
        rdp_sampled_gaussian(1.5, 1.0, [2])
    with pytest.raises(OptionError, match="orders"):
        rdp_sampled_gaussian(0.1, 1.0, [1.0])
    with pytest.raises(OptionError, match="delta"):
        dp_accounting_epsilon(0.1, 1.0, 10, 0.0)


def test_warnings():
    small = PrivacyOptions(examples=1000, batch_size=10, delta=1e-2, orders=(2.0, 3.0))
    notes = privacy_budget(small).warnings()
    assert notes[0].startswith("delta 0.01 is not below 1/N = 0.001")
    assert any("best order 3 is at the end" in note for note in notes)
    assert privacy_budget(small).to_dict()["warnings"] == notes
