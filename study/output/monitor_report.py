"""What `lda monitor` reports: per checkpoint and alpha the rate and the diff score, the first
detection per alpha, and the three files people look at (monitor.json, monitor.png, monitor.html).

Everything here is computed from the checkpoints' study folders (samples.jsonl, scores.jsonl), so
the outputs are rebuilt whole after every checkpoint and a resumed monitor reports the same numbers.

The detection rule (stated in the JSON and the console): at each alpha, the behaviour is detected
at the first checkpoint whose rate's 95% Wilson lower bound lies above the 95% Wilson upper bound
of the first checkpoint's rate at that alpha. The first checkpoint is the baseline; a later one
detects when its rate is clearly above it, whatever the number of samples.

Beside it, a detection that needs no detector (SHIFT_RULE): the first checkpoint whose per-sample
diff scores (the study's rank_by summary of logp_after - logp_before) rank above the first
checkpoint's at the same alpha, by a one-sided rank-sum test at level SHIFT_LEVEL. A behaviour with
no fixed string to match moves the scores before any rate clears the Wilson rule.

Themes: what post-training favoured in a checkpoint's samples, mined from their scored tokens alone
(`study.analysis.themes.mine`: phrases of high-diff tokens, variants merged), per alpha; and the themes new
since the previous checkpoint (none of their variants was a theme there).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from study.analysis.estimate import percent
from study.analysis.ranking import Ranked, rank
from study.analysis.stats import rank_sum_greater
from study.analysis.themes import ThemeConfig, mine, scored_text
from study.output.files import write_atomically
from study.output.report import STYLE, sample_block
from study.output.summary import estimate_for, summarize
from study.records import Checkpoint, Key, Sample, SampleScore

RULE = ("first checkpoint whose 95% Wilson lower bound of the rate lies above the 95% Wilson upper bound "
        "of the first checkpoint's rate, at the same alpha")
ESTIMATE_RULE = (
    "first checkpoint whose path-estimated rate at the target alpha has its 95% profile lower bound above the "
    "first checkpoint's upper bound (its estimate's, or, when it has none, the Wilson upper bound at the "
    "smallest alpha sampled at or above the target: the rate grows with alpha)"
)
MONITOR_METHOD = "hierarchical"
"""The rule compares checkpoints by the straight fit's profile interval: a bend shared by every
checkpoint biases them alike, and the `guarded` default's lower bound (alpha 0's own samples)
would leave the rule no more power than the Wilson rule at alpha 0."""
ESTIMATE_KEYS = ("target_alpha", "method", "rate", "ci_low", "ci_high", "reason", "warning")
"""What monitor.json keeps of each checkpoint's estimate (not its curve or per-prompt list)."""
SHIFT_LEVEL = 0.01
SHIFT_RULE = (f"first checkpoint whose per-sample diff scores rank above the first checkpoint's at the same alpha: "
              f"one-sided Mann-Whitney U (rank-sum) test, p < {SHIFT_LEVEL:g} (each checkpoint tested once against the "
              "first, no correction across checkpoints)")
QUANTILES = (0.5, 0.9, 0.99)
THEMES = ThemeConfig(themes=8, contexts=2)
"""Top themes kept per checkpoint and alpha, with two contexts each (the JSON stays readable)."""


@dataclass(frozen=True, slots=True)
class AlphaPoint:
    """One checkpoint at one alpha. Rates are None without a detector; scores None unscored."""

    alpha: float
    n: int
    hits: int | None
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    score: dict | None
    """The per-sample diff score (the study's rank_by of logp_after - logp_before): n, mean, p50,
    p90, p99, max."""
    top_themes: list[dict] = field(default_factory=list)
    new_themes: list[str] = field(default_factory=list)
    """Top themes that were not top themes at the previous checkpoint (same alpha)."""
    shift_p: float | None = None
    """The rank-sum test's p-value of these scores against the first checkpoint's (SHIFT_RULE)."""


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    checkpoint: Checkpoint
    points: list[AlphaPoint]
    top_samples: list[Ranked]
    """The checkpoint's samples, highest score first (the HTML shows the first few)."""
    estimate: dict | None = None
    """The path estimate at the target alpha (ESTIMATE_KEYS); None without a detector."""
    score_values: dict[float, list[float]] = field(default_factory=dict)
    """Per alpha, every sample's diff score (what the shift test compares; not written out)."""

    def as_dict(self) -> dict:
        c = self.checkpoint
        return {"name": c.name, "step": c.step, "path": str(c.path), "kind": c.kind,
                "per_alpha": [asdict(p) for p in self.points], "estimate": self.estimate}


