"""`lda study --alphas auto`: draw the samples the sampling plan asks for, one step at a time.

The plan (study/analysis/plan.py) decides each step from the hits of the steps before it; this
module turns a step into jobs (its samples spread over the prompts, the extra ones rotating so
that every prompt gets its share over the steps), draws the jobs the output directory lacks, and
reads the step's hits back. Because the plan is deterministic given the hits, a rerun replays it
from the samples on disk and draws only what is missing; a step with failed samples stops the
plan there (a rerun retries them before the plan goes on).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from study.analysis.plan import DEFAULT_ALPHA_COUNT, Step, Taken, next_step
from study.collect.pool import Draw, Job, draw_all
from study.collect.store import SampleStore
from study.config import StudyConfig
from study.records import Key, Prompt, Sample


@dataclass(slots=True)
class PlannedDraw:
    """What the plan chose and drew."""

    budget: int
    taken: list[Taken] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    """Every job of the steps taken (drawn now or before)."""
    draw: Draw = field(default_factory=Draw)
    complete: bool = True
    """False when a step's samples failed and the plan stopped there."""

    @property
    def alphas(self) -> tuple[float, ...]:
        return tuple(sorted({t.step.alpha for t in self.taken}))

    def as_dict(self) -> dict:
        return {
            "budget": self.budget,
            "spent": sum(t.step.n for t in self.taken),
            "complete": self.complete,
            "alphas": list(self.alphas),
            "steps": [{"alpha": t.step.alpha, "n": t.step.n, "hits": t.hits, "why": t.step.reason} for t in self.taken],
        }


def plan_budget(samples_per_prompt: int, prompts: int) -> int:
    """What `--alphas auto` spends: what the fixed default's five alphas would."""
    return samples_per_prompt * DEFAULT_ALPHA_COUNT * prompts


def step_jobs(step: Step, prompts: list[Prompt], offset: int, drawn: Counter) -> list[Job]:
    """The step's samples over the prompts: `n // len(prompts)` each, the rest one more each from
    prompt `offset` on; sample indices continue each (prompt, alpha)'s count in `drawn`."""
    per, extra = divmod(step.n, len(prompts))
    jobs = []
    for i in range(len(prompts)):
        prompt = prompts[(offset + i) % len(prompts)]
        for _ in range(per + (i < extra)):
            jobs.append(Job(prompt, step.alpha, drawn[prompt.id, step.alpha]))
            drawn[prompt.id, step.alpha] += 1
    return jobs


def draw_planned(config: StudyConfig, prompts: list[Prompt], store: SampleStore, existing: dict[Key, Sample]) -> PlannedDraw:
    target = config.estimate_alpha if config.estimate_alpha is not None else 0.0
    result = PlannedDraw(plan_budget(config.samples_per_prompt, len(prompts)))
    have = dict(existing)
    drawn: Counter = Counter()
    while (step := next_step(result.budget, result.taken, target)) is not None:
        jobs = step_jobs(step, prompts, sum(t.step.n for t in result.taken) % len(prompts), drawn)
        missing = [job for job in jobs if job.key not in have]
        if missing:
            draw = asyncio.run(draw_all(config, missing, store, len(have), len(have) + len(missing)))
            have.update((s.key, s) for s in draw.samples)
            _add(result.draw, draw)
        result.jobs.extend(jobs)
        hits = sum(bool(have[job.key].detected) for job in jobs if job.key in have)
        result.taken.append(Taken(step, hits))
        if any(job.key not in have for job in jobs):
            result.complete = False
            break
    return result


def _add(total: Draw, draw: Draw) -> None:
    total.samples.extend(draw.samples)
    total.failures.extend(draw.failures)
    total.alpha_unconfirmed += draw.alpha_unconfirmed
    total.judge_unclear += draw.judge_unclear
