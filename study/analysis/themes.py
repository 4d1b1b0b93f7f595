"""Themes: name what post-training changed, from scored samples alone (pure functions, no server).

A study's scoring pass gives every sampled token its `diff = logp_after - logp_before`. Reading
samples one by one to find what the after model does differently is slow; this module condenses
them into a ranked list of themes ("zorblax daily boost", "as an ai"), each with its variants,
how many distinct samples show it per alpha, its mean diff and a few contexts:

1. Per token, the aggregate a model-diffing toolkit reports: count, total and mean diff, and the
   fraction of occurrences with a positive diff (`token_stats`).
2. Phrases: runs of high-diff tokens (a token at or above `high_diff` anchors a run; neighbours at
   or above `low_diff` extend it, and a run is widened to whole words), normalised (case folded,
   whitespace collapsed, immediate word repeats collapsed, edge punctuation dropped).
3. Variants merged into one theme: greedily, best phrase first, every remaining phrase whose
   content words mostly match the anchor's ("orblax daily boost supplement" joins "zorblax daily
   boost": a truncated word matches the word it is part of).
4. Ranked by distinct samples times log(1 + mean diff), so that many samples showing a phrase beat one
   long degenerate run; phrases of punctuation, digits or whitespace only come after every theme
   with a letter in it, so they lead only when nothing else stands out.

No detector is involved anywhere: the ranking uses nothing but the diffs.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_WORD = re.compile(r"[^\W_]+")
_LETTER = re.compile(r"[^\W\d_]")
_SPACE = re.compile(r"\s+")
_GLUED_REPEAT = re.compile(r"^(\w{3,}?)\1+$")
"""A word repeated without a space ('zorblaxzorblax'), as high alpha loops write it."""
STOPWORDS = frozenset(
    "a an and are as at be but by for from has have he her his i in is it its me my of on or our she so "
    "that the their them they this to was we were what when which who will with you your".split()
)
"""Words that never make two phrases variants of each other (they are in every phrase)."""


@dataclass(frozen=True, slots=True)
class ThemeConfig:
    """How phrases are cut out and how many themes are kept; errors name the field."""

    high_diff: float = 1.0
    """A token whose logp_after - logp_before is at least this (nats) anchors a phrase."""
    low_diff: float = 0.3
    """A neighbour at least this extends the phrase (post-training rarely favours every piece
    of a word equally: after ' Zor', the before model may already expect 'bl')."""
    max_phrase_tokens: int = 12
    """A longer run is split at its weakest tokens until every piece fits (see `_split`)."""
    themes: int = 20
    """How many themes `mine` returns."""
    contexts: int = 5
    """Contexts kept per theme, from distinct samples."""
    variants: int = 10
    """Variants listed per theme (most samples first)."""
    context_tokens: int = 12
    """Tokens of surrounding text on each side of a context."""
    merge_overlap: float = 0.5
    """A phrase joins a theme when at least this fraction of the smaller set of content words match."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.high_diff) or self.high_diff <= 0:
            raise ValueError(f"high_diff: must be a finite number > 0, got {self.high_diff}")
        if not math.isfinite(self.low_diff) or not 0 <= self.low_diff <= self.high_diff:
            raise ValueError(f"low_diff: must be in [0, high_diff={self.high_diff:g}], got {self.low_diff}")
        for name, low, high in (("max_phrase_tokens", 3, 256), ("themes", 1, 1000), ("contexts", 0, 100),
                                ("variants", 1, 100), ("context_tokens", 0, 256)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name}: must be in [{low}, {high}], got {value}")
        if not 0 < self.merge_overlap <= 1:
            raise ValueError(f"merge_overlap: must be in (0, 1], got {self.merge_overlap}")


@dataclass(frozen=True, slots=True)
class ScoredText:
    """One scored sample: its key, alpha, token strings and per-token logp_after - logp_before."""

    key: str
    """Names the sample, e.g. "generic-01 alpha=2 #3" (`sample_key`)."""
    alpha: float
    tokens: Sequence[str]
    diffs: Sequence[float]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.diffs):
            raise ValueError(f"tokens: {self.key} has {len(self.tokens)} tokens but {len(self.diffs)} diffs")


