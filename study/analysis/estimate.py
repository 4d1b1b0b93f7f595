"""The rate at a target alpha (default 0: the after model alone), extrapolated along the alpha path.

A behaviour too rare to count at alpha 0 is common at alpha 2; for a single token decision the
amplified log-odds are linear in alpha (`(1 + alpha) * a - alpha * b = a + alpha * (a - b)`), so
the rate is fitted as a binomial model with log-odds linear in alpha over the alphas that were
sampled, and read off at the target (the idea of Logit Path Extrapolation, Pernice and Aranguri
2026). Pure functions over hit counts: no I/O, no study types.

The models (`METHODS`):

- `guarded` (the default): the `hierarchical` fit and its estimate, with the interval's lower
  side opened to what the target's own samples allow (their exact lower bound; 0 when the target
  was not sampled or shows no hit). A behaviour of several tokens has log-odds concave in alpha,
  so a straight line carried down from the alphas with hits lies above the true curve: its upper
  bound holds, its lower bound does not (the rate benchmark's second pair: 30x too high, and the
  straight fits' intervals cover in 0 to 60% of subsamples).
- `hierarchical`: every prompt has its own intercept, `logit p_i(alpha) = a_i + b * alpha` with
  `a_i ~ Normal(mu, tau^2)` and one slope; the marginal likelihood integrates each prompt's
  intercept out by Gauss-Hermite quadrature. The population rate at the target is the mean over
  prompts, `E[expit(a + b * t)]`, which a single pooled curve gets wrong when prompts differ (a
  mixture of logistic curves is not logistic). Per prompt it gives the posterior mean of
  `p_i(t)`: the score that ranks prompts worth a long plain run.
- `pooled`: all prompts' counts pooled per alpha, one logistic curve.
- `quadratic`: pooled, with log-odds allowed to bend (concave) in alpha: a behaviour of several
  tokens saturates token by token, so its log-odds are not straight (see `_QuadraticFit`).
- `local`: `guarded` over the alphas nearest the target only (up to the third alpha with hits),
  so a trend that bends is followed over a shorter, straighter stretch (see `_local`).
- `dispersed`: pooled, each alpha's log-odds allowed to stray from the straight trend by a
  deviation of fitted spread s; the trend is a prior for the target, its own samples update it
  (see `_dispersed`).

The interval of the straight fits is a profile-likelihood interval on the rate at the target: the
slope (and the prompts' spread) are re-fitted at every candidate rate, so the interval widens with
the distance the trend is carried, unlike a delta method at the fitted slope.

When the data cannot support an estimate (no hits, hits at one alpha only, a rate that does not
grow with alpha, a fit that diverges) the result has `rate = None` and a `reason`; never a number
that only looks like one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

METHODS = ("hierarchical", "pooled", "quadratic", "dispersed", "guarded", "local")
DEFAULT_METHOD = "guarded"
DEFAULT_LEVEL = 0.95
QUADRATURE_NODES = 16
"""Gauss-Hermite nodes integrating a prompt's intercept out: exact enough for a smooth logistic."""
MAX_LOGIT_STEP = 15.0
"""How far (in log-odds: a factor of 3 million) the profile search walks from the fit before it
calls a bound open (0 or 1): farther, the number would only look like one."""
LOG_TAU_RANGE = (-4.0, 3.0)
"""The prompts' spread of log-odds, tau, is kept in [0.02, 20]: below, prompts are alike; above,
the data cannot tell."""
STRAIGHTNESS_P = 0.01
"""Below this p-value of the straightness check, the estimate carries a warning."""
MAX_SLOPE = 30.0
"""A fitted slope beyond this many log-odds per unit alpha means the hits separate the alphas
perfectly: the fit diverges, and no extrapolation is honest."""


@dataclass(frozen=True, slots=True)
class Cell:
    """Hits among n samples of one prompt at one alpha."""

    prompt_id: str
    alpha: float
    hits: int
    n: int


@dataclass(frozen=True, slots=True)
class PromptEstimate:
    prompt_id: str
    rate: float
    """Estimated probability that one sample of this prompt at the target alpha is a hit."""
    rank: int
    """1 = the prompt most likely to show the behaviour."""
    hits: int
    n: int


