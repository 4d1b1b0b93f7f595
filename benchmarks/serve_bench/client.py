"""Driving one server at one concurrency level with vLLM's own benchmark client
(`vllm.benchmarks.serve`, the logic of `vllm bench serve`, called as a library because the CPU
wheel's `vllm` command is broken), and turning its result into a `Row`."""

from __future__ import annotations

import asyncio
import json

from benchmarks.serve_bench.config import METRICS, SERVED_NAME, BenchConfig, Row
from benchmarks.serve_bench.servers import RssSampler


def client_args(config: BenchConfig, server: str, base_url: str, concurrency: int, num_prompts: int) -> list[str]:
    """`vllm bench serve` flags for one level: random prompts of fixed length, EOS ignored, greedy."""
    args = [
        "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", config.after, "--tokenizer", config.after, "--served-model-name", SERVED_NAME,
        "--dataset-name", "random", "--random-input-len", str(config.input_len),
        "--random-output-len", str(config.output_len), "--random-range-ratio", "0",
        "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency), "--request-rate", "inf", "--ignore-eos",
        "--temperature", "0", "--seed", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,99", "--disable-tqdm", "--num-warmups", "0",
    ]
    if server != "single":
        args += ["--extra-body", json.dumps({"alpha": config.alpha})]
    return args


def run_client(argv: list[str]) -> dict:
    """One `vllm bench serve` run, in this process, returning its result dict."""
    from vllm.benchmarks.serve import add_cli_args, main_async
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    return asyncio.run(main_async(parser.parse_args(argv)))


def measure(config: BenchConfig, server: str, base_url: str, pid: int, concurrency: int, round_: int) -> Row:
    """One level of one server: the client's run, and the peak RSS of the server's tree meanwhile.

    Round 0 is the probe of the original's modes (`BenchConfig.prompts_for`)."""
    num_prompts = config.prompts_for(server, concurrency, probe=round_ == 0)
    sampler = RssSampler(pid).start()
    try:
        result = run_client(client_args(config, server, base_url, concurrency, num_prompts))
    finally:
        peak = sampler.stop()
    return _row(server, concurrency, num_prompts, result, peak, round_)


def rotated(servers: tuple[str, ...], round_: int) -> tuple[str, ...]:
    """Round r drives the servers starting from the r-th, so none is always measured first."""
    shift = (round_ - 1) % len(servers)
    return servers[shift:] + servers[:shift]


def _row(server: str, concurrency: int, num_prompts: int, result: dict, peak_rss: int, round_: int) -> Row:
    return Row(
        server=server, concurrency=concurrency, num_prompts=num_prompts,
        completed=int(result["completed"]), failed=int(result.get("failed", 0)),
        duration_s=float(result["duration"]),
        **{name: float(result.get(name) or 0.0) for name in METRICS},
        peak_rss_mb=peak_rss / 2**20, round=round_,
    )
