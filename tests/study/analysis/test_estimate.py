"""The path estimate on synthetic data from known curves: it recovers the truth, its intervals
cover it at about the stated level, and data that cannot support a trend gives no number."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from study.analysis.estimate import Cell, cells_from_outcomes, estimate_rate, exact_lower_bound, format_estimate, percent



def expit(x):
    return 1 / (1 + np.exp(-x))


def draw(rng, intercepts, slope, alphas, n) -> list[Cell]:
    """Binomial counts of prompts with log-odds intercept_i + slope * alpha."""
    return [
        Cell(f"p{i}", alpha, int(rng.binomial(n, expit(a + slope * alpha))), n)
        for i, a in enumerate(intercepts)
        for alpha in alphas
    ]


def coverage(method, intercepts, slope, alphas, n, datasets, seed, target=0.0):
    rng = np.random.default_rng(seed)
    truth = float(np.mean(expit(np.asarray(intercepts) + slope * target)))
    covered, errors = 0, []
    for _ in range(datasets):
        estimate = estimate_rate(draw(rng, intercepts, slope, alphas, n), target, method)
        assert estimate.rate is not None, estimate.reason
        covered += estimate.ci_low <= truth <= estimate.ci_high
        errors.append(abs(math.log10(estimate.rate / truth)))
    return covered / datasets, float(np.median(errors))


def test_pooled_recovers_a_rare_rate_and_covers_it():
    # Alike prompts: the pooled curve is the true one. Rate at alpha 0: expit(-6) = 0.25%.
    cover, error = coverage("pooled", [-6.0] * 30, 1.5, (1, 2, 3), 6, datasets=200, seed=0)
    assert cover >= 0.9  # 95% nominal; 200 datasets put a correct 95% above 0.91 with ~99% chance
    assert error < 0.3  # log10: within a factor of 2 in the median, from 540 samples none of them at alpha 0


def test_hierarchical_recovers_the_mean_of_differing_prompts_and_covers_it():
    rng = np.random.default_rng(1)
    intercepts = rng.normal(-6.0, 1.2, 30)
    cover, error = coverage("hierarchical", intercepts, 1.5, (0.5, 1, 2, 4), 5, datasets=20, seed=2)
    assert cover >= 0.75  # 20 datasets: a correct 95% falls below 0.75 with < 0.3% chance
    assert error < 0.2


def test_the_interval_widens_with_the_distance_carried():
    rng = np.random.default_rng(3)
    cells = draw(rng, [-5.0] * 30, 1.5, (1, 2, 3), 8)
    near, far = estimate_rate(cells, 0.0, "pooled"), estimate_rate(cells, -1.0, "pooled")
    width = lambda e: math.log(e.ci_high) - math.log(e.ci_low)  # noqa: E731
    assert width(far) > width(near) > 0
    assert far.rate < near.rate


def test_per_prompt_rates_rank_the_prompts_that_do_it():
    rng = np.random.default_rng(4)
    intercepts = np.where(np.arange(40) < 10, -3.0, -8.0)  # 10 prompts do it often, 30 almost never
    estimate = estimate_rate(draw(rng, intercepts, 1.0, (0.5, 1, 2, 4), 6), 0.0, "hierarchical")
    top10 = {p.prompt_id for p in estimate.per_prompt if p.rank <= 10}
    assert len(top10 & {f"p{i}" for i in range(10)}) >= 8
    assert [p.rank for p in estimate.per_prompt] == list(range(1, 41))
    assert estimate.per_prompt[0].rate >= estimate.per_prompt[-1].rate


def test_the_curve_runs_from_the_target_and_marks_where_the_data_start():
    rng = np.random.default_rng(5)
    estimate = estimate_rate(draw(rng, [-5.0] * 20, 1.5, (0, 1, 2, 4), 10), 0.0, "pooled")
    (first_alpha, first_rate), (last_alpha, _) = estimate.curve[0], estimate.curve[-1]
    assert (first_alpha, last_alpha) == (0.0, 4.0)
    assert first_rate == pytest.approx(estimate.rate)
    assert estimate.measured_from == min(u["alpha"] for u in estimate.used if u["hits"])
    assert estimate.as_dict()["used"] == estimate.used


@pytest.mark.parametrize("method", ["pooled", "hierarchical", "dispersed", "guarded"])
@pytest.mark.parametrize(
    "counts, reason",
    [
        ({}, "no samples"),
        ({0: (0, 50), 1: (0, 50), 2: (0, 50)}, "no hits at any alpha"),
        ({0: (0, 50), 1: (0, 50), 2: (7, 50)}, "hits at one alpha only"),
        ({0: (0, 50), 1: (20, 50), 2: (5, 50), 4: (1, 50)}, "does not increase"),
        ({0: (0, 50), 1: (50, 50), 2: (50, 50)}, "every sample is a hit"),
        ({0: (0, 50), 1: (0, 50), 2: (49, 50), 4: (50, 50)}, "degenerate fit"),
    ],
)
def test_data_without_a_trend_gives_no_number_but_a_reason(method, counts, reason):
    cells = [Cell(f"p{i}", alpha, hits // 5 + (i < hits % 5), n // 5) for alpha, (hits, n) in counts.items() for i in range(5)]
    estimate = estimate_rate(cells, 0.0, method)
    assert estimate.rate is None and estimate.ci_low is None and estimate.ci_high is None
    assert reason in estimate.reason


@pytest.mark.parametrize(
    "cells, kwargs, field",
    [
        ([Cell("p", 1.0, 5, 4)], {}, "cells[0].hits"),
        ([Cell("p", 1.0, -1, 4)], {}, "cells[0].hits"),
        ([Cell("p", 1.0, 0, -3)], {}, "cells[0].n"),
        ([Cell("p", 1.0, 0, 3), Cell("p", float("nan"), 0, 3)], {}, "cells[1].alpha"),
        ([], {"target_alpha": float("inf")}, "target_alpha"),
        ([], {"method": "magic"}, "method"),
        ([], {"level": 1.5}, "level"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_field(cells, kwargs, field):
    with pytest.raises(ValueError, match="^" + re.escape(field) + ":"):
        estimate_rate(cells, **kwargs)


def test_outcomes_become_cells_and_unjudged_samples_are_left_out():
    outcomes = [("a", 1.0, True), ("a", 1.0, False), ("a", 2.0, True), ("b", 1.0, None), ("b", 1.0, False)]
    assert cells_from_outcomes(outcomes) == [Cell("a", 1.0, 1, 2), Cell("a", 2.0, 1, 1), Cell("b", 1.0, 0, 1)]


def test_the_console_line_gives_the_interval_or_the_reason():
    rng = np.random.default_rng(6)
    estimate = estimate_rate(draw(rng, [-5.0] * 20, 1.5, (0, 1, 2, 4), 10), 0.0, "hierarchical")
    text = format_estimate(estimate)
    assert text.startswith(f"path estimate at alpha 0: {percent(estimate.rate)} [{percent(estimate.ci_low)}, ")
    assert "#1 " in text and "extrapolated below alpha" in text
    null = estimate_rate([Cell("a", 1.0, 0, 10)], 0.0)
    assert format_estimate(null) == "path estimate at alpha 0: none (no hits at any alpha)"
    assert percent(0.00012) == "0.012%" and percent(0.25) == "25.00%"


def test_a_bent_trend_is_flagged_and_a_straight_one_rarely():
    rng = np.random.default_rng(7)
    straight = [estimate_rate(draw(rng, [-5.0] * 20, 1.5, (0.5, 1, 2, 4), 10), 0.0, "pooled") for _ in range(100)]
    assert sum(e.warning is not None for e in straight) <= 6  # 1% nominal
    assert all(e.straightness["df"] == 2 for e in straight)
    # Six-token-like: steep near 0, shallow above (log-odds -7.5, -3.1, -1.9, -0.4, 3.3, as the
    # benchmark's pair B), sampled with alpha 0's zeros in.
    bent = dict(zip((0, 0.5, 1, 2, 4), (-7.5, -3.1, -1.9, -0.4, 3.3)))
    cells = [Cell(f"p{i}", a, int(rng.binomial(16, expit(eta))), 16) for i in range(60) for a, eta in bent.items()]
    estimate = estimate_rate(cells, 0.0)
    assert estimate.rate is not None and "stray from the fitted straight trend" in estimate.warning
    assert estimate.straightness["p"] < 0.01
    assert f"  warning: {estimate.warning}" in format_estimate(estimate)


def draw_tokens(rng, heads, slopes, alphas, prompts, n) -> list[Cell]:
    """Counts of a behaviour of several tokens in a row: rate(alpha) = prod_j expit(c_j + d_j * alpha),
    whose log-odds are concave in alpha (steep near 0, shallow where the tokens saturate)."""
    return [Cell(f"p{i}", a, int(rng.binomial(n, tokens_rate(heads, slopes, a))), n) for i in range(prompts) for a in alphas]


def tokens_rate(heads, slopes, alpha) -> float:
    return float(np.prod(expit(np.asarray(heads) + np.asarray(slopes) * alpha)))


# Four tokens: the first rare, three that saturate (rate at 0: 0.035%, at 0.5: 1.5%, at 4: 88%).
TOKENS = ((-4.0, -1.0, -1.0, -1.0), (1.5, 4.0, 4.0, 4.0))


def test_guarded_keeps_the_upper_bound_and_covers_a_bent_trend_the_straight_fit_misses():
    rng = np.random.default_rng(8)
    truth = tokens_rate(*TOKENS, 0.0)
    missed = covered = 0
    for _ in range(12):
        cells = draw_tokens(rng, *TOKENS, (0, 0.5, 1, 2, 4), 20, 12)
        straight, guarded = estimate_rate(cells, 0.0, "hierarchical"), estimate_rate(cells, 0.0, "guarded")
        assert (guarded.rate, guarded.ci_high, guarded.method) == (straight.rate, straight.ci_high, "guarded")
        assert guarded.ci_low <= straight.ci_low
        missed += not straight.ci_low <= truth <= straight.ci_high
        covered += guarded.ci_low <= truth <= guarded.ci_high
    assert missed >= 9  # the straight line carried down from the saturated alphas lands far too high
    assert covered == 12  # the upper bound of a concave trend holds; the lower side is alpha 0's own


def test_guarded_lower_bound_is_the_targets_own_when_it_has_hits():
    rng = np.random.default_rng(9)
    cells = draw(rng, [-3.0] * 20, 1.0, (0, 1, 2), 40)
    own = next(u for u in estimate_rate(cells, 0.0, "pooled").used if u["alpha"] == 0)
    guarded, straight = estimate_rate(cells, 0.0, "guarded"), estimate_rate(cells, 0.0, "hierarchical")
    assert own["hits"] > 0
    assert guarded.ci_low == pytest.approx(min(straight.ci_low, exact_lower_bound(own["hits"], own["n"], 0.025)))
    assert estimate_rate(cells, -1.0, "guarded").ci_low == 0.0  # not sampled at -1: nothing bounds it below


def test_dispersed_covers_a_straight_trend():
    cover, error = coverage("dispersed", [-6.0] * 30, 1.5, (0, 1, 2, 3), 6, datasets=100, seed=10)
    assert cover >= 0.88  # 95% nominal; 100 datasets put a correct 95% below 0.88 with < 1% chance
    assert error < 0.3


def test_dispersed_follows_the_targets_samples_when_they_contradict_the_trend():
    rng = np.random.default_rng(11)
    truth = tokens_rate(*TOKENS, 0.0)
    errors = {"pooled": [], "dispersed": []}
    for _ in range(30):
        cells = draw_tokens(rng, *TOKENS, (0, 0.5, 1, 2, 4), 60, 20)
        for method, values in errors.items():
            values.append(abs(math.log10(estimate_rate(cells, 0.0, method).rate / truth)))
    assert np.median(errors["dispersed"]) < np.median(errors["pooled"]) - 0.3


def test_local_follows_a_bend_that_fine_low_alphas_show():
    rng = np.random.default_rng(12)
    truth = tokens_rate(*TOKENS, 0.0)
    errors = {"guarded": [], "local": []}
    for _ in range(6):
        cells = draw_tokens(rng, *TOKENS, (0, 0.125, 0.25, 0.5, 1, 2, 4), 20, 20)
        for method, values in errors.items():
            estimate = estimate_rate(cells, 0.0, method)
            values.append(abs(math.log10(estimate.rate / truth)))
            assert estimate.ci_low <= truth <= estimate.ci_high and estimate.method == method
        assert [u["alpha"] for u in estimate.used][-1] < 4  # local: the saturated alphas are left out
    assert np.median(errors["local"]) < np.median(errors["guarded"]) - 0.3
