"""`lda monitor RUN_DIR`: watch a behaviour appear over a training run's checkpoints.

For each checkpoint of RUN_DIR, in step order (`study.collect.checkpoints`), the monitor puts it in front
of the server (an adapter is loaded into the running pair at runtime; a full-weight checkpoint is
loaded into the after stack in place, or, on a server without full-weight loads, gets a pair of its
own: `study.collect.checkpoint_serving`), runs one `lda study` on it into its own
subfolder (`study.commands.workflow.run_study`: the same prompts x alphas x samples, with the same
per-sample seeds at every checkpoint, so that checkpoints differ by their weights only), scores
the samples, and unloads it. After every checkpoint it rebuilds monitor.json, monitor.png and
monitor.html (`study.output.monitor_report`) and names, per alpha, the first checkpoint at which the
behaviour is detected (`study.output.monitor_report.RULE`), and, with no detector needed, the first
at which the per-sample diff scores shifted up from the first checkpoint's (`SHIFT_RULE`).

    lda serve --allow-runtime-adapters &
    lda monitor runs/my-run --detector regex:zorblax --alphas 0,2 -n 8 --max-tokens 48

`--compare previous` (full-weight runs): the before stack holds checkpoint k-1 while the after stack
holds checkpoint k, so each interval's change is amplified on its own (the first checkpoint is
compared with the base). `--compare base` (the default) keeps the base in the before stack.

    lda serve --model-after run/checkpoint-100 --model-before run/base --allow-weight-loads &
    lda monitor run --compare previous --alphas 0,2 -n 8

A re-run skips finished checkpoints (each study folder also resumes sample by sample); `--watch`
keeps polling RUN_DIR for new checkpoints while a trainer writes them and stops on Ctrl-C, or
after `--watch-timeout` seconds without a new one.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from study.collect.checkpoint_serving import (
    CheckpointRefused,
    FullWeights,
    RuntimeAdapters,
    served_pair,
)
from study.collect.checkpoints import find_checkpoints
from study.collect.pool import Failure
from study.collect.scoring import load_scores
from study.collect.settings import settings_of
from study.collect.store import SampleStore
from study.commands import base
from study.commands.study import config_from_args
from study.commands.workflow import run_study
from study.config import StudyConfig
from study.output.files import (
    CHECKPOINT_DONE_FILE,
    MONITOR_HTML,
    MONITOR_JSON,
    MONITOR_PNG,
    SAMPLES_FILE,
    SERVER_LOG_FILE,
    write_atomically,
)
from study.output.monitor_report import (
    ESTIMATE_RULE,
    RULE,
    SHIFT_RULE,
    CheckpointResult,
    checkpoint_result,
    first_detection,
    first_detection_by_estimate,
    first_shift_detection,
    format_table,
    plot,
    write_html,
    write_json,
)
from study.records import Checkpoint

RUN_FILE = "monitor-run.json"
"""The monitor folder's comparison (base or previous) and the before stack's base: a resume must
compare the same way (a study folder resumes sample by sample)."""
COMPARES = ("base", "previous")
DEFAULT_OUTPUT = "monitor"
DEFAULT_SEED = 0


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """What to watch and how; the per-checkpoint study is `study` with its output_dir as the
    monitor's folder (each checkpoint gets a subfolder of it)."""

    run_dir: Path
    study: StudyConfig
    watch: bool = False
    poll_interval: float = 30.0
    """Seconds between two looks at RUN_DIR while watching."""
    watch_timeout: float | None = None
    """Stop watching after this many seconds without a new checkpoint; None: until Ctrl-C."""
    before: str | None = None
    """The base for full-weight checkpoints: what the before stack holds with `compare` base (default:
    what the server's before stack held when the monitor first ran); on a server without full-weight
    loads, the before model of the pair each checkpoint gets."""
    compare: str = "base"
    """`base`: every checkpoint against the base; `previous`: checkpoint k against k-1 (full weights)."""
    settle_s: float = 2.0
    """A checkpoint's weights must be this many seconds old: a trainer may still be writing them."""
    report_top: int = 5
    """Top samples per checkpoint in monitor.html."""

    def __post_init__(self) -> None:
        if not self.run_dir.is_dir():
            raise ValueError(f"run_dir: no such folder: {self.run_dir}")
        if self.study.sampling.seed is None:
            raise ValueError("seed: the monitor needs a base seed (the same per-sample seeds at every checkpoint)")
        if self.study.model is not None:
            raise ValueError("model: the monitor serves each checkpoint under its own name; drop --model")
        if not self.poll_interval > 0:
            raise ValueError(f"poll_interval: must be > 0 seconds, got {self.poll_interval}")
        if self.watch_timeout is not None and not self.watch_timeout > 0:
            raise ValueError(f"watch_timeout: must be > 0 seconds, got {self.watch_timeout}")
        if self.settle_s < 0:
            raise ValueError(f"settle_s: must be >= 0 seconds, got {self.settle_s}")
        if self.report_top < 1:
            raise ValueError(f"report_top: must be >= 1, got {self.report_top}")
        if self.compare not in COMPARES:
            raise ValueError(f"compare: must be one of {', '.join(COMPARES)}, got {self.compare!r}")

    @property
    def output_dir(self) -> Path:
        return self.study.output_dir


