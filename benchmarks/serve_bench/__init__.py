"""`lda bench`: the LDA server against vLLM serving the after model alone and against the original design.

The servers start one after another on loopback and stay up for the whole run. Each is driven
with the same workload by vLLM's own benchmark client (`vllm.benchmarks.serve`, the logic of
`vllm bench serve`, called as a library because the CPU wheel's `vllm` command is broken), one
server at a time: for each round, for each concurrency level, every server back to back (the
order rotates between rounds). Shared machines drift by tens of percent over minutes, so the
servers compared at a level are measured within a minute or two of each other, and the report
gives the median over rounds and each ratio's median and range over rounds. A sampler thread
records the peak RSS of the driven server's process tree (API server, engine core, workers).
Results go to tables on stdout, CSV and JSON (every round), and a PNG of output throughput
against concurrency (median, with the rounds' range).

The original design (`benchmarks/original_server.py`) is measured at its best: first a probe runs
each of its modes (one at a time or static batches, float16/bfloat16/float32, 1 or 2 torch
threads) alone, one round, at every level; the fastest mode at each level then joins the
interleaved rounds, and the ratios compare LDA with it. The probe's table keeps every mode, the
one-at-a-time figure included, labelled for what it is.

One module per job, in the order a run uses them: `config` (what to measure), `servers` (start,
health-wait, stop, peak RSS), `client` (one level of one server), `report` (medians, ratios,
tables, files), `rounds` (the run), `locust_soak` (`--soak`), `command` (the flags).

    lda bench                                     # the demo pair if built, else SmolLM2-135M as both models
    lda bench --after A --before B --concurrency 1,2 --num-prompts 4 --servers lda,single,original

Outputs go to `docs/data/serving/latest/` unless `--out` says otherwise.
"""

from benchmarks.serve_bench.client import client_args, measure, rotated, run_client
from benchmarks.serve_bench.command import build_parser, cli, default_models
from benchmarks.serve_bench.config import (
    DEFAULT_SERVERS,
    SERVED_NAME,
    SERVERS,
    VLLM_BIND,
    BenchConfig,
    OriginalMode,
    Row,
    all_original_modes,
    is_original,
)
from benchmarks.serve_bench.locust_soak import SoakResult, soak
from benchmarks.serve_bench.report import (
    fastest_original,
    format_ratios,
    format_table,
    load_rows,
    plot,
    ratios,
    report,
    summary,
    write_outputs,
)
from benchmarks.serve_bench.rounds import (
    level_servers,
    probe_originals,
    run,
    step_report,
)
from benchmarks.serve_bench.servers import RssSampler, running_server, server_command
from study.collect.server import ServerStartError

__all__ = [
    "DEFAULT_SERVERS", "SERVED_NAME", "SERVERS", "VLLM_BIND", "BenchConfig", "OriginalMode", "Row", "RssSampler",
    "ServerStartError", "SoakResult", "all_original_modes", "build_parser", "cli", "client_args", "default_models",
    "fastest_original", "format_ratios", "format_table", "is_original", "level_servers", "load_rows", "measure", "plot",
    "probe_originals", "ratios", "report", "rotated", "run", "run_client", "running_server", "server_command", "soak",
    "step_report", "summary", "write_outputs",
]
