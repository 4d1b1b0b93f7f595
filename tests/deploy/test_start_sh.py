"""deploy/runpod/start.sh, the pod's start command, run here with stand-ins for the server: it
lints clean, checks the model volume, warns on an open bind without a key, runs the selftest on
request, starts sshd, forwards stop signals and exits with the server's status."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.collect.server import free_port
from tests.deploy.files import START_SH, tool

STUB_SERVER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
signal.signal(signal.SIGINT, lambda *_: sys.exit(43))
print("ready", flush=True)
time.sleep(30)
sys.exit(1)
"""

# A stand-in `lda`: records each call, then exits with the status $FAKE_LDA_<SUBCOMMAND>_STATUS.
FAKE_LDA = """#!/bin/sh
echo "lda $*" >> "$FAKE_LDA_LOG"
eval "exit \\${FAKE_LDA_$(echo "$1" | tr a-z A-Z)_STATUS:-0}"
"""


def _env(tmp_path: Path, **env: str) -> dict[str, str]:
    """A clean environment with the model volume under tmp_path (the image's /models otherwise)."""
    return {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
        "LDA_MODELS_DIR": str(tmp_path / "models"), **env,
    }


def _start(tmp_path: Path, *command: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(START_SH), *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(tmp_path, **env), start_new_session=True,
    )


def _run(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(START_SH), *command], capture_output=True, text=True, env=_env(tmp_path, **env), timeout=30,
    )


