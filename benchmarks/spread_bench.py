"""Spreading one study over one machine: one server with data parallel 2, or two servers behind
`lda study --base-url A --base-url B`, against one server.

The same study (built-in prompts, fixed seed, no scoring) is drawn from each setup, in rounds; each
round runs every setup once, the order rotating between rounds, so the setups compared are measured
minutes apart on a machine whose speed drifts. A setup's servers start fresh for its measurement
(an idle vLLM engine core still polls, which would tax the setup being measured), then a small
warm-up study runs before the timed one. The setups split the cores the same way: "one" binds its
worker to every core, "dp2" gives each of its two engines its own half (the per-rank binding of
`--cpu-bind all`), "two" pins each server process to its own half (so each binds to that half).

The report is samples/s and generated tokens/s per setup and round, and per-round ratios (each
against "one", and "two" against "dp2") with their median. Results go to stdout (Markdown), JSON
and CSV.

    python -m benchmarks.spread_bench --out docs/data/scale-out --rounds 3
    python -m benchmarks.spread_bench --after A --before B --samples-per-prompt 2 --setups one,dp2
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

from study.collect.server import (
    Server,
    ServerStartError,
    free_port,
    launch,
    lda_serve_command,
    wait_healthy,
)

SETUPS = ("one", "dp2", "two")
"""One server on every core; one server with two data-parallel engines; two servers, half each."""
RATIOS = (("dp2", "one"), ("two", "one"), ("two", "dp2"))
SERVED_NAME = "lda"


@dataclass(frozen=True, slots=True)
class SpreadConfig:
    after: str
    before: str
    out_dir: Path
    setups: tuple[str, ...] = SETUPS
    rounds: int = 3
    prompts: int = 8
    """The first N built-in study prompts."""
    alphas: tuple[float, ...] = (0.0, 2.0)
    samples_per_prompt: int = 4
    max_tokens: int = 64
    concurrency: int = 32
    """Requests the study keeps in flight, over all its servers."""
    kv_cache_gb: float = 0.5
    max_model_len: int = 1024
    dtype: str = "auto"
    start_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        unknown = [s for s in self.setups if s not in SETUPS]
        if not self.setups or unknown:
            raise ValueError(f"setups must be some of {', '.join(SETUPS)}; got {', '.join(self.setups) or 'none'}")
        if len(os.sched_getaffinity(0)) < 2 and ({"dp2", "two"} & set(self.setups)):
            raise ValueError("setups dp2 and two need at least 2 cores; this process may use 1")
        for name, low in (("rounds", 1), ("prompts", 1), ("samples_per_prompt", 1), ("max_tokens", 1), ("concurrency", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}; got {getattr(self, name)}")
        from study.collect.prompts import BUILTIN_PROMPTS

        if self.prompts > len(BUILTIN_PROMPTS):
            raise ValueError(f"prompts must be <= {len(BUILTIN_PROMPTS)} (the built-in set); got {self.prompts}")
        if not self.kv_cache_gb > 0:
            raise ValueError(f"kv_cache_gb must be > 0; got {self.kv_cache_gb}")


@dataclass(frozen=True, slots=True)
class Row:
    setup: str
    round: int
    samples: int
    tokens: int
    seconds: float
    failures: int

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


# ---------------------------------------------------------------- servers


def server_env(config: SpreadConfig, port: int, data_parallel: int = 1) -> dict[str, str]:
    """`lda serve`'s settings for one of the setups' servers; its binding is its own (`--cpu-bind all`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "LDA_CPU_BIND")}
    env.update(
        MODEL_AFTER_ID=config.after, MODEL_BEFORE_ID=config.before, DEVICE="cpu", HOST="127.0.0.1", PORT=str(port),
        DTYPE=config.dtype, KV_CACHE_MEMORY_GB=str(config.kv_cache_gb), MAX_MODEL_LEN=str(config.max_model_len),
        MAX_NUM_SEQS=str(config.concurrency), SERVED_MODEL_NAME=SERVED_NAME, DATA_PARALLEL_SIZE=str(data_parallel),
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        VLLM_HOST_IP="127.0.0.1",  # loopback only: vLLM's processes advertise this address to each other
    )
    return env


