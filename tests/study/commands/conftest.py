"""Fixtures shared by the command tests: the three-question prompt file of the monitor and `--alphas auto` tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("How do I sleep better?\nHow do I save money?\nAny tips for running?\n")
    return path
