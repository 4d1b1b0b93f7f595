"""Naming what changed: a study's scored samples -> its themes, token aggregates and hypothesis.

The glue between a study's files and the pure mining in `themes`: `lda explore` calls it after the
scoring pass, `lda mine` on a finished study directory. Samples whose text is empty or that were
not scored are skipped; pure functions (the optional hypothesis, which asks the judge's endpoint,
is `collect.hypothesis.with_hypothesis`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from study.analysis.themes import (
    ScoredText,
    Theme,
    ThemeConfig,
    TokenStat,
    mine,
    scored_text,
    token_stats,
)
from study.records import Key, Sample, SampleScore

TOP_TOKENS = 20
"""Tokens listed in summary.json (by total diff; the themes are the readable view)."""


@dataclass(frozen=True, slots=True)
class Naming:
    themes: list[Theme]
    tokens: list[TokenStat]
    hypothesis: str | None = None

    def as_dict(self) -> dict:
        out: dict = {"themes": [t.as_dict() for t in self.themes]}
        if self.hypothesis is not None:
            out["hypothesis"] = self.hypothesis
        out["top_tokens"] = [t.as_dict() for t in self.tokens[:TOP_TOKENS]]
        return out


def scored_texts(samples: Iterable[Sample], scores: Mapping[Key, SampleScore]) -> list[ScoredText]:
    """The scored samples as `themes.mine` takes them, in the samples' order; ValueError naming the
    sample when a line of scores.jsonl lacks a token's text or diff."""
    texts = []
    for sample in samples:
        if sample.key in scores:
            try:
                texts.append(scored_text(*sample.key, scores[sample.key].tokens))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"scores: the scores of {sample.key} have a malformed token record ({exc!r})") from None
    return texts


def name_changes(
    samples: Iterable[Sample],
    scores: Mapping[Key, SampleScore],
    config: ThemeConfig = ThemeConfig(),
) -> Naming:
    """Themes and token aggregates (the hypothesis, which needs the judge's endpoint, is added by
    `collect.hypothesis.with_hypothesis`)."""
    texts = scored_texts(samples, scores)
    return Naming(mine(texts, config), token_stats(texts))


def format_themes(naming: Naming, top: int = 5) -> str:
    """The console lines: the top themes, with their samples per alpha."""
    if not naming.themes:
        return "no themes: no token reached the phrase threshold (nothing post-training clearly favoured)"
    lines = ["what post-training changed (themes, best first):"]
    for number, theme in enumerate(naming.themes[:top], start=1):
        per_alpha = " ".join(f"{a}:{n}" for a, n in theme.samples_per_alpha.items())
        also = f"  (also: {', '.join(theme.variants[1:3])})" if len(theme.variants) > 1 else ""
        lines.append(
            f"  {number}. {theme.text!r}  {theme.samples} samples [alpha:n {per_alpha}]  "
            f"mean diff {theme.mean_diff:+.2f}{also}"
        )
    if naming.hypothesis:
        lines.append(f"hypothesis: {naming.hypothesis}")
    return "\n".join(lines)