def _pinned(cores: set[int] | None):
    def pin() -> None:  # before exec: the server reads its affinity to bind its worker
        if cores is not None:
            os.sched_setaffinity(0, cores)

    return pin


def halves(cores: set[int]) -> tuple[set[int], set[int]]:
    ids = sorted(cores)
    half = len(ids) // 2
    return set(ids[:half]), set(ids[half : 2 * half])


@contextlib.contextmanager
def running(config: SpreadConfig, setup: str, log_dir: Path) -> Iterator[list[str]]:
    """Start the setup's servers (together: a start is not measured), yield their base URLs."""
    if setup == "two":
        plans = [(1, cores) for cores in halves(os.sched_getaffinity(0))]
    else:
        plans = [(2 if setup == "dp2" else 1, None)]
    started: list[Server] = []
    try:
        for i, (data_parallel, cores) in enumerate(plans):
            port = free_port()
            env = server_env(config, port, data_parallel)
            started.append(launch(lda_serve_command(), env, port, log_dir / f"{setup}-{i}.log", _pinned(cores)))
        for server in started:
            wait_healthy(server, config.start_timeout_s)
        yield [server.base_url for server in started]
    finally:
        for server in started:
            server.stop()


# ---------------------------------------------------------------- the study


def _prompts_file(config: SpreadConfig, directory: Path) -> Path:
    from study.collect.prompts import BUILTIN_PROMPTS

    path = directory / "prompts.jsonl"
    lines = [json.dumps({"id": pid, "prompt": text}) for pid, text in BUILTIN_PROMPTS[: config.prompts]]
    path.write_text("\n".join(lines) + "\n")
    return path


def study_config(config: SpreadConfig, urls: list[str], out: Path, prompts: Path, samples_per_prompt: int,
                 alphas: tuple[float, ...] | None = None):
    from study.config import SamplingConfig, StudyConfig

    return StudyConfig(
        base_url=tuple(urls), output_dir=out, detector="keyword:zorblax", alphas=alphas or config.alphas,
        samples_per_prompt=samples_per_prompt, prompts_path=prompts, concurrency=config.concurrency,
        sampling=SamplingConfig(max_tokens=config.max_tokens, seed=11), progress=False, score=False,
    )


def measure(config: SpreadConfig, setup: str, urls: list[str], round_: int, scratch: Path) -> Row:
    """Warm the servers up with a small study, then time the whole study from scratch."""
    from study.collect.store import SampleStore
    from study.commands.workflow import run_study

    prompts = _prompts_file(config, scratch)
    run_study(study_config(config, urls, scratch / f"warm-{setup}-{round_}", prompts, 1, config.alphas[:1]))
    out = scratch / f"{setup}-{round_}"
    start = time.perf_counter()
    result = run_study(study_config(config, urls, out, prompts, config.samples_per_prompt))
    seconds = time.perf_counter() - start
    samples = list(SampleStore(result.samples_path).load().values())
    tokens = sum(s.tokens or 0 for s in samples)
    return Row(setup, round_, len(samples), tokens, seconds, len(result.failures))


def rotated(setups: tuple[str, ...], round_: int) -> tuple[str, ...]:
    k = round_ % len(setups)
    return setups[k:] + setups[:k]


# ---------------------------------------------------------------- report


def ratios(rows: list[Row]) -> list[dict]:
    """Per pair of setups: tokens/s ratio in each round both ran, and its median."""
    by = {(r.setup, r.round): r for r in rows}
    rounds = sorted({r.round for r in rows})
    out = []
    for top, bottom in RATIOS:
        values = [by[top, k].tokens_per_s / by[bottom, k].tokens_per_s for k in rounds if (top, k) in by and (bottom, k) in by]
        if values:
            out.append({"ratio": f"{top}/{bottom}", "median": median(values), "min": min(values), "max": max(values),
                        "per_round": values})
    return out


