"""Test fixtures for real `lda serve` processes on loopback, over study's one server lifecycle
(`study.collect.server`: start, wait for /health, stop the process group)."""

from __future__ import annotations

import os
from pathlib import Path

from study.collect.server import Server, free_port, lda_serve_command, start

# Generous: an engine starts in 30-60 s alone, but several minutes on a loaded 2-core machine.
START_TIMEOUT_S = 600

__all__ = ["START_TIMEOUT_S", "free_port", "start_lda_server", "start_server", "tiny_server_env"]


def tiny_server_env(pair, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MODEL_AFTER_ID=str(pair.after),
        MODEL_BEFORE_ID=str(pair.before),
        DEVICE="cpu",
        HOST="127.0.0.1",
        PORT=str(port),
        DTYPE="float32",  # the tiny checkpoints' dtype; the tests compare with float32 transformers
        KV_CACHE_MEMORY_GB="0.25",
        MAX_MODEL_LEN="512",
        MAX_NUM_SEQS="16",
        HF_HUB_OFFLINE="1",
        VLLM_HOST_IP="127.0.0.1",  # vLLM's message queues otherwise advertise the host's address
    )
    env.update(extra)
    return env


def start_server(command: list[str], env: dict[str, str], log_path: Path) -> Server:
    return start(command, env, int(env["PORT"]), log_path, START_TIMEOUT_S)


def start_lda_server(pair, log_path: Path, **extra_env: str) -> Server:
    return start_server(lda_serve_command(), tiny_server_env(pair, free_port(), **extra_env), log_path)
