"""`block_size` reaches vLLM only when given (vLLM's default otherwise: 128 on CPU), and a size
vLLM's kernels cannot page is refused before an engine starts."""

from __future__ import annotations

import pytest

from engine.config import AlphaConfig, EngineOptions, LDAConfig, PairConfig, engine_kwargs, vllm_args


@pytest.fixture
def config(monkeypatch):
    monkeypatch.setattr(vllm_args, "_architectures", lambda model, trust_remote_code=False: ["LlamaForCausalLM"])
    return LDAConfig(PairConfig("after", "before"), AlphaConfig(), EngineOptions(device="cpu", dtype="float32"))


def test_block_size_is_passed_only_when_given(config):
    assert "block_size" not in engine_kwargs(config)
    config.engine.block_size = 32
    assert engine_kwargs(config)["block_size"] == 32


@pytest.mark.parametrize("size", [0, 8, 40])
def test_a_block_size_not_a_multiple_of_16_is_refused(size):
    with pytest.raises(ValueError, match=f"block_size must be a multiple of 16 .*got {size}"):
        EngineOptions(block_size=size)
