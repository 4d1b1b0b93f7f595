"""The translation of an `LDAConfig` into vLLM's engine arguments, and the keys the pair model reads back.

`engine_kwargs` is what `vllm.LLM(...)` and the server's `AsyncEngineArgs` get: the after model
with `hf_overrides` that name the pair class and carry the before model and the alpha policy into
`hf_config`, in every engine process (`engine.pair_model` reads them back by the keys below).
"""

from __future__ import annotations

from typing import Any

from engine.adapters import AdapterSpec
from engine.config.hardware import cpu_dtype
from engine.config.options import CPU_KV_CACHE_GB, EngineOptions, LDAConfig

SCORING_MAX_LOGPROBS = 42
"""engine.one_pass.num_columns(MAX_PROMOTED_K) - 1, written out so that this module stays free of
torch (tests/engine/test_one_pass.py checks the two agree)."""

PAIR_ARCHITECTURE = "LDAPairForCausalLM"
# Keys this project adds to the after model's hf_config through `hf_overrides`; they survive into
# `vllm_config.model_config.hf_config` in every engine process.
BEFORE_MODEL_KEY = "lda_before_model"
AFTER_ARCHITECTURES_KEY = "lda_after_architectures"
DEFAULT_ALPHA_KEY = "lda_default_alpha"
MAX_ALPHA_KEY = "lda_max_alpha"
SHARE_BASE_KEY = "lda_share_base"
ONE_PASS_KEY = "lda_one_pass"

GIB = 1024**3


def _architectures(model: str, trust_remote_code: bool = False) -> list[str]:
    from transformers import AutoConfig

    archs = getattr(AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code), "architectures", None)
    if not archs:
        raise ValueError(f"model {model!r} has no `architectures` in its config; cannot pick a vLLM class")
    return list(archs)


def hf_overrides(config: LDAConfig) -> dict[str, Any]:
    """What turns the after model's config into the pair's: our class, plus the before model."""
    return {
        "architectures": [PAIR_ARCHITECTURE],
        AFTER_ARCHITECTURES_KEY: _architectures(config.pair.after),
        BEFORE_MODEL_KEY: config.pair.before,
        SHARE_BASE_KEY: config.pair.shares_base,
        ONE_PASS_KEY: config.pair.one_pass,
        DEFAULT_ALPHA_KEY: config.alpha.default_alpha,
        MAX_ALPHA_KEY: config.alpha.max_alpha,
    }


def lora_targets(adapters: tuple[AdapterSpec, ...]) -> list[str] | None:
    """The modules vLLM should give LoRA layers: those the adapters target, when all name modules.

    Left to vLLM, every linear layer, the embedding and the lm_head get one, and each costs a
    LoRA pass per step even where no adapter has weights; the lm_head's spans the vocabulary.
    None (no restriction) when an adapter targets by pattern ("all-linear", a regex).
    """
    names = {t for a in adapters for t in a.target_modules}
    if not names or not all(t.isidentifier() for t in names):
        return None
    return sorted(names)


def engine_kwargs(config: LDAConfig, tokenizer: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)` / `AsyncEngineArgs(...)` serving the pair."""
    opts = config.engine
    device = opts.resolved_device()
    kwargs: dict[str, Any] = dict(
        model=config.pair.after,
        tokenizer=tokenizer or config.pair.after,
        hf_overrides=hf_overrides(config),
        logits_processors=["engine.alpha:AlphaLogitsProcessor"],
        dtype=cpu_dtype(opts.dtype) if device == "cpu" else opts.dtype,
        max_num_seqs=opts.max_num_seqs,
        enable_prefix_caching=opts.enable_prefix_caching,
        tensor_parallel_size=opts.tensor_parallel_size,
        enforce_eager=(device == "cpu") if opts.enforce_eager is None else opts.enforce_eager,
        seed=opts.seed,
        # Stats feed /metrics and per-request prefix-cache counts; the cost is negligible.
        disable_log_stats=False,
        # One-pass scoring packs its values into prompt-logprob columns (engine/one_pass.py); vLLM
        # refuses more than max_logprobs of them (default 20). Costs nothing unless requested.
        max_logprobs=SCORING_MAX_LOGPROBS,
        # What collective_rpc reaches in the worker: loading full weights into one stack (engine/weights.py).
        worker_extension_cls="engine.weights.StackWeightsWorker",
    )
    kwargs.update(lora_kwargs(config))
    kwargs.update(parallel_kwargs(opts))
    kwargs.update(_given(max_model_len=opts.max_model_len, max_num_batched_tokens=opts.max_num_batched_tokens,
                         block_size=opts.block_size))
    if opts.served_model_name:
        kwargs["served_model_name"] = opts.served_model_name
    kwargs.update(memory_kwargs(opts, device))
    return kwargs


def lora_kwargs(config: LDAConfig) -> dict[str, Any]:
    """vLLM's LoRA options for the after stack; none without LoRA."""
    pair = config.pair
    if not pair.lora_enabled:
        return {}
    n = pair.max_loras or len(pair.adapters)
    # Every adapter keeps a slot, so any mix of adapters fits one batch.
    kwargs: dict[str, Any] = dict(enable_lora=True, max_loras=n, max_cpu_loras=n, max_lora_rank=pair.max_lora_rank)
    if (targets := lora_targets(pair.adapters)) is not None:
        kwargs["lora_target_modules"] = targets
    return kwargs


def memory_kwargs(opts: EngineOptions, device: str) -> dict[str, Any]:
    """The KV-cache size: always explicit on CPU (CPU_KV_CACHE_GB unless given), else vLLM's share."""
    if device == "cpu":
        gb = CPU_KV_CACHE_GB if opts.kv_cache_memory_gb is None else opts.kv_cache_memory_gb
        return {"kv_cache_memory_bytes": int(gb * GIB)}
    kwargs: dict[str, Any] = {"gpu_memory_utilization": opts.gpu_memory_utilization}
    kwargs.update(_given(kv_cache_memory_bytes=None if opts.kv_cache_memory_gb is None else int(opts.kv_cache_memory_gb * GIB)))
    return kwargs


def parallel_kwargs(opts: EngineOptions) -> dict[str, Any]:
    """The data-parallel and executor options, only where they differ from vLLM's defaults (so that
    `vllm.LLM`, which takes no data parallel, sees none)."""
    kwargs = _given(
        data_parallel_size_local=opts.data_parallel_size_local,
        distributed_executor_backend=opts.distributed_executor_backend,
    )
    if opts.data_parallel_size != 1:
        kwargs["data_parallel_size"] = opts.data_parallel_size
    return kwargs


def _given(**options: Any) -> dict[str, Any]:
    """The options that are set (None leaves vLLM's default)."""
    return {name: value for name, value in options.items() if value is not None}
