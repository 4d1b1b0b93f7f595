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

    lda bench --out benchmarks/results            # SmolLM2-135M as both models (or the demo pair)
    lda bench --after A --before B --concurrency 1,2 --num-prompts 4 --servers lda,single,original
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

from engine.config import BINDING_VARS, DTYPES, cpu_binding_env, cpu_dtype
from engine.env import STEP_TIMING_VAR

SERVERS = ("lda", "lda-bind-vllm", "single", "original")
"""What `--servers` names: the pair, the pair under vLLM's own CPU binding (`LDA_CPU_BIND=vllm`:
one core reserved for the front-end processes), vLLM serving the after model alone, the original
design (its modes, `OriginalMode`)."""
DEFAULT_SERVERS = ("lda", "single", "original")
VLLM_BIND = "lda-bind-vllm"
SERVED_NAME = "lda"
ORIGINAL_DTYPES = ("float16", "bfloat16", "float32")
SHORT_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass(frozen=True, slots=True)
class OriginalMode:
    """One way to run the original design: its serving path, dtype and torch threads."""

    batched: bool
    dtype: str
    threads: int

    def __post_init__(self) -> None:
        if self.dtype not in ORIGINAL_DTYPES:
            raise ValueError(f"original mode dtype must be one of {', '.join(ORIGINAL_DTYPES)}; got {self.dtype!r}")
        if self.threads < 1:
            raise ValueError(f"original mode threads must be >= 1; got {self.threads}")

    @property
    def name(self) -> str:
        return f"original-{'batch' if self.batched else 'one'}-{SHORT_DTYPE[self.dtype]}-t{self.threads}"

    @classmethod
    def parse(cls, text: str) -> OriginalMode:
        """`batch:bfloat16:2` or `one:float32:1`."""
        try:
            path, dtype, threads = text.split(":")
            if path not in ("batch", "one"):
                raise ValueError
            return cls(path == "batch", dtype, int(threads))
        except ValueError as error:
            detail = f": {error}" if str(error) else ""
            raise ValueError(f"original mode must look like batch:bfloat16:2 or one:float32:1; got {text!r}{detail}") from None


def all_original_modes(max_threads: int = 2) -> tuple[OriginalMode, ...]:
    """Both paths in every dtype on 1 and `max_threads` threads."""
    threads = sorted({1, max(1, max_threads)})
    return tuple(OriginalMode(b, d, t) for b in (True, False) for d in ORIGINAL_DTYPES for t in threads)


def is_original(server: str) -> bool:
    return server.startswith("original")
METRICS = ("request_throughput", "output_throughput", "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms")


@dataclass(slots=True)
class BenchConfig:
    after: str
    before: str
    out_dir: Path
    servers: tuple[str, ...] = DEFAULT_SERVERS
    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    num_prompts: int | None = None
    """Requests per concurrency level; None: max(8, 2 * concurrency) in the rounds, max(8,
    concurrency) in the probe of the original's modes."""
    original_modes: tuple[OriginalMode, ...] = field(default_factory=all_original_modes)
    """The original design's modes the probe tries; the fastest at each level joins the rounds."""
    one_at_a_time_max_prompts: int = 8
    """The original's one-at-a-time path gets at most this many requests per level (bounds its time)."""
    input_len: int = 128
    output_len: int = 64
    alpha: float = 1.0
    dtype: str = "auto"
    """Both vLLM servers' dtype; "auto" as the engine resolves it (bf16 checkpoints run in bf16 on
    a CPU with native bf16, else float32)."""
    kv_cache_gb: float = 2.0
    max_num_seqs: int = 64
    max_model_len: int = 512
    rounds: int = 3
    """Measurements of every (server, level); the report takes their median."""
    step_timing: bool = False
    """Record each vLLM worker step (`engine.step_timing`) under `out_dir/steps/<server>`."""
    start_timeout_s: float = 600.0
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every server (e.g. LDA_ENGINE_* A/B switches)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.servers) - set(SERVERS))
        if unknown or not self.servers:
            raise ValueError(f"servers must be a non-empty subset of {', '.join(SERVERS)}; got {self.servers}")
        if not self.concurrencies or min(self.concurrencies) < 1:
            raise ValueError(f"concurrency levels must be >= 1; got {self.concurrencies}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1; got {self.num_prompts}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1; got {self.rounds}")
        if "original" in self.servers and not self.original_modes:
            raise ValueError("servers include original but original_modes is empty")
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError(f"input_len and output_len must be >= 1; got {self.input_len}, {self.output_len}")
        if self.input_len + self.output_len > self.max_model_len:
            raise ValueError(f"input_len + output_len must fit max_model_len={self.max_model_len}")

    def prompts_for(self, server: str, concurrency: int, probe: bool = False) -> int:
        """Requests per level; the probe of the original's modes sends one static batch's worth
        (max(8, concurrency)) unless `num_prompts` is set: it only picks the fastest mode."""
        default = max(8, concurrency) if probe else max(8, 2 * concurrency)
        n = self.num_prompts if self.num_prompts is not None else default
        return min(n, self.one_at_a_time_max_prompts) if server.startswith("original-one") else n

    def original_mode(self, server: str) -> OriginalMode:
        for mode in self.original_modes:
            if mode.name == server:
                return mode
        raise ValueError(f"no original mode named {server!r}")


