"""CPU dtype choice and the fix that makes bf16 usable on CPU (no engine started here)."""

from __future__ import annotations

import pytest
import torch

from engine.config import hardware, vllm_args
from engine.config import AlphaConfig, EngineOptions, LDAConfig, PairConfig, cpu_dtype, engine_kwargs
from engine.compat.vllm_patches import patch_cpu_attention_isa
from engine.env import AMX_ATTENTION_VAR


def test_auto_is_checkpoint_dtype_only_with_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert cpu_dtype("auto") == "auto"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert cpu_dtype("auto") == "float32"
    assert cpu_dtype("bfloat16") == "bfloat16"


def test_engine_kwargs_resolve_auto_on_cpu(monkeypatch):
    monkeypatch.setattr(vllm_args, "_architectures", lambda model, trust_remote_code=False: ["LlamaForCausalLM"])
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    config = LDAConfig(PairConfig("after", "before"), AlphaConfig(), EngineOptions(device="cpu"))
    assert engine_kwargs(config)["dtype"] == "float32"
    config.engine.dtype = "bfloat16"
    assert engine_kwargs(config)["dtype"] == "bfloat16"


@pytest.mark.skipif(not torch.cpu._is_amx_tile_supported(), reason="vLLM picks its AMX kernel only on AMX CPUs")
def test_bf16_attention_stays_off_the_amx_kernel(monkeypatch):
    from vllm.v1.attention.backends import cpu_attn

    patch_cpu_attention_isa()
    patch_cpu_attention_isa()  # idempotent: vLLM loads plugins more than once per process
    monkeypatch.delenv(AMX_ATTENTION_VAR, raising=False)
    assert cpu_attn._get_attn_isa(torch.bfloat16, 128, 64) == "vec"
    assert cpu_attn._get_attn_isa(torch.float32, 128, 64) == "vec"
    monkeypatch.setenv(AMX_ATTENTION_VAR, "1")
    assert cpu_attn._get_attn_isa(torch.bfloat16, 128, 64) == "amx"
