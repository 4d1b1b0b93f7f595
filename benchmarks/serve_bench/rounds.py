"""The run itself: probe the original design's modes, start every server, then measure each
(round, level, server) with the order rotating between rounds, writing the outputs after every
round; and the workers' step timings at the end."""

from __future__ import annotations

import contextlib
from pathlib import Path

from benchmarks.serve_bench.client import measure, rotated
from benchmarks.serve_bench.config import BenchConfig, Row, is_original, server_order
from benchmarks.serve_bench.report import (
    fastest_original,
    format_table,
    report,
    write_outputs,
)
from benchmarks.serve_bench.servers import running_server


def probe_originals(config: BenchConfig) -> list[Row]:
    """Each original mode alone, one after another, once at every level (round 0 rows)."""
    rows: list[Row] = []
    for mode in config.original_modes:
        print(f"== probe {mode.name}", flush=True)
        with running_server(config, mode.name, config.out_dir / f"server_{mode.name}.log") as (base_url, process):
            for concurrency in config.concurrencies:
                rows.append(measure(config, mode.name, base_url, process.pid, concurrency, 0))
                print(format_table([rows[-1]]), flush=True)
    return rows


def level_servers(config: BenchConfig, probe: list[Row]) -> dict[int, tuple[str, ...]]:
    """The servers measured at each level: the vLLM ones, and the original design's fastest mode."""
    vllm_servers = tuple(s for s in config.servers if s != "original")
    if "original" not in config.servers:
        return {c: vllm_servers for c in config.concurrencies}
    default = config.original_modes[0].name
    return {c: (*vllm_servers, fastest_original(probe, c) or default) for c in config.concurrencies}


def run(config: BenchConfig, argv: list[str] | None = None) -> tuple[list[Row], dict[str, Path]]:
    """Probe the original design's modes, start every server, then measure each (round, level,
    server); write CSV, JSON and PNG under `config.out_dir`.

    The outputs are rewritten after every round, and also when the run is cut short (Ctrl-C,
    SIGTERM), so a long run that is stopped still leaves what it measured.
    """
    config.out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    paths: dict[str, Path] = {}
    written = 0
    probe = probe_originals(config) if "original" in config.servers and len(config.original_modes) > 1 else []
    if probe:
        print("\nprobe of the original design's modes (one round each):\n" + format_table(probe), flush=True)
    levels = level_servers(config, probe)
    try:
        with contextlib.ExitStack() as stack:
            running = {}
            for server in sorted({s for group in levels.values() for s in group}, key=server_order):
                print(f"== {server}: starting", flush=True)
                running[server] = stack.enter_context(running_server(config, server, config.out_dir / f"server_{server}.log"))
            for round_ in range(1, config.rounds + 1):
                print(f"== round {round_} of {config.rounds}", flush=True)
                for concurrency in config.concurrencies:
                    for server in rotated(levels[concurrency], round_):
                        base_url, process = running[server]
                        rows.append(measure(config, server, base_url, process.pid, concurrency, round_))
                        print(format_table([rows[-1]]), flush=True)
                paths = write_outputs(config, rows, argv or [], probe=probe)
                written = len(rows)
    except BaseException:
        if len(rows) > written:  # a round cut short
            write_outputs(config, rows, argv or [], probe=probe)
        raise
    print("\n" + report(rows), flush=True)
    if config.step_timing:
        print("\n" + step_report(config), flush=True)
    return rows, paths


def step_report(config: BenchConfig) -> str:
    """The workers' step timings: decode steps at each concurrency level, and prefill steps."""
    from engine.compat.step_timing import format_summary, load_steps, summarize

    rows = []
    for server in config.servers:
        if not is_original(server):
            steps = load_steps(config.out_dir / "steps" / server)
            rows += [(server, r) for r in summarize(steps, batch_sizes=config.concurrencies)]
    return "worker step timings (decode: median ms per step; prefill: total s over the run):\n" + format_summary(rows)
