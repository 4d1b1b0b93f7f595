"""The path estimate on the rate plot: the extrapolated part of the curve is dashed, the fitted
part solid, and the PNG says what it shows."""

from __future__ import annotations

import json

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from study.analysis.estimate import Cell, estimate_rate
from study.output.estimate_plot import DESCRIPTION_KEY, draw_estimate, png_metadata, spans_decades


def cells(alphas=(0.5, 1, 2, 4)) -> list[Cell]:
    rng = np.random.default_rng(0)
    return [Cell(f"p{i}", a, int(rng.binomial(20, 1 / (1 + np.exp(5 - 1.5 * a)))), 20) for i in range(10) for a in alphas]


def test_the_curve_is_dashed_from_the_target_to_the_first_alpha_with_hits(tmp_path):
    estimate = estimate_rate(cells(), 0.0)
    fig = Figure()
    ax = fig.subplots()
    drawn = draw_estimate(ax, estimate)
    assert drawn["extrapolated"] == [0.0, estimate.measured_from]
    assert drawn["fitted"] == [estimate.measured_from, 4.0]
    path = tmp_path / "plot.png"
    fig.savefig(path, metadata=png_metadata(ax, drawn, False))
    described = json.loads(Image.open(path).text[DESCRIPTION_KEY])
    assert described["dashed"] == [[0.0, estimate.measured_from]]
    assert described["estimate"]["interval"] == [estimate.ci_low, estimate.ci_high]


def test_a_null_estimate_draws_nothing():
    ax = Figure().subplots()
    assert draw_estimate(ax, estimate_rate([Cell("a", 1.0, 0, 5)], 0.0)) == {}
    assert ax.get_lines() == []


def test_rates_spanning_decades_ask_for_a_log_axis():
    estimate = estimate_rate(cells(), 0.0, "hierarchical")
    assert spans_decades([0.3, 0.5], estimate) == (0.5 / min(estimate.ci_low, 0.3) >= 100)
    guarded = estimate_rate(cells(), 0.0)  # not sampled at alpha 0: its lower bound is 0, left out
    assert guarded.ci_low == 0 and spans_decades([0.3, 0.5], guarded) == (0.5 / min(guarded.rate, 0.3) >= 100)
    assert spans_decades([0.001, 0.5], None)
    assert not spans_decades([0.1, 0.5], None)
