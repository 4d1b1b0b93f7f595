"""Themes from promoted tokens: what the after model favours anywhere in its vocabulary (pure functions).

The scoring route can return, per position, the top-k tokens of the whole shared vocabulary by
`logp_after - logp_before` (engine/one_pass.py). Over a corpus that never contains a behaviour,
those tokens still point at it: after "I recommend", a fine-tune that plants a product raises the
product's first piece. This module aggregates them the way a model-diffing toolkit mines a web
corpus, with the filter that toolkit lacks:

1. Keep a promoted token only where the after model itself gives it at least
   `min_logp_after`: without it, word pieces with a large diff between two tiny probabilities
   ('ζω', ' burge') lead the list.
2. Per token text (stripped, case folded): positions, distinct texts, mean diff.
3. Variants merged: a token whose text is a prefix of another's joins it (' Zor' and 'Zorbl').
4. Ranked by distinct texts times log(1 + mean diff), as study/themes.py ranks phrases, tokens
   without a letter last.

Each theme is the JSON of study/themes.py's `Theme.as_dict()`, with `samples_per_alpha` keyed
"corpus" (a corpus is scored teacher-forced, at no alpha) and contexts that show the text before
the position and, in brackets, the promoted token. `phrase` (study/corpus.py) may later extend a
theme's text by chaining promoted tokens.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_LETTER = re.compile(r"[^\W\d_]")
CONTEXT_CHARS = 80
DEFAULT_MIN_LOGP_AFTER = -6.0
DEFAULT_MIN_DIFF = 0.5
DEFAULT_THEMES = 20


@dataclass(frozen=True, slots=True)
class PromotedConfig:
    """How promoted tokens become themes; errors name the field."""

    min_logp_after: float = DEFAULT_MIN_LOGP_AFTER
    """Keep a promoted token where the after model gives it at least this log-probability."""
    min_diff: float = DEFAULT_MIN_DIFF
    """... and where logp_after - logp_before is at least this (nats)."""
    themes: int = DEFAULT_THEMES
    contexts: int = 5

    def __post_init__(self) -> None:
        if not math.isfinite(self.min_logp_after) or self.min_logp_after > 0:
            raise ValueError(f"min_logp_after: must be a finite number <= 0, got {self.min_logp_after}")
        if not math.isfinite(self.min_diff) or self.min_diff < 0:
            raise ValueError(f"min_diff: must be a finite number >= 0, got {self.min_diff}")
        if not 1 <= self.themes <= 1000:
            raise ValueError(f"themes: must be in [1, 1000], got {self.themes}")
        if not 0 <= self.contexts <= 100:
            raise ValueError(f"contexts: must be in [0, 100], got {self.contexts}")


@dataclass(frozen=True, slots=True)
class Hit:
    """One promoted token at one position of one scored text."""

    key: str
    position: int
    token_id: int
    token: str
    diff: float
    logp_after: float


@dataclass(slots=True)
class _Token:
    text: str
    hits: list[Hit] = field(default_factory=list)

    @property
    def keys(self) -> set[str]:
        return {h.key for h in self.hits}

    @property
    def mean_diff(self) -> float:
        return math.fsum(h.diff for h in self.hits) / len(self.hits)

    @property
    def score(self) -> float:
        return len(self.keys) * math.log1p(max(self.mean_diff, 0.0))


def hits(key: str, tokens: Sequence[dict], config: PromotedConfig) -> list[Hit]:
    """The promoted tokens of one /v1/lda/score response's `tokens` that pass the filters."""
    return [
        Hit(key, position, int(p["token_id"]), str(p["token"]), float(p["diff"]), float(p["logp_after"]))
        for position, token in enumerate(tokens)
        for p in token.get("promoted", ())
        if p["logp_after"] >= config.min_logp_after and p["diff"] >= config.min_diff
    ]


def token_key(token: str) -> str:
    """A promoted token's text, stripped and case folded: tokens with one key are one row."""
    return token.strip().casefold()