@dataclass(slots=True)
class Row:
    server: str
    concurrency: int
    num_prompts: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    p50_ttft_ms: float
    p99_ttft_ms: float
    p50_tpot_ms: float
    p99_tpot_ms: float
    peak_rss_mb: float
    round: int = 1
    """The round that measured this row; in a `summary` row, how many rounds it summarises."""


# ---------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(config: BenchConfig, server: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment that start `server` with the benchmark's shared settings."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **config.env}
    if config.step_timing and not is_original(server):
        env[STEP_TIMING_VAR] = str(config.out_dir / "steps" / server)
    if server == VLLM_BIND:
        # vLLM's own binding: none of our binding variables, and `lda serve` told to keep it.
        env = {k: v for k, v in env.items() if k not in BINDING_VARS} | {"LDA_CPU_BIND": "vllm"}
    elif not is_original(server):
        # `lda serve` applies this binding itself; plain vLLM (the single baseline) gets the same.
        env = {**cpu_binding_env(), **env}
        env.pop("LDA_CPU_BIND", None)  # a caller's choice must not reach the servers it does not name
    py = sys.executable
    if server in ("lda", VLLM_BIND):
        env.update(
            MODEL_AFTER_ID=config.after, MODEL_BEFORE_ID=config.before, DEVICE="cpu", HOST="127.0.0.1",
            PORT=str(port), DTYPE=config.dtype, KV_CACHE_MEMORY_GB=str(config.kv_cache_gb),
            MAX_MODEL_LEN=str(config.max_model_len), MAX_NUM_SEQS=str(config.max_num_seqs),
            SERVED_MODEL_NAME=SERVED_NAME, LDA_DEFAULT_ALPHA=str(config.alpha), ENFORCE_EAGER="1",
        )
        return [py, "-m", "api.cli", "serve"], env
    if server == "single":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(config.kv_cache_gb)))
        return [
            py, "-m", "vllm.entrypoints.openai.api_server", "--model", config.after,
            "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", cpu_dtype(config.dtype), "--max-num-seqs", str(config.max_num_seqs),
            "--max-model-len", str(config.max_model_len), "--enforce-eager",
            "--kv-cache-memory-bytes", str(int(config.kv_cache_gb * 1024**3)), "--seed", "0",
        ], env
    mode = config.original_mode(server)
    batched = ["--batched", "--max-batch", str(max(config.concurrencies))] if mode.batched else []
    return [
        py, "-m", "benchmarks.original_server", "--after", config.after, "--before", config.before,
        "--port", str(port), "--dtype", mode.dtype, "--served-model-name", SERVED_NAME,
        "--default-alpha", str(config.alpha), "--threads", str(mode.threads), *batched,
    ], env


