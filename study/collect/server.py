"""One server lifecycle: start a server on a free loopback port, wait for /health, stop its process group.

Every server the project starts from Python goes through here: the monitor's pair for a full-weight
checkpoint, the test servers (`tests/servers.py`), the benchmarks' servers under test. A server runs
in a session of its own (`start_new_session`), so that stopping it reaches the engine core and
workers it forked: `stop` sends SIGTERM to the leader (whose own shutdown stops its children in
order), waits, then SIGKILLs whatever is left of the group, since an engine's processes may outlive
a leader that exited or crashed. A server that exits or never answers /health before the deadline
is a `ServerStartError` carrying the log's tail, and is killed before the error is raised.

`lda serve` is started as `python -m api.cli serve`, so that study imports nothing of engine/ or api/.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from study.errors import StudyError

LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/health"
LOG_TAIL_LINES = 30
"""How many of a failed server's last log lines its error quotes."""


class ServerStartError(StudyError):
    """A server exited before answering /health (`returncode` set), or did not answer it in time."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def lda_serve_command(*args: str) -> list[str]:
    """`lda serve ARGS` run by this interpreter, without importing the server here."""
    return [sys.executable, "-m", "api.cli", "serve", *args]


def lda_serve_env(port: int, **settings: str) -> dict[str, str]:
    """This process's environment with `lda serve`'s HOST and PORT set to `port` on loopback, and
    `settings` (MODEL_AFTER_ID=..., and any other of its environment variables) on top."""
    return {**os.environ, "HOST": LOOPBACK, "PORT": str(port), **settings}


@dataclass
class Server:
    """A started server: its process (a process group's leader), its base URL and its log file. As a
    context manager (`with start(...) as server:`) it is stopped on the way out, also on an error."""

    process: subprocess.Popen
    base_url: str
    log_path: Path
    started: float = field(default_factory=time.perf_counter)
    """`time.perf_counter()` when the process was started (what a benchmark of start-up measures from)."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The log's last `lines` non-empty lines."""
        return "\n".join([line for line in self.log().splitlines() if line.strip()][-lines:])

    def group_alive(self) -> bool:
        """Whether any process of the server's group is still running."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a member we may not signal is still a member
            return True
        return True

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL the whole process group (the engine core and workers too) and reap the leader."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the leader and wait up to `timeout` s for it, then SIGKILL the group's stragglers;
        the leader's exit code (0 for a clean shutdown, -9 when it had to be killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()
        return self.process.returncode


def launch(
    command: list[str],
    env: Mapping[str, str],
    port: int,
    log_path: Path,
    preexec_fn: Callable[[], None] | None = None,
    cwd: Path | None = None,
) -> Server:
    """Start `command` (which must listen on loopback `port`) in its own process group, its output
    in `log_path`, without waiting: several servers start together, then `wait_healthy` each."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=preexec_fn, cwd=cwd)
    return Server(process, f"http://{LOOPBACK}:{port}", log_path, started)


def start(
    command: list[str],
    env: Mapping[str, str],
    port: int,
    log_path: Path,
    timeout_s: float,
    name: str = "server",
    preexec_fn: Callable[[], None] | None = None,
    cwd: Path | None = None,
    poll_s: float = 1.0,
) -> Server:
    """`launch`, then return once GET /health answers 200. ServerStartError, with the log's tail
    and the group killed, when it exits first or `timeout_s` passes."""
    server = launch(command, env, port, log_path, preexec_fn, cwd)
    try:
        wait_healthy(server, timeout_s, name, poll_s)
    except BaseException:
        server.kill()
        raise
    return server


def wait_healthy(server: Server, timeout_s: float, name: str = "server", poll_s: float = 1.0) -> None:
    """Poll GET /health every `poll_s` seconds until it answers 200; ServerStartError when the
    leader exits first or the deadline passes (the caller stops the server)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server.process.poll() is not None:
            code = server.process.returncode
            raise ServerStartError(
                f"{name} exited with {code} before answering {HEALTH_PATH}; see {server.log_path}. "
                f"Its last lines:\n{server.log_tail()}",
                returncode=code,
            )
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{name} not healthy after {timeout_s:g} s; see {server.log_path}. Its last lines:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + HEALTH_PATH, timeout=2).status_code == 200:
                return
        time.sleep(poll_s)
