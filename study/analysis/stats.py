"""Statistics of a study: the Wilson interval of a rate, a rank-sum test of a shift, and the coherence measures."""

from __future__ import annotations

import math
import re
from collections import Counter
from statistics import NormalDist

Z_95 = NormalDist().inv_cdf(0.975)

# A sample is "degenerate" when one word 4-gram occurs at least 4 times: ordinary prose of a few
# hundred words almost never repeats a 4-word phrase that often, while the loops that large alphas
# cause ("and then and then ...") do so at once. Punctuation is ignored so that markdown
# scaffolding (bullets, bold markers) is not mistaken for a loop.
DEGENERATE_NGRAM = 4
DEGENERATE_REPEATS = 4
_WORD = re.compile(r"\w+")


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion hits/n (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0 or n hits,
    which matters here: the behaviours a study looks for are rare, so 0 hits is common.
    """
    if n <= 0:
        raise ValueError(f"n: must be > 0, got {n}")
    if not 0 <= hits <= n:
        raise ValueError(f"hits: must be in [0, {n}], got {hits}")
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return low, high


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(text: str, n: int = 2) -> float | None:
    """Unique word n-grams over all word n-grams; None when the text has no n-gram at all."""
    grams = _ngrams(_words(text), n)
    return len(set(grams)) / len(grams) if grams else None


def is_degenerate(text: str) -> bool:
    """True when one word 4-gram occurs at least 4 times (see DEGENERATE_NGRAM)."""
    counts = Counter(_ngrams(_words(text), DEGENERATE_NGRAM))
    return bool(counts) and counts.most_common(1)[0][1] >= DEGENERATE_REPEATS


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """The chance that a random positive outranks a random negative (ties count half); None
    without both classes. O(n log n) by ranks (the Mann-Whitney U statistic)."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # the mean rank of a tie
        i = j + 1
    rank_sum = sum(r for r, label in zip(ranks, labels) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def auroc_interval(area: float, positives: int, negatives: int, z: float = Z_95) -> tuple[float, float]:
    """Hanley and McNeil's (1982) 95% interval for an AUROC from its two class sizes."""
    q1 = area / (2 - area)
    q2 = 2 * area * area / (1 + area)
    variance = (
        area * (1 - area) + (positives - 1) * (q1 - area * area) + (negatives - 1) * (q2 - area * area)
    ) / (positives * negatives)
    half = z * math.sqrt(max(variance, 0.0))
    return max(0.0, area - half), min(1.0, area + half)


def top_fraction(scores: list[float], labels: list[bool], fraction: float = 0.1) -> tuple[int, int, float, float | None]:
    """(k, hits among the top k, precision, recall) for the top `fraction` of samples by score."""
    k = max(1, round(fraction * len(scores)))
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    hits = sum(labels[i] for i in top)
    total = sum(labels)
    return k, hits, hits / k, (hits / total if total else None)


def rank_sum_greater(x: list[float], y: list[float]) -> float | None:
    """One-sided p-value of the Mann-Whitney U (Wilcoxon rank-sum) test that `x` tends to be greater
    than `y`: the normal approximation with the tie correction and a continuity correction of 1/2,
    which holds from about 8 values per side. None when a side is empty or every value ties.

    Distribution-free: it asks only whether x's values rank above y's, so a shift of the per-sample
    diff scores is found whatever their shape (skewed, heavy-tailed) and without a detector.
    """
    n_x, n_y = len(x), len(y)
    if not n_x or not n_y:
        return None
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks_x, tie_term, i = 0.0, 0.0, 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        average_rank = (i + j) / 2 + 1
        ranks_x += average_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    n = n_x + n_y
    variance = n_x * n_y / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return None
    u_x = ranks_x - n_x * (n_x + 1) / 2
    z = (u_x - n_x * n_y / 2 - 0.5) / math.sqrt(variance)
    return 1 - NormalDist().cdf(z)