def checkpoint_result(checkpoint: Checkpoint, samples: list[Sample], scores: dict[Key, SampleScore],
                      alphas: tuple[float, ...], detector: bool, rank_by: str,
                      previous: CheckpointResult | None, estimate_at: float | None = None,
                      first: CheckpointResult | None = None) -> CheckpointResult:
    """One checkpoint's results, from its study folder's samples and scores; with `estimate_at` (and
    a detector), the path estimate of its rate at that alpha; `first` is the shift test's baseline."""
    before = {p.alpha: p.top_themes for p in previous.points} if previous else {}
    points, values = [], {}
    for row in summarize(samples, alphas):
        group = [s for s in samples if s.alpha == row.alpha]
        themes = checkpoint_themes(group, scores)
        values[row.alpha] = [scores[s.key].value(rank_by) for s in group if s.key in scores]
        baseline = first.score_values.get(row.alpha) if first is not None else None
        points.append(AlphaPoint(
            alpha=row.alpha, n=row.n,
            hits=row.hits if detector else None, rate=row.rate if detector else None,
            ci_low=row.ci_low if detector else None, ci_high=row.ci_high if detector else None,
            score=score_stats(values[row.alpha]),
            top_themes=themes,
            new_themes=_new_themes(themes, before.get(row.alpha)),
            shift_p=rank_sum_greater(values[row.alpha], baseline) if baseline else None,
        ))
    estimate = estimate_for(samples, estimate_at, MONITOR_METHOD) if detector and estimate_at is not None else None
    kept = None if estimate is None else {k: v for k, v in estimate.as_dict().items() if k in ESTIMATE_KEYS}
    return CheckpointResult(checkpoint, points, rank(samples, scores, rank_by), kept, values)


def score_stats(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    stats = {"n": len(ordered), "mean": sum(ordered) / len(ordered)}
    stats |= {f"p{round(q * 100)}": _quantile(ordered, q) for q in QUANTILES}
    return stats | {"max": ordered[-1]}


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def checkpoint_themes(samples: list[Sample], scores: dict[tuple, SampleScore]) -> list[dict]:
    """The top themes (`study.analysis.themes.mine`) of these samples' scored tokens."""
    texts = [scored_text(*s.key, scores[s.key].tokens) for s in samples if s.key in scores and scores[s.key].tokens]
    return [theme.as_dict() for theme in mine(texts, THEMES)]


def _new_themes(themes: list[dict], previous: list[dict] | None) -> list[str]:
    """The themes none of whose variants was a theme (or a variant of one) at the previous checkpoint."""
    if previous is None:
        return []
    seen = {v for t in previous for v in (t["text"], *t["variants"])}
    return [t["text"] for t in themes if not seen & {t["text"], *t["variants"]}]


def first_detection(results: list[CheckpointResult], alphas: tuple[float, ...]) -> dict[float, Checkpoint | None]:
    """Per alpha, the first checkpoint at which the behaviour is detected (RULE), else None."""
    detected: dict[float, Checkpoint | None] = {}
    for alpha in alphas:
        series = [(r.checkpoint, p) for r in results for p in r.points if p.alpha == alpha and p.n > 0]
        detected[alpha] = None
        if len(series) < 2 or series[0][1].ci_high is None:
            continue
        baseline = series[0][1].ci_high
        detected[alpha] = next((c for c, p in series[1:] if p.ci_low is not None and p.ci_low > baseline), None)
    return detected


def estimate_baseline(result: CheckpointResult) -> float | None:
    """The upper bound the first checkpoint sets for ESTIMATE_RULE, or None when it sets none."""
    e = result.estimate
    if e is None:
        return None
    if e["rate"] is not None:
        return e["ci_high"]
    above = [p for p in result.points if p.alpha >= e["target_alpha"] and p.n > 0 and p.ci_high is not None]
    return min(above, key=lambda p: p.alpha).ci_high if above else None


def first_detection_by_estimate(results: list[CheckpointResult]) -> Checkpoint | None:
    """The first checkpoint at which the behaviour is detected by ESTIMATE_RULE, else None."""
    if len(results) < 2 or (baseline := estimate_baseline(results[0])) is None:
        return None
    return next(
        (r.checkpoint for r in results[1:] if r.estimate and r.estimate["rate"] is not None and r.estimate["ci_low"] > baseline),
        None,
    )


def first_shift_detection(results: list[CheckpointResult], alphas: tuple[float, ...]) -> dict[float, Checkpoint | None]:
    """Per alpha, the first checkpoint after the first whose scores shifted up (SHIFT_RULE), else None."""
    return {
        alpha: next((r.checkpoint for r in results[1:] for p in r.points
                     if p.alpha == alpha and p.shift_p is not None and p.shift_p < SHIFT_LEVEL), None)
        for alpha in alphas
    }


def write_json(path: Path, results: list[CheckpointResult], settings: dict, alphas: tuple[float, ...]) -> dict:
    detected = first_detection(results, alphas)
    shifted = first_shift_detection(results, alphas)
    by_estimate = first_detection_by_estimate(results)
    record = {
        **settings,
        "rule": RULE,
        "estimate_rule": ESTIMATE_RULE,
        "first_detection_estimate": None if by_estimate is None else {"checkpoint": by_estimate.name, "step": by_estimate.step},
        "first_detection": {f"{a:g}": None if c is None else {"checkpoint": c.name, "step": c.step}
                            for a, c in detected.items()},
        "shift_rule": SHIFT_RULE,
        "first_shift_detection": {f"{a:g}": None if c is None else {"checkpoint": c.name, "step": c.step}
                                  for a, c in shifted.items()},
        "checkpoints": [r.as_dict() for r in results],
    }
    write_atomically(path, json.dumps(record, indent=2) + "\n")
    return record


def plot(path: Path, results: list[CheckpointResult], alphas: tuple[float, ...], title: str) -> None:
    """Top: rate against step, one line per alpha with its 95% band and first detection marked;
    bottom: the mean per-sample diff score against step (with its p90 dashed), detector-free.
    A panel without data (no detector, or --no-score) is left out."""
    from matplotlib.figure import Figure  # no pyplot: no global backend change

    has_rates = any(p.rate is not None for r in results for p in r.points)
    has_scores = any(p.score is not None for r in results for p in r.points)
    panels = [kind for kind, present in (("rate", has_rates), ("score", has_scores)) if present] or ["rate"]
    fig = Figure(figsize=(7.5, 3.5 + 3.5 * len(panels)), layout="constrained")
    axes = dict(zip(panels, fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]))
    detected = first_detection(results, alphas)
    for i, alpha in enumerate(alphas):
        series = [(r.checkpoint.step, p) for r in results for p in r.points if p.alpha == alpha and p.n > 0]
        if has_rates:
            _plot_rate(axes["rate"], series, f"C{i}", alpha, detected[alpha])
        if has_scores:
            _plot_score(axes["score"], series, f"C{i}", alpha)
    for kind, ax in axes.items():
        if kind == "rate":
            ax.set_ylim(bottom=0)  # after every line: an earlier limit would clip the later ones
            ax.set_ylabel("hit rate (95% Wilson band)")
        else:
            ax.set_ylabel("per-sample diff score")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    axes[panels[0]].set_title(title, fontsize=10)
    axes[panels[-1]].set_xlabel("training step")
    fig.savefig(path, dpi=120)


