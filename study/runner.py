"""run_study: draw whatever samples the output directory lacks, then summarise and plot all of them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from study.config import StudyConfig
from study.errors import StudyError
from study.pool import Draw, Failure, draw_all, plan_jobs
from study.prompts import Prompt, load_prompts
from study.settings import check_settings, load_settings, settings_of
from study.store import SAMPLES_FILE, Sample, SampleStore
from study.summary import PLOT_FILE, AlphaSummary, plot, summarize, write_summary


@dataclass(frozen=True, slots=True)
class StudyResult:
    rows: list[AlphaSummary]
    new_samples: int
    """Samples drawn by this run (the others were already on disk)."""
    failures: list[Failure]
    """One message per sample that could not be drawn this run; a rerun retries them."""
    alpha_unconfirmed: int
    """New samples whose response did not echo the alpha applied."""
    judge_unclear: int
    samples_path: Path
    summary_path: Path
    plot_path: Path


def run_study(config: StudyConfig) -> StudyResult:
    """Draw whatever samples the output directory lacks, then summarise and plot all of them."""
    prompts = load_prompts(config.prompts_path)
    store = SampleStore(config.output_dir / SAMPLES_FILE)
    existing = store.load()
    _check_prompt_texts(prompts, existing.values())
    check_settings(config.output_dir, settings_of(config), has_samples=bool(existing))
    grid = plan_jobs(prompts, config.alphas, config.samples_per_prompt)
    jobs = [job for job in grid if job.key not in existing]
    draw = Draw()
    if jobs:
        draw = asyncio.run(draw_all(config, jobs, store, len(existing), len(grid)))
    wanted = {job.key for job in grid}
    samples = [s for s in [*existing.values(), *draw.samples] if s.key in wanted]
    rows = summarize(samples, config.alphas)
    summary_path = write_summary(config, prompts, samples, rows)
    plot_path = config.output_dir / PLOT_FILE
    model = load_settings(config.output_dir).get("model", config.model)
    plot(rows, plot_path, f"{model} · {config.detector} · {len(prompts)} prompts", config.log_scale)
    return StudyResult(
        rows=rows,
        new_samples=len(draw.samples),
        failures=draw.failures,
        alpha_unconfirmed=draw.alpha_unconfirmed,
        judge_unclear=draw.judge_unclear,
        samples_path=store.path,
        summary_path=summary_path,
        plot_path=plot_path,
    )


def _check_prompt_texts(prompts: list[Prompt], existing: Iterable[Sample]) -> None:
    texts = {p.id: p.text for p in prompts}
    for sample in existing:
        if sample.prompt_id in texts and texts[sample.prompt_id] != sample.prompt:
            raise StudyError(
                f"prompt id {sample.prompt_id!r} now has another text than in the saved samples; "
                "give the changed prompt a new id, or use another --output-dir"
            )