class RssSampler:
    """Peak resident memory of a process and all its descendants, sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class ServerStartError(RuntimeError):
    """A server under test exited or never became healthy."""


def _tail(log_path: Path, lines: int = 5) -> str:
    text = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def running_server(config: BenchConfig, server: str, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `server` in its own process group, wait for /health, yield its base URL; kill the group."""
    import httpx

    port = _free_port()
    command, env = server_command(config, server, port)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + config.start_timeout_s
        while True:
            if process.poll() is not None:
                raise ServerStartError(f"{server} server exited with {process.returncode}; see {log_path}. "
                                       f"Its last lines:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ServerStartError(f"{server} server not healthy after {config.start_timeout_s:.0f} s; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        yield base_url, process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of an exited leader
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# ---------------------------------------------------------------- client


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


# ---------------------------------------------------------------- report


def _server_order(server: str) -> tuple[int, str]:
    return ({"lda": 0, VLLM_BIND: 1, "single": 2}.get(server, 3), server)


def summary(rows: list[Row]) -> list[Row]:
    """One row per (server, level): the median of each metric over rounds (peak RSS: the maximum).

    `round` holds the number of rounds summarised."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.server, r.concurrency), []).append(r)
    out = []
    for (server, concurrency), group in sorted(groups.items(), key=lambda item: (_server_order(item[0][0]), item[0][1])):
        out.append(Row(
            server=server, concurrency=concurrency, num_prompts=group[0].num_prompts,
            completed=sum(r.completed for r in group), failed=sum(r.failed for r in group),
            duration_s=median([r.duration_s for r in group]),
            **{name: median([getattr(r, name) for r in group]) for name in METRICS},
            peak_rss_mb=max(r.peak_rss_mb for r in group), round=len(group),
        ))
    return out


def _per_round(by: dict, rounds: list[int], base: str, c: int) -> list[float]:
    return [
        by[("lda", c, k)].output_throughput / by[(base, c, k)].output_throughput
        for k in rounds
        if ("lda", c, k) in by and (base, c, k) in by and by[(base, c, k)].output_throughput > 0
    ]


def fastest_original(rows: list[Row], concurrency: int) -> str | None:
    """The original mode with the highest median output tok/s at `concurrency`, if any ran."""
    medians = {r.server: r.output_throughput for r in summary(rows) if is_original(r.server) and r.concurrency == concurrency}
    return max(medians, key=medians.get) if medians else None


BASELINES = (("single", "single"), ("vllm_bind", VLLM_BIND))
"""The `ratios` keys (`lda_over_<key>`) of the fixed baselines, and their servers."""


def ratios(rows: list[Row]) -> list[dict]:
    """LDA's output tok/s over each baseline's, per level: each round's ratio (both servers measured
    in that round), and their median, min and max. The original design's baseline is its fastest
    mode at that level (`original_server` names it); `vllm_bind` is LDA under vLLM's CPU binding."""
    by = {(r.server, r.concurrency, r.round): r for r in rows}
    rounds = sorted({r.round for r in rows})
    out = []
    for c in sorted({r.concurrency for r in rows}):
        entry: dict = {"concurrency": c}
        best = fastest_original(rows, c)
        if best is not None:
            entry["original_server"] = best
        for key, base in (*BASELINES, ("original", best)):
            per_round = _per_round(by, rounds, base, c) if base else []
            if per_round:
                entry[f"lda_over_{key}"] = median(per_round)
                entry[f"lda_over_{key}_min"] = min(per_round)
                entry[f"lda_over_{key}_max"] = max(per_round)
                entry[f"lda_over_{key}_rounds"] = per_round
        out.append(entry)
    return out


def format_table(rows: list[Row], rounds_column: str = "round") -> str:
    width = max([7, *(len(r.server) for r in rows)])
    header = f"{'server':<{width}} {'conc':>4} {rounds_column:>6} {'n':>4} {'ok':>4} {'fail':>4} {'req/s':>7} {'out tok/s':>9} " \
             f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'peak RSS MB':>11}"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r.server:<{width}} {r.concurrency:>4} {r.round:>6} {r.num_prompts:>4} {r.completed:>4} {r.failed:>4} "
            f"{r.request_throughput:>7.3f} {r.output_throughput:>9.1f} {r.p50_ttft_ms:>9.0f} {r.p99_ttft_ms:>9.0f} "
            f"{r.p50_tpot_ms:>9.1f} {r.p99_tpot_ms:>9.1f} {r.peak_rss_mb:>11.0f}"
        )
    return "\n".join(lines)


