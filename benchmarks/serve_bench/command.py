"""`lda bench`'s command line: flags to a `BenchConfig`, then the run, the soak or the combination
of earlier runs' files; bad flags and servers that cannot start are messages with exit codes 2
and 1, not tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from benchmarks.serve_bench.config import (
    DEFAULT_SERVERS,
    SERVERS,
    VLLM_BIND,
    BenchConfig,
    OriginalMode,
    all_original_modes,
)
from benchmarks.serve_bench.locust_soak import soak
from benchmarks.serve_bench.report import load_rows, report, write_outputs
from benchmarks.serve_bench.rounds import run
from engine.config import DTYPES
from study.collect.server import ServerStartError

DESCRIPTION = "`lda bench`: the LDA server against vLLM serving the after model alone and against the original design."
DEFAULT_OUT = Path("docs/data/serving/latest")
"""Where a run writes by default: beside the docs that cite measured runs, in a folder of its own so
that a new run never overwrites a documented one (copy it to a named folder to document it)."""


def default_models() -> tuple[str, str]:
    """The demo pair if it is already built (never built here: that is a fine-tune), else
    SmolLM2-135M-Instruct as both models."""
    from demo.smollm2 import ensure_smollm2
    from engine.env import default_cache_dir

    with contextlib.suppress(ImportError, AttributeError, OSError):
        from demo.demo_pair import TrainConfig, fingerprint

        after = default_cache_dir() / f"demo-after-{fingerprint(TrainConfig())}"
        if after.is_dir():
            return str(after), str(ensure_smollm2())
    path = str(ensure_smollm2())
    return path, path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lda bench", description=DESCRIPTION)
    p.add_argument("--after", help="after model path (default: demo pair if built, else SmolLM2-135M)")
    p.add_argument("--before", help="before model path")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                   help=f"subset of {','.join(SERVERS)} (default {','.join(DEFAULT_SERVERS)}); {VLLM_BIND} is "
                   "`lda serve` with LDA_CPU_BIND=vllm, to race the CPU bindings")
    p.add_argument("--concurrency", type=_ints, default=(1, 4, 16, 64), help="comma-separated levels")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per level (default max(8, 2c); the original's probe: max(8, c))")
    p.add_argument("--original-modes", default=None,
                   help="comma-separated modes of the original design to probe, each PATH:DTYPE:THREADS with PATH "
                   "batch or one (default: batch and one in float16, bfloat16, float32 on 1 and 2 threads)")
    p.add_argument("--one-at-a-time-max-prompts", type=int, default=8,
                   help="cap on requests per level for the original's one-at-a-time path (default 8)")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="dtype of both vLLM servers (default auto: the checkpoint's, float32 on a CPU without native bf16)")
    p.add_argument("--rounds", type=int, default=3,
                   help="measurements of every server at every level, interleaved; the report takes medians (default 3)")
    p.add_argument("--step-timing", action="store_true",
                   help="record every vLLM worker step (forward, each stack, heads and merge, sampler) and print a summary")
    p.add_argument("--kv-cache-gb", type=float, default=2.0)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--combine", type=Path, nargs="+", metavar="JSON", default=None,
                   help="instead of running: merge these earlier serve_bench.json files into one report")
    p.add_argument("--soak", type=int, metavar="SECONDS", default=None,
                   help="instead of the benchmark: locust against the LDA server for SECONDS, then check health")
    p.add_argument("--soak-users", type=int, default=96, help="closed-loop locust users in the soak")
    p.add_argument("--soak-max-tokens", type=int, default=16, help="max_tokens per soak request")
    return p


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through `running_server`, which stops the server's group


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if (args.after is None) != (args.before is None):
        print("lda bench: give both --after and --before, or neither", file=sys.stderr)
        return 2
    after, before = (args.after, args.before) if args.after else default_models()
    try:
        modes = (tuple(OriginalMode.parse(m) for m in args.original_modes.split(",") if m.strip())
                 if args.original_modes else all_original_modes(len(os.sched_getaffinity(0))))
        config = BenchConfig(
            after=after, before=before, out_dir=args.out, servers=tuple(s for s in args.servers.split(",") if s),
            concurrencies=args.concurrency, num_prompts=args.num_prompts, original_modes=modes,
            one_at_a_time_max_prompts=args.one_at_a_time_max_prompts,
            input_len=args.input_len, output_len=args.output_len, alpha=args.alpha, dtype=args.dtype,
            rounds=args.rounds, step_timing=args.step_timing,
            kv_cache_gb=args.kv_cache_gb, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
        )
    except ValueError as error:
        print(f"lda bench: {error}", file=sys.stderr)
        return 2
    if args.combine:
        rows = load_rows(args.combine)
        config.out_dir.mkdir(parents=True, exist_ok=True)
        write_outputs(config, rows, argv, sources=[str(p) for p in args.combine])
        print(report(rows))
        return 0
    try:
        if args.soak is not None:
            result = soak(config, args.soak, args.soak_users, args.soak_max_tokens)
            clean = result.failures == 0 and result.server_errors == 0 and result.healthy_after
            return 0 if clean else 1
        run(config, argv)
    except ServerStartError as error:
        print(f"lda bench: {error}", file=sys.stderr)
        return 1
    return 0
