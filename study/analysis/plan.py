"""The sampling plan of `lda study --alphas auto`: which alphas to sample, and how much at each.

The path estimate (study/analysis/estimate.py) carries the trend of the rate from the alphas with
hits down to the target (alpha 0, the after model). The shorter that carry, the less a bent trend
can mislead it: on a behaviour of several tokens the log-odds bend sharply just above 0
(docs/research/rate-estimate.md, pair B), and a straight line from alphas >= 0.5 lands about 30x
too high. So the plan walks down towards the target while the rate stays measurable, and then
spends what is left where the straight extrapolation is least certain.

1. **Descent.** The ladder halves the distance to the target from the top alpha (4): with target
   0, alphas 4, 2, 1, 0.5, 0.25, 0.125, 0.0625. Each rung gets a probe of `budget // 10` samples
   (spread over the prompts); the plan steps down while the probe shows at least `MIN_HITS` hits,
   and stops at the first rung that does not (its samples stay in the data: their zeros say the
   rate is low there), at the last rung, or when the budget runs out.
2. **The target itself.** A fifth of the budget (`ANCHOR_SHARE`, as the fixed default gives
   alpha 0) is sampled at the target, last: a rare behaviour shows few hits there, and those zeros
   hold the fitted curve down where the trend bends below the alphas with hits.
3. **The rest.** What is left goes to the two lowest measurable rungs (the lowest alpha with hits,
   `low`, and the rung above it, `high`; when only the top rung had hits, the top and the rung
   below it), split as the c-optimal design for a straight line in log-odds: extrapolated to
   target t, `eta(t) = c_low * eta(low) + c_high * eta(high)`, whose variance
   `sum c_i^2 / (n_i p_i (1 - p_i))` is least with `n_i` proportional to `|c_i| / sqrt(p_i (1 - p_i))`
   (the rates p_i as measured so far; samples already there count). The lowest rung gets most: it
   is closest to the target. When no rung had hits (the behaviour is too rare even at the top),
   the rest goes to the top.

The descent stops early when another probe would eat into the rest and the target's share. A
budget under 120 (probes under `MIN_PROBE` samples, which would see nothing at the low alphas) is
spread as the fixed default is, a fifth at each of 4, 2, 1, 0.5 and the target: the benchmark found
the descent worse than the default there (more fits without a trend).
Pure functions over counts: `next_step(budget, history)` is the step to take after `history` (the
steps taken, each with the hits it found), None when the budget is spent. The plan is
deterministic given the hits, so a resumed study replays it from the samples on disk. It spends
the budget exactly; how the samples of a step are spread over prompts is the caller's (the study
gives each prompt the same number, and the ones left over to the next prompts in turn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TOP = 4.0
"""The top of the ladder: the largest alpha of the study's fixed default."""
LEVELS = 7
"""Rungs of the ladder: the lowest is (top - target) / 64 above the target (0.0625 for 4 to 0)."""
PROBE_SHARE = 10
"""Each descent probe spends budget // PROBE_SHARE samples."""
MIN_PROBE = 12
"""Below a probe of this many samples (a budget under 120) probes see nothing: the plan is then
the fixed default's alphas, a fifth of the budget each."""
FIXED = (1.0, 0.5, 0.25, 0.125, 0.0)
"""The fixed default's alphas (4, 2, 1, 0.5, 0 for target 0) as fractions of top - target above it."""
MIN_HITS = 3
"""A rung is measurable when its samples hold at least this many hits."""
ANCHOR_SHARE = 0.2
"""The share of the budget sampled at the target itself (the fixed default gives alpha 0 a fifth):
its zeros hold the fitted curve down where the trend bends below the alphas with hits."""
DEFAULT_ALPHA_COUNT = 5
"""`--alphas auto` spends what the fixed default (5 alphas) would: 5 x samples per prompt x prompts."""


@dataclass(frozen=True, slots=True)
class Step:
    """Sample `n` answers (spread over the prompts) at `alpha`, for the reason given."""

    alpha: float
    n: int
    reason: str
    descent: bool = False
    """A probe of the descent (else a step that spends the rest)."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A step that was taken, with the hits its samples held."""

    step: Step
    hits: int


def ladder(target: float = 0.0, top: float = DEFAULT_TOP, levels: int = LEVELS) -> tuple[float, ...]:
    """The alphas the descent may visit, top first: the distance to the target halves each rung."""
    if not top > target:
        raise ValueError(f"alphas: the plan's top alpha ({top:g}) must lie above the target alpha ({target:g})")
    return tuple(target + (top - target) / 2**k for k in range(levels))


def check_budget(budget: int) -> None:
    if budget < 2:
        raise ValueError(f"alphas: auto needs a budget of at least 2 samples, got {budget}")