def format_ratios(entries: list[dict]) -> str:
    """Median ratio over rounds, with the rounds' range where there was more than one."""
    def cell(e: dict, base: str, digits: int) -> str:
        value = e.get(f"lda_over_{base}")
        if value is None:
            return "-"
        low, high = e[f"lda_over_{base}_min"], e[f"lda_over_{base}_max"]
        spread = "" if len(e[f"lda_over_{base}_rounds"]) == 1 else f" ({low:.{digits}f}-{high:.{digits}f})"
        return f"{value:.{digits}f}{spread}"

    bind = any("lda_over_vllm_bind" in e for e in entries)
    extra = f" {'LDA/LDA(vLLM bind)':>18}" if bind else ""
    lines = [f"{'conc':>4} {'LDA/single':>18}{extra} {'LDA/original':>18}  fastest original mode"]
    for e in entries:
        extra = f" {cell(e, 'vllm_bind', 2):>18}" if bind else ""
        lines.append(f"{e['concurrency']:>4} {cell(e, 'single', 2):>18}{extra} {cell(e, 'original', 2):>18}  "
                     f"{e.get('original_server', '-')}")
    return "\n".join(lines)


def report(rows: list[Row]) -> str:
    """The summary table (medians over rounds) and the ratios, as printed at the end of a run."""
    return (
        "median over rounds (ok and fail: totals; peak RSS: the maximum):\n"
        + format_table(summary(rows), rounds_column="rounds")
        + "\n\nLDA output tok/s over each baseline's, median over rounds (range):\n"
        + format_ratios(ratios(rows))
    )


def write_outputs(
    config: BenchConfig, rows: list[Row], argv: list[str], sources: list[str] | None = None, probe: list[Row] | None = None
) -> dict[str, Path]:
    out = config.out_dir
    paths = {"csv": out / "serve_bench.csv", "json": out / "serve_bench.json", "png": out / "serve_bench.png"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k not in ("env", "original_modes")}
    meta["original_modes"] = [mode.name for mode in config.original_modes]
    meta["cpu_binding"] = cpu_binding_env()
    meta["cpu_binding_servers"] = [s for s in config.servers if s not in (VLLM_BIND, "original")]
    paths["json"].write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["lda", "bench", *argv],
        "config": meta,
        "rows": [asdict(r) for r in rows],
        "summary": [asdict(r) for r in summary(rows)],
        "ratios": ratios(rows),
        "probe": [asdict(r) for r in probe or []],
        **({"combined_from": sources} if sources else {}),
    }, indent=2))
    plot(rows, paths["png"])
    return paths


def plot(rows: list[Row], path: Path) -> None:
    """Median output tok/s against concurrency per server, with the rounds' min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"lda": "LDA pair", VLLM_BIND: "LDA pair, vLLM's CPU binding", "single": "vLLM, after model alone"}
    for server in sorted({r.server for r in rows}, key=_server_order):
        levels = sorted({r.concurrency for r in rows if r.server == server})
        if not levels:
            continue
        values = [[r.output_throughput for r in rows if r.server == server and r.concurrency == c] for c in levels]
        mid = [median(v) for v in values]
        spread = [[m - min(v) for m, v in zip(mid, values)], [max(v) - m for m, v in zip(mid, values)]]
        ax.errorbar(levels, mid, yerr=spread, marker="o", capsize=3, label=labels.get(server, server))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tokens/s (median over rounds)")
    ax.set_title("Serving throughput vs concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_rows(paths: list[Path]) -> list[Row]:
    """Rows of earlier runs' JSON files, for a table over servers measured in separate runs."""
    rows = []
    for path in paths:
        rows += [Row(**r) for r in json.loads(Path(path).read_text())["rows"]]
    return rows


# ---------------------------------------------------------------- soak


LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass(slots=True)
class SoakResult:
    seconds: int
    users: int
    max_tokens: int
    requests: int
    failures: int
    status_counts: dict[str, int]
    """HTTP status of every completion request, from the server's access log."""
    healthy_after: bool
    completion_after: str
    peak_rss_mb: float
    locust_exit_code: int

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.status_counts.items() if code.startswith("5"))