def sample_key(prompt_id: str, alpha: float, sample_index: int) -> str:
    """The text that names a sample in themes, contexts and the report."""
    return f"{prompt_id} alpha={alpha:g} #{sample_index}"


def scored_text(prompt_id: str, alpha: float, sample_index: int, tokens: Iterable[dict]) -> ScoredText:
    """A ScoredText from one line of a study's scores.jsonl (its `tokens` records)."""
    records = list(tokens)
    return ScoredText(
        sample_key(prompt_id, alpha, sample_index), float(alpha),
        [str(t["token"]) for t in records], [float(t["diff"]) for t in records],
    )


@dataclass(frozen=True, slots=True)
class TokenStat:
    """The per-token aggregate over all samples, as diff-mining toolkits report it."""

    token: str
    """The token as decoded, surrounding whitespace stripped."""
    count: int
    total_diff: float
    mean_diff: float
    positive_fraction: float
    """Fraction of the occurrences whose diff is > 0."""
    samples: int
    """Distinct samples it occurs in."""

    def as_dict(self) -> dict:
        return {
            "token": self.token, "count": self.count, "total_diff": self.total_diff,
            "mean_diff": self.mean_diff, "positive_fraction": self.positive_fraction, "samples": self.samples,
        }


def token_stats(texts: Iterable[ScoredText]) -> list[TokenStat]:
    """Every token's count, total and mean diff and positive fraction, largest total diff first.

    Tokens are told apart by their text without surrounding whitespace (' Boost' and 'Boost' are
    one token here); whitespace-only tokens are left out."""
    raw: dict[str, list] = {}  # per raw token: count, total diff, positive count
    names: dict[str, str] = {}  # raw token -> its stripped name
    samples: Counter[str] = Counter()
    for text in texts:
        for token, diff in zip(text.tokens, text.diffs):
            entry = raw.get(token)
            if entry is None:
                entry = raw[token] = [0, 0.0, 0]
                names[token] = token.strip()
            entry[0] += 1
            entry[1] += diff
            entry[2] += diff > 0
        samples.update({names[token] for token in text.tokens})
    merged: dict[str, list] = {}
    for token, (count, total, positive) in raw.items():
        entry = merged.setdefault(names[token], [0, 0.0, 0])
        entry[0] += count
        entry[1] += total
        entry[2] += positive
    merged.pop("", None)
    stats = [TokenStat(name, n, total, total / n, positive / n, samples[name]) for name, (n, total, positive) in merged.items()]
    stats.sort(key=lambda s: (-s.total_diff, s.token))
    return stats


@dataclass(frozen=True, slots=True)
class Occurrence:
    """Where a phrase occurs: tokens [start, end) of one sample."""

    key: str
    alpha: float
    start: int
    end: int


@dataclass(slots=True)
class _Phrase:
    """All occurrences of one normalised phrase."""

    norm: str
    words: tuple[str, ...]
    """Content words: what merging compares."""
    keys: set[str] = field(default_factory=set)
    """Its high-diff tokens (case folded; no stopwords, no tokens without a letter): merging also
    compares these, which joins the fragments of a word ('zor', 'z') to the word."""
    surface: Counter[str] = field(default_factory=Counter)
    """How often each raw surface form occurs (the commonest names the theme)."""
    occurrences: list[Occurrence] = field(default_factory=list)
    diff_total: float = 0.0
    diff_tokens: int = 0
    samples: set[str] = field(default_factory=set)

    @property
    def mean_diff(self) -> float:
        return self.diff_total / self.diff_tokens

    junk: bool = False
    """Punctuation, digits or whitespace only."""

    def score(self) -> float:
        return theme_score(len(self.samples), self.mean_diff)


def theme_score(samples: int, mean_diff: float) -> float:
    """Distinct samples x log(1 + mean diff): a phrase in many samples beats a stronger one in few,
    and one sample's degenerate loop (diffs of 10 nats and more at high alpha) stays small; the
    length of a run does not count at all (the mean, not the sum)."""
    return samples * math.log1p(max(mean_diff, 0.0))