def _plot_rate(ax, series: list, colour: str, alpha: float, detected: Checkpoint | None) -> None:
    rated = [(step, p) for step, p in series if p.rate is not None]
    steps = [s for s, _ in rated]
    ax.plot(steps, [p.rate for _, p in rated], "o-", color=colour, label=f"alpha {alpha:g}")
    ax.fill_between(steps, [p.ci_low for _, p in rated], [p.ci_high for _, p in rated], color=colour, alpha=0.15)
    if detected is not None:
        ax.axvline(detected.step, color=colour, linestyle=":", label=f"alpha {alpha:g} detected ({detected.name})")


def _plot_score(ax, series: list, colour: str, alpha: float) -> None:
    scored = [(step, p.score) for step, p in series if p.score is not None]
    steps = [s for s, _ in scored]
    ax.plot(steps, [s["mean"] for _, s in scored], "s-", color=colour, label=f"alpha {alpha:g}: mean")
    ax.plot(steps, [s["p90"] for _, s in scored], "--", color=colour, alpha=0.6, label=f"alpha {alpha:g}: p90")


def write_html(path: Path, png: Path, results: list[CheckpointResult], record: dict, rank_by: str, top: int) -> None:
    """One self-contained page: the plot (inline), the detections, and per checkpoint its themes and
    top samples, tokens coloured as in a study's report.html."""
    image = base64.b64encode(png.read_bytes()).decode() if png.exists() else ""
    detections = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{'never' if d is None else html.escape(d['checkpoint'])}</td></tr>"
        for a, d in record["first_detection"].items()
    )
    shifts = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{'never' if d is None else html.escape(d['checkpoint'])}</td></tr>"
        for a, d in record.get("first_shift_detection", {}).items()
    )
    sections = "".join(_checkpoint_section(r, rank_by, top) for r in results)
    body = (
        f"<h1>lda monitor: {html.escape(str(record.get('run_dir', '')))}</h1>"
        f'<img alt="rate and score against training step" src="data:image/png;base64,{image}">'
        f"<h2>First detection</h2><p>Rule: {html.escape(RULE)}.</p>"
        f"<table><tr><th>alpha</th><th>first detected at</th></tr>{detections}</table>"
        f"<h2>First shift of the diff scores (no detector)</h2><p>Rule: {html.escape(SHIFT_RULE)}.</p>"
        f"<table><tr><th>alpha</th><th>first shifted at</th></tr>{shifts}</table>"
        f"{_estimate_section(results, record)}{sections}"
    )
    page = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>lda monitor</title>'
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
    write_atomically(path, page)


