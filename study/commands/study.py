"""`lda study`: measure how often a behaviour shows, per alpha, by sampling a running LDA server.

Every prompt is sampled `samples_per_prompt` times at every alpha; a detector marks each answer
as a hit or a miss; the study reports, per alpha, the hit rate with its 95% Wilson interval and
two coherence measures (how often answers degenerate into repetition, and mean distinct-2), since
LDA trades coherence for rate as alpha grows.

    lda study --base-url http://127.0.0.1:8000 --alphas 0,0.5,1,2,4 --samples-per-prompt 20 \\
        --detector keyword:ZORBLAX --output-dir studies/zorblax

Requests go out concurrently (`--concurrency`, default 64) so that the server batches them.
Each answer is appended to `<output-dir>/samples.jsonl` as soon as it is judged, so a study can
be interrupted at any time; rerunning the same command skips every (prompt id, alpha, sample
index) already there. The output directory also gets `study.json` (the settings the samples were
drawn with: a rerun with other settings is refused rather than mixing two distributions),
`summary.json` and `rate_vs_alpha.png`.

Only the OpenAI API shape is assumed, plus a top-level `alpha` request field. When responses
echo a top-level `alpha`, it is checked against the one asked for.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from study.analysis.estimate import format_estimate
from study.analysis.naming import format_themes
from study.collect.detectors import JudgeConfig
from study.collect.planned import PlannedDraw
from study.collect.prompts import default_endpoint
from study.collect.store import SampleStore
from study.commands import base
from study.commands.workflow import Ranking, StudyResult, run_study
from study.config import (
    AUTO_ALPHAS,
    DEFAULT_ALPHAS,
    PROMPT_SETS,
    SamplingConfig,
    StudyConfig,
    parse_alphas,
)
from study.output.files import SAMPLES_FILE, SCORES_FILE
from study.output.summary import format_table

log = logging.getLogger(__name__)


def study_parser(prog: str = "lda study") -> argparse.ArgumentParser:
    p = base.parser(
        prog,
        "Measure a behaviour's rate per alpha against a running LDA server, and rank the samples by how "
        "much post-training favoured their tokens (no detector needed).",
        "Rerun the same command with the same --output-dir to resume an interrupted study.",
    )
    base.add_study_flags(p)
    base.add_judge_flags(
        p,
        "judge: the detector (--detector 'judge:Does the answer ...?') and the hypothesis line (an LLM "
        "reads the top themes and says what changed; on whenever --judge-base-url is given)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    judge_options = {"template": args.judge_template} if args.judge_template else {}
    prompt_set, prompts_path = (args.prompts, None) if args.prompts in PROMPT_SETS else ("advice", Path(args.prompts))
    endpoint = args.endpoint or default_endpoint(prompts_path, prompt_set)
    auto = args.alphas.strip() == AUTO_ALPHAS
    return StudyConfig(
        base_url=tuple(args.base_urls or [base.DEFAULT_BASE_URL]),
        output_dir=args.output_dir,
        detector=args.detector,
        alphas=DEFAULT_ALPHAS if auto else parse_alphas(args.alphas),
        auto_alphas=auto,
        samples_per_prompt=args.samples_per_prompt,
        prompts_path=prompts_path,
        prompt_set=prompt_set,
        model=args.model,
        concurrency=args.concurrency,
        timeout=args.timeout,
        api_key=args.api_key,
        sampling=SamplingConfig(endpoint, args.temperature, args.top_p, args.max_tokens, args.seed),
        judge=JudgeConfig(args.judge_base_url, args.judge_model, api_key=args.judge_api_key, **judge_options),
        log_scale=args.log_scale,
        progress=not args.no_progress,
        score=not args.no_score,
        rank_by=args.rank_by,
        report_top=args.report_top,
        hypothesis_prompt=args.hypothesis_prompt,
        estimate_at=args.estimate_at,
    )


def cli(argv: list[str], prog: str = "lda study") -> int:
    """`lda study ...`: 0 done, 1 the study failed or some samples did, 2 bad input, 130 interrupted."""
    args = base.parse(study_parser(prog), argv)
    if isinstance(args, int):
        return args

    def work() -> int:
        config = config_from_args(args)
        return _report(run_study(config), config)

    def interrupted() -> str:
        saved = len(SampleStore(args.output_dir / SAMPLES_FILE).load())
        return f"interrupted; {saved} samples are saved in {args.output_dir}; rerun the same command to resume"

    return base.run(prog, work, interrupted=interrupted)


def _report(result: StudyResult, config: StudyConfig) -> int:
    if config.detector is not None:
        print(format_table(result.rows))
    if result.plan is not None:
        print(format_plan(result.plan))
    if result.estimate is not None:
        print(format_estimate(result.estimate))
    if result.ranking is not None and result.ranking.naming is not None:
        print(format_themes(result.ranking.naming))
    files = f"{result.samples_path.name}, {result.summary_path.name}, {result.plot_path.name}"
    if result.ranking is not None:
        _print_ranking(result.ranking, config.rank_by)
        if result.ranking.report_path is not None:
            files += f", {SCORES_FILE}, {result.ranking.report_path.name}"
    print(f"\n{result.new_samples} new samples; results in {result.summary_path.parent}/ ({files})")
    if result.alpha_unconfirmed:
        count = result.alpha_unconfirmed
        log.warning("%d responses did not echo the alpha applied; the server may ignore `alpha`", count)
    if result.judge_unclear:
        log.warning("the judge answered neither yes nor no %d times (counted as no)", result.judge_unclear)
    if not result.failures:
        return 0
    # One bad setting (an alpha the server refuses) fails many samples alike: group by message.
    by_message = Counter(f.message for f in result.failures)
    example = {f.message: f.job for f in reversed(result.failures)}
    print(f"lda study: {len(result.failures)} samples failed (rerun to retry them):", file=sys.stderr)
    for message, count in by_message.most_common(5):
        print(f"  {count} x {message} (e.g. {example[message]})", file=sys.stderr)
    if len(by_message) > 5:
        print(f"  ... and {len(by_message) - 5} other errors", file=sys.stderr)
    return 1


def format_plan(plan: PlannedDraw) -> str:
    """The alphas the plan chose, one step a line with why."""
    lines = [f"\nalphas chosen by the plan (budget {plan.budget} samples):"]
    for t in plan.taken:
        lines.append(f"  alpha {t.step.alpha:<7g} {t.step.n:>6} samples {t.hits:>5} hits  {t.step.reason}")
    if not plan.complete:
        lines.append("  (stopped: a step's samples failed; rerun to retry them and go on)")
    return "\n".join(lines)


def _print_ranking(ranking: Ranking, rank_by: str) -> None:
    if ranking.unsupported:
        log.warning("the server has no /v1/lda/score route: the samples are not scored or ranked")
        return
    print(f"\ntop samples by the {rank_by} of logp_after - logp_before:")
    for item in ranking.ranked[:5]:
        verdict = "" if item.sample.detected is None else (" [hit]" if item.sample.detected else " [miss]")
        preview = " ".join(item.sample.text.split())[:70]
        print(f"  {item.rank:>3}. {item.value:+8.3f} alpha={item.sample.alpha:g}{verdict} {preview}")
    for group, by_score in ranking.separation.items():
        for by, m in by_score.items():
            low, high = m["auroc_ci"]
            print(
                f"  {group:<12} {by:<5} AUROC {m['auroc']:.3f} [{low:.3f}, {high:.3f}]  "
                f"top 10%: {m['top_hits']}/{m['top_k']} hits (precision {m['top_precision']:.2f}, "
                f"recall {m['top_recall']:.2f}) of {m['hits']} in {m['n']}"
            )


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
