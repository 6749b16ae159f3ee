"""Privacy accounting for DP-SGD: the RDP of the Poisson-subsampled Gaussian mechanism and its (epsilon, delta).

DP-SGD (Abadi et al. 2016) samples each step's batch by Poisson sampling at
rate ``q = batch_size / examples``, clips every example's gradient to L2 norm
C and adds Gaussian noise of standard deviation ``noise_multiplier * C``. One
step is the Poisson-subsampled Gaussian mechanism; its Renyi differential
privacy (RDP) at order alpha is ``log(A_alpha) / (alpha - 1)`` with

    A_alpha = E_{z ~ mu0} [ (mu(z) / mu0(z)) ** alpha ],
    mu0 = N(0, sigma^2),  mu1 = N(1, sigma^2),  mu = (1 - q) mu0 + q mu1

(Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled
Gaussian Mechanism"; add-or-remove-one neighbours). RDP adds up over steps,
and an (epsilon, delta) guarantee follows by minimising over the orders:

- the classic conversion (Mironov 2017, Proposition 3):
  ``epsilon = min_alpha RDP(alpha) + log(1 / delta) / (alpha - 1)``;
- the tighter conversion that ``dp-accounting`` uses (Canonne, Kamath, Steinke
  2020, Proposition 12; Asoodeh et al. 2020):
  ``epsilon = min_alpha RDP(alpha) + log(1 - 1/alpha) - log(delta * alpha) / (alpha - 1)``.

goodnet computes ``A_alpha`` itself (:func:`rdp_sampled_gaussian`): at integer
orders by the binomial expansion, at fractional orders by the two-sided
series of Mironov, Talwar and Zhang (Section 3.3), both summed in log space
(``method="series"``); ``method="integral"`` integrates the definition above
numerically, the slow check of both series. The tight figure comes from
``dp-accounting``'s ``RdpAccountant`` (:func:`dp_accounting_epsilon`);
:func:`tight_epsilon` restates its conversion on goodnet's own RDP values,
and the tests check that the two agree.

At integer orders goodnet's and dp-accounting's RDP agree to about 1e-12.
At fractional orders dp-accounting 0.6 sums the series with the absolute
values of the generalized binomial coefficients (TensorFlow Privacy, whose
accountant it comes from, subtracted the negative ones): an upper bound, so
its epsilon is conservative, but up to 2.4 % above the integral of the
definition at order 1.1 in the MNIST setting (20 % at q = 0.05, sigma = 2);
goodnet's signed series matches the integral to about 1e-12. Both series add
terms in log space, so their error is about 1e-15 absolute in log A per step:
relatively large only where one step's RDP is itself below about 1e-9.

For the published TensorFlow Privacy MNIST setting (60,000 examples, batch
256, noise 1.1, 60 epochs: 14,063 steps; delta 1e-5) the classic conversion
gives epsilon 3.01 and the tighter one 2.60.

Example:
    >>> budget = privacy_budget(PrivacyOptions(examples=60000, batch_size=256, noise_multiplier=1.1, epochs=60))
    >>> budget.steps, round(budget.classic.epsilon, 2), round(budget.tight.epsilon, 2)
    (14063, 3.01, 2.6)
"""

import dataclasses
import fractions
import math

import numpy as np

from goodnet.base import Interval, SequenceOf, validate_params
from goodnet.errors import InputError, OptionError, plain
from goodnet.options import constraints_of, option

# The orders dp-accounting's RdpAccountant uses by default: 1.1 to 10.9 in steps of 0.1, 11 to 63, 128 to 1024.
DEFAULT_ORDERS = tuple([round(1 + x / 10, 1) for x in range(1, 100)] + [float(order) for order in range(11, 64)]
                       + [128.0, 256.0, 512.0, 1024.0])
ORDERS_TEXT = "1.1 1.2 ... 10.9 11 12 ... 63 128 256 512 1024 (dp-accounting's)"

CONVERSIONS = ("classic", "tight")
LABELS = {"classic": "RDP, classic conversion (Mironov 2017)",
          "tight": "RDP, dp-accounting's conversion (tighter)"}
METHODS = ("series", "integral")

# Noise multipliers searched by noise_for_epsilon.
NOISE_RANGE = (0.01, 1e4)

# The fractional-order series stops when a bound on the terms still to come is below this share (log) of the sum.
_SERIES_TAIL = -36.0
_SERIES_MAX_TERMS = 1 << 16


