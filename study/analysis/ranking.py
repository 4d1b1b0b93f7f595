"""Ranking: order samples by how much post-training favoured their tokens, with no detector.

Each sample's score is one summary (max, sum or mean) of the per-token logp_after - logp_before
from the scoring pass. With a detector, how well that ranking finds the detector's hits is
measured: AUROC with Hanley-McNeil's 95% interval, and precision and recall in the top 10%.
"""

from __future__ import annotations

from dataclasses import dataclass

from study.analysis.stats import auroc, auroc_interval, top_fraction
from study.config import RANK_BY
from study.records import Sample, SampleScore

TOP_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class Ranked:
    rank: int
    """1 is the sample post-training favoured most."""
    sample: Sample
    score: SampleScore
    value: float


def rank(samples: list[Sample], scores: dict, rank_by: str) -> list[Ranked]:
    """Scored samples, highest `rank_by` first (ties keep the samples' order)."""
    scored = [(s, scores[s.key]) for s in samples if s.key in scores]
    scored.sort(key=lambda pair: -pair[1].value(rank_by))
    return [Ranked(i + 1, s, score, score.value(rank_by)) for i, (s, score) in enumerate(scored)]


def separation(samples: list[Sample], scores: dict, alpha: float | None = None) -> dict[str, dict]:
    """How each score separates the detector's hits (all alphas, or one): per score, AUROC with
    its interval and the top-10% precision and recall; empty without verdicts."""
    pairs = [(s, scores[s.key]) for s in samples if s.key in scores and s.detected is not None]
    if alpha is not None:
        pairs = [(s, score) for s, score in pairs if s.alpha == alpha]
    labels = [bool(s.detected) for s, _ in pairs]
    out = {}
    for by in RANK_BY:
        values = [score.value(by) for _, score in pairs]
        area = auroc(values, labels)
        if area is None:
            continue
        positives = sum(labels)
        low, high = auroc_interval(area, positives, len(labels) - positives)
        k, hits, precision, recall = top_fraction(values, labels, TOP_FRACTION)
        out[by] = {
            "n": len(labels), "hits": positives, "auroc": area, "auroc_ci": [low, high],
            "top_k": k, "top_hits": hits, "top_precision": precision, "top_recall": recall,
        }
    return out