def next_step(budget: int, history: Sequence[Taken], target: float = 0.0, top: float = DEFAULT_TOP) -> Step | None:
    """The next step after `history`, or None when the budget is spent."""
    check_budget(budget)
    remaining = budget - sum(t.step.n for t in history)
    if remaining <= 0:
        return None
    rungs = ladder(target, top)
    probe = max(1, budget // PROBE_SHARE)
    if probe < MIN_PROBE:
        return _fixed(budget, len(history), target, top)
    descent = _descent(history, rungs)
    if len(descent) == len(history):  # still descending
        if not descent:
            return Step(rungs[0], min(probe, remaining), f"start at the top alpha {rungs[0]:g} (a probe of {probe})", True)
        last = descent[-1]
        k = rungs.index(last.step.alpha)
        if last.hits >= MIN_HITS and k + 1 < len(rungs) and remaining - int(budget * ANCHOR_SHARE) > probe:
            return Step(rungs[k + 1], min(probe, remaining),
                        f"step down: {last.hits} hits in {last.step.n} at alpha {last.step.alpha:g}", True)
    return _spend_rest(remaining, history, descent, rungs, target, budget)


def _fixed(budget: int, k: int, target: float, top: float) -> Step:
    """Step k of the fixed default's design: a fifth of the budget at each of its alphas, top first."""
    per, extra = divmod(budget, len(FIXED))
    alpha = target + (top - target) * FIXED[k]
    return Step(alpha, per + (k < extra), f"a budget under {MIN_PROBE * PROBE_SHARE} is too small for probes: "
                                          f"the fixed default's alphas, a fifth each")


def _descent(history: Sequence[Taken], rungs: Sequence[float]) -> list[Taken]:
    """The leading steps that probed the rungs one after the other, top first."""
    out = []
    for k, taken in enumerate(history):
        if not taken.step.descent:
            break
        if k >= len(rungs) or taken.step.alpha != rungs[k]:
            raise ValueError(f"alphas: step {k + 1} of the plan's history is not its rung {k + 1}")
        out.append(taken)
    return out


def _spend_rest(remaining: int, history: Sequence[Taken], descent: Sequence[Taken], rungs: Sequence[float],
                target: float, budget: int) -> Step:
    totals: dict[float, list[int]] = {}
    for t in history:
        cell = totals.setdefault(t.step.alpha, [0, 0])
        cell[0] += t.hits
        cell[1] += t.step.n
    anchor = max(0, int(budget * ANCHOR_SHARE) - totals.get(target, [0, 0])[1])
    if anchor >= remaining:
        return Step(target, remaining, f"the target alpha {target:g} itself: {remaining} samples "
                                       f"({ANCHOR_SHARE:.0%} of the budget), whose zeros hold the curve down")
    remaining -= anchor
    measured = [t.step.alpha for t in descent if totals[t.step.alpha][0] >= MIN_HITS]
    if not measured:
        return Step(rungs[0], remaining, f"the rest ({remaining}) at the top alpha {rungs[0]:g}: no alpha had "
                                         f"{MIN_HITS} hits, the behaviour is rarest below")
    low = min(measured)
    k = rungs.index(low)
    if k > 0:
        low, high = low, rungs[k - 1]
    else:  # only the top had hits: its neighbour below gives the slope
        low, high = rungs[1], rungs[0]
    share = _c_optimal(low, high, target, totals)
    total = sum(totals.get(a, [0, 0])[1] for a in (low, high)) + remaining
    deficit = {a: total * share[a] - totals.get(a, [0, 0])[1] for a in (low, high)}
    why = (f"the straight extrapolation to {target:g} from alphas {low:g} and {high:g} is most certain with "
           f"{share[low]:.0%} of their samples at {low:g}")
    first = max((low, high), key=lambda a: (deficit[a], -a))
    last = len(history) > len(descent)  # the pair takes two steps at most: this is the second
    n = remaining if last else min(remaining, max(1, math.floor(deficit[first])))
    return Step(first, n, why)


def _c_optimal(low: float, high: float, target: float, totals: dict[float, list[int]]) -> dict[float, float]:
    """Shares of samples at `low` and `high` that minimise the variance of the straight line's
    log-odds at `target`: n_i proportional to |c_i| / sqrt(p_i (1 - p_i))."""
    c_low = (high - target) / (high - low)
    c_high = (target - low) / (high - low)
    weights = {}
    for alpha, c in ((low, c_low), (high, c_high)):
        hits, n = totals.get(alpha, [0, 0])
        p = (hits + 0.5) / (n + 1)
        weights[alpha] = abs(c) / math.sqrt(p * (1 - p))
    norm = sum(weights.values())
    return {a: w / norm for a, w in weights.items()}