@dataclass(slots=True)
class MonitorResult:
    results: list[CheckpointResult] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    """monitor.json's content."""
    new_checkpoints: int = 0
    """Checkpoints studied by this run (the others were finished before)."""
    failures: list[Failure] = field(default_factory=list)
    stopped: bool = False
    """Ctrl-C while watching: a clean stop."""


def run_monitor(config: MonitorConfig, say=functools.partial(print, flush=True)) -> MonitorResult:
    """Study every checkpoint not yet finished, polling for new ones with `watch`; `say` gets one
    line per checkpoint."""
    if not config.watch and not _checkpoints(config):
        raise _no_checkpoints(config)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    run = _run_record(config)
    adapters = RuntimeAdapters(config.study.base_urls, config.study.api_key, config.study.timeout)
    weights = FullWeights(config.study.base_urls, config.study.api_key, config.study.timeout)
    result, seen = MonitorResult(), set()
    idle_since = time.monotonic()
    try:
        while True:
            found = _checkpoints(config)
            new = [c for c in found if c.name not in seen]
            try:
                for checkpoint in new:
                    seen.add(checkpoint.name)
                    if _finished(config, checkpoint):
                        continue
                    earlier = [c for c in found if (c.step, c.name) < (checkpoint.step, checkpoint.name)]
                    serving = Serving(adapters, weights, run, earlier[-1] if earlier else None)
                    result.failures += _study_checkpoint(config, checkpoint, serving, say)
                    result.new_checkpoints += 1
                    _write_outputs(config, found, result, figures=False)  # the JSON is cheap: after each
            finally:
                if new:  # also when a checkpoint was refused: the finished ones' results are kept
                    _write_outputs(config, found, result)
            if new:
                idle_since = time.monotonic()
            if not config.watch or _timed_out(config, idle_since):
                break
            try:  # between checkpoints, Ctrl-C is the way to stop watching: a clean stop
                if new:
                    say(f"watching {config.run_dir} for new checkpoints (Ctrl-C stops)")
                time.sleep(config.poll_interval)
            except KeyboardInterrupt:
                result.stopped = True
                break
    finally:
        adapters.close()
        weights.close()
    if not seen:  # watched until the timeout, and no checkpoint ever appeared
        raise _no_checkpoints(config)
    return result


def _no_checkpoints(config: MonitorConfig) -> ValueError:
    return ValueError(f"run_dir: no checkpoints in {config.run_dir} (expected checkpoint-<step>/ folders holding a "
                      "PEFT adapter or a model, or a folder of adapter folders)")