@pytest.fixture
def fake_lda(tmp_path) -> dict[str, str]:
    """Environment that puts the stand-in `lda` first on PATH; its calls go to tmp_path/lda.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lda").write_text(FAKE_LDA)
    (bin_dir / "lda").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_LDA_LOG": str(tmp_path / "lda.log")}


def _lda_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "lda.log"
    return log.read_text().splitlines() if log.exists() else []


def test_start_sh_passes_shellcheck():
    shellcheck = tool("shellcheck")
    assert shellcheck, "shellcheck missing: install the test extra (pip install -e '.[test]')"
    result = subprocess.run([str(shellcheck), str(START_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_start_sh_exits_with_the_server_status(tmp_path):
    process = _start(tmp_path, "sh", "-c", "exit 7")
    assert process.wait(timeout=10) == 7


@pytest.mark.parametrize("sig, expected", [(signal.SIGTERM, 42), (signal.SIGINT, 43)])
def test_start_sh_forwards_stop_signals_to_the_server(tmp_path, sig, expected):
    process = _start(tmp_path, sys.executable, "-c", STUB_SERVER)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(sig)
        assert process.wait(timeout=10) == expected, process.stderr.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


# --- the model volume -----------------------------------------------------------------------------

def test_start_sh_refuses_an_unwritable_model_volume(tmp_path):
    # Under a regular file, no one can create the directory, root included.
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    marker = tmp_path / "server-ran"
    result = _run(tmp_path, "sh", "-c", f"touch {marker}", LDA_MODELS_DIR=str(blocked / "models"))
    assert result.returncode == 1, result.stderr
    assert not marker.exists(), "the server started anyway"
    assert "not writable by" in result.stderr
    assert f"LDA_MODELS_DIR={blocked / 'models'}" in result.stderr
    assert "refusing to start" in result.stderr
    assert "mount a volume at" in result.stderr


def test_start_sh_refuses_an_unwritable_cache_directory(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    result = _run(tmp_path, "sh", "-c", "exit 0", HF_HOME=str(blocked / "hf"), LDA_CACHE_DIR=str(tmp_path / "lda"))
    assert result.returncode == 1
    assert f"HF_HOME={blocked / 'hf'}" in result.stderr
    assert "LDA_CACHE_DIR" not in result.stderr.split("ERROR:")[1].splitlines()[0]


def test_start_sh_prints_the_volume_free_space_and_leaves_no_probe(tmp_path):
    models = tmp_path / "models"
    result = _run(tmp_path, "sh", "-c", "exit 0", HF_HOME=str(models / "hf"))
    assert result.returncode == 0, result.stderr
    match = re.search(rf"model volume {re.escape(str(models))}: ([\d.]+) GiB free of ([\d.]+) GiB on ", result.stderr)
    assert match, result.stderr
    usage = shutil.disk_usage(models)
    # Other processes write to this disk meanwhile: compare within 2 GiB.
    assert abs(float(match.group(1)) - usage.free / 2**30) < 2
    assert abs(float(match.group(2)) - usage.total / 2**30) < 0.2
    assert (models / "hf").is_dir()
    assert not list(models.glob(".lda-write-test*")) and not list((models / "hf").glob(".lda-write-test*"))


# --- the open-bind warning --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "command, env, warns",
    [
        ((), {"HOST": "0.0.0.0"}, True),
        (("lda", "serve", "--port", "9000"), {"HOST": "0.0.0.0"}, True),
        (("lda", "serve", "--host", "::"), {}, True),
        (("lda", "serve", "--host=0.0.0.0"), {"HOST": "127.0.0.1"}, True),
        ((), {"HOST": "0.0.0.0", "LDA_API_KEY": "k"}, False),
        (("lda", "serve", "--api-key", "k"), {"HOST": "0.0.0.0"}, False),
        (("lda", "serve", "--api-key=k"), {"HOST": "0.0.0.0"}, False),
        ((), {"HOST": "127.0.0.1"}, False),
        ((), {}, False),  # the server's own default host is 127.0.0.1
        (("lda", "selftest"), {"HOST": "0.0.0.0"}, False),  # not a server
    ],
)
def test_start_sh_warns_on_an_open_bind_without_a_key(tmp_path, fake_lda, command, env, warns):
    result = _run(tmp_path, *command, **fake_lda, **env)
    assert result.returncode == 0, result.stderr
    assert _lda_calls(tmp_path) == [" ".join(command or ("lda", "serve"))]
    warning = [line for line in result.stderr.splitlines() if "without an API key" in line]
    assert bool(warning) == warns, result.stderr
    if warns:
        assert "LDA_API_KEY" in warning[0] and "Authorization: Bearer" in warning[0]
        assert (":9000 " in warning[0]) == ("9000" in command)


# --- LDA_SELFTEST -----------------------------------------------------------------------------------

def test_start_sh_runs_the_selftest_before_the_server(tmp_path, fake_lda):
    result = _run(tmp_path, LDA_SELFTEST="1", **fake_lda)
    assert result.returncode == 0, result.stderr
    assert _lda_calls(tmp_path) == ["lda selftest", "lda serve"]
    assert "lda selftest passed" in result.stderr


def test_start_sh_does_not_serve_when_the_selftest_fails(tmp_path, fake_lda):
    result = _run(tmp_path, LDA_SELFTEST="1", FAKE_LDA_SELFTEST_STATUS="3", **fake_lda)
    assert result.returncode == 3
    assert _lda_calls(tmp_path) == ["lda selftest"]
    assert "not starting the server" in result.stderr


def test_start_sh_skips_the_selftest_by_default(tmp_path, fake_lda):
    assert _run(tmp_path, **fake_lda).returncode == 0
    assert _lda_calls(tmp_path) == ["lda serve"]


# --- sshd -------------------------------------------------------------------------------------------

def _wait_for_banner(port: int, timeout_s: float = 10) -> bytes:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                return sock.recv(64)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="openssh-server is not installed here (the image has it)")
def test_start_sh_starts_sshd_when_public_key_is_set(tmp_path):
    port = free_port()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKzkPdH7U7GFAgll29uMgY6SELJSIC8Vex7msB3sbYdN test@deploy"
    process = _start(
        tmp_path, sys.executable, "-c", STUB_SERVER,
        PUBLIC_KEY=key, SSH_PORT=str(port), SSH_LISTEN_ADDRESS="127.0.0.1",
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        assert _wait_for_banner(port).startswith(b"SSH-2.0-")
        assert (tmp_path / ".ssh" / "authorized_keys").read_text() == key + "\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 42
        with pytest.raises(OSError):  # sshd went down with the server
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
