"""The one server lifecycle, on a stand-in server: Python's http.server serving a folder that holds a
file named `health`, so GET /health is 200 as soon as it listens (no engine needed)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from study.collect.server import ServerStartError, free_port, lda_serve_command, lda_serve_env, start


def _http_server(root: Path, port: int, before: str = "") -> list[str]:
    (root / "health").write_text("ok")
    serve = f"{sys.executable} -m http.server {port} --bind 127.0.0.1 --directory {root}"
    return ["bash", "-c", f"{before}exec {serve}"]


def test_free_port_is_free_on_loopback():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_waits_for_health_and_stop_ends_the_whole_group(tmp_path):
    port = free_port()
    # A straggler that ignores SIGTERM, forked before the server: only the group's SIGKILL ends it.
    command = _http_server(tmp_path, port, before="(trap '' TERM; sleep 300) & ")
    server = start(command, {"PATH": "/usr/bin:/bin"}, port, tmp_path / "server.log", timeout_s=60)
    assert server.base_url == f"http://127.0.0.1:{port}"
    assert server.group_alive()
    code = server.stop(timeout=10)
    assert code == -15  # http.server does not catch SIGTERM
    deadline = time.monotonic() + 5
    while server.group_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.group_alive()


def test_a_server_that_exits_is_an_error_with_its_code_and_log_tail(tmp_path):
    command = ["bash", "-c", "echo 'no such model: x' >&2; exit 3"]
    with pytest.raises(ServerStartError, match="no such model: x") as caught:
        start(command, {"PATH": "/usr/bin:/bin"}, free_port(), tmp_path / "server.log", timeout_s=60, name="lda serve")
    assert caught.value.returncode == 3 and "lda serve exited with 3" in str(caught.value)


def test_a_server_that_never_answers_is_killed_at_the_deadline(tmp_path):
    log_path = tmp_path / "server.log"
    command = ["bash", "-c", "echo starting; exec sleep 300"]
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="not healthy after 2 s") as caught:
        start(command, {"PATH": "/usr/bin:/bin"}, free_port(), log_path, timeout_s=2)
    assert time.monotonic() - started < 30
    assert caught.value.returncode is None and "starting" in str(caught.value)


def test_a_server_used_as_a_context_is_stopped_on_an_error(tmp_path):
    port = free_port()
    with pytest.raises(KeyError), start(_http_server(tmp_path, port), {"PATH": "/usr/bin:/bin"}, port,
                                        tmp_path / "server.log", timeout_s=60) as server:
        raise KeyError("the body failed")
    assert server.process.returncode is not None and not server.group_alive()


def test_lda_serve_is_started_by_module_on_loopback():
    assert lda_serve_command("--x")[1:] == ["-m", "api.cli", "serve", "--x"]
    env = lda_serve_env(1234, MODEL_AFTER_ID="a")
    assert (env["HOST"], env["PORT"], env["MODEL_AFTER_ID"]) == ("127.0.0.1", "1234", "a")
