"""The one place the engine reads environment variables: everything else takes explicit arguments."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_VAR = "LDA_CACHE_DIR"
STEP_TIMING_VAR = "LDA_STEP_TIMING_DIR"


def default_cache_dir() -> Path:
    """Root of the engine's built artifacts (converted and fine-tuned models): `$LDA_CACHE_DIR`,
    else `~/.cache/lda`."""
    value = os.environ.get(CACHE_DIR_VAR)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lda"


def step_timing_dir() -> Path | None:
    """Where vLLM workers record per-step timings (`engine.compat.step_timing`): `$LDA_STEP_TIMING_DIR`,
    else None (off)."""
    value = os.environ.get(STEP_TIMING_VAR)
    return Path(value).expanduser() if value else None
