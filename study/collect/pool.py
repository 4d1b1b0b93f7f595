"""The job pool: every (prompt, alpha, sample index) not yet on disk, drawn concurrently and judged."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from study.collect.client import LdaClient, sample_seed
from study.collect.detectors import (
    Detector,
    DetectorError,
    JudgeDetector,
    parse_detector,
)
from study.collect.settings import check_settings, save_settings, settings_of
from study.collect.store import SampleStore
from study.config import StudyConfig
from study.errors import SampleError, StudyError
from study.records import Prompt, Sample


@dataclass(frozen=True, slots=True)
class Job:
    prompt: Prompt
    alpha: float
    sample_index: int

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.prompt.id, self.alpha, self.sample_index)


def plan_jobs(prompts: list[Prompt], alphas: tuple[float, ...], samples_per_prompt: int) -> list[Job]:
    """All jobs, sample index outermost: an interrupted study then holds about as many samples at
    every alpha, and the alphas of one prompt go out together, so they share its cached prefix."""
    return [Job(p, a, i) for i in range(samples_per_prompt) for p in prompts for a in alphas]


@dataclass(frozen=True, slots=True)
class Failure:
    """A sample that could not be drawn or judged this run."""

    job: str
    """prompt id, alpha and sample index, e.g. "advice-03 alpha=2 #4"."""
    message: str


@dataclass(slots=True)
class Draw:
    """What one run of the request loop produced."""

    samples: list[Sample] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    alpha_unconfirmed: int = 0
    judge_unclear: int = 0


async def draw_all(config: StudyConfig, jobs: list[Job], store: SampleStore, existing: int, total: int) -> Draw:
    client = LdaClient(config)
    detector = None if config.detector is None else parse_detector(config.detector, config.judge)
    try:
        settings = {**settings_of(config), "model": await client.connect()}
        check_settings(config.output_dir, settings, has_samples=existing > 0)
        save_settings(config.output_dir, settings)
        try:
            if detector is not None:
                await detector.prepare()
        except DetectorError as exc:
            raise StudyError(str(exc)) from None
        bar = tqdm(total=total, initial=total - len(jobs), unit="sample", disable=not config.progress)
        with store.appender() as append, bar:
            return await _run_pool(config, jobs, client, detector, append, bar)
    finally:
        await client.aclose()
        if detector is not None:
            await detector.aclose()


async def _run_pool(
    config: StudyConfig,
    jobs: list[Job],
    client: LdaClient,
    detector: Detector | None,
    append: Callable[[Sample], None],
    bar: tqdm,
) -> Draw:
    draw = Draw()
    pending: Iterator[Job] = iter(jobs)  # shared by the workers: next() never awaits, so no race

    async def worker() -> None:
        for job in pending:
            sample = await _draw_one(config, job, client, detector, draw)
            if sample is not None:
                append(sample)
                draw.samples.append(sample)
            bar.update(1)

    # A TaskGroup cancels the other workers when one raises StudyError (server gone), so none of
    # them writes after the samples file is closed.
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(config.concurrency, len(jobs))):
                group.create_task(worker())
    except* StudyError as errors:
        raise errors.exceptions[0] from None
    if isinstance(detector, JudgeDetector):
        draw.judge_unclear = detector.unclear
    return draw


async def _draw_one(config: StudyConfig, job: Job, client: LdaClient, detector: Detector | None, draw: Draw) -> Sample | None:
    seed = None if config.sampling.seed is None else sample_seed(config.sampling.seed, job.prompt.id, job.sample_index)
    try:
        completion = await client.complete(job.prompt.text, job.alpha, seed)
        # The tolerance allows a server that keeps alpha as float32 (0.3 -> 0.30000001).
        if completion.alpha is not None and not math.isclose(completion.alpha, job.alpha, rel_tol=1e-6, abs_tol=1e-6):
            raise SampleError(f"server applied alpha {completion.alpha:g}, asked for {job.alpha:g}")
        detected = None if detector is None else await detector.detect(job.prompt.text, completion.text)
    except (SampleError, DetectorError) as exc:
        draw.failures.append(Failure(f"{job.prompt.id} alpha={job.alpha:g} #{job.sample_index}", str(exc)))
        return None
    if completion.alpha is None:
        draw.alpha_unconfirmed += 1
    return Sample(
        prompt_id=job.prompt.id,
        prompt=job.prompt.text,
        alpha=job.alpha,
        sample_index=job.sample_index,
        text=completion.text,
        detected=detected,
        tokens=completion.tokens,
        finish_reason=completion.finish_reason,
        seed=seed,
    )
