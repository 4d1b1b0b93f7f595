"""The sampling plan of `--alphas auto` on synthetic rate curves: it steps down while the rate is
measurable, stops where it is not, spends the budget exactly, and is deterministic given the hits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.analysis import plan
from study.analysis.plan import Step, Taken, ladder, next_step


def expit(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def simulate(budget: int, rate, seed: int = 0, target: float = 0.0) -> list[Taken]:
    rng = np.random.default_rng(seed)
    history: list[Taken] = []
    while (step := next_step(budget, history, target)) is not None:
        assert step.n >= 1 and step.reason
        history.append(Taken(step, int(rng.binomial(step.n, rate(step.alpha)))))
        assert len(history) < 50
    return history


def descent(history: list[Taken]) -> list[float]:
    return [t.step.alpha for t in history if t.step.descent]


def test_the_ladder_halves_the_distance_to_the_target():
    assert ladder() == (4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625)
    assert ladder(-1.0)[:3] == (4.0, 1.5, 0.25)
    with pytest.raises(ValueError, match="must lie above the target"):
        ladder(4.0)


def test_it_steps_down_to_the_last_rung_while_the_rate_stays_measurable():
    history = simulate(2000, lambda a: expit(-3.0 + 0.8 * a))  # 4.7% at 0: measurable everywhere
    assert descent(history) == list(ladder())
    rest = [t.step for t in history if not t.step.descent]
    # the rest: the two lowest rungs (most at the lowest), then the target itself
    assert {s.alpha for s in rest} <= {0.0625, 0.125, 0.0}
    n = {a: sum(t.step.n for t in history if t.step.alpha == a) for a in (0.0625, 0.125)}
    assert n[0.0625] > n[0.125]
    assert sum(s.n for s in rest if s.alpha == 0.0) == int(2000 * plan.ANCHOR_SHARE)


def test_it_stops_at_the_first_rung_without_enough_hits():
    history = simulate(1000, lambda a: 0.0 if a < 1 else expit(-2.0 + a))
    assert descent(history) == [4.0, 2.0, 1.0, 0.5]  # 0.5 is probed, shows nothing, and ends the descent
    assert history[3].hits == 0
    rest = {t.step.alpha for t in history if not t.step.descent}
    assert rest == {1.0, 2.0, 0.0}


def test_with_hits_only_at_the_top_the_rest_goes_to_the_top_and_the_rung_below():
    history = simulate(400, lambda a: 0.5 if a == 4 else 0.0)
    assert descent(history) == [4.0, 2.0]
    # 2 has no hits yet: a rate near 0 there weighs most, so the rest goes to 2 (then the target)
    assert [t.step.alpha for t in history if not t.step.descent] == [2.0, 0.0]
    assert "alphas 2 and 4" in history[2].step.reason


def test_without_hits_anywhere_the_rest_goes_to_the_top():
    history = simulate(400, lambda a: 0.0)
    assert descent(history) == [4.0]
    assert [t.step.alpha for t in history[1:]] == [4.0, 0.0]
    assert "no alpha had" in history[1].step.reason


@pytest.mark.parametrize("budget", [2, 3, 7, 60, 61, 120, 240, 999, 1000, 2000, 5000])
@pytest.mark.parametrize("slope", [0.0, 0.5, 1.5, 4.0])
def test_it_spends_the_budget_exactly(budget, slope):
    history = simulate(budget, lambda a: expit(-6.0 + slope * a), seed=budget)
    assert sum(t.step.n for t in history) == budget


def test_it_is_deterministic_given_the_hits_and_replays_from_them():
    def curve(a):
        return expit(-5.0 + 1.5 * a)

    first, second = simulate(1000, curve, seed=3), simulate(1000, curve, seed=3)
    assert first == second
    # A resumed study replays the plan from the hits on disk: every prefix gives the same next step.
    for k in range(len(first)):
        assert next_step(1000, first[:k]) == first[k].step
    assert next_step(1000, first) is None


def test_the_rest_is_split_as_the_c_optimal_design_of_a_straight_line():
    # Descent to 0.5 (hits) then 0.25 (none): low = 0.5, high = 1; extrapolated to 0,
    # eta(0) = 2 eta(0.5) - eta(1): shares proportional to |c| / sqrt(p (1 - p)).
    rates = {4.0: 0.9, 2.0: 0.5, 1.0: 0.2, 0.5: 0.05, 0.25: 0.0}
    history = simulate(8000, lambda a: rates.get(a, 0.0), seed=1)
    totals = {}
    for t in history:
        hits, n = totals.get(t.step.alpha, (0, 0))
        totals[t.step.alpha] = (hits + t.hits, n + t.step.n)
    n1, n2 = totals[0.5][1], totals[1.0][1]
    probe = 8000 // plan.PROBE_SHARE
    assert [t.step.alpha for t in history[:5]] == [4.0, 2.0, 1.0, 0.5, 0.25]
    h1, h2 = history[3].hits, history[2].hits  # the rates when the rest was planned: the probes'
    p1, p2 = (h1 + 0.5) / (probe + 1), (h2 + 0.5) / (probe + 1)
    w1, w2 = 2 / math.sqrt(p1 * (1 - p1)), 1 / math.sqrt(p2 * (1 - p2))
    share = w1 / (w1 + w2)
    assert f"{share:.0%} of their samples at 0.5" in history[5].step.reason
    # as close to it as the samples already at 1 (its probe) allow
    assert n1 / (n1 + n2) == pytest.approx(min(share, (n1 + n2 - probe) / (n1 + n2)), abs=0.01)
    assert history[-1].step.alpha == 0.0 and history[-1].step.n == int(8000 * plan.ANCHOR_SHARE)


def test_a_target_below_zero_walks_towards_it():
    history = simulate(1000, lambda a: expit(-1.0 + 0.8 * a), target=-1.0)
    assert descent(history)[:3] == [4.0, 1.5, 0.25]
    assert min(t.step.alpha for t in history) == -1.0  # the anchor at the target


def test_bad_budgets_and_histories_are_refused():
    with pytest.raises(ValueError, match="budget of at least 2"):
        next_step(1, [])
    with pytest.raises(ValueError, match="not its rung"):
        next_step(1000, [Taken(Step(2.0, 100, "x", descent=True), 3)])


def test_a_budget_too_small_for_probes_is_the_fixed_default():
    history = simulate(119, lambda a: expit(-3.0 + a))
    assert [(t.step.alpha, t.step.n) for t in history] == [(4.0, 24), (2.0, 24), (1.0, 24), (0.5, 24), (0.0, 23)]
    assert "too small for probes" in history[0].step.reason
    assert descent(simulate(120, lambda a: expit(-3.0 + a)))[0] == 4.0
