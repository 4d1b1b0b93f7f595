"""The deploy files take the parallel sizes and a Ray cluster: the compose file passes them to the
server, and start.sh starts a Ray head before the server or joins a cluster instead of serving
(run here with a stand-in `ray` and `lda`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from api.settings import SETTINGS
from tests.deploy.files import ROOT, START_SH

PARALLEL = ["TENSOR_PARALLEL_SIZE", "DATA_PARALLEL_SIZE", "DATA_PARALLEL_SIZE_LOCAL", "PIPELINE_PARALLEL_SIZE",
            "DISTRIBUTED_EXECUTOR_BACKEND"]

# Stand-ins: each records its arguments and the variables the server would see.
FAKE = """#!/bin/sh
echo "$(basename "$0") $* | RAY_ADDRESS=${RAY_ADDRESS:-} DISTRIBUTED_EXECUTOR_BACKEND=${DISTRIBUTED_EXECUTOR_BACKEND:-}" >> "$FAKE_LOG"
"""


def test_compose_passes_the_parallel_sizes_and_the_ray_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    passed = set(compose["services"]["lda"]["environment"])
    assert {*PARALLEL, "RAY_ADDRESS", "LDA_RAY_START", "RAY_PORT"} <= passed
    server_vars = {row.env for row in SETTINGS}
    assert set(PARALLEL) <= server_vars, "each parallel variable the compose file passes is one lda serve reads"


@pytest.fixture
def fakes(tmp_path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ray", "lda"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_LOG": str(tmp_path / "calls.log"),
            "HOME": str(tmp_path), "LDA_MODELS_DIR": str(tmp_path / "models")}


def _run(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    result = subprocess.run([str(START_SH)], capture_output=True, text=True, env=env, timeout=30)
    log = Path(env["FAKE_LOG"])
    return result, (log.read_text().splitlines() if log.exists() else [])


def test_head_starts_ray_then_serves_on_it(fakes):
    result, calls = _run({**fakes, "LDA_RAY_START": "head", "RAY_PORT": "6390"})
    assert result.returncode == 0, result.stderr
    assert calls == [
        "ray start --head --port=6390 --disable-usage-stats | RAY_ADDRESS= DISTRIBUTED_EXECUTOR_BACKEND=",
        "lda serve | RAY_ADDRESS=auto DISTRIBUTED_EXECUTOR_BACKEND=ray",
    ]


def test_worker_joins_the_cluster_and_serves_nothing(fakes):
    result, calls = _run({**fakes, "LDA_RAY_START": "worker", "RAY_ADDRESS": "10.0.0.1:6379"})
    assert result.returncode == 0, result.stderr
    assert calls == ["ray start --address=10.0.0.1:6379 --block --disable-usage-stats | RAY_ADDRESS=10.0.0.1:6379 DISTRIBUTED_EXECUTOR_BACKEND="]


@pytest.mark.parametrize(
    "env, message",
    [({"LDA_RAY_START": "worker"}, "LDA_RAY_START=worker needs RAY_ADDRESS"),
     ({"LDA_RAY_START": "boss"}, "LDA_RAY_START must be head or worker; got 'boss'")],
)
def test_bad_ray_role_exits_2_naming_the_variable(fakes, env, message):
    result, calls = _run({**fakes, **env})
    assert result.returncode == 2 and message in result.stderr and calls == []