@dataclasses.dataclass(frozen=True)
class PrivacyOptions:
    """The DP-SGD setting a privacy budget is computed for: every option's default, rule and help, once.

    ``examples`` has no default (it is the training set's size); the others
    default to TensorFlow Privacy's MNIST tutorial. ``batch_size`` is the
    expected batch of Poisson sampling (rate ``batch_size / examples``).
    """

    examples: int = option(None, "training examples N, required (the sampling rate is batch size / N)",
                           rule=Interval(int, 1), allow_none=True, metavar="N")
    batch_size: int = option(256, "expected batch size B of Poisson sampling", rule=Interval(int, 1), metavar="B")
    noise_multiplier: float = option(1.1, "noise multiplier sigma: the Gaussian noise's standard deviation over "
                                          "the clipping norm", rule=Interval(float, 0.0, closed="neither"),
                                     metavar="SIGMA")
    epochs: float = option(60.0, "training epochs (steps = ceil(epochs * N / B)); may be fractional",
                           rule=Interval(float, 0.0, closed="neither"), metavar="E")
    delta: float = option(1e-5, "delta of the (epsilon, delta) guarantee",
                          rule=Interval(float, 0.0, 1.0, closed="neither"), metavar="D")
    orders: tuple = option(DEFAULT_ORDERS, "Renyi orders (each > 1) minimised over",
                           rule=SequenceOf(Interval(float, 1.0, closed="neither")), default_text=ORDERS_TEXT,
                           metavar="ORDER")


def _name(field, flags):
    return "--" + field.replace("_", "-") if flags else field


def validate_privacy_options(options, flags=False):
    """Check ``options`` (each field's rule, ``examples`` given, ``batch_size <= examples``); return them.

    Args:
        options: a :class:`PrivacyOptions`.
        flags: name the command-line flags (``--batch-size``) instead of the fields in messages.

    Raises:
        OptionError: one line naming the field (or flag), what was expected and what was given.
    """
    if options.examples is None:
        raise OptionError(f"{_name('examples', flags)}: required: the number of training examples N")
    _validate_fields(options, flags)
    if options.batch_size > options.examples:
        raise OptionError(f"{_name('batch_size', flags)}: expected at most {_name('examples', flags)} "
                          f"({options.examples}), got {options.batch_size}")
    return options


def _validate_fields(options, flags):
    constraints = constraints_of(PrivacyOptions)
    for field in dataclasses.fields(options):
        if field.name not in constraints:
            continue
        try:
            validate_params({field.name: getattr(options, field.name)}, {field.name: constraints[field.name]})
        except OptionError as error:
            raise OptionError(f"{_name(field.name, flags)}: {str(error).split(': ', 1)[1]}") from None


def steps_for(examples, batch_size, epochs):
    """The number of DP-SGD steps: ``ceil(epochs * examples / batch_size)``, in exact arithmetic.

    ``epochs`` is read as the decimal it prints as (0.1 is one tenth), so
    ``steps_for(1000, 100, 0.3)`` is 3, not 4.

    Example:
        >>> steps_for(60000, 256, 60)   # 14062.5 rounded up
        14063
    """
    exact = fractions.Fraction(str(epochs)) * examples / batch_size
    return max(1, math.ceil(exact))


def sampling_probability(examples, batch_size):
    """The Poisson sampling rate ``q = batch_size / examples``."""
    return batch_size / examples


# -- the RDP of one step -----------------------------------------------------------------------------------------


def _log_a_integer(q, sigma, alpha):
    """log A_alpha at integer alpha: sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2))."""
    from scipy.special import gammaln, logsumexp

    k = np.arange(alpha + 1, dtype=np.float64)
    log_binomial = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
    terms = log_binomial + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma ** 2)
    return float(logsumexp(terms))


def _binomial_signs(alpha, i):
    """Signs of the generalized binomial coefficients C(alpha, i) at non-integer alpha > 0.

    C(alpha, i) = alpha (alpha-1) ... (alpha-i+1) / i!: the factors alpha - m with m > alpha
    are negative, so the sign is (-1)^max(0, i - ceil(alpha)).
    """
    negatives = np.maximum(0, i - math.ceil(alpha))
    return np.where(negatives % 2 == 0, 1.0, -1.0)