@dataclass(frozen=True, slots=True)
class Estimate:
    """The rate at `target_alpha`; `rate is None` with a `reason` when the data cannot support one."""

    target_alpha: float
    method: str
    level: float
    rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    reason: str | None = None
    used: list[dict] = field(default_factory=list)
    """Per alpha sampled: alpha, n, hits (all prompts together)."""
    per_prompt: list[PromptEstimate] = field(default_factory=list)
    """Best first (hierarchical only; pooled treats prompts alike)."""
    slope: float | None = None
    """Fitted log-odds per unit alpha."""
    spread: float | None = None
    """Hierarchical: the prompts' standard deviation of log-odds, tau."""
    curve: list[tuple[float, float]] = field(default_factory=list)
    """(alpha, fitted rate) from the target to the largest alpha sampled, for plots."""
    measured_from: float | None = None
    """The smallest alpha with hits: the curve below it (towards the target) is extrapolated."""
    straightness: dict | None = None
    """Do the per-alpha hits lie on the fitted trend? chi2, df (alphas - 2) and p of observed
    against fitted hits per alpha (the variance includes the prompts' spread); None with fewer
    than three alphas."""
    warning: str | None = None
    """Set when straightness.p < STRAIGHTNESS_P: the log-odds bend, and the estimate inherits it."""

    def as_dict(self) -> dict:
        return {
            "target_alpha": self.target_alpha,
            "method": self.method,
            "level": self.level,
            "rate": self.rate,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "reason": self.reason,
            "slope": self.slope,
            "spread": self.spread,
            "measured_from": self.measured_from,
            "straightness": self.straightness,
            "warning": self.warning,
            "used": self.used,
            "per_prompt": [
                {"prompt_id": p.prompt_id, "rate": p.rate, "rank": p.rank, "hits": p.hits, "n": p.n}
                for p in self.per_prompt
            ],
            "curve": [list(point) for point in self.curve],
        }


def estimate_rate(
    cells: Iterable[Cell],
    target_alpha: float = 0.0,
    method: str = DEFAULT_METHOD,
    level: float = DEFAULT_LEVEL,
) -> Estimate:
    """Fit the rate against alpha over `cells` and read it off at `target_alpha`, with an interval
    at `level`. ValueError names the bad field; unsupported data gives `rate=None` and a reason."""
    cells = validate_cells(cells)
    _check_number("target_alpha", target_alpha)
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    if not (isinstance(level, float | int) and 0 < level < 1):
        raise ValueError(f"level: must be in (0, 1), got {level!r}")
    used = _per_alpha(cells)
    base = Estimate(float(target_alpha), method, float(level), used=used)
    reason = unsupported_reason(used)
    if reason:
        return _replace(base, reason=reason)
    data = _Data.of(cells)
    if method == "quadratic" and sum(u["hits"] > 0 for u in used) < 3:
        return _replace(base, reason="a bending (quadratic) trend needs hits at three alphas or more")
    if method == "guarded":
        return guarded_from(estimate_rate(cells, target_alpha, "hierarchical", level))
    if method == "local":
        return _local(cells, used, target_alpha, level)
    if method == "dispersed":
        return _dispersed(data, used, base, target_alpha, level)
    fit = {"pooled": _PooledFit, "quadratic": _QuadraticFit, "hierarchical": _HierarchicalFit}[method](data)
    slope = fit.slope_at(target_alpha) if method == "quadratic" else fit.slope
    if not fit.converged or not math.isfinite(slope) or abs(slope) > MAX_SLOPE:
        return _replace(base, reason="degenerate fit: the hits separate the alphas perfectly (the slope diverges)")
    if slope <= 0:
        return _replace(base, slope=slope, reason=f"the rate does not increase with alpha (fitted slope {slope:.2f} <= 0)")
    critical = NormalDist().inv_cdf((1 + level) / 2) ** 2
    eta = fit.logit_rate(target_alpha)
    low, high = _profile_bounds(fit, target_alpha, eta, critical)
    top = max(u["alpha"] for u in used)
    measured_from = min(u["alpha"] for u in used if u["hits"] > 0)
    grid = sorted({*np.linspace(min(target_alpha, min(data.alphas)), max(top, target_alpha), 61).tolist(), measured_from})
    return _replace(
        base,
        rate=_expit(eta),
        ci_low=low,
        ci_high=high,
        slope=slope,
        spread=getattr(fit, "tau", None),
        per_prompt=fit.per_prompt(target_alpha),
        curve=[(float(a), fit.rate(float(a))) for a in grid],
        measured_from=measured_from,
        **_straightness(fit, used),
    )


def cells_from_outcomes(outcomes: Iterable[tuple[str, float, bool | None]]) -> list[Cell]:
    """(prompt id, alpha, detected) per sample -> one Cell per (prompt, alpha); samples no
    detector judged (detected None) are left out."""
    n: dict[tuple[str, float], int] = defaultdict(int)
    hits: dict[tuple[str, float], int] = defaultdict(int)
    for prompt_id, alpha, detected in outcomes:
        if detected is None:
            continue
        n[prompt_id, alpha] += 1
        hits[prompt_id, alpha] += bool(detected)
    return [Cell(p, a, hits[p, a], n[p, a]) for p, a in sorted(n)]


def unavailable(target_alpha: float, reason: str, method: str = DEFAULT_METHOD) -> Estimate:
    """An estimate that was not attempted (no detector, say), in the same shape as a null one."""
    return Estimate(float(target_alpha), method, DEFAULT_LEVEL, reason=reason)