def format_report(rows: list[Row]) -> str:
    lines = ["| setup | round | samples | tokens | seconds | samples/s | tokens/s | failures |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (SETUPS.index(r.setup), r.round)):
        lines.append(f"| {r.setup} | {r.round} | {r.samples} | {r.tokens} | {r.seconds:.1f} | {r.samples_per_s:.2f} | "
                     f"{r.tokens_per_s:.1f} | {r.failures} |")
    lines += ["", "| ratio (tokens/s) | median | min | max | rounds |", "|---|---:|---:|---:|---:|"]
    for e in ratios(rows):
        lines.append(f"| {e['ratio']} | {e['median']:.2f} | {e['min']:.2f} | {e['max']:.2f} | {len(e['per_round'])} |")
    return "\n".join(lines)


def write_outputs(config: SpreadConfig, rows: list[Row], argv: list[str]) -> dict[str, Path]:
    config.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(["python -m benchmarks.spread_bench", *argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": sorted(os.sched_getaffinity(0)),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "note": "measured on a shared machine: other work ran on the same cores",
    }
    records = [{**asdict(r), "samples_per_s": r.samples_per_s, "tokens_per_s": r.tokens_per_s} for r in rows]
    json_path = config.out_dir / "spread.json"
    json_path.write_text(json.dumps({"meta": meta, "rows": records, "ratios": ratios(rows)}, indent=2) + "\n")
    csv_path = config.out_dir / "spread.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return {"json": json_path, "csv": csv_path}


def run(config: SpreadConfig) -> list[Row]:
    from tqdm import tqdm

    rows = []
    with tempfile.TemporaryDirectory(prefix="lda-spread-") as tmp:
        scratch = Path(tmp)
        log_dir = config.out_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=config.rounds * len(config.setups), desc="spread", unit="setup")
        for round_ in range(config.rounds):
            for setup in rotated(config.setups, round_):
                bar.set_postfix_str(f"round {round_} {setup}")
                with running(config, setup, log_dir) as urls:
                    rows.append(measure(config, setup, urls, round_, scratch))
                bar.update(1)
        bar.close()
    return rows


# ---------------------------------------------------------------- entry point


def default_models() -> tuple[str, str]:
    """The demo pair's full fine-tune if built (`lda demo-pair`), else SmolLM2-135M-Instruct as both."""
    from demo.demo_pair import TrainConfig, fingerprint
    from demo.smollm2 import ensure_smollm2
    from engine.env import default_cache_dir

    before = str(ensure_smollm2())
    after = default_cache_dir() / f"demo-after-{fingerprint(TrainConfig())}"
    return (str(after) if after.is_dir() else before), before


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spread_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--after", help="after model (default: the demo pair if built, else SmolLM2-135M-Instruct)")
    p.add_argument("--before", help="before model (default: SmolLM2-135M-Instruct)")
    p.add_argument("--out", type=Path, default=Path("docs/data/scale-out"), help="(default: %(default)s)")
    p.add_argument("--setups", default=",".join(SETUPS), help="(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--prompts", type=int, default=8, help="built-in prompts used (default: %(default)s)")
    p.add_argument("--samples-per-prompt", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=32, help="(default: %(default)s)")
    return p


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        after, before = (args.after, args.before) if args.after and args.before else default_models()
        config = SpreadConfig(
            after=args.after or after, before=args.before or before, out_dir=args.out,
            setups=tuple(s.strip() for s in args.setups.split(",") if s.strip()), rounds=args.rounds,
            prompts=args.prompts, samples_per_prompt=args.samples_per_prompt, max_tokens=args.max_tokens,
            concurrency=args.concurrency,
        )
    except ValueError as error:
        print(f"spread_bench: {error}", file=sys.stderr)
        return 2
    try:
        rows = run(config)
    except (RuntimeError, ServerStartError) as error:
        print(f"spread_bench: {error}", file=sys.stderr)
        return 1
    print(format_report(rows))
    paths = write_outputs(config, rows, argv)
    print(f"\nresults: {paths['json']}, {paths['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
