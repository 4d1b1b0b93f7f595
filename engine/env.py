"""The environment: the name of every variable the engine reads or sets, and readers of its own.

One table, so that no variable's name is typed twice: the engine's own variables (read here, at
the edge), and vLLM's that the engine sets at start-up (`engine.config.process`) or that the server
reads as a second spelling of its own setting. The server's settings name theirs in their own
table (`api/settings/table.py`), each beside its flag.
"""

from __future__ import annotations

import os
from pathlib import Path

# The engine's own.
CACHE_DIR_VAR = "LDA_CACHE_DIR"
"""Root of built artifacts (converted and fine-tuned models); default `~/.cache/lda`."""
STEP_TIMING_VAR = "LDA_STEP_TIMING_DIR"
"""Where vLLM workers record per-step timings; unset: off."""
AMX_ATTENTION_VAR = "LDA_CPU_AMX_ATTENTION"
"""1 lets vLLM's CPU attention use its AMX kernel in bf16 (`engine.compat.vllm_patches`)."""

# vLLM's, set by the engine before vLLM starts (`engine.config.process.prepare_process`).
V2_RUNNER_VAR = "VLLM_USE_V2_MODEL_RUNNER"
CPU_THREADS_BIND_VAR = "VLLM_CPU_OMP_THREADS_BIND"
CPU_RESERVED_VAR = "VLLM_CPU_NUM_OF_RESERVED_CPU"
BINDING_VARS = (CPU_THREADS_BIND_VAR, CPU_RESERVED_VAR)
"""vLLM's CPU binding: a user who sets either keeps vLLM's binding as given."""
RUNTIME_LORA_VAR = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
"""vLLM's switch for its runtime LoRA routes: the server reads it as its own switch's second
spelling and turns vLLM's off (its routes replace vLLM's)."""
HOST_IP_VAR = "VLLM_HOST_IP"
"""The address vLLM's engine processes advertise to each other (TP, DP message queues)."""
VLLM_API_KEY_VAR = "VLLM_API_KEY"
"""vLLM's API key: the server takes it as its own key's second spelling."""
VLLM_CACHE_ROOT_VAR = "VLLM_CACHE_ROOT"
"""Where vLLM keeps its compile caches (`lda selftest` gives each mode its own)."""
VLLM_LOGGING_LEVEL_VAR = "VLLM_LOGGING_LEVEL"
VLLM_CONFIGURE_LOGGING_VAR = "VLLM_CONFIGURE_LOGGING"
"""0: vLLM configures no logging; the plugin then gives `lda.*` no handler either."""
HF_OFFLINE_VAR = "HF_HUB_OFFLINE"


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


def vllm_configures_logging() -> bool:
    """Whether vLLM sets up its own logging (`$VLLM_CONFIGURE_LOGGING`, default 1), read as vLLM does."""
    return os.environ.get(VLLM_CONFIGURE_LOGGING_VAR, "1") != "0"


def amx_attention_allowed() -> bool:
    """Whether `$LDA_CPU_AMX_ATTENTION` is 1 (vLLM's AMX attention kernel in bf16 allowed)."""
    return os.environ.get(AMX_ATTENTION_VAR, "0") == "1"