def format_estimate(estimate: Estimate, top_prompts: int = 3) -> str:
    """The console lines: the rate at the target with its interval (or why there is none), then
    the prompts most likely to show the behaviour there."""
    where = f"alpha {estimate.target_alpha:g}"
    if estimate.rate is None:
        return f"path estimate at {where}: none ({estimate.reason})"
    used = ", ".join(f"{u['alpha']:g}" for u in estimate.used)
    lines = [
        f"path estimate at {where}: {percent(estimate.rate)} [{percent(estimate.ci_low)}, {percent(estimate.ci_high)}] "
        f"({describe_interval(estimate)}; {estimate.method} fit of log-odds linear in alpha over "
        f"alphas {used}; extrapolated below alpha {estimate.measured_from:g})"
    ]
    if estimate.warning:
        lines.append(f"  warning: {estimate.warning}")
    for p in estimate.per_prompt[:top_prompts]:
        lines.append(f"  #{p.rank} {p.prompt_id}: {percent(p.rate)} ({p.hits} hits in {p.n})")
    return "\n".join(lines)


def describe_interval(estimate: Estimate) -> str:
    """What the interval is, in a few words, by method."""
    level = f"{100 * estimate.level:g}%"
    if estimate.method in ("guarded", "local"):
        return f"{level} interval: upper bound by profile likelihood, lower bound from alpha {estimate.target_alpha:g}'s own samples"
    if estimate.method == "dispersed":
        return f"{level} posterior interval"
    return f"{level} profile interval"


def percent(value: float | None) -> str:
    """A rate as a percentage with two significant digits below 0.1% (rare rates are the point)."""
    if value is None:
        return "-"
    return f"{100 * value:.2g}%" if 0 < value < 1e-3 else f"{100 * value:.2f}%"


def validate_cells(cells: Iterable[Cell]) -> list[Cell]:
    out = []
    for i, cell in enumerate(cells):
        _check_number(f"cells[{i}].alpha", cell.alpha)
        if not isinstance(cell.n, int) or cell.n < 0:
            raise ValueError(f"cells[{i}].n: must be an integer >= 0, got {cell.n!r}")
        if not isinstance(cell.hits, int) or not 0 <= cell.hits <= cell.n:
            raise ValueError(f"cells[{i}].hits: must be an integer in [0, n={cell.n}], got {cell.hits!r}")
        if cell.n:
            out.append(cell)
    return out


def unsupported_reason(used: Sequence[dict]) -> str | None:
    """Why these per-alpha counts cannot support a fitted trend, or None when they can."""
    if not used:
        return "no samples"
    with_hits = [u for u in used if u["hits"] > 0]
    if not with_hits:
        return "no hits at any alpha"
    if len(with_hits) < 2:
        return f"hits at one alpha only (alpha {with_hits[0]['alpha']:g}); a trend needs two"
    if all(u["hits"] == u["n"] for u in with_hits):
        return "every sample is a hit wherever there are hits: no trend to fit"
    if sum(0 < u["hits"] < u["n"] for u in used) < 2:
        return ("degenerate fit: fewer than two alphas have a rate strictly between 0 and 1, so the "
                "hits separate the alphas and the slope is not identified")
    return None


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, float | int) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")


def _replace(estimate: Estimate, **changes) -> Estimate:
    fields_ = {name: getattr(estimate, name) for name in Estimate.__slots__}
    return Estimate(**{**fields_, **changes})


def _per_alpha(cells: list[Cell]) -> list[dict]:
    n: dict[float, int] = defaultdict(int)
    hits: dict[float, int] = defaultdict(int)
    for cell in cells:
        n[cell.alpha] += cell.n
        hits[cell.alpha] += cell.hits
    return [{"alpha": a, "n": n[a], "hits": hits[a]} for a in sorted(n)]


def _expit(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -700, 700))) if isinstance(x, np.ndarray) else 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, x))))


def _log_expit(x: np.ndarray) -> np.ndarray:
    """log(expit(x)) without overflow."""
    return -np.logaddexp(0.0, -x)


@dataclass(frozen=True, slots=True)
class _Data:
    """The cells as arrays: prompt index, alpha, hits, n."""

    prompts: list[str]
    index: np.ndarray
    alphas: np.ndarray
    hits: np.ndarray
    n: np.ndarray

    @staticmethod
    def of(cells: list[Cell]) -> _Data:
        prompts = sorted({c.prompt_id for c in cells})
        position = {p: i for i, p in enumerate(prompts)}
        return _Data(
            prompts,
            np.array([position[c.prompt_id] for c in cells]),
            np.array([c.alpha for c in cells], dtype=float),
            np.array([c.hits for c in cells], dtype=float),
            np.array([c.n for c in cells], dtype=float),
        )