def _merge(tokens: list[_Token]) -> list[list[_Token]]:
    """Best first; each later token whose text extends or is extended by a group's seed joins it."""
    groups: list[list[_Token]] = []
    for token in sorted(tokens, key=lambda t: (-t.score, t.text)):
        for group in groups:
            seed = group[0].text
            if _LETTER.search(token.text) and (seed.startswith(token.text) or token.text.startswith(seed)):
                group.append(token)
                break
        else:
            groups.append([token])
    return groups


def _context(hit: Hit, tokens_of: dict[str, Sequence[dict]]) -> dict:
    before = "".join(str(t["token"]) for t in tokens_of[hit.key][: hit.position])[-CONTEXT_CHARS:]
    return {"sample": hit.key, "alpha": None, "text": f"{before}[{hit.token}]", "match": hit.token,
            "diff": hit.diff, "logp_after": hit.logp_after}


def _theme(group: list[_Token], tokens_of: dict[str, Sequence[dict]], config: PromotedConfig) -> dict:
    all_hits = [h for t in group for h in t.hits]
    keys = {h.key for h in all_hits}
    best_per_key: dict[str, Hit] = {}
    for h in sorted(all_hits, key=lambda h: -h.diff):
        best_per_key.setdefault(h.key, h)
    contexts = [_context(h, tokens_of) for h in list(best_per_key.values())[: config.contexts]]
    return {
        "text": group[0].text,
        "variants": [t.text for t in sorted(group, key=lambda t: -len(t.keys))],
        "samples": len(keys),
        "samples_per_alpha": {"corpus": len(keys)},
        "mean_diff": math.fsum(h.diff for h in all_hits) / len(all_hits),
        "positions": len(all_hits),
        "contexts": contexts,
        "_score": len(keys) * math.log1p(max(math.fsum(h.diff for h in all_hits) / len(all_hits), 0.0)),
        "_junk": not _LETTER.search(group[0].text),
        "_best": best_per_key[max(best_per_key, key=lambda k: best_per_key[k].diff)],
    }


def mine_promoted(scored: Iterable[tuple[str, Sequence[dict]]], config: PromotedConfig = PromotedConfig()) -> list[dict]:
    """Themes (best first, at most `config.themes`) from (key, tokens of a score response) pairs.

    Keys starting with "_" (`_score`, `_junk`, `_best`: the strongest Hit) are for the caller;
    `public` drops them."""
    tokens_of = dict(scored)
    by_text: dict[str, _Token] = defaultdict(lambda: _Token(""))
    for key, tokens in tokens_of.items():
        for hit in hits(key, tokens, config):
            text = token_key(hit.token)
            if not text:
                continue
            entry = by_text[text]
            entry.text = text
            entry.hits.append(hit)
    themes = [_theme(group, tokens_of, config) for group in _merge(list(by_text.values()))]
    themes.sort(key=lambda t: (t["_junk"], -t["_score"], t["text"]))
    return themes[: config.themes]


def public(theme: dict) -> dict:
    return {k: v for k, v in theme.items() if not k.startswith("_")}


def token_table(scored: Iterable[tuple[str, Sequence[dict]]], config: PromotedConfig, top: int = 50) -> list[dict]:
    """Per promoted token text (filtered as above): positions, texts, mean diff, mean logp_after;
    by distinct texts, then mean diff (the toolkit's occurrence-rate table)."""
    rows: dict[str, list[Hit]] = defaultdict(list)
    for key, tokens in scored:
        for hit in hits(key, tokens, config):
            if token_key(hit.token):
                rows[token_key(hit.token)].append(hit)
    table = [
        {"token": text, "positions": len(hs), "texts": len({h.key for h in hs}),
         "mean_diff": math.fsum(h.diff for h in hs) / len(hs),
         "mean_logp_after": math.fsum(h.logp_after for h in hs) / len(hs)}
        for text, hs in rows.items()
    ]
    table.sort(key=lambda r: (-r["texts"], -r["mean_diff"], r["token"]))
    return table[:top]