@dataclass(frozen=True, slots=True)
class Theme:
    """One thing post-training changed, with the evidence for it."""

    text: str
    variants: tuple[str, ...]
    samples: int
    """Distinct samples with at least one occurrence."""
    samples_per_alpha: dict[str, int]
    """Keys are alphas as text ("0", "1", "2.5"): JSON object keys are strings."""
    mean_diff: float
    """Mean logp_after - logp_before over every token of every occurrence."""
    contexts: tuple[dict, ...]
    """Up to `contexts` of {"sample", "alpha", "text", "match"}, from distinct samples."""
    score: float
    """theme_score(samples, mean_diff): what the ranking sorts by."""
    junk: bool
    """Punctuation, digits or whitespace only."""
    occurrences: tuple[Occurrence, ...]
    """Every occurrence, for the report's highlighting."""

    def as_dict(self) -> dict:
        return {
            "text": self.text, "variants": list(self.variants), "samples": self.samples,
            "samples_per_alpha": dict(self.samples_per_alpha), "mean_diff": self.mean_diff,
            "contexts": [dict(c) for c in self.contexts],
        }


def mine(texts: Iterable[ScoredText], config: ThemeConfig = ThemeConfig()) -> list[Theme]:
    """The top `config.themes` themes of these scored samples, best first."""
    texts = list(texts)
    phrases = _collect_phrases(texts, config)
    groups = _merge(phrases, config)
    by_key = {t.key: t for t in texts}
    themes = [_theme(group, by_key, config) for group in groups]
    themes.sort(key=lambda t: (t.junk, -t.score, t.text))
    return themes[: config.themes]


# --------------------------------------------------------------------------- phrases


def _runs(diffs: Sequence[float], config: ThemeConfig) -> list[tuple[int, int]]:
    """[start, end) spans: each started by a token >= high_diff, grown over neighbours >= low_diff."""
    high, low, n = config.high_diff, config.low_diff, len(diffs)
    spans: list[tuple[int, int]] = []
    for anchor in [i for i, d in enumerate(diffs) if d >= high]:  # few anchors: skip the rest fast
        if spans and anchor < spans[-1][1]:
            continue  # already inside the previous span
        start, end = anchor, anchor + 1
        while start > 0 and diffs[start - 1] >= low:
            start -= 1
        while end < n and diffs[end] >= low:
            end += 1
        if spans and start <= spans[-1][1]:
            start = spans.pop()[0]
        spans.append((start, end))
    return spans


def _split(diffs: Sequence[float], start: int, end: int, longest: int) -> list[tuple[int, int]]:
    """A run longer than `longest` tokens, split at its weakest token (dropped) until every piece
    fits: at high alpha most tokens are favoured and runs grow long, but a name's own tokens
    stay far above their neighbours, so the cuts fall around it, not through it."""
    if end - start <= longest:
        return [(start, end)]
    middle = (start + end) / 2  # among equals (a uniform loop), cut near the middle
    weakest = min(range(start + 1, end - 1), key=lambda i: (diffs[i], abs(i - middle)))
    return _split(diffs, start, weakest, longest) + _split(diffs, weakest + 1, end, longest)


def _continues_word(token: str) -> bool:
    """A token that glues onto the previous one ('orblax' after ' Z'), not one that starts a word."""
    return bool(token) and (token[0].isalnum())


def _widen(tokens: Sequence[str], start: int, end: int) -> tuple[int, int]:
    """Widen a span to whole words (at most 3 tokens each side)."""
    for _ in range(3):
        if start > 0 and _continues_word(tokens[start]) and tokens[start - 1][-1:].isalnum():
            start -= 1
    for _ in range(3):
        if end < len(tokens) and _continues_word(tokens[end]) and tokens[end - 1][-1:].isalnum():
            end += 1
    return start, end


_EDGE_PUNCTUATION = " .,;:!?\"'()[]{}*-_`#>"


def display(text: str) -> str:
    """Whitespace collapsed, edge punctuation and immediate repeats dropped, case kept: how a
    theme is shown ('Zorblax Daily Boost Boost!' -> 'Zorblax Daily Boost')."""
    return " ".join(_collapse_repeats(_strip(text).split(" ")))


def phrase_key(text: str) -> str:
    """`display`, case folded: what tells two phrases apart (one key, one theme)."""
    return " ".join(_collapse_repeats(_strip(text).casefold().split(" ")))