def _binomial_ll(eta: np.ndarray, hits: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Binomial log-likelihood (without the constant) of logit-rate eta; broadcasts."""
    log_p = _log_expit(eta)
    return n * log_p - (n - hits) * eta  # log(1 - p) = log(p) - eta


def _newton_max(f, x0: np.ndarray, lower: np.ndarray | None = None, upper: np.ndarray | None = None,
                iterations: int = 60, h: float = 1e-4, tolerance: float = 1e-8) -> tuple[np.ndarray, float, bool]:
    """Maximise a smooth f over a few parameters: Newton steps on finite-difference derivatives,
    halved until f improves (a gradient step when the Hessian is not negative definite)."""
    x = np.array(x0, dtype=float)
    fx = f(x)
    d = len(x)
    eye = np.eye(d) * h
    for _ in range(iterations):
        grad = np.array([(f(x + eye[i]) - f(x - eye[i])) / (2 * h) for i in range(d)])
        hess = np.empty((d, d))
        for i in range(d):
            for j in range(i, d):
                value = (f(x + eye[i] + eye[j]) - f(x + eye[i] - eye[j]) - f(x - eye[i] + eye[j]) + f(x - eye[i] - eye[j])) / (4 * h * h)
                hess[i, j] = hess[j, i] = value
        # A parameter held at a bound that the gradient pushes against stays there; Newton runs
        # over the others (projected Newton), so a fit at a bound (tau -> 0) converges.
        held = np.zeros(d, dtype=bool)
        if lower is not None:
            held |= (x <= lower + 1e-2) & (grad < 0)
        if upper is not None:
            held |= (x >= upper - 1e-2) & (grad > 0)
        free = ~held
        grad = np.where(free, grad, 0.0)
        step = np.zeros(d)
        try:
            step[free] = -np.linalg.solve(hess[np.ix_(free, free)], grad[free])
            if grad @ step <= 0:
                raise np.linalg.LinAlgError
        except np.linalg.LinAlgError:
            step = grad / max(1.0, float(np.abs(grad).max()))
        if not free.any() or float(np.abs(grad).max()) < 1e-9:
            return x, fx, True
        for _ in range(40):
            candidate = x + step
            if lower is not None:
                candidate = np.maximum(candidate, lower)
            if upper is not None:
                candidate = np.minimum(candidate, upper)
            fc = f(candidate)
            if fc >= fx - 1e-12:
                break
            step = step / 2
        else:
            return x, fx, True
        moved = float(np.abs(candidate - x).max())
        x, gain, fx = candidate, fc - fx, fc
        if moved < 1e-6 or gain < tolerance:
            return x, fx, True
    # Out of iterations: converged all the same when the last steps only crawl along a flat
    # direction (the prompts' spread tau -> 0 gains ~tau^2 per step), not when they still climb.
    return x, fx, gain < 1e-5


class _PooledFit:
    """One logistic curve over every prompt's counts: logit p(alpha) = eta_t + slope * (alpha - t)."""

    def __init__(self, data: _Data) -> None:
        self.alphas = np.unique(data.alphas)
        self.hits = np.array([data.hits[data.alphas == a].sum() for a in self.alphas])
        self.n = np.array([data.n[data.alphas == a].sum() for a in self.alphas])
        self.data = data
        start = np.array([math.log((self.hits.sum() + 0.5) / (self.n.sum() - self.hits.sum() + 0.5)), 0.5])
        (self.intercept, self.slope), self.ll, self.converged = _newton_max(self._ll, start)

    def _ll(self, theta: np.ndarray) -> float:
        return float(_binomial_ll(theta[0] + theta[1] * self.alphas, self.hits, self.n).sum())

    def logit_rate(self, alpha: float) -> float:
        return self.intercept + self.slope * alpha

    def rate(self, alpha: float) -> float:
        return _expit(self.logit_rate(alpha))

    def cell_n(self, alpha: float) -> np.ndarray:
        return self.data.n[self.data.alphas == alpha]

    def moments(self, alpha: float) -> tuple[float, np.ndarray]:
        """The rate at `alpha` and the variance of each of its cells' hits."""
        p = self.rate(alpha)
        n = self.cell_n(alpha)
        return p, n * p * (1 - p)

    def profile(self, target: float, eta: float) -> float:
        """Largest log-likelihood with the rate at `target` fixed to expit(eta)."""
        return _newton_max(lambda s: self._ll(np.array([eta - s[0] * target, s[0]])), np.array([self.slope]))[1]

    def per_prompt(self, target: float) -> list[PromptEstimate]:
        return []


class _QuadraticFit(_PooledFit):
    """Pooled, with log-odds concave in alpha: logit p = c0 + c1 * alpha + c2 * alpha^2, c2 <= 0.

    A behaviour of several tokens has log-odds that bend: each token's probability saturates as
    alpha grows, so the slope at high alphas understates the slope near 0, and a straight line
    carried down from there overstates the rate. The bend lets the low alphas pull the curve down."""

    def __init__(self, data: _Data) -> None:
        linear = _PooledFit(data)
        self.alphas, self.hits, self.n, self.data = linear.alphas, linear.hits, linear.n, data
        upper = np.array([np.inf, np.inf, 0.0])
        start = np.array([linear.intercept, linear.slope, 0.0])
        theta, self.ll, self.converged = _newton_max(self._ll, start, upper=upper)
        self.theta = theta
        self.intercept = float(theta[0])
        self.slope = float(theta[1])  # at alpha 0; `slope_at` gives it elsewhere

    def _ll(self, theta: np.ndarray) -> float:
        eta = theta[0] + theta[1] * self.alphas + theta[2] * self.alphas**2
        return float(_binomial_ll(eta, self.hits, self.n).sum())

    def slope_at(self, alpha: float) -> float:
        return float(self.theta[1] + 2 * self.theta[2] * alpha)

    def logit_rate(self, alpha: float) -> float:
        return float(self.theta[0] + self.theta[1] * alpha + self.theta[2] * alpha**2)

    def profile(self, target: float, eta: float) -> float:
        def ll(s: np.ndarray) -> float:
            return self._ll(np.array([eta - s[0] * target - s[1] * target**2, s[0], s[1]]))

        return _newton_max(ll, self.theta[1:], upper=np.array([np.inf, 0.0]))[1]


class _HierarchicalFit:
    """Per-prompt intercepts a_i ~ Normal(mu, tau^2), one slope; intercepts integrated out."""

    def __init__(self, data: _Data) -> None:
        self.data = data
        nodes, weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
        self.z = nodes * math.sqrt(2.0)
        self.log_w = np.log(weights / math.sqrt(math.pi))
        self.prompts = len(data.prompts)
        self.membership = np.zeros((self.prompts, len(data.index)))
        self.membership[data.index, np.arange(len(data.index))] = 1.0
        self.warm: np.ndarray | None = None
        """The last profile fit's (log tau, slope): the next one starts there."""
        pooled = _PooledFit(data)
        start = np.array([pooled.intercept, 0.0, max(pooled.slope, 0.1)])
        lower = np.array([-60.0, LOG_TAU_RANGE[0], -MAX_SLOPE * 2])
        upper = np.array([60.0, LOG_TAU_RANGE[1], MAX_SLOPE * 2])
        self.bounds = (lower, upper)
        theta, self.ll, self.converged = _newton_max(self._ll, start, lower, upper)
        self.mu, self.log_tau, self.slope = (float(v) for v in theta)
        self.tau = math.exp(self.log_tau)

    def _prompt_ll(self, mu: float, tau: float, slope: float) -> np.ndarray:
        """(prompts, nodes): each prompt's log-likelihood with its intercept at node q."""
        d = self.data
        eta = mu + tau * self.z[None, :] + slope * d.alphas[:, None]  # (cells, nodes)
        per_cell = _binomial_ll(eta, d.hits[:, None], d.n[:, None])
        return self.membership @ per_cell

    def _ll(self, theta: np.ndarray) -> float:
        mu, log_tau, slope = theta
        joint = self._prompt_ll(mu, math.exp(log_tau), slope) + self.log_w[None, :]
        return float(np.logaddexp.reduce(joint, axis=1).sum())

    def _population_rate(self, mu: float, tau: float, slope: float, alpha: float) -> float:
        return float(np.exp(self.log_w) @ _expit(mu + tau * self.z + slope * alpha))

    def logit_rate(self, alpha: float) -> float:
        rate = self._population_rate(self.mu, self.tau, self.slope, alpha)
        return math.log(rate) - math.log1p(-rate) if 0 < rate < 1 else (-745.0 if rate <= 0 else 745.0)

    def rate(self, alpha: float) -> float:
        return self._population_rate(self.mu, self.tau, self.slope, alpha)

    def cell_n(self, alpha: float) -> np.ndarray:
        return self.data.n[self.data.alphas == alpha]

    def moments(self, alpha: float) -> tuple[float, np.ndarray]:
        rates = _expit(self.mu + self.tau * self.z + self.slope * alpha)
        weights = np.exp(self.log_w)
        m1, m2 = float(weights @ rates), float(weights @ rates**2)
        n = self.cell_n(alpha)
        return m1, n * m1 * (1 - m1) + n * (n - 1) * (m2 - m1 * m1)

    def _mu_for(self, eta: float, tau: float, slope: float, target: float) -> float:
        """The mu that puts the population rate at `target` at expit(eta) (monotone in mu)."""
        goal = _expit(eta)
        weights = np.exp(self.log_w)
        mu = eta - slope * target
        for _ in range(50):  # Newton on log(rate): concave in mu, so it converges from any start
            p = _expit(mu + tau * self.z + slope * target)
            rate = float(weights @ p)
            if rate <= 0:
                mu += 20
                continue
            step = (math.log(goal) - math.log(rate)) / (float(weights @ (p * (1 - p))) / rate)
            mu += max(-20.0, min(20.0, step))
            if abs(step) < 1e-9:
                break
        return mu

    def profile(self, target: float, eta: float) -> float:
        lower, upper = self.bounds

        def ll(params: np.ndarray) -> float:
            log_tau, slope = params
            tau = math.exp(log_tau)
            return self._ll(np.array([self._mu_for(eta, tau, slope, target), log_tau, slope]))

        start = self.warm if self.warm is not None else np.array([self.log_tau, self.slope])
        best, value, _ = _newton_max(ll, start, lower[1:], upper[1:], iterations=25, h=1e-3, tolerance=1e-5)
        self.warm = best
        return value

    def per_prompt(self, target: float) -> list[PromptEstimate]:
        """Posterior mean of each prompt's rate at the target, given its own counts."""
        joint = self._prompt_ll(self.mu, self.tau, self.slope) + self.log_w[None, :]
        posterior = np.exp(joint - np.logaddexp.reduce(joint, axis=1, keepdims=True))
        rates = posterior @ _expit(self.mu + self.tau * self.z + self.slope * target)
        hits = np.zeros(self.prompts, dtype=int)
        n = np.zeros(self.prompts, dtype=int)
        np.add.at(hits, self.data.index, self.data.hits.astype(int))
        np.add.at(n, self.data.index, self.data.n.astype(int))
        order = sorted(range(self.prompts), key=lambda i: -rates[i])
        return [
            PromptEstimate(self.data.prompts[i], float(rates[i]), rank, int(hits[i]), int(n[i]))
            for rank, i in enumerate(order, start=1)
        ]


def _straightness(fit, used: list[dict]) -> dict:
    """Observed against fitted hits per alpha, as a chi-square with (alphas - 2) degrees of
    freedom. The variance of a prompt's hits counts the prompts' spread (hierarchical fit):
    n * m1 * (1 - m1) + n * (n - 1) * (m2 - m1^2), m1 and m2 the moments of its rate."""
    if len(used) < 3:
        return {}
    chi2 = 0.0
    for u in used:
        expected, variance = fit.moments(u["alpha"])
        mean = float((fit.cell_n(u["alpha"]) * expected).sum())
        var = float(variance.sum())
        if var > 0:
            chi2 += (u["hits"] - mean) ** 2 / var
    df = len(used) - 2
    p = _chi2_sf(chi2, df)
    check = {"chi2": chi2, "df": df, "p": p}
    if p >= STRAIGHTNESS_P:
        return {"straightness": check}
    return {"straightness": check, "warning": (
        f"the per-alpha rates stray from the fitted straight trend (p = {p:.2g}): the log-odds bend, "
        "and the estimate carries that bias (sample alphas closer to the target)")}


def _chi2_sf(x: float, df: int) -> float:
    """P(chi-square with df degrees of freedom > x), by the Wilson-Hilferty normal approximation
    (within 0.01 of the exact value for df >= 1 at the tail probabilities a check needs)."""
    if x <= 0:
        return 1.0
    k = 2.0 / (9.0 * df)
    z = ((x / df) ** (1 / 3) - (1 - k)) / math.sqrt(k)
    return 1.0 - NormalDist().cdf(z)


def _profile_bounds(fit, target: float, eta_hat: float, critical: float) -> tuple[float, float]:
    """Where the profile deviance 2 * (ll_max - ll(eta)) reaches `critical` on each side of the
    fit, as rates. The signed root of the deviance is close to linear in eta, so a secant search
    on it needs a few profile fits per side; a side that stays below `critical` within
    MAX_LOGIT_STEP of the fit is open (0 or 1)."""
    ll_max = max(fit.ll, fit.profile(target, eta_hat))
    goal = math.sqrt(critical)

    def root(eta: float) -> float:
        return math.sqrt(max(0.0, 2 * (ll_max - fit.profile(target, eta))))

    bounds = []
    for direction in (-1.0, 1.0):
        fit.warm = None
        d0, r0, d1 = 0.0, 0.0, 1.0  # distances from the fit, in log-odds, towards `direction`
        r1 = root(eta_hat + direction * d1)
        for _ in range(30):
            if abs(r1 - goal) < 1e-3:
                break
            slope = (r1 - r0) / (d1 - d0) if d1 != d0 else 0.0
            step = (goal - r1) / slope if slope > 0 else 4.0 * d1
            d0, r0, d1 = d1, r1, min(MAX_LOGIT_STEP, max(0.5 * d1, d1 + min(step, 8.0)))
            r1 = root(eta_hat + direction * d1)
            if d1 == MAX_LOGIT_STEP and r1 < goal:
                break
        x1 = eta_hat + direction * d1
        if r1 < goal - 1e-2:
            bounds.append(0.0 if direction < 0 else 1.0)
        else:
            bounds.append(_expit(x1))
    return bounds[0], bounds[1]


def _target_counts(used: list[dict], target: float) -> tuple[int, int] | None:
    """(hits, n) of the target alpha's own samples, all prompts together; None when not sampled."""
    return next(((u["hits"], u["n"]) for u in used if u["alpha"] == target), None)


LOCAL_ALPHAS_WITH_HITS = 3
"""`local` fits the alphas up to the third with hits, counted from the target."""


def _local(cells: list[Cell], used: list[dict], target: float, level: float) -> Estimate:
    """`guarded` on the alphas nearest the target: those up to the LOCAL_ALPHAS_WITH_HITS-th alpha
    with hits counted outwards from the target (with the zeros between). A trend that bends is
    straighter over a short stretch, and the stretch carried is shorter; the price is fewer hits."""
    with_hits = sorted((u["alpha"] for u in used if u["hits"] > 0), key=lambda a: (abs(a - target), a))
    reach = abs(with_hits[min(LOCAL_ALPHAS_WITH_HITS, len(with_hits)) - 1] - target)
    near = [c for c in cells if abs(c.alpha - target) <= reach + 1e-12]
    estimate = estimate_rate(near, target, "guarded", level)
    return _replace(estimate, method="local")


def exact_lower_bound(hits: int, n: int, tail: float) -> float:
    """Clopper-Pearson lower bound: the rate p at which P(X >= hits | n, p) = tail. Exact, so it
    does not overshoot at a hit or two as Wilson's lower bound does."""
    if hits <= 0:
        return 0.0
    k = np.arange(hits)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    low, high = 0.0, hits / n
    for _ in range(60):
        p = (low + high) / 2
        below = float(np.exp(log_choose + k * math.log(p) + (n - k) * math.log1p(-p)).sum())  # P(X < hits)
        low, high = (p, high) if 1 - below < tail else (low, p)
    return low


def guarded_from(estimate: Estimate, method: str = "guarded") -> Estimate:
    """`guarded` from an estimate of `hierarchical` (the same cells): its interval's lower side opened to what the target's own samples
    allow (their exact lower bound; 0 when the target was not sampled or shows no hit).

    A behaviour of several tokens has log-odds concave in alpha (each token's log-probability,
    log expit(c + d * alpha), is concave), so a straight line carried down from the alphas with
    hits lies above the true curve: the fitted upper bound stays valid, the fitted lower bound does
    not. Only the target's own samples bound the rate from below without that assumption."""
    if estimate.rate is None:
        return _replace(estimate, method=method)
    own = _target_counts(estimate.used, estimate.target_alpha)
    floor = 0.0 if own is None else exact_lower_bound(*own, (1 - estimate.level) / 2)
    return _replace(estimate, method=method, ci_low=min(estimate.ci_low, floor))


DISPERSED_NODES = 40
"""Gauss-Hermite nodes for an alpha's deviation: its spread can reach several log-odds."""
DISPERSED_LOG_S_RANGE = (-4.0, math.log(3.0))
"""The alphas' spread s around the straight trend is kept in [0.02, 3] log-odds: a handful of
alphas cannot tell a larger spread from a steeper line through a few of them (the fit turns
bimodal), and 3 already lets the target stray by a factor of 300 at two spreads."""


class _DispersedFit:
    """Pooled counts per alpha, log-odds a + b * alpha + e_alpha with e_alpha ~ Normal(0, s^2): the
    per-alpha rates may stray from the straight trend, and s (fitted from how far they stray) says
    by how much. Each alpha's deviation is integrated out."""

    def __init__(self, alphas: np.ndarray, hits: np.ndarray, n: np.ndarray, log_s: float | None = None) -> None:
        nodes, weights = np.polynomial.hermite.hermgauss(DISPERSED_NODES)
        self.z = nodes * math.sqrt(2.0)
        self.log_w = np.log(weights / math.sqrt(math.pi))
        self.alphas, self.hits, self.n = alphas, hits, n
        linear = _PooledFit.__new__(_PooledFit)
        linear.alphas, linear.hits, linear.n = alphas, hits, n
        start_ab = np.array([math.log((hits.sum() + 0.5) / (n.sum() - hits.sum() + 0.5)), 0.5])
        (a, b), _, _ = _newton_max(linear._ll, start_ab)
        if log_s is None:
            # The likelihood is flat in s over wide ranges (a handful of alphas say little about a
            # variance): profile it on a grid, each point's (a, b) started from the previous one.
            best = None
            for value in np.linspace(*DISPERSED_LOG_S_RANGE, 21):
                ab, ll, ok = _newton_max(lambda t, v=value: self._ll(np.array([t[0], t[1], v])), np.array([a, b]))
                a, b = ab
                if best is None or ll > best[1]:
                    best = (np.array([a, b, value]), ll, ok)
            theta, self.ll, self.converged = best
        else:
            (a, b), self.ll, self.converged = _newton_max(lambda t: self._ll(np.array([t[0], t[1], log_s])), np.array([a, b]))
            theta = np.array([a, b, log_s])
        self.intercept, self.slope, self.log_s = (float(v) for v in theta)
        self.s = math.exp(self.log_s)

    def _ll(self, theta: np.ndarray) -> float:
        a, b, log_s = theta
        eta = a + b * self.alphas[:, None] + math.exp(log_s) * self.z[None, :]
        joint = _binomial_ll(eta, self.hits[:, None], self.n[:, None]) + self.log_w[None, :]
        return float(np.logaddexp.reduce(joint, axis=1).sum())

    def trend_variance(self, target: float) -> float:
        """Variance of a + b * target from the observed information of (a, b) at s fixed."""
        h = 1e-4
        f = lambda t: self._ll(np.array([t[0], t[1], self.log_s]))  # noqa: E731
        x = np.array([self.intercept, self.slope])
        eye = np.eye(2) * h
        info = np.empty((2, 2))
        for i in range(2):
            for j in range(2):
                info[i, j] = -(f(x + eye[i] + eye[j]) - f(x + eye[i] - eye[j]) - f(x - eye[i] + eye[j]) + f(x - eye[i] - eye[j])) / (4 * h * h)
        try:
            cov = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            return math.inf
        g = np.array([1.0, target])
        value = float(g @ cov @ g)
        return value if value > 0 else math.inf


def _dispersed(data: _Data, used: list[dict], base: Estimate, target: float, level: float) -> Estimate:
    """The straight trend as a prior for the target's log-odds, N(a + b * t, var(a + b * t) + s^2),
    updated by the target's own samples when it was sampled: when they contradict the trend, they
    pull the estimate (and the interval) down with them, as far as the spread s lets the target
    stray. s comes from all alphas; the trend (a, b) from the alphas other than the target, so its
    samples count once. Rate: the posterior median; interval: the posterior's central quantiles."""
    alphas = np.array([u["alpha"] for u in used], dtype=float)
    hits = np.array([u["hits"] for u in used], dtype=float)
    n = np.array([u["n"] for u in used], dtype=float)
    full = _DispersedFit(alphas, hits, n)
    if not full.converged or not math.isfinite(full.slope) or abs(full.slope) > MAX_SLOPE:
        return _replace(base, reason="degenerate fit: the hits separate the alphas perfectly (the slope diverges)")
    own = _target_counts(used, target)
    rest = alphas != target
    trend = full
    if own is not None and unsupported_reason([u for u in used if u["alpha"] != target]) is None:
        trend = _DispersedFit(alphas[rest], hits[rest], n[rest], log_s=full.log_s)
    else:
        own = None  # the trend needs the target's samples: they are not counted a second time
    if min(trend.slope, full.slope) <= 0:
        return _replace(base, slope=trend.slope, reason=f"the rate does not increase with alpha (fitted slope {min(trend.slope, full.slope):.2f} <= 0)")
    mean = trend.intercept + trend.slope * target
    sd = math.sqrt(trend.trend_variance(target) + full.s**2)
    if not math.isfinite(sd):
        return _replace(base, reason="degenerate fit: the trend's uncertainty is not finite")
    grid = np.linspace(mean - 12 * sd - 5, mean + 12 * sd + 5, 4001)
    log_post = -0.5 * ((grid - mean) / sd) ** 2
    if own is not None:
        log_post = log_post + _binomial_ll(grid, float(own[0]), float(own[1]))
    weights = np.exp(log_post - log_post.max())
    cdf = np.cumsum(weights) / weights.sum()
    tail = (1 - level) / 2
    eta_low, eta_mid, eta_high = (float(np.interp(q, cdf, grid)) for q in (tail, 0.5, 1 - tail))
    measured_from = min(u["alpha"] for u in used if u["hits"] > 0)
    top = max(float(alphas.max()), target)
    curve_grid = sorted({*np.linspace(min(target, float(alphas.min())), top, 61).tolist(), measured_from})
    return _replace(
        base,
        rate=_expit(eta_mid),
        ci_low=_expit(eta_low),
        ci_high=_expit(eta_high),
        slope=trend.slope,
        spread=full.s,
        curve=[(float(a), _expit(trend.intercept + trend.slope * a)) for a in curve_grid],
        measured_from=measured_from,
    )
