"""The deployment as a pod runs it: deploy/runpod/start.sh starting `lda serve` on the CPU with a
tiny pair, configured only by environment variables.

Checks that start.sh checks the model volume first, that the server comes up healthy, that every
metric the Grafana dashboard and Prometheus config query is really exported after a completion,
and that SIGTERM to start.sh stops the server and all its engine processes with exit status 0. One server for the module (engine start: 30 to
100 s on 2 cores).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

if not (ROOT / "api" / "server.py").exists():
    pytest.skip("api/server.py (`lda serve`) is not written yet", allow_module_level=True)

import httpx  # noqa: E402

from study.collect.server import ServerStartError, free_port, start  # noqa: E402
from tests.deploy.metric_names import exposed_series_names, queried_metric_names_in_files  # noqa: E402
from tests.factories import build_pair  # noqa: E402
from tests.servers import START_TIMEOUT_S  # noqa: E402

pytestmark = pytest.mark.slow

START_SH = ROOT / "deploy" / "runpod" / "start.sh"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "lda.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SERVED_MODEL_NAME = "lda-tiny"
SHUTDOWN_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-live")
    pair = build_pair(root / "models", "llama")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PUBLIC_KEY"}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        DEVICE="cpu",
        HOST="127.0.0.1",
        PORT=str(port),
        MODEL_AFTER_ID=str(pair.after),
        MODEL_BEFORE_ID=str(pair.before),
        SERVED_MODEL_NAME=SERVED_MODEL_NAME,
        MAX_MODEL_LEN="256",
        MAX_NUM_SEQS="4",
        KV_CACHE_MEMORY_GB="0.25",
        LDA_DEFAULT_ALPHA="1.0",  # so the completion below is amplified and counted as such
        LDA_MAX_ALPHA="20",
        LDA_MODELS_DIR=str(root / "models"),
        LDA_CACHE_DIR=str(root / "lda"),
        HF_HOME=str(root / "hf"),
        VLLM_CACHE_ROOT=str(root / "vllm"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    try:
        pod = start([str(START_SH)], env, port, root / "server.log", START_TIMEOUT_S, name="start.sh", cwd=root)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield pod
    finally:
        pod.kill()


def test_start_sh_checked_the_volume_before_starting(pod):
    log = pod.log()
    volume_line = log.index("start.sh: model volume ")
    assert " GiB free of " in log[volume_line:].splitlines()[0]
    assert volume_line < log.index("start.sh: starting: lda serve")
    assert "without an API key" not in log  # bound to 127.0.0.1


def test_start_sh_serves_completions(pod):
    response = httpx.post(
        f"{pod.base_url}/v1/completions",
        json={"model": SERVED_MODEL_NAME, "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] is not None


def test_every_queried_metric_is_exported(pod):
    # Runs after the completion above, so request histograms and counters have samples.
    response = httpx.get(f"{pod.base_url}/metrics", timeout=30)
    assert response.status_code == 200
    exported = exposed_series_names(response.text)
    queried = queried_metric_names_in_files(DASHBOARD, PROMETHEUS)
    missing = sorted(queried - exported)
    assert not missing, f"queried by the dashboard but not exported by the server: {missing}"


def test_sigterm_stops_the_server_cleanly(pod):
    pod.process.send_signal(signal.SIGTERM)
    try:
        status = pod.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"start.sh still running {SHUTDOWN_TIMEOUT_S} s after SIGTERM:\n{pod.log_tail()}")
    assert status == 0, pod.log_tail()
    # No engine process outlives the server (they share start.sh's process group).
    deadline = time.monotonic() + 10
    while pod.group_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pod.group_alive(), f"processes left after shutdown:\n{pod.log_tail()}"
