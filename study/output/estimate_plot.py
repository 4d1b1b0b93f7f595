"""The path estimate on the rate plot: the fitted curve, its extrapolated part dashed, and the
estimate with its interval at the target alpha.

The curve is solid where there are hits to fit (from the smallest alpha with hits up), dashed
where it is carried beyond them towards the target: a reader sees at once how far the number
at the target rests on the trend rather than on hits. What was drawn is also returned as a small
description (`drawn`), which the plot writes into the PNG's text metadata, so tests and scripts
can check the figure without reading pixels.
"""

from __future__ import annotations

import json

from study.analysis.estimate import Estimate

DESCRIPTION_KEY = "Description"
"""The PNG text chunk holding `drawn` as JSON."""
DECADES_FOR_LOG = 2.0
"""Rates spanning at least this many decades get a log axis."""


def spans_decades(rates: list[float], estimate: Estimate | None) -> bool:
    """True when the positive rates shown (the measured ones, the estimate and its lower bound)
    span DECADES_FOR_LOG decades or more: on a linear axis the small ones would sit on zero."""
    shown = [r for r in rates if r and r > 0]
    if estimate is not None and estimate.rate is not None:
        shown += [v for v in (estimate.rate, estimate.ci_low) if v and v > 0]
    return len(shown) >= 2 and max(shown) / min(shown) >= 10**DECADES_FOR_LOG


def draw_estimate(ax, estimate: Estimate) -> dict:
    """Draw the fitted curve and the estimate on `ax`; return what was drawn (empty when the
    estimate is null)."""
    if estimate.rate is None or not estimate.curve:
        return {}
    start = estimate.measured_from
    fitted = [(a, r) for a, r in estimate.curve if a >= start]
    carried = [(a, r) for a, r in estimate.curve if a <= start]
    if fitted:
        ax.plot(*zip(*fitted), "-", color="tab:orange", linewidth=1.5, label=f"fit ({estimate.method})")
    drawn: dict = {"fitted": [fitted[0][0], fitted[-1][0]] if fitted else None, "extrapolated": None}
    if len(carried) >= 2:
        ax.plot(*zip(*carried), "--", color="tab:orange", linewidth=1.5, label="fit, extrapolated")
        drawn["extrapolated"] = [carried[0][0], carried[-1][0]]
    low, high = estimate.ci_low, estimate.ci_high
    ax.errorbar(
        [estimate.target_alpha], [estimate.rate], yerr=[[estimate.rate - low], [high - estimate.rate]],
        fmt="D", color="tab:red", capsize=5, label=f"estimate at alpha {estimate.target_alpha:g} ({100 * estimate.level:g}% interval)",
    )
    drawn["estimate"] = {"alpha": estimate.target_alpha, "rate": estimate.rate, "interval": [low, high]}
    return drawn


def dashed_segments(ax) -> list[list[float]]:
    """x-ranges of the dashed lines on `ax`: read from the figure itself, not from the estimate."""
    return [
        [float(min(line.get_xdata())), float(max(line.get_xdata()))]
        for line in ax.get_lines()
        if line.get_linestyle() == "--" and len(line.get_xdata()) >= 2
    ]


def png_metadata(ax, drawn: dict, log_scale: bool) -> dict[str, str]:
    return {DESCRIPTION_KEY: json.dumps({**drawn, "dashed": dashed_segments(ax), "log_scale": log_scale})}