def _locust_counts(final_json: Path) -> tuple[int, int]:
    """Requests and failures of the HTTP rows (not the TTFT/TPOT/TOKENS custom events), from
    locust's --json-file, which it writes after its users stop. (Its --csv stats are written
    earlier and miss the requests that finish during --stop-timeout.)"""
    requests = failures = 0
    for entry in json.loads(final_json.read_text()):
        if entry.get("method") == "POST":
            requests += int(entry["num_requests"])
            failures += int(entry["num_failures"])
    return requests, failures


def _status_counts(log_path: Path) -> dict[str, int]:
    import re

    counts: dict[str, int] = {}
    pattern = re.compile(r'"POST /v1/(?:chat/)?completions HTTP/[\d.]+" (\d{3})')
    for line in log_path.read_text(errors="replace").splitlines():
        if match := pattern.search(line):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def soak(config: BenchConfig, seconds: int, users: int, max_tokens: int) -> SoakResult:
    """The LDA server under `users` closed-loop locust users for `seconds`, then a health check and
    one completion. Locust's --stop-timeout lets requests in flight at the end finish, so every
    request sent is counted as succeeded or failed."""
    import httpx

    config.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.out_dir / "server_soak.log"
    with running_server(config, "lda", log_path) as (base_url, process):
        sampler = RssSampler(process.pid, interval=1.0).start()
        env = {**os.environ, "LDA_MODEL": SERVED_NAME, "LDA_MAX_TOKENS": str(max_tokens), "LDA_ALPHAS": "0,1,4",
               "LDA_IGNORE_EOS": "1", "LDA_TIMEOUT": "600"}
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
                   "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "300", "--host", base_url,
                   "--csv", str(config.out_dir / "soak"), "--json-file", str(config.out_dir / "soak_final"),
                   "--only-summary", "--loglevel", "WARNING"]
        print("$ " + " ".join(command), flush=True)
        locust = subprocess.run(command, env=env, timeout=seconds + 420)
        peak = sampler.stop()
        healthy = httpx.get(f"{base_url}/health", timeout=30).status_code == 200
        reply = httpx.post(f"{base_url}/v1/completions", timeout=120, json={
            "model": SERVED_NAME, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "alpha": 1.0})
        reply.raise_for_status()
        text = reply.json()["choices"][0]["text"]
    requests, failures = _locust_counts(config.out_dir / "soak_final.json")
    result = SoakResult(seconds, users, max_tokens, requests, failures, _status_counts(log_path), healthy, text,
                        peak / 2**20, locust.returncode)
    (config.out_dir / "soak.json").write_text(json.dumps(
        {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **asdict(result),
         "server_errors": result.server_errors}, indent=2))
    print(json.dumps({**asdict(result), "server_errors": result.server_errors}, indent=2), flush=True)
    return result


# ---------------------------------------------------------------- entry point


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
            for server in sorted({s for group in levels.values() for s in group}, key=_server_order):
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
    from engine.step_timing import format_summary, load_steps, summarize

    rows = []
    for server in config.servers:
        if not is_original(server):
            steps = load_steps(config.out_dir / "steps" / server)
            rows += [(server, r) for r in summarize(steps, batch_sizes=config.concurrencies)]
    return "worker step timings (decode: median ms per step; prefill: total s over the run):\n" + format_summary(rows)


def default_models() -> tuple[str, str]:
    """The demo pair if it is already built (never built here: that is a fine-tune), else
    SmolLM2-135M-Instruct as both models."""
    from engine.env import default_cache_dir
    from engine.smollm2 import ensure_smollm2

    with contextlib.suppress(ImportError, AttributeError, OSError):
        from engine.demo_pair import TrainConfig, fingerprint

        after = default_cache_dir() / f"demo-after-{fingerprint(TrainConfig())}"
        if after.is_dir():
            return str(after), str(ensure_smollm2())
    path = str(ensure_smollm2())
    return path, path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lda bench", description=__doc__.splitlines()[0])
    p.add_argument("--after", help="after model path (default: demo pair if built, else SmolLM2-135M)")
    p.add_argument("--before", help="before model path")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
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


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