def _estimate_section(results: list[CheckpointResult], record: dict) -> str:
    """Per checkpoint the path-estimated rate at the target alpha, and the detection it gives."""
    estimated = [r for r in results if r.estimate is not None]
    if not estimated:
        return ""
    rows = "".join(f"<tr><td>{html.escape(r.checkpoint.name)}</td><td>{r.checkpoint.step}</td><td>{_estimate_text(r.estimate)}</td></tr>"
                   for r in estimated)
    detection = record.get("first_detection_estimate")
    target = estimated[0].estimate["target_alpha"]
    return (
        f"<h2>Estimated rate at alpha {target:g}</h2><p>Rule: {html.escape(ESTIMATE_RULE)}. First detected at: "
        f"<b>{'never' if detection is None else html.escape(detection['checkpoint'])}</b>.</p>"
        f"<table><tr><th>checkpoint</th><th>step</th><th>path estimate [95% interval]</th></tr>{rows}</table>"
    )


def _estimate_text(estimate: dict | None) -> str:
    if estimate is None:
        return "-"
    if estimate["rate"] is None:
        return f"none ({html.escape(estimate['reason'] or '')})"
    return f"{percent(estimate['rate'])} [{percent(estimate['ci_low'])}, {percent(estimate['ci_high'])}]"


def _checkpoint_section(result: CheckpointResult, rank_by: str, top: int) -> str:
    c = result.checkpoint
    rows = "".join(
        f"<tr><td>{p.alpha:g}</td><td>{p.n}</td><td>{'-' if p.rate is None else f'{p.hits} ({100 * p.rate:.1f}%)'}</td>"
        f"<td>{'-' if p.score is None else format(p.score['mean'], '+.3f')}</td>"
        f"<td>{html.escape(', '.join(t['text'] for t in p.top_themes))}</td>"
        f"<td>{html.escape(', '.join(p.new_themes))}</td></tr>"
        for p in result.points
    )
    blocks = "".join(sample_block(item, rank_by) for item in result.top_samples[:top])
    return (
        f"<h2>{html.escape(c.name)} (step {c.step})</h2><table><tr><th>alpha</th><th>n</th><th>hits</th>"
        f"<th>mean score</th><th>top themes</th><th>new themes</th></tr>{rows}</table>"
        f"<h3>Top {min(top, len(result.top_samples))} samples by the {rank_by} diff score</h3>{blocks}"
    )


def format_table(results: list[CheckpointResult], alphas: tuple[float, ...]) -> str:
    """The console's table: per checkpoint and alpha, hits/n (or -) and the mean score (with a * where
    the scores shifted up from the first checkpoint's, SHIFT_RULE)."""
    target = next((r.estimate["target_alpha"] for r in results if r.estimate is not None), None)
    estimate_header = "" if target is None else f"  {'path estimate at alpha ' + format(target, 'g')}"
    header = f"{'checkpoint':<20} {'step':>6} " + " ".join(f"{'alpha ' + format(a, 'g'):>22}" for a in alphas) + estimate_header
    lines = [header, "-" * len(header)]
    for r in results:
        by_alpha = {p.alpha: p for p in r.points}
        cells = []
        for a in alphas:
            p = by_alpha.get(a)
            rate = "-" if p is None or p.rate is None else f"{p.hits}/{p.n} {100 * p.rate:5.1f}%"
            score = "" if p is None or p.score is None else f" s{p.score['mean']:+.2f}"
            score += "*" if p is not None and p.shift_p is not None and p.shift_p < SHIFT_LEVEL else ""
            cells.append(f"{rate + score:>22}")
        estimate = "" if target is None else f"  {_estimate_text(r.estimate)}"
        lines.append(f"{r.checkpoint.name:<20} {r.checkpoint.step:>6} " + " ".join(cells) + estimate)
    return "\n".join(lines)
