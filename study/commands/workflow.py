"""run_study: draw whatever samples the output directory lacks, then summarise and plot all of them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from study.analysis.estimate import Estimate
from study.analysis.naming import Naming, name_changes
from study.analysis.ranking import Ranked, rank, separation
from study.collect.hypothesis import load_prompt, with_hypothesis
from study.collect.planned import PlannedDraw, draw_planned
from study.collect.pool import Draw, Failure, draw_all, plan_jobs
from study.collect.prompts import load_prompts
from study.collect.scoring import score_samples
from study.collect.settings import check_settings, load_settings, settings_of
from study.collect.store import SampleStore
from study.config import StudyConfig
from study.errors import StudyError
from study.output.files import PLOT_FILE, REPORT_FILE, SAMPLES_FILE
from study.output.report import RateView, write_report
from study.output.summary import (
    AlphaSummary,
    estimate_for,
    plot,
    summarize,
    write_summary,
)
from study.records import Prompt, Sample


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
    ranking: Ranking | None = None
    """None when scoring is off."""
    estimate: Estimate | None = None
    """The path estimate at the target alpha; None without a detector."""
    plan: PlannedDraw | None = None
    """With --alphas auto: the steps the sampling plan took, and why."""


@dataclass(frozen=True, slots=True)
class Ranking:
    ranked: list[Ranked]
    separation: dict[str, dict[str, dict]]
    """Per group of samples (all alphas, each alpha), per score (max, sum, mean): how well it finds
    the detector's hits; empty without a detector."""
    report_path: Path | None
    unsupported: bool
    """The server has no scoring route, so nothing was ranked."""
    naming: Naming | None = None
    """Themes mined from the scores (None when nothing was scored)."""

    def as_dict(self, rank_by: str) -> dict:
        return {"rank_by": rank_by, "scored": len(self.ranked), "separation": self.separation}


def run_study(config: StudyConfig) -> StudyResult:
    """Draw whatever samples the output directory lacks, then summarise and plot all of them."""
    prompts = load_prompts(config.prompts_path, config.prompt_set)
    instruction = hypothesis_prompt(config)  # a bad instruction file fails before any sampling
    store = SampleStore(config.output_dir / SAMPLES_FILE)
    existing = store.load()
    _check_prompt_texts(prompts, existing.values())
    check_settings(config.output_dir, settings_of(config), has_samples=bool(existing))
    planned = None
    if config.auto_alphas:
        planned = draw_planned(config, prompts, store, existing)
        config = replace(config, alphas=planned.alphas)
        grid, draw = planned.jobs, planned.draw
    else:
        grid = plan_jobs(prompts, config.alphas, config.samples_per_prompt)
        jobs = [job for job in grid if job.key not in existing]
        draw = Draw()
        if jobs:
            draw = asyncio.run(draw_all(config, jobs, store, len(existing), len(grid)))
    wanted = {job.key for job in grid}
    samples = [s for s in [*existing.values(), *draw.samples] if s.key in wanted]
    rows = summarize(samples, config.alphas)
    settings = {**settings_of(config), **load_settings(config.output_dir)}
    model = settings.get("model", config.model)
    title = f"{model} · {config.detector or 'no detector'} · {len(prompts)} prompts"
    estimate = estimate_for(samples, config.estimate_alpha)
    plot_path = config.output_dir / PLOT_FILE
    plot(rows, plot_path, title, config.log_scale, estimate)
    rates = RateView(estimate, plot_path if estimate is not None else None)
    ranking, score_failures = _rank(config, samples, title, instruction, rates) if config.score and samples else (None, [])
    extra = {"ranking": ranking.as_dict(config.rank_by)} if ranking else {}
    if ranking is not None and ranking.naming is not None:
        extra.update(ranking.naming.as_dict())
    if estimate is not None:
        extra["estimate"] = estimate.as_dict()
    if planned is not None:
        extra["alpha_plan"] = planned.as_dict()
    summary_path = write_summary(config, settings, prompts, samples, rows, extra)
    return StudyResult(
        rows=rows,
        new_samples=len(draw.samples),
        failures=[*draw.failures, *score_failures],
        alpha_unconfirmed=draw.alpha_unconfirmed,
        judge_unclear=draw.judge_unclear,
        samples_path=store.path,
        summary_path=summary_path,
        plot_path=plot_path,
        ranking=ranking,
        estimate=estimate,
        plan=planned,
    )


def _rank(
    config: StudyConfig, samples: list[Sample], title: str, instruction: str | None, rates: RateView | None = None
) -> tuple[Ranking, list[Failure]]:
    """Score what is unscored, rank everything scored, and write the HTML report."""
    scored = asyncio.run(score_samples(config, samples))
    failures = [Failure(message.split(": ", 1)[0], message.split(": ", 1)[-1]) for message in scored.failures]
    ranked = rank(samples, scored.scores, config.rank_by)
    measured = {name: m for name, a in sample_groups(config.alphas).items() if (m := separation(samples, scored.scores, a))}
    report, naming = None, None
    if ranked:
        naming = with_hypothesis(name_changes(samples, scored.scores), config.judge, instruction)
        report = write_report(
            config.output_dir / REPORT_FILE, ranked, config.rank_by, title, config.report_top, measured,
            naming.themes, naming.hypothesis, rates,
        )
    return Ranking(ranked, measured, report, scored.unsupported, naming), failures


def hypothesis_prompt(config: StudyConfig) -> str | None:
    """The hypothesis instruction when a judge endpoint is given, else None (no hypothesis)."""
    return load_prompt(config.hypothesis_prompt) if config.judge.base_url is not None else None


def _check_prompt_texts(prompts: list[Prompt], existing: Iterable[Sample]) -> None:
    texts = {p.id: p.text for p in prompts}
    for sample in existing:
        if sample.prompt_id in texts and texts[sample.prompt_id] != sample.prompt:
            raise StudyError(
                f"prompt id {sample.prompt_id!r} now has another text than in the saved samples; "
                "give the changed prompt a new id, or use another --output-dir"
            )


def sample_groups(alphas: tuple[float, ...]) -> dict[str, float | None]:
    """The sample groups whose separation is measured: each alpha, and all of them when several."""
    each = {f"alpha {a:g}": a for a in alphas}
    return {"all alphas": None, **each} if len(alphas) > 1 else each
