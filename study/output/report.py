"""The HTML report: what changed (the themes) first, then the top-ranked samples, each token
coloured by logp_after - logp_before.

Each theme links to the samples it was found in, shown whole with the theme's tokens outlined.

One self-contained file (inline CSS, no script, no external resource), so it opens anywhere and
can be mailed or archived with the study. Red marks tokens post-training made likelier, blue the
ones it made less likely; the colour saturates at `SATURATION` nats. Hovering a token shows its
three log-probabilities (the `title` attribute, which every browser shows without script).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from study.analysis.estimate import Estimate, describe_interval, percent
from study.analysis.ranking import Ranked
from study.analysis.themes import Theme, sample_key
from study.output.files import write_atomically

SATURATION = 4.0
"""|logp_after - logp_before| in nats at which a token's colour is fully saturated."""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
.sample { border: 1px solid #ccc; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }
.meta { font-size: 0.85em; color: #555; margin-bottom: 0.4em; }
.prompt { font-style: italic; margin-bottom: 0.5em; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.7; }
.t { border-radius: 2px; }
.hit { color: #b00; font-weight: bold; }
.th { outline: 2px solid #000; outline-offset: 1px; }
.theme { border-left: 4px solid #b00; padding: 0.3em 1em; margin: 0.8em 0; }
.theme h3 { margin: 0.2em 0; } .hypothesis { background: #fff8e0; padding: 0.6em 1em; border-radius: 6px; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; }
"""


def token_colour(diff: float) -> str:
    """rgb() background for a token: white at 0, red for positive, blue for negative diffs."""
    strength = min(abs(diff) / SATURATION, 1.0)
    fade = round(255 * (1 - strength))
    return f"rgb(255,{fade},{fade})" if diff > 0 else f"rgb({fade},{fade},255)"


def _text_colour(diff: float) -> str:
    """Dark text on pale tokens, white on saturated ones, so every token stays readable."""
    return "#fff" if abs(diff) / SATURATION > 0.6 else "#111"


def _token_span(token: dict, outlined: bool = False) -> str:
    diff = float(token["diff"])
    title = (
        f"diff {diff:+.3f} | logp_after {token['logp_after']:.3f} | logp_before {token['logp_before']:.3f}"
        f" | logp_amplified {token['logp_amplified']:.3f}"
    )
    return (
        f'<span class="{"t th" if outlined else "t"}" style="background:{token_colour(diff)};color:{_text_colour(diff)}" title="{html.escape(title)}">'
        f"{html.escape(token['token'])}</span>"
    )


def _verdict(detected: bool | None) -> str:
    if detected is None:
        return "no detector"
    return '<span class="hit">detector: hit</span>' if detected else "detector: miss"


def sample_block(item: Ranked, rank_by: str, anchor: str = "", outline: frozenset[int] = frozenset()) -> str:
    """One ranked sample as HTML: its rank, score and verdict, then its tokens coloured by their diff
    (the tokens at `outline` boxed); shared with the monitor's page, which uses STYLE too."""
    s, summary = item.sample, item.score.summary
    meta = (
        f"#{item.rank} &middot; {rank_by} {item.value:+.3f} &middot; alpha {s.alpha:g} &middot; "
        f"{_verdict(s.detected)} &middot; max at token {summary['argmax']} &middot; "
        f"sum {summary['sum']:+.2f}, mean {summary['mean']:+.3f}, {summary['tokens']} tokens &middot; "
        f"{html.escape(s.prompt_id)} sample {s.sample_index}"
    )
    tokens = "".join(_token_span(t, i in outline) for i, t in enumerate(item.score.tokens))
    id_ = f' id="{anchor}"' if anchor else ""
    return (
        f'<div class="sample"{id_}><div class="meta">{meta}</div>'
        f'<div class="prompt">{html.escape(s.prompt)}</div><div class="text">{tokens}</div></div>'
    )


def _separation_table(separation: dict[str, dict[str, dict]]) -> str:
    if not separation:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(group)}</td><td>{by}</td><td>{m['auroc']:.3f} [{m['auroc_ci'][0]:.3f}, {m['auroc_ci'][1]:.3f}]</td>"
        f"<td>{m['top_hits']} of {m['top_k']}</td><td>{m['top_precision']:.2f}</td>"
        f"<td>{'-' if m['top_recall'] is None else format(m['top_recall'], '.2f')}</td></tr>"
        for group, by_score in separation.items()
        for by, m in by_score.items()
    )
    return (
        "<h2>How well each score finds the detector's hits</h2><table><tr><th>samples</th><th>score</th>"
        "<th>AUROC [95% CI]</th><th>hits in top 10%</th><th>precision</th><th>recall</th></tr>"
        f"{rows}</table>"
    )


def _themes_section(themes: list[Theme], ranked: list[Ranked], rank_by: str, hypothesis: str | None) -> str:
    """The themes, best first, each with links to its samples (shown at the end, theme outlined)."""
    if not themes:
        return ""
    by_key = {sample_key(*item.sample.key): item for item in ranked}
    parts = ["<h2>What post-training changed</h2>"]
    if hypothesis:
        parts.append(f'<p class="hypothesis"><b>Hypothesis</b> (an LLM reading the themes): {html.escape(hypothesis)}</p>')
    for number, theme in enumerate(themes, start=1):
        keys = [c["sample"] for c in theme.contexts if c["sample"] in by_key]
        links = ", ".join(f'<a href="#theme-{number}-{i}">{html.escape(k)}</a>' for i, k in enumerate(keys))
        per_alpha = ", ".join(f"alpha {a}: {n}" for a, n in theme.samples_per_alpha.items())
        variants = "; ".join(html.escape(v) for v in theme.variants)
        parts.append(
            f'<div class="theme" id="theme-{number}"><h3>{number}. {html.escape(theme.text)}</h3>'
            f'<div class="meta">{theme.samples} samples ({per_alpha}) &middot; mean diff {theme.mean_diff:+.2f} nats'
            f" &middot; variants: {variants}</div><div>samples: {links or 'none scored'}</div></div>"
        )
    return "".join(parts)


def _theme_samples(themes: list[Theme], ranked: list[Ranked], rank_by: str) -> str:
    """Each theme's context samples, whole, the theme's tokens outlined: the themes' links land
    here, at the end, so that the top-ranked samples still come right after the themes."""
    if not themes:
        return ""
    by_key = {sample_key(*item.sample.key): item for item in ranked}
    parts = ["<h2>Samples of each theme</h2>"]
    for number, theme in enumerate(themes, start=1):
        keys = [c["sample"] for c in theme.contexts if c["sample"] in by_key]
        for i, key in enumerate(keys):
            outline = frozenset(j for o in theme.occurrences if o.key == key for j in range(o.start, o.end))
            parts.append(f"<p><b>Theme {number}</b> ({html.escape(theme.text)}):</p>")
            parts.append(sample_block(by_key[key], rank_by, f"theme-{number}-{i}", outline))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class RateView:
    """What the report shows of the rate: the path estimate and the rate plot (embedded)."""

    estimate: Estimate | None
    plot: Path | None


def _rate_section(rates: RateView | None, prompts_shown: int = 10) -> str:
    """The estimated rate at the target alpha first (or why there is none), the prompts most
    likely to show the behaviour there, and the rate plot inline (the report stays one file)."""
    if rates is None or rates.estimate is None:
        return ""
    e = rates.estimate
    parts = [f"<h2>How often at alpha {e.target_alpha:g}</h2>"]
    if e.rate is None:
        parts.append(f"<p>No path estimate: {html.escape(e.reason or '')}.</p>")
    else:
        used = ", ".join(f"{u['alpha']:g}: {u['hits']}/{u['n']}" for u in e.used)
        parts.append(
            f"<p><b>{percent(e.rate)}</b> [{percent(e.ci_low)}, {percent(e.ci_high)}], {html.escape(describe_interval(e))}"
            f"; {e.method} fit of log-odds linear in alpha over the hits per alpha ({html.escape(used)}); the "
            f"curve is extrapolated below alpha {e.measured_from:g} (dashed). It assumes a straight trend in log-odds "
            "from the target to the alphas with hits (docs: research/rate-estimate.md).</p>"
        )
        if e.warning:
            parts.append(f"<p><b>Warning</b>: {html.escape(e.warning)}.</p>")
        rows = "".join(
            f"<tr><td>{p.rank}</td><td>{html.escape(p.prompt_id)}</td><td>{percent(p.rate)}</td><td>{p.hits}/{p.n}</td></tr>"
            for p in e.per_prompt[:prompts_shown]
        )
        if rows:
            parts.append(
                "<table><tr><th>rank</th><th>prompt</th><th>estimated rate</th><th>hits (all alphas)</th></tr>"
                f"{rows}</table>"
            )
    if rates.plot is not None and rates.plot.exists():
        data = base64.b64encode(rates.plot.read_bytes()).decode()
        parts.append(f'<p><img alt="rate against alpha" src="data:image/png;base64,{data}" style="max-width:100%"></p>')
    return "".join(parts)


def write_report(
    path: Path,
    ranked: list[Ranked],
    rank_by: str,
    title: str,
    top: int,
    separation: dict,
    themes: list[Theme] | None = None,
    hypothesis: str | None = None,
    rates: RateView | None = None,
) -> Path:
    """Write the report (themes first, then the `top` first samples of `ranked`) to `path`,
    atomically: an interrupted write leaves the previous report, not half of one."""
    blocks = "".join(sample_block(item, rank_by) for item in ranked[:top])
    body = (
        f"<h1>{html.escape(title)}</h1>"
        f"{_rate_section(rates)}"
        f"{_themes_section(themes or [], ranked, rank_by, hypothesis)}"
        f"<h2>Top samples</h2>"
        f"<p>{len(ranked)} scored samples, ranked by the {rank_by} of logp_after - logp_before per token; "
        f"the top {min(top, len(ranked))} are shown. Token colour: red = post-training made it likelier, "
        f"blue = less likely (saturates at {SATURATION:g} nats). Hover a token for its values.</p>"
        f"{_separation_table(separation)}{blocks}{_theme_samples(themes or [], ranked, rank_by)}"
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
    write_atomically(path, page)
    return path