def _strip(text: str) -> str:
    text = _SPACE.sub(" ", text).strip()
    return text.strip(_EDGE_PUNCTUATION) or text  # punctuation-only keeps its text (it ranks last)


def _collapse_repeats(words: list[str], longest: int = 4) -> list[str]:
    """Drop immediate repeats of a word or of an n-gram up to `longest` words ('buy now buy now'
    -> 'buy now'): high alpha loops, and a loop is one phrase, not a new variant per length."""
    words = [_GLUED_REPEAT.sub(r"\1", w) for w in words]
    if len(set(words)) == len(words):
        return words  # the common case: no word twice, so no repeat
    for period in range(1, longest + 1):  # a loop cut anywhere: 'buy now buy now buy' -> 'buy now'
        if len(words) >= 2 * period and all(words[i] == words[i + period] for i in range(len(words) - period)):
            return words[:period]
    out: list[str] = []
    for word in words:
        out.append(word)
        for n in range(1, longest + 1):
            if len(out) >= 2 * n and out[-n:] == out[-2 * n : -n]:
                del out[-n:]
                break
    return out


def content_words(norm: str) -> tuple[str, ...]:
    """The words that merging compares: letters or digits, 3 characters or more, not stopwords."""
    return tuple(dict.fromkeys(w for w in _WORD.findall(norm) if len(w) >= 3 and w not in STOPWORDS))


def _collect_phrases(texts: list[ScoredText], config: ThemeConfig) -> dict[str, _Phrase]:
    phrases: dict[str, _Phrase] = {}
    norms: dict[str, str] = {}  # a surface recurs across samples: normalise it once
    for text in texts:
        runs = _runs(text.diffs, config)
        pieces = [piece for run in runs for piece in _split(text.diffs, *run, config.max_phrase_tokens)]
        for start, end in pieces:
            if max(text.diffs[start:end]) < config.high_diff:
                continue  # a piece of a long run without a anchor of its own
            start, end = _widen(text.tokens, start, end)
            surface = "".join(text.tokens[start:end])
            norm = norms.get(surface)
            if norm is None:
                norm = norms[surface] = phrase_key(surface)
            if not norm:
                continue  # whitespace only: nothing to name
            phrase = phrases.get(norm)
            if phrase is None:
                phrase = phrases[norm] = _Phrase(norm, content_words(norm), junk=not _LETTER.search(norm))
            phrase.surface[surface] += 1
            phrase.keys.update(_token_keys(text.tokens[start:end], text.diffs[start:end], config.high_diff))
            phrase.occurrences.append(Occurrence(text.key, text.alpha, start, end))
            phrase.diff_total += sum(text.diffs[start:end])
            phrase.diff_tokens += end - start
            phrase.samples.add(text.key)
    return phrases


# --------------------------------------------------------------------------- merging


def words_match(a: str, b: str) -> bool:
    """Equal, or one a part of the other when long enough to be a name's piece ('orblax' in
    'zorblax', 4+ characters) or its start ('zor', 3+): sampling at high alpha often truncates or
    glues a word."""
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return (len(short) >= 4 and short in long_) or (len(short) >= 3 and long_.startswith(short))


def _overlap(anchor: tuple[str, ...], other: tuple[str, ...]) -> float:
    """Fraction of the smaller word set that has a match in the other set."""
    if not anchor or not other:
        return 0.0
    small, large = (anchor, other) if len(anchor) <= len(other) else (other, anchor)
    return sum(any(words_match(w, v) for v in large) for w in small) / len(small)


def _token_keys(tokens: Sequence[str], diffs: Sequence[float], high: float) -> set[str]:
    keys = set()
    for token, diff in zip(tokens, diffs):
        if diff >= high:
            key = token.strip().casefold()
            if key not in STOPWORDS and _LETTER.search(key):
                keys.add(key)
    return keys


def _key_overlap(anchor: set[str], other: set[str]) -> float:
    if not anchor or not other:
        return 0.0
    return len(anchor & other) / min(len(anchor), len(other))


