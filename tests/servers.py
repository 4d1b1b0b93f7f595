"""Start real `lda serve` processes on loopback for tests, and stop them with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# Generous: an engine starts in 30-60 s alone, but several minutes on a loaded 2-core machine.
START_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: the engine core and workers too, not just the server."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait: the exit code of a clean shutdown."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.process.returncode


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


def start_server(command: list[str], env: dict[str, str], log_path: Path) -> ServerProcess:
    port = env["PORT"]
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.kill()  # the engine's children may outlive a crashed server
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.kill()
    raise RuntimeError(f"server not healthy after {START_TIMEOUT_S} s:\n{server.log()[-4000:]}")


def start_lda_server(pair, log_path: Path, **extra_env: str) -> ServerProcess:
    env = tiny_server_env(pair, free_port(), **extra_env)
    return start_server([sys.executable, "-m", "api.cli", "serve"], env, log_path)