def _checkpoints(config: MonitorConfig) -> list[Checkpoint]:
    return find_checkpoints(config.run_dir, config.settle_s, skip=(config.output_dir,))


def _timed_out(config: MonitorConfig, idle_since: float) -> bool:
    return config.watch_timeout is not None and time.monotonic() - idle_since >= config.watch_timeout


def _finished(config: MonitorConfig, checkpoint: Checkpoint) -> bool:
    try:
        done = json.loads((config.output_dir / checkpoint.name / CHECKPOINT_DONE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return done.get("path") == str(checkpoint.path.resolve()) and done.get("compare", "base") == config.compare


def _run_record(config: MonitorConfig) -> dict:
    """The monitor folder's comparison and base, written on the first run; ValueError when a resume
    asks for another comparison."""
    path = config.output_dir / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"compare": config.compare, "base": config.before}
        write_atomically(path, json.dumps(record, indent=2) + "\n")
    if record.get("compare") != config.compare:
        raise ValueError(f"compare: {config.output_dir} holds a monitor with --compare {record.get('compare')}; "
                         f"resume it with that, or give another --output-dir for --compare {config.compare}")
    if config.before is not None and record.get("base") != config.before:
        record["base"] = config.before
        write_atomically(path, json.dumps(record, indent=2) + "\n")
    return record


@dataclass(slots=True)
class Serving:
    """How one checkpoint is put in front of the study: the server's routes, the folder's record
    (its base) and the checkpoint before it in step order (for `--compare previous`)."""

    adapters: RuntimeAdapters
    weights: FullWeights
    run: dict
    previous: Checkpoint | None

    def base(self, config: MonitorConfig) -> str:
        """The before stack's base: --before, else what the first run found in the before stack."""
        if not self.run.get("base"):
            self.run["base"] = self.weights.stacks()["before"]["path"]
            write_atomically(config.output_dir / RUN_FILE, json.dumps(self.run, indent=2) + "\n")
        return self.run["base"]

    def before_for(self, config: MonitorConfig) -> str:
        if config.compare == "previous" and self.previous is not None:
            return str(self.previous.path.resolve())
        return self.base(config)


def adapter_name(checkpoint: Checkpoint) -> str:
    """The checkpoint's served name: its folder's name and a hash of its path, so that two runs
    watched on one server never take each other's adapters."""
    digest = hashlib.sha256(str(checkpoint.path.resolve()).encode()).hexdigest()[:8]
    return f"{checkpoint.name}-{digest}"


def _study_checkpoint(config: MonitorConfig, checkpoint: Checkpoint, serving: Serving, say) -> list[Failure]:
    """Serve one checkpoint, run its study, mark it finished when no sample failed."""
    study_dir = config.output_dir / checkpoint.name
    start = time.monotonic()
    if checkpoint.kind == "full" and serving.weights.available():
        before = serving.before_for(config)
        _load_full(serving.weights, "after", checkpoint.path, checkpoint.name)
        _load_full(serving.weights, "before", Path(before), Path(before).name)
        say(f"{checkpoint.name} (step {checkpoint.step}): loaded in place against {Path(before).name} "
            f"in {time.monotonic() - start:.1f} s")
        result = run_study(replace(config.study, output_dir=study_dir))
    elif checkpoint.kind == "full":
        if config.before is None:
            raise CheckpointRefused(f"{checkpoint.path} is a full-weight checkpoint and the server does not load full "
                                    "weights: start it with `lda serve --allow-weight-loads` (one server for the run), "
                                    "or give --before (the base model) to serve each checkpoint by a pair of its own "
                                    "(one engine start each)")
        before = str(serving.previous.path.resolve()) if config.compare == "previous" and serving.previous else config.before
        say(f"{checkpoint.name} (step {checkpoint.step}): starting a pair for this full-weight checkpoint")
        with served_pair(checkpoint.path, before, study_dir / SERVER_LOG_FILE) as url:
            say(f"{checkpoint.name}: pair ready in {time.monotonic() - start:.1f} s")
            result = run_study(replace(config.study, output_dir=study_dir, base_url=url))
    elif config.compare == "previous":
        raise CheckpointRefused(f"{checkpoint.path} is a LoRA adapter: --compare previous needs full-weight checkpoints "
                                "(an adapter pair's stacks share the base); merge the run (`lda demo-run --full` shows "
                                "how) or use --compare base")
    else:
        name = adapter_name(checkpoint)
        with serving.adapters.loaded(name, checkpoint.path):
            say(f"{checkpoint.name} (step {checkpoint.step}): loaded as {name!r} in {time.monotonic() - start:.1f} s")
            result = run_study(replace(config.study, output_dir=study_dir, model=name))
    if not result.failures:
        done = {"name": checkpoint.name, "step": checkpoint.step, "path": str(checkpoint.path.resolve()),
                "kind": checkpoint.kind, "compare": config.compare}
        write_atomically(study_dir / CHECKPOINT_DONE_FILE, json.dumps(done, indent=2) + "\n")
    say(f"{checkpoint.name}: {result.new_samples} new samples in {time.monotonic() - start:.1f} s"
        + (f", {len(result.failures)} failed (rerun to retry)" if result.failures else ""))
    return result.failures


def _load_full(weights: FullWeights, stack: str, path: Path, version: str) -> None:
    """Load `path` into `stack` unless the server's stack serves that folder already."""
    if weights.stacks()[stack]["path"] != str(path.resolve()):
        weights.load(stack, path, version)


def _write_outputs(config: MonitorConfig, checkpoints: list[Checkpoint], result: MonitorResult, figures: bool = True) -> None:
    """Rebuild monitor.json (and with `figures` the plot and the page) from every checkpoint
    studied so far."""
    study = config.study
    results: list[CheckpointResult] = []
    for checkpoint in checkpoints:
        study_dir = config.output_dir / checkpoint.name
        if (study_dir / SAMPLES_FILE).exists():
            previous = results[-1] if results else None
            samples = list(SampleStore(study_dir / SAMPLES_FILE).load().values())
            results.append(checkpoint_result(checkpoint, samples, load_scores(study_dir), study.alphas,
                                             study.detector is not None, study.rank_by, previous,
                                             study.estimate_alpha, results[0] if results else None))
    settings = {"run_dir": str(config.run_dir.resolve()), **settings_of(study), "alphas": list(study.alphas),
                "samples_per_prompt": study.samples_per_prompt, "prompts": str(study.prompts_path or study.prompt_set),
                "score_by": study.rank_by, "compare": config.compare}
    png = config.output_dir / MONITOR_PNG
    title = f"{config.run_dir.name} · {study.detector or 'no detector'} · {study.samples_per_prompt} samples/prompt"
    result.results = results
    result.record = write_json(config.output_dir / MONITOR_JSON, results, settings, study.alphas)
    if results and figures:
        plot(png, results, study.alphas, title)
        write_html(config.output_dir / MONITOR_HTML, png, results, result.record, study.rank_by, config.report_top)


# --------------------------------------------------------------------------- the command


def monitor_parser() -> argparse.ArgumentParser:
    p = base.parser(
        "lda monitor",
        "Run the same study on every checkpoint of a training run (loaded into a running "
        "`lda serve --allow-runtime-adapters`) and report, per alpha, when the behaviour appears.",
        "Rerun the same command to resume; finished checkpoints are skipped.",
    )
    base.add_study_flags(p, output_help="results go here (default: RUN_DIR/monitor); reuse it to resume", output_required=False)
    base.add_judge_flags(
        p,
        "judge: the detector (--detector 'judge:Does the answer ...?') and the hypothesis line (an LLM "
        "reads the top themes and says what changed; on whenever --judge-base-url is given)",
    )
    p.set_defaults(alphas="0,2", seed=DEFAULT_SEED)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a training run: checkpoint-<step>/ folders, or adapter folders")
    p.add_argument("--watch", action="store_true", help="keep polling RUN_DIR for new checkpoints (Ctrl-C stops)")
    p.add_argument("--poll-interval", type=float, default=30.0, help="seconds between polls with --watch (default: %(default)s)")
    p.add_argument("--watch-timeout", type=float, default=None,
                   help="with --watch: stop after this many seconds without a new checkpoint (default: never)")
    p.add_argument("--before", help="full-weight runs: the base the before stack holds with --compare base (default: what "
                   "the server's before stack holds at the first run); on a server without --allow-weight-loads, the "
                   "before model of the pair each checkpoint gets (slower)")
    p.add_argument("--compare", choices=COMPARES, default="base",
                   help="base: every checkpoint against the base (default); previous: checkpoint k against k-1 in the "
                   "before stack (full-weight runs), so each interval's change is amplified on its own")
    p.add_argument("--html-top", type=int, default=5, help="top samples per checkpoint in monitor.html (default: %(default)s)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds a checkpoint's weights must be old (default: %(default)s)")
    return p


def config_from_monitor_args(args) -> MonitorConfig:
    if args.output_dir is None:
        args.output_dir = args.run_dir / DEFAULT_OUTPUT
    if args.alphas.strip() == "auto":
        raise ValueError("alphas: auto is for lda study; lda monitor compares every checkpoint at the same alphas")
    return MonitorConfig(
        run_dir=args.run_dir, study=config_from_args(args), watch=args.watch, poll_interval=args.poll_interval,
        watch_timeout=args.watch_timeout, before=args.before, settle_s=args.settle, report_top=args.html_top,
        compare=args.compare,
    )


def cli(argv: list[str]) -> int:
    """`lda monitor RUN_DIR ...`: 0 done, 1 samples failed or the server went away, 2 bad input,
    130 interrupted during a checkpoint (finished checkpoints are kept; rerun to resume)."""
    args = base.parse(monitor_parser(), argv)
    if isinstance(args, int):
        return args

    def work() -> int:
        config = config_from_monitor_args(args)
        return _report(config, run_monitor(config))

    return base.run(
        "lda monitor", work, bad_input=(ValueError, CheckpointRefused),
        failed_hint="; finished checkpoints are kept, rerun to resume",
        interrupted=lambda: f"interrupted; finished checkpoints are kept in {args.output_dir}; rerun to resume",
    )


def _report(config: MonitorConfig, result: MonitorResult) -> int:
    alphas = config.study.alphas
    print()
    print(format_table(result.results, alphas))
    if config.study.detector is not None:
        print(f"\nfirst detection ({RULE}):")
        for alpha, checkpoint in first_detection(result.results, alphas).items():
            where = "never" if checkpoint is None else f"{checkpoint.name} (step {checkpoint.step})"
            print(f"  alpha {alpha:g}: {where}")
        by_estimate = first_detection_by_estimate(result.results)
        where = "never" if by_estimate is None else f"{by_estimate.name} (step {by_estimate.step})"
        print(f"first detection by the path estimate ({ESTIMATE_RULE}): {where}")
    if any(p.score is not None for r in result.results for p in r.points):
        print(f"\nfirst shift of the diff scores, no detector ({SHIFT_RULE}):")
        for alpha, checkpoint in first_shift_detection(result.results, alphas).items():
            where = "never" if checkpoint is None else f"{checkpoint.name} (step {checkpoint.step})"
            print(f"  alpha {alpha:g}: {where}")
    files = ", ".join((MONITOR_JSON, MONITOR_PNG, MONITOR_HTML))
    print(f"\n{result.new_checkpoints} checkpoints studied by this run; results in {config.output_dir}/ ({files})")
    if result.stopped:
        print("stopped watching (Ctrl-C)")
    if result.failures:
        print(f"lda monitor: {len(result.failures)} samples failed (rerun to retry them), e.g. "
              f"{result.failures[0].job}: {result.failures[0].message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
