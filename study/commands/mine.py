"""`lda mine STUDY_DIR`: re-mine a finished study from its files alone, no server needed.

Reads samples.jsonl and scores.jsonl, mines the themes (study/analysis/themes.py), prints the top ones and
rewrites summary.json (themes first, per-alpha rows recomputed: no rate without a detector) and
report.html (themes first), and the plot. Everything is computed before anything is written, and
each file is replaced atomically, so a bad input or an interrupt leaves the study as it was.

    lda mine studies/explore --top 10
    lda mine studies/explore --judge-base-url http://127.0.0.1:8001/v1   # adds the hypothesis

`lda mine --corpus FILE ...` mines a corpus scored teacher-forced instead (study/corpus.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from study.analysis.naming import Naming, format_themes, name_changes
from study.analysis.ranking import rank, separation
from study.analysis.themes import ThemeConfig
from study.collect.detectors import JudgeConfig
from study.collect.hypothesis import load_prompt, with_hypothesis
from study.collect.scoring import load_scores
from study.collect.store import SampleStore
from study.commands import base
from study.commands.workflow import sample_groups
from study.config import DEFAULT_RANK_BY, RANK_BY
from study.output.files import (
    PLOT_FILE,
    REPORT_FILE,
    SAMPLES_FILE,
    SCORES_FILE,
    SETTINGS_FILE,
    SUMMARY_FILE,
)
from study.output.report import write_report
from study.output.summary import plot, save_summary, summarize

PROG = "lda mine"
DEFAULTS = ThemeConfig()
MAX_TOP = 100


@dataclass(frozen=True, slots=True)
class MineConfig:
    """What `lda mine` does; errors name the field."""

    study_dir: Path
    top: int = 5
    """Themes printed on the console (summary.json and the report keep `themes.themes`)."""
    themes: ThemeConfig = ThemeConfig()
    judge: JudgeConfig = JudgeConfig()
    hypothesis_prompt: Path | None = None
    report_top: int = 100

    def __post_init__(self) -> None:
        if not self.study_dir.is_dir():
            raise ValueError(f"study_dir: no such directory: {self.study_dir}")
        if not 1 <= self.top <= min(MAX_TOP, self.themes.themes):
            raise ValueError(f"top: must be in [1, {min(MAX_TOP, self.themes.themes)}] (at most --themes), got {self.top}")
        if self.report_top < 1:
            raise ValueError(f"report_top: must be >= 1, got {self.report_top}")


def mine_parser() -> argparse.ArgumentParser:
    p = base.parser(
        PROG,
        "Re-mine a finished study's samples and scores (no server): print what post-training "
        "changed and rewrite summary.json and report.html. With --corpus, mine a corpus instead.",
    )
    p.add_argument("study_dir", type=Path, help="an `lda explore` / `lda study` output directory")
    p.add_argument("--top", type=int, default=5, help="themes to print (default: %(default)s)")
    p.add_argument("--themes", type=int, default=DEFAULTS.themes, help="themes kept in summary.json and the report (default: %(default)s)")
    p.add_argument("--high-diff", type=float, default=DEFAULTS.high_diff, help="diff (nats) that seeds a phrase (default: %(default)s)")
    p.add_argument("--low-diff", type=float, default=DEFAULTS.low_diff, help="diff (nats) that extends one (default: %(default)s)")
    p.add_argument("--report-top", type=int, default=100, help="samples shown in report.html (default: %(default)s)")
    base.add_judge_flags(p, "hypothesis (an LLM reads the top themes; off without --judge-base-url)", template=False)
    return p


def config_from_args(args: argparse.Namespace) -> MineConfig:
    return MineConfig(
        study_dir=args.study_dir,
        top=args.top,
        themes=ThemeConfig(high_diff=args.high_diff, low_diff=args.low_diff, themes=args.themes),
        judge=JudgeConfig(args.judge_base_url, args.judge_model, api_key=args.judge_api_key),
        hypothesis_prompt=args.hypothesis_prompt,
        report_top=args.report_top,
    )


def cli(argv: list[str]) -> int:
    """0 done, 2 bad input (nothing written), 1 the study's files cannot be used."""
    if any(arg == "--corpus" or arg.startswith("--corpus=") for arg in argv):
        return _corpus_cli(argv)
    args = base.parse(mine_parser(), argv)
    if isinstance(args, int):
        return args

    def work() -> int:
        config = config_from_args(args)
        naming = mine_study(config)
        print(format_themes(naming, config.top))
        print(f"\nrewrote {SUMMARY_FILE}, {REPORT_FILE} and {PLOT_FILE} in {config.study_dir}/")
        return base.OK

    return base.run(PROG, work)


def _corpus_cli(argv: list[str]) -> int:
    try:
        corpus = importlib.import_module("study.commands.corpus")
    except ModuleNotFoundError as exc:
        if exc.name != "study.commands.corpus":
            raise
        print(f"{PROG}: error: --corpus: the corpus mode is not installed in this version (no study.commands.corpus)", file=sys.stderr)
        return 2
    return int(corpus.cli(argv) or 0)


def mine_study(config: MineConfig) -> Naming:
    """Mine the study in `config.study_dir` and rewrite its summary, report and plot."""
    instruction = load_prompt(config.hypothesis_prompt) if config.judge.base_url is not None else None
    samples = list(SampleStore(config.study_dir / SAMPLES_FILE).read().values())
    if not samples:
        raise ValueError(f"study_dir: {config.study_dir} has no samples ({SAMPLES_FILE}); is it a study directory?")
    scores = load_scores(config.study_dir)
    if not any(s.key in scores for s in samples):
        raise ValueError(
            f"study_dir: {config.study_dir} has no scores ({SCORES_FILE}) for its samples; score them first: "
            "rerun the study's `lda explore` / `lda study` command (without --no-score) against the server"
        )
    summary = _load_summary(config.study_dir)
    settings = _load_json(config.study_dir / SETTINGS_FILE)
    alphas = tuple(summary.get("alphas") or sorted({s.alpha for s in samples}))
    rank_by = (summary.get("ranking") or {}).get("rank_by", DEFAULT_RANK_BY)
    rank_by = rank_by if rank_by in RANK_BY else DEFAULT_RANK_BY
    naming = with_hypothesis(name_changes(samples, scores, config.themes), config.judge, instruction)
    rows = summarize(samples, alphas)
    ranked = rank(samples, scores, rank_by)
    measured = {name: m for name, a in sample_groups(alphas).items() if (m := separation(samples, scores, a))}
    for stale in ("themes", "hypothesis", "top_tokens"):
        summary.pop(stale, None)
    summary.update(alphas=list(alphas), per_alpha=[asdict(r) for r in rows], **naming.as_dict())
    title = f"{settings.get('model', 'study')} · {settings.get('detector') or 'no detector'} · mined by lda mine"
    save_summary(config.study_dir / SUMMARY_FILE, summary)
    write_report(config.study_dir / REPORT_FILE, ranked, rank_by, title, config.report_top, measured, naming.themes, naming.hypothesis)
    plot(rows, config.study_dir / PLOT_FILE, title)
    return naming


def _load_summary(study_dir: Path) -> dict:
    """The study's summary.json, or a fresh one when it is missing or unreadable (it is rebuilt)."""
    summary = _load_json(study_dir / SUMMARY_FILE)
    return summary if isinstance(summary, dict) else {}


def _load_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