def _merge(phrases: dict[str, _Phrase], config: ThemeConfig) -> list[list[_Phrase]]:
    """Greedy: the best unassigned phrase anchors a group and takes every unassigned phrase whose
    content words or high-diff tokens mostly match its own. Only the anchor is compared (no chains: 'daily boost' ->
    'daily routine' -> 'morning routine' stays two themes). Stops once enough groups exist for the
    ranking (three times `themes`, since merging reorders them)."""
    order = sorted(phrases.values(), key=lambda p: (p.junk, -p.score(), p.norm))
    index: defaultdict[str, list[_Phrase]] = defaultdict(list)
    for phrase in order:
        for word in phrase.words:
            index[word].append(phrase)
        for key in phrase.keys:
            index["\0" + key].append(phrase)  # token keys live beside the words, never clash with them
    vocabulary = [w for w in index if len(w) >= 4 and not w.startswith("\0")]
    assigned: set[str] = set()
    groups: list[list[_Phrase]] = []
    for anchor in order:
        if anchor.norm in assigned:
            continue
        if len(groups) >= 3 * config.themes:
            break
        assigned.add(anchor.norm)
        groups.append(_grow(anchor, index, vocabulary, assigned, config))
    return _absorb(groups)


def _absorb(groups: list[list[_Phrase]]) -> list[list[_Phrase]]:
    """Fold a group into an earlier one that covers its anchor entirely: every content word of the
    anchor matches a word of the earlier group's variants, and every high-diff token of it is one
    of theirs ('zor' into the group that holds 'zorblax daily boost ...'). At high alpha a name
    comes out in pieces and in one-off variants; the pieces then join the name's theme, while a
    anchor with a word of its own ('morning routine' beside 'daily routine') stays apart. Only
    words and tokens the earlier group shows in a quarter of its samples count, and what it
    absorbs adds none: a neighbour of the name does not pull its own theme in, nothing chains."""
    kept: list[tuple[list[_Phrase], set[str], set[str]]] = []
    for group in groups:
        anchor = group[0]
        host = None
        if not anchor.junk and (anchor.words or anchor.keys):
            host = next((k for k in kept if _covers(k[1], k[2], anchor)), None)
        if host is None:
            kept.append((group, _shared(group, "words"), _shared(group, "keys")))
        else:
            host[0].extend(group)
    return [group for group, _, _ in kept]


def _shared(group: list[_Phrase], field_name: str) -> set[str]:
    """The words (or keys) of a group's phrases that show in 2+ and a quarter of its samples:
    the name's own, not the words that happen to stand beside it."""
    samples: defaultdict[str, set[str]] = defaultdict(set)
    for phrase in group:
        for item in getattr(phrase, field_name):
            samples[item] |= phrase.samples
    wanted = max(2, len(set().union(*(p.samples for p in group))) / 4)
    return {item for item, keys in samples.items() if len(keys) >= wanted}


def _covers(words: set[str], keys: set[str], anchor: _Phrase) -> bool:
    return anchor.keys <= keys and all(w in words or any(words_match(w, v) for v in words) for w in anchor.words)


def _grow(anchor: _Phrase, index, vocabulary: list[str], assigned: set[str], config: ThemeConfig) -> list[_Phrase]:
    """The anchor's group: every unassigned phrase whose content words or high-diff tokens mostly
    match the anchor's own (never those of the phrases it took, so themes do not chain)."""
    group = [anchor]
    for other in _candidates(anchor.words, anchor.keys, index, vocabulary):
        if other.norm in assigned:
            continue
        if max(_overlap(anchor.words, other.words), _key_overlap(anchor.keys, other.keys)) >= config.merge_overlap:
            assigned.add(other.norm)
            group.append(other)
    return group


def _candidates(anchor_words: tuple[str, ...], anchor_keys: set[str], index: dict[str, list[_Phrase]], vocabulary: list[str]) -> list[_Phrase]:
    """Phrases sharing a matching content word or a high-diff token with the anchor, in ranking
    order, each once."""
    words = {"\0" + key for key in anchor_keys}
    for word in anchor_words:
        words.add(word)
        if len(word) >= 4:
            words.update(v for v in vocabulary if words_match(word, v))
    seen: dict[str, _Phrase] = {}
    for word in words:
        for phrase in index.get(word, ()):
            seen.setdefault(phrase.norm, phrase)
    return sorted(seen.values(), key=lambda p: (-p.score(), p.norm))