def _log_a_fractional(q, sigma, alpha, signed=True):
    """log A_alpha at fractional alpha > 1 by the series of Mironov, Talwar and Zhang (2019, Section 3.3).

    Split the integral at z0 = sigma^2 log(1/q - 1) + 1/2, where q mu1/mu0 = 1 - q. Below z0 expand
    ((1-q) + q mu1/mu0)^alpha in powers of q mu1/mu0, above it in powers of (1-q); with
    int mu0 (mu1/mu0)^i over a half line = exp((i^2 - i) / (2 sigma^2)) P(N(i, sigma^2) on that side):

        A0 = sum_i C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2)) Phi((z0 - i) / sigma)
        A1 = sum_i C(alpha, i) q^(alpha-i) (1-q)^i exp((j^2 - j) / (2 sigma^2)) Phi((j - z0) / sigma),  j = alpha - i

    The coefficients alternate in sign beyond i = ceil(alpha); the terms are summed with their signs
    (``signed=False`` sums their absolute values instead, as dp-accounting 0.6 does: an upper bound).
    Returns None if the series has not converged within 2^16 terms (large q at orders near 1, where the
    terms decay only polynomially).
    """
    from scipy.special import gammaln, log_ndtr, logsumexp

    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    terms = 64 + math.ceil(alpha) + math.ceil(max(z0, 0.0))
    while terms <= _SERIES_MAX_TERMS:
        i = np.arange(terms, dtype=np.float64)
        j = alpha - i
        log_binomial = gammaln(alpha + 1) - gammaln(i + 1) - gammaln(j + 1)   # log |C(alpha, i)|
        signs = _binomial_signs(alpha, i) if signed else np.ones_like(i)
        below = log_binomial + i * log_q + j * log_1mq + (i * i - i) / (2 * sigma ** 2) + log_ndtr((z0 - i) / sigma)
        above = log_binomial + j * log_q + i * log_1mq + (j * j - j) / (2 * sigma ** 2) + log_ndtr((j - z0) / sigma)
        total, sign = logsumexp(np.concatenate([below, above]), b=np.concatenate([signs, signs]), return_sign=True)
        # What is left after the last term: the terms decay at least like i^-3 here, so the tail is below
        # (number of terms) x (the largest of the last quarter).
        tail = max(below[-(terms // 4):].max(), above[-(terms // 4):].max()) + math.log(terms)
        if sign > 0 and tail < total + _SERIES_TAIL:
            return float(total)
        terms *= 2
    return None


def _log_a_integral(q, sigma, alpha):
    """log A_alpha by integrating its definition numerically (scipy.integrate.quad): the independent check of the series.

    A - 1 = int mu0(z) [(1 + x)^alpha - 1 - alpha x] dz with x = q (exp((2z - 1) / (2 sigma^2)) - 1): the
    term alpha x integrates to 0 (E_mu0[mu1/mu0] = 1) and taking it out leaves a non-negative integrand
    without cancellation; it is scaled by its largest value so that huge A (high orders) do not overflow.
    """
    from scipy import integrate
    from scipy.special import logsumexp

    log_q, log_1mq = math.log(q), math.log1p(-q)
    log_norm = -0.5 * math.log(2 * math.pi * sigma ** 2)
    low, high = -40.0 * sigma, max(alpha, 1.0) + 40.0 * sigma

    def log_mixture(z):   # log(mu/mu0) = log((1 - q) + q exp(u)), u = (2z - 1) / (2 sigma^2)
        return np.logaddexp(log_1mq, log_q + (2 * z - 1) / (2 * sigma ** 2))

    grid = np.linspace(low, high, 40001)
    log_integrand = log_norm - grid ** 2 / (2 * sigma ** 2) + alpha * log_mixture(grid)
    shift = max(0.0, float(log_integrand.max()))
    peak = float(grid[np.argmax(log_integrand)])

    taylor = [1.0]   # generalized binomial coefficients C(alpha, k), k = 0..14 (x^15 < 1e-30)
    for k in range(1, 15):
        taylor.append(taylor[-1] * (alpha - k + 1) / k)

    def integrand(z):
        log_phi = log_norm - z * z / (2 * sigma ** 2) - shift
        u = (2 * z - 1) / (2 * sigma ** 2)
        power = alpha * float(log_mixture(z))   # alpha log(1 + x)
        if power <= 30.0:
            x = q * math.expm1(u)
            if abs(x) < 0.01:   # (1 + x)^alpha - 1 - alpha x by its Taylor series: no cancellation for small x
                excess = sum(coefficient * x ** k for k, coefficient in enumerate(taylor) if k >= 2)
            else:
                excess = math.expm1(power) - alpha * x
            return math.exp(log_phi) * excess
        log_x = log_q + u + math.log(-math.expm1(-u))                 # u > 0 here
        log_linear = float(np.logaddexp(0.0, math.log(alpha) + log_x))   # log(1 + alpha x)
        return math.exp(log_phi + power + math.log(-math.expm1(log_linear - power)))

    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    points = sorted({point for point in (0.0, 0.5, z0, alpha, peak) if low < point < high})
    value, _ = integrate.quad(integrand, low, high, points=points, limit=2000, epsabs=0.0, epsrel=1e-11)
    if value <= 0:
        return 0.0
    # log A = log(1 + e^shift * value)
    return float(logsumexp([0.0, shift + math.log(value)]))


def rdp_sampled_gaussian(q, noise_multiplier, orders, method="series"):
    """The RDP of one step of the Poisson-subsampled Gaussian mechanism at each order.

    Args:
        q: sampling rate in [0, 1].
        noise_multiplier: sigma > 0 (0 gives inf: no privacy).
        orders: Renyi orders, each > 1.
        method: ``"series"`` (binomial expansion at integer orders, the two-sided series at fractional ones,
            or, where that series has not converged within 2^16 terms, the integral) or ``"integral"``
            (numerical integration of the definition at every order; slower, for checking).

    Returns:
        np.ndarray: RDP at each order (``log(A_alpha) / (alpha - 1)``), inf where an order diverges.

    Example:
        >>> rdp_sampled_gaussian(1.0, 2.0, [2, 4])   # no subsampling: alpha / (2 sigma^2)
        array([0.25, 0.5 ])
    """
    if method not in METHODS:
        raise OptionError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if not 0 <= q <= 1:
        raise OptionError(f"q: expected a sampling rate in [0, 1], got {plain(q)}")
    if not noise_multiplier >= 0:
        raise OptionError(f"noise_multiplier: expected a number >= 0, got {plain(noise_multiplier)}")
    orders = np.asarray(orders, dtype=np.float64)
    if orders.ndim != 1 or not np.all(orders > 1):
        raise OptionError(f"orders: expected Renyi orders > 1, got {orders.tolist()}")
    result = np.empty_like(orders)
    for index, alpha in enumerate(orders):
        if q == 0:
            result[index] = 0.0
        elif noise_multiplier == 0 or np.isinf(alpha):
            result[index] = math.inf
        elif q == 1:
            result[index] = alpha / (2 * noise_multiplier ** 2)
        elif method == "integral":
            result[index] = _log_a_integral(q, noise_multiplier, alpha) / (alpha - 1)
        elif float(alpha).is_integer():
            result[index] = _log_a_integer(q, noise_multiplier, int(alpha)) / (alpha - 1)
        else:
            log_a = _log_a_fractional(q, noise_multiplier, alpha)
            if log_a is None:   # the series converges too slowly here: integrate the definition instead
                log_a = _log_a_integral(q, noise_multiplier, alpha)
            result[index] = log_a / (alpha - 1)
    return result


def rdp_composed(q, noise_multiplier, steps, orders, method="series"):
    """The RDP of ``steps`` steps: RDP adds up over composition (``steps`` times one step's)."""
    return steps * rdp_sampled_gaussian(q, noise_multiplier, orders, method=method)


# -- from RDP to (epsilon, delta) --------------------------------------------------------------------------------


def _check_conversion_input(orders, rdp, delta):
    orders = np.asarray(orders, dtype=np.float64)
    rdp = np.asarray(rdp, dtype=np.float64)
    if orders.shape != rdp.shape or orders.ndim != 1 or orders.size == 0:
        raise OptionError(f"orders, rdp: expected two sequences of the same non-zero length, got {orders.shape} "
                          f"and {rdp.shape}")
    if not np.all(orders > 1):
        raise OptionError(f"orders: expected Renyi orders > 1, got {orders.tolist()}")
    if not 0 < delta < 1:
        raise OptionError(f"delta: expected a number in (0, 1), got {plain(delta)}")
    return orders, rdp


def classic_epsilon(orders, rdp, delta):
    """(epsilon, order) by the classic conversion: ``min over orders of rdp + log(1/delta) / (order - 1)``.

    Mironov 2017, "Renyi Differential Privacy", Proposition 3: an
    (alpha, r)-RDP mechanism is (r + log(1/delta) / (alpha - 1), delta)-DP.
    """
    orders, rdp = _check_conversion_input(orders, rdp, delta)
    epsilons = rdp + math.log(1 / delta) / (orders - 1)
    best = int(np.argmin(epsilons))
    return float(epsilons[best]), float(orders[best])


def tight_epsilon(orders, rdp, delta):
    """(epsilon, order) by the tighter conversion dp-accounting uses, on any RDP values.

    Canonne, Kamath, Steinke 2020, Proposition 12 (also Asoodeh et al. 2020):
    ``rdp + log(1 - 1/alpha) - log(delta * alpha) / (alpha - 1)`` for alpha > 1.01
    (below that it is unstable and not useful); epsilon 0 where the KL bound
    ``delta >= sqrt(1 - exp(-rdp))`` already holds; never below 0.
    """
    orders, rdp = _check_conversion_input(orders, rdp, delta)
    epsilons = np.full_like(orders, math.inf)
    for index, (alpha, value) in enumerate(zip(orders, rdp)):
        if value < 0 or delta ** 2 + math.expm1(-value) > 0:
            epsilons[index] = 0.0
        elif alpha > 1.01:
            epsilons[index] = value + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)
    best = int(np.argmin(epsilons))
    return max(0.0, float(epsilons[best])), float(orders[best])


def _dp_accounting():
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ModuleNotFoundError as error:
        raise InputError("the tight conversion needs the dp-accounting package (pip install dp-accounting): "
                         f"{error}") from None
    return dp_accounting, rdp


def dp_accounting_accountant(q, noise_multiplier, steps, orders=DEFAULT_ORDERS):
    """dp-accounting's ``RdpAccountant`` after ``steps`` Poisson-sampled Gaussian steps (add-or-remove-one)."""
    dp_accounting, rdp = _dp_accounting()
    accountant = rdp.RdpAccountant(orders=[float(order) for order in orders])
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant.compose(event, int(steps))
    return accountant


def dp_accounting_rdp(q, noise_multiplier, steps, orders=DEFAULT_ORDERS):
    """dp-accounting's composed RDP values at ``orders`` (to check :func:`rdp_composed` against)."""
    return dp_accounting_accountant(q, noise_multiplier, steps, orders).rdp


def dp_accounting_epsilon(q, noise_multiplier, steps, delta, orders=DEFAULT_ORDERS):
    """(epsilon, order) from dp-accounting's ``RdpAccountant.get_epsilon_and_optimal_order`` (the tight figure)."""
    if not 0 < delta < 1:
        raise OptionError(f"delta: expected a number in (0, 1), got {plain(delta)}")
    epsilon, order = dp_accounting_accountant(q, noise_multiplier, steps, orders).get_epsilon_and_optimal_order(delta)
    return float(epsilon), float(order)


# -- the budget of a DP-SGD run ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Epsilon:
    """One conversion's result: epsilon at the run's delta, the order that gave it, the noise multiplier used."""

    conversion: str
    epsilon: float
    order: float
    noise_multiplier: float

    @property
    def label(self):
        return LABELS[self.conversion]

    def at_edge(self, orders):
        """Whether the best order is the smallest or largest of ``orders`` (a wider range may do better)."""
        return self.order in (min(orders), max(orders))

    def edge_warnings(self, orders):
        """A caution when the best order is at the end of ``orders`` searched (none when epsilon is inf)."""
        if self.at_edge(orders) and math.isfinite(self.epsilon):
            return [f"{self.label}: the best order {self.order:g} is at the end of the orders searched; a wider "
                    "--orders range may give a smaller epsilon"]
        return []

    def to_dict(self):
        return {"label": self.label, "epsilon": self.epsilon, "order": self.order,
                "noise_multiplier": self.noise_multiplier}


@dataclasses.dataclass(frozen=True)
class PrivacyBudget:
    """The privacy budget of a DP-SGD run under both conversions (see :func:`privacy_budget`)."""

    options: PrivacyOptions
    steps: int
    sampling_probability: float
    classic: Epsilon
    tight: Epsilon

    def setting_warnings(self):
        """Cautions about the setting itself, whatever the noise: delta not below 1/N."""
        if self.options.delta >= 1 / self.options.examples:
            return [f"delta {self.options.delta:g} is not below 1/N = {1 / self.options.examples:.3g}: a "
                    "mechanism that publishes one random example in full meets (0, 1/N)-DP"]
        return []

    def warnings(self):
        """Plain-language cautions: :meth:`setting_warnings` and a best order at the end of the orders searched."""
        return (self.setting_warnings() + self.classic.edge_warnings(self.options.orders)
                + self.tight.edge_warnings(self.options.orders))

    def to_dict(self):
        options = dataclasses.asdict(self.options)
        options.pop("orders")
        return {**options, "orders": len(self.options.orders), "steps": self.steps,
                "sampling_probability": self.sampling_probability,
                "classic": self.classic.to_dict(), "tight": self.tight.to_dict(), "warnings": self.warnings()}


def _setting(options):
    validate_privacy_options(options)
    return (steps_for(options.examples, options.batch_size, options.epochs),
            sampling_probability(options.examples, options.batch_size))


def epsilon_of(options, conversion="classic", method="series"):
    """An :class:`Epsilon` for ``options`` under one conversion.

    ``"classic"``: goodnet's own RDP (``method``) and the classic conversion;
    ``"tight"``: dp-accounting's RDP accountant and its conversion.
    """
    if conversion not in CONVERSIONS:
        raise OptionError(f"conversion: expected one of {', '.join(CONVERSIONS)}, got {conversion!r}")
    steps, q = _setting(options)
    if conversion == "classic":
        rdp = rdp_composed(q, options.noise_multiplier, steps, options.orders, method=method)
        epsilon, order = classic_epsilon(options.orders, rdp, options.delta)
    else:
        epsilon, order = dp_accounting_epsilon(q, options.noise_multiplier, steps, options.delta, options.orders)
    return Epsilon(conversion, epsilon, order, float(options.noise_multiplier))


def privacy_budget(options, method="series"):
    """The :class:`PrivacyBudget` of a DP-SGD run: steps, sampling rate and epsilon under both conversions."""
    steps, q = _setting(options)
    return PrivacyBudget(options, steps, q, epsilon_of(options, "classic", method), epsilon_of(options, "tight"))


def noise_for_epsilon(target_epsilon, options, conversion="classic", tolerance=1e-6):
    """The smallest noise multiplier whose epsilon (at ``options``' delta, steps and orders) is at most the target.

    Epsilon decreases as the noise grows (every order's RDP does), so the
    noise is bracketed by doubling from ``options.noise_multiplier`` and then
    bisected until the bracket is narrower than ``tolerance`` times its upper
    end; the upper end is returned, so its epsilon never exceeds the target.

    Args:
        target_epsilon: the budget, > 0.
        options: a :class:`PrivacyOptions` (its ``noise_multiplier`` is only the search's start).
        conversion: ``"classic"`` or ``"tight"``.
        tolerance: relative width of the final bracket.

    Returns:
        Epsilon: the noise multiplier found, its epsilon and best order.

    Raises:
        OptionError: the target is not a positive number, or no noise multiplier in
            :data:`NOISE_RANGE` reaches it (or already the smallest does).
    """
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) or not target_epsilon > 0 \
            or not math.isfinite(target_epsilon):
        raise OptionError(f"target_epsilon: expected a number > 0, got {plain(target_epsilon)}")
    validate_privacy_options(options)

    def at(noise):
        return epsilon_of(dataclasses.replace(options, noise_multiplier=noise), conversion)

    low_end, high_end = NOISE_RANGE
    start = min(max(float(options.noise_multiplier), low_end), high_end)
    high = at(start)
    if high.epsilon <= target_epsilon:     # walk down until epsilon exceeds the target
        low = high
        while low.epsilon <= target_epsilon:
            high = low
            if high.noise_multiplier <= low_end:
                raise OptionError(f"target_epsilon: epsilon {target_epsilon:g} is reached already at noise "
                                  f"multiplier {low_end:g}, the smallest searched")
            low = at(max(low.noise_multiplier / 2, low_end))
    else:                                   # walk up until epsilon reaches the target
        low = high
        while high.epsilon > target_epsilon:
            low = high
            if low.noise_multiplier >= high_end:
                raise OptionError(f"target_epsilon: no noise multiplier up to {high_end:g} reaches epsilon "
                                  f"{target_epsilon:g} (it reaches {low.epsilon:.3g} with these orders)")
            high = at(min(low.noise_multiplier * 2, high_end))
    while high.noise_multiplier - low.noise_multiplier > tolerance * high.noise_multiplier:
        middle = at((low.noise_multiplier + high.noise_multiplier) / 2)
        if middle.epsilon <= target_epsilon:
            high = middle
        else:
            low = middle
    return high
