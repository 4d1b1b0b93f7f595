"""The study's report: per-alpha rates with their intervals and coherence, as a table, JSON and a plot."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from study.analysis.estimate import (
    DEFAULT_METHOD,
    Estimate,
    cells_from_outcomes,
    estimate_rate,
    unavailable,
)
from study.analysis.stats import (
    DEGENERATE_NGRAM,
    DEGENERATE_REPEATS,
    distinct_n,
    is_degenerate,
    wilson_interval,
)
from study.config import StudyConfig
from study.output.estimate_plot import draw_estimate, png_metadata, spans_decades
from study.output.files import SUMMARY_FILE, write_atomically
from study.records import Prompt, Sample


@dataclass(frozen=True, slots=True)
class AlphaSummary:
    """One row of the study's table. Rates are None when no sample exists at this alpha yet, and
    hits and rates are None without a detector: no detector ran, so there is no rate, not 0."""

    alpha: float
    n: int
    hits: int | None
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    degenerate_rate: float | None
    """Fraction of answers caught in repetition (see is_degenerate)."""
    mean_distinct_2: float | None
    """Mean over answers of unique/total word bigrams; lower means more repetitive."""
    mean_tokens: float | None


def summarize(samples: Iterable[Sample], alphas: tuple[float, ...]) -> list[AlphaSummary]:
    by_alpha: dict[float, list[Sample]] = {a: [] for a in alphas}
    for sample in samples:
        if sample.alpha in by_alpha:
            by_alpha[sample.alpha].append(sample)
    return [_summarize_alpha(alpha, group) for alpha, group in by_alpha.items()]


def _summarize_alpha(alpha: float, samples: list[Sample]) -> AlphaSummary:
    n = len(samples)
    if n == 0:
        return AlphaSummary(alpha, 0, 0, None, None, None, None, None, None)
    judged = [s for s in samples if s.detected is not None]
    hits = sum(bool(s.detected) for s in judged) if judged else None
    low, high = wilson_interval(hits, len(judged)) if judged else (None, None)
    distinct = [d for d in (distinct_n(s.text, 2) for s in samples) if d is not None]
    tokens = [s.tokens for s in samples if isinstance(s.tokens, int)]
    return AlphaSummary(
        alpha=alpha,
        n=n,
        hits=hits,
        rate=hits / len(judged) if judged else None,
        ci_low=low,
        ci_high=high,
        degenerate_rate=sum(is_degenerate(s.text) for s in samples) / n,
        mean_distinct_2=sum(distinct) / len(distinct) if distinct else None,
        mean_tokens=sum(tokens) / len(tokens) if tokens else None,
    )


def _per_prompt(samples: list[Sample]) -> list[dict[str, object]]:
    """Hits per (prompt, alpha): which prompts elicit the behaviour."""
    n: Counter[tuple[str, float]] = Counter(s.key[:2] for s in samples)
    hits: Counter[tuple[str, float]] = Counter(s.key[:2] for s in samples if s.detected)
    judged = {s.key[:2] for s in samples if s.detected is not None}
    return [
        {"prompt_id": pid, "alpha": alpha, "n": n[pid, alpha], "hits": hits[pid, alpha] if (pid, alpha) in judged else None}
        for pid, alpha in sorted(n)
    ]


def format_table(rows: list[AlphaSummary]) -> str:
    header = f"{'alpha':>7} {'n':>6} {'hits':>6} {'rate':>8}  {'95% CI':<19} {'degenerate':>10} {'distinct-2':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.n == 0 or r.rate is None:
            lines.append(f"{r.alpha:>7g} {r.n:>6} {'-':>6} {'-':>8}  {'-':<19} {'-':>10} {'-':>10}")
            continue
        interval = f"[{_pct(r.ci_low)}, {_pct(r.ci_high)}]"
        distinct = "-" if r.mean_distinct_2 is None else f"{r.mean_distinct_2:.3f}"
        lines.append(
            f"{r.alpha:>7g} {r.n:>6} {r.hits:>6} {_pct(r.rate):>8}  {interval:<19} "
            f"{_pct(r.degenerate_rate):>10} {distinct:>10}"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    # Rare behaviours are the point: below 0.01% keep two significant digits rather than print 0.00%.
    return f"{100 * value:.2g}%" if 0 < value < 1e-4 else f"{100 * value:.2f}%"


def estimate_for(samples: Iterable[Sample], target_alpha: float | None, method: str = DEFAULT_METHOD) -> Estimate | None:
    """The path estimate at `target_alpha` from the samples' verdicts; None when there is no
    target (no detector)."""
    if target_alpha is None:
        return None
    cells = cells_from_outcomes((s.prompt_id, s.alpha, s.detected) for s in samples)
    if not cells:
        return unavailable(target_alpha, "no sample judged by a detector yet", method)
    return estimate_rate(cells, target_alpha, method)


def plot(rows: list[AlphaSummary], path: Path, title: str, log_scale: bool = False, estimate: Estimate | None = None) -> None:
    """Rate with its Wilson interval (top) and the coherence measures (bottom) against alpha; with
    an estimate, its fitted curve (dashed where extrapolated) and the rate at the target alpha.

    Without a detector there is no rate: the plot shows the coherence measures alone. The rate
    axis is logarithmic when asked for, or when the rates shown span two decades."""
    # The object-oriented API needs no pyplot and so changes no global backend setting.
    from matplotlib.figure import Figure

    rows = sorted((r for r in rows if r.n > 0), key=lambda r: r.alpha)
    alphas = [r.alpha for r in rows]
    rated = [r for r in rows if r.rate is not None]
    metadata = {}
    if rated:
        fig = Figure(figsize=(7, 6.5), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        log_scale = log_scale or spans_decades([r.rate for r in rated], estimate)
        drawn = draw_estimate(top, estimate) if estimate is not None else {}
        _plot_rate(top, rated, log_scale)
        top.set_title(title, fontsize=10)
        metadata = png_metadata(top, drawn, log_scale)
    else:
        fig = Figure(figsize=(7, 3.5), layout="constrained")
        bottom = fig.subplots(1, 1)
        bottom.set_title(f"{title} (no detector: no rate)", fontsize=10)
    bottom.plot(alphas, [r.degenerate_rate for r in rows], "s-", color="tab:red", label="degenerate rate")
    distinct = [(r.alpha, r.mean_distinct_2) for r in rows if r.mean_distinct_2 is not None]
    bottom.plot([a for a, _ in distinct], [d for _, d in distinct], "^-", color="tab:green", label="mean distinct-2")
    bottom.set_ylim(-0.03, 1.03)
    bottom.set_xlabel("alpha")
    bottom.set_ylabel("coherence")
    bottom.legend(loc="best", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.savefig(path, dpi=120, metadata=metadata)


def _plot_rate(ax, rows: list[AlphaSummary], log_scale: bool) -> None:
    # On a log axis a zero rate has no place; those alphas show their upper bound as a down-arrow.
    shown = [r for r in rows if not (log_scale and r.hits == 0)]
    ax.errorbar(
        [r.alpha for r in shown],
        [r.rate for r in shown],
        yerr=[[r.rate - r.ci_low for r in shown], [r.ci_high - r.rate for r in shown]],
        fmt="o-",
        capsize=4,
        label="hit rate (95% Wilson interval)",
    )
    zeros = [r for r in rows if log_scale and r.hits == 0]
    if zeros:
        upper = [r.ci_high for r in zeros]
        ax.plot([r.alpha for r in zeros], upper, "v", color="tab:gray", label="0 hits: upper bound")
        ax.set_yscale("log")
    elif log_scale and shown:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_ylabel("hit rate")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3, which="both")


def write_summary(
    config: StudyConfig,
    settings: dict[str, object],
    prompts: list[Prompt],
    samples: list[Sample],
    rows: list[AlphaSummary],
    extra: dict | None = None,
) -> Path:
    """summary.json: `settings` (the study's, as saved in study.json), the per-alpha and per-prompt
    numbers, and `extra` (ranking, themes, estimate)."""
    path = config.output_dir / SUMMARY_FILE
    summary = {
        "settings": settings,
        "alphas": list(config.alphas),
        "prompts": len(prompts),
        "samples_per_prompt": config.samples_per_prompt,
        "coherence": {"degenerate": f"a word {DEGENERATE_NGRAM}-gram occurs >= {DEGENERATE_REPEATS} times"},
        "per_alpha": [asdict(r) for r in rows],
        "per_prompt": _per_prompt(samples),
        **(extra or {}),
    }
    save_summary(path, summary)
    return path


LEADING_KEYS = ("hypothesis", "themes")
"""What a reader wants first in summary.json: what changed, before the per-alpha numbers."""


def save_summary(path: Path, summary: dict) -> None:
    """Write summary.json with the LEADING_KEYS first, atomically (never half a file)."""
    ordered = {k: summary[k] for k in LEADING_KEYS if k in summary}
    ordered.update((k, v) for k, v in summary.items() if k not in LEADING_KEYS)
    write_atomically(path, json.dumps(ordered, indent=2, ensure_ascii=False) + "\n")
