"""Where the deployment files are, and the linters the deploy tests run on them (from the
project's `test` extra, installed next to the running Python)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
START_SH = ROOT / "deploy" / "runpod" / "start.sh"
SMOKE_TEST = ROOT / "deploy" / "smoke_test.py"
WORKFLOW = ROOT / ".github" / "workflows" / "docker.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "lda.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
MONITORING_DOC = ROOT / "docs" / "deploy" / "monitoring.md"
"""The docs page with the metrics-key steps (its yaml blocks are tested as written)."""


def tool(name: str) -> Path | None:
    """A linter from the project's test extra, installed next to this Python."""
    path = Path(sys.executable).parent / name
    return path if path.exists() else None
