"""Typed, validated configuration of an LDA engine, one module per concern (as vLLM's `vllm.config`).

- `pair`: the two checkpoints and the LoRA policy (`PairConfig`, `adapter_pair`, slot limits).
- `alpha`: the alpha policy (`AlphaConfig`: default and range).
- `options`: vLLM's engine options (`EngineOptions`) and `LDAConfig`, which gathers the three and
  is passed whole.
- `hardware`: GPU and CPU detection, and the CPU workers' core binding.
- `vllm_args`: the translation into vLLM's engine arguments (`engine_kwargs`), and the `hf_config`
  keys the pair model reads back.
- `process`: `prepare_process`, the one start-up function that changes process-wide state.

Every bad value raises ValueError naming the field and the accepted range. The names below are
the package's public interface; import them from `engine.config`.
"""

from engine.config.alpha import AlphaConfig
from engine.config.hardware import cpu_binding_env, cpu_dtype
from engine.config.options import DTYPES, EngineOptions, LDAConfig
from engine.config.pair import RUNTIME_MIN_LORA_RANK, RUNTIME_MIN_LORAS, PairConfig, adapter_pair
from engine.config.process import prepare_process
from engine.config.vllm_args import (
    AFTER_ARCHITECTURES_KEY,
    BEFORE_MODEL_KEY,
    DEFAULT_ALPHA_KEY,
    ONE_PASS_KEY,
    PAIR_ARCHITECTURE,
    SCORING_MAX_LOGPROBS,
    SHARE_BASE_KEY,
    engine_kwargs,
    lora_targets,
    parallel_kwargs,
)

__all__ = [
    "AFTER_ARCHITECTURES_KEY",
    "BEFORE_MODEL_KEY",
    "DEFAULT_ALPHA_KEY",
    "DTYPES",
    "ONE_PASS_KEY",
    "PAIR_ARCHITECTURE",
    "RUNTIME_MIN_LORAS",
    "RUNTIME_MIN_LORA_RANK",
    "SCORING_MAX_LOGPROBS",
    "SHARE_BASE_KEY",
    "AlphaConfig",
    "EngineOptions",
    "LDAConfig",
    "PairConfig",
    "adapter_pair",
    "cpu_binding_env",
    "cpu_dtype",
    "engine_kwargs",
    "lora_targets",
    "parallel_kwargs",
    "prepare_process",
]
