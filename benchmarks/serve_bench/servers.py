"""Starting and stopping the servers under test: the command and environment of each kind (the
pair, vLLM alone, the original design), started and stopped by `study.collect.server`, and a sampler of the
peak RSS of a server's whole process tree (API server, engine core, workers)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from benchmarks.serve_bench.config import (
    SERVED_NAME,
    VLLM_BIND,
    BenchConfig,
    is_original,
)
from engine.config import cpu_binding_env, cpu_dtype
from engine.env import BINDING_VARS
from engine.env import STEP_TIMING_VAR
from study.collect.server import free_port, start


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


@contextlib.contextmanager
def running_server(config: BenchConfig, server: str, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `server` in its own process group, wait for /health, yield its base URL and process;
    stop the group (`study.collect.server`, the one server lifecycle)."""
    port = free_port()
    command, env = server_command(config, server, port)
    with start(command, env, port, log_path, config.start_timeout_s, f"{server} server") as handle:
        yield handle.base_url, handle.process
