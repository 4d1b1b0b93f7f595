"""The scoring pass: teacher-forced attribution of every sample, kept in scores.jsonl.

Each sample's text is scored after its prompt by the server (POST /v1/lda/score, engine/scoring.py):
per token logp_after, logp_before and logp_amplified, and per sample the sum, mean and max of
logp_after - logp_before. Scores live in their own file, keyed like samples, so samples.jsonl keeps
its format (a study started before scoring existed resumes, and its samples are scored on the next
run) and an interrupted pass resumes where it stopped. A server without the route (HTTP 404) leaves
the samples unscored, with one warning, rather than failing the study.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from study.collect.client import LdaClient
from study.config import StudyConfig
from study.errors import SampleError
from study.output.files import SCORES_FILE
from study.records import Key, Sample, SampleScore

log = logging.getLogger(__name__)


def load_scores(output_dir: Path) -> dict[Key, SampleScore]:
    path = output_dir / SCORES_FILE
    if not path.exists():
        return {}
    scores = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            key = (str(record["prompt_id"]), float(record["alpha"]), int(record["sample_index"]))
            scores[key] = SampleScore(key, record["tokens"], record["summary"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by an interrupt: that sample is scored again
    return scores


def _line(score: SampleScore) -> str:
    prompt_id, alpha, index = score.key
    record = {"prompt_id": prompt_id, "alpha": alpha, "sample_index": index, "summary": score.summary, "tokens": score.tokens}
    return json.dumps(record, ensure_ascii=False) + "\n"


@dataclass(slots=True)
class ScorePass:
    scores: dict[Key, SampleScore] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    unsupported: bool = False
    """The server has no scoring route."""


async def score_samples(config: StudyConfig, samples: Iterable[Sample]) -> ScorePass:
    """Score every sample that scores.jsonl lacks; return all scores of these samples."""
    result = ScorePass(load_scores(config.output_dir))
    todo = [s for s in samples if s.key not in result.scores and s.text]
    if not todo:
        return result
    client = LdaClient(config)
    path = config.output_dir / SCORES_FILE
    bar = tqdm(total=len(todo), unit="score", disable=not config.progress)
    try:
        await client.connect()
        with path.open("a", encoding="utf-8") as out, bar:
            await _pool(config, todo, client, out, result, bar)
    finally:
        await client.aclose()
    return result


async def _pool(config, todo: list[Sample], client: LdaClient, out, result: ScorePass, bar) -> None:
    pending = iter(todo)

    async def worker() -> None:
        for sample in pending:
            if result.unsupported:
                return
            try:
                body = await client.score(sample.prompt, sample.text, sample.alpha)
            except SampleError as exc:
                result.failures.append(f"{sample.prompt_id} alpha={sample.alpha:g} #{sample.sample_index}: {exc}")
                continue
            if body is None:
                result.unsupported = True
                return
            score = SampleScore(sample.key, body["tokens"], body["summary"])
            out.write(_line(score))
            out.flush()
            result.scores[sample.key] = score
            bar.update(1)

    await asyncio.gather(*(worker() for _ in range(min(config.concurrency, len(todo)))))