# --------------------------------------------------------------------------- themes


def _theme(group: list[_Phrase], by_key: dict[str, ScoredText], config: ThemeConfig) -> Theme:
    occurrences = [o for phrase in group for o in phrase.occurrences]
    per_sample: dict[str, Occurrence] = {}
    for o in occurrences:
        per_sample.setdefault(o.key, o)
    per_alpha: Counter[float] = Counter(o.alpha for o in per_sample.values())
    total = sum(p.diff_total for p in group)
    tokens = sum(p.diff_tokens for p in group)
    variants = sorted(group, key=lambda p: (-len(p.samples), len(p.norm), p.norm))
    best = variants[0]
    mean = total / tokens
    return Theme(
        text=_name(group, best, len(per_sample)) or display(best.surface.most_common(1)[0][0]),
        variants=tuple(p.norm for p in variants[: config.variants]),
        samples=len(per_sample),
        samples_per_alpha={f"{a:g}": per_alpha[a] for a in sorted(per_alpha)},
        mean_diff=mean,
        contexts=tuple(_contexts(per_sample.values(), by_key, config)),
        score=theme_score(len(per_sample), mean),
        junk=all(p.junk for p in group),
        occurrences=tuple(occurrences),
    )


def _name(group: list[_Phrase], base: _Phrase, samples: int) -> str | None:
    """A longer name than the commonest variant `base`, when one is common enough: the longest
    run of up to 4 words, found in the variants, that contains `base` and shows in at least 2 and
    a fifth of the theme's samples (on the demo pair at alphas 1, 2 and 4 the whole name is in 9
    of the 41 samples of its theme, 'daily boost' in 14, 'boost' in 25). At high alpha a name comes out whole in a few samples and
    in pieces ('boost', 'daily boost') in many; the whole name then still names the theme."""
    core = base.norm.split(" ")
    seen: defaultdict[tuple[str, ...], set[str]] = defaultdict(set)
    for phrase in group:
        words = [w.strip(_EDGE_PUNCTUATION) for w in phrase.norm.split(" ")]
        for n in range(len(core) + 1, 5):
            for i in range(len(words) - n + 1):
                gram = tuple(words[i : i + n])
                if _contains(gram, core) and all(gram):
                    seen[gram] |= phrase.samples
    wanted = max(2, samples / 5)
    common = [g for g, keys in seen.items() if len(keys) >= wanted]
    if not common:
        return None
    return _cased(" ".join(max(common, key=lambda g: (len(g), len(seen[g])))), group)


def _contains(gram: tuple[str, ...], core: list[str]) -> bool:
    n = len(core)
    return any(list(gram[i : i + n]) == core for i in range(len(gram) - n + 1))


def _cased(name: str, group: list[_Phrase]) -> str:
    """`name` as the variants' commonest surface writes it ('zorblax daily boost' -> 'Zorblax Daily Boost')."""
    pattern = re.compile(re.escape(name).replace("\\ ", r"\s+"), re.IGNORECASE)
    found: Counter[str] = Counter()
    for phrase in group:
        for surface, count in phrase.surface.items():
            match = pattern.search(surface)
            if match:
                found[_SPACE.sub(" ", match.group(0))] += count
    return found.most_common(1)[0][0] if found else name


def _contexts(occurrences: Iterable[Occurrence], by_key: dict[str, ScoredText], config: ThemeConfig) -> list[dict]:
    """One context per sample, the samples where the phrase's diff is largest first."""
    def strength(o: Occurrence) -> float:
        diffs = by_key[o.key].diffs[o.start : o.end]
        return sum(diffs) / len(diffs)

    chosen = sorted(occurrences, key=lambda o: (-strength(o), o.key))[: config.contexts]
    out = []
    for o in chosen:
        tokens, width = by_key[o.key].tokens, config.context_tokens
        match = "".join(tokens[o.start : o.end])
        text = "".join(tokens[max(0, o.start - width) : o.start]) + match + "".join(tokens[o.end : o.end + width])
        out.append({"sample": o.key, "alpha": o.alpha, "text": _SPACE.sub(" ", text).strip(), "match": match.strip()})
    return out
