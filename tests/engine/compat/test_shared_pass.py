"""The pieces of one pass for a shared-base pair that run without an engine: the attention split
by rows, the fused LoRA leaving the before rows alone, and the config's refusal without a shared base."""

from __future__ import annotations

import pytest
import torch

from engine.compat import lora_cpu_ops as ops
from engine.compat.shared_pass import SharedPass, SplitAttention


class Recorder:
    def __init__(self, scale: float) -> None:
        self.scale, self.calls = scale, []

    def __call__(self, query, key, value, output_shape=None, output_dtype=None):
        self.calls.append((query.shape[0], output_shape))
        return self.scale * (query + key + value)


def test_split_attention_sends_each_half_to_its_stack():
    state, after, before = SharedPass(), Recorder(1.0), Recorder(-1.0)
    split = SplitAttention(state, after, before)
    q = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(split(q, q, q), 3 * q) and after.calls == [(6, None)]  # not in a one-pass step
    with state.step(3):
        out = split(q, q, q, torch.Size((6, 2)))
    assert torch.equal(out[:3], 3 * q[:3]) and torch.equal(out[3:], -3 * q[3:])
    assert after.calls[1:] == [(3, torch.Size((3, 2)))] and before.calls == [(3, torch.Size((3, 2)))]
    assert state.rows is None and ops.FUSED.adapter_rows is None  # reset after the step


def test_fused_lora_in_a_one_pass_step_leaves_the_before_rows_alone():
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    g = torch.Generator().manual_seed(0)
    slices = (16, 8, 8)
    a = tuple(torch.randn(1, 1, 4, 32, generator=g) for _ in slices)
    b = tuple(torch.randn(1, 1, n, 4, generator=g) for n in slices)
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=16, max_batches=4, device="cpu")
    ops.ORIGINAL.get("update_metadata", PunicaWrapperCPU.update_metadata)(
        wrapper, LoRAMapping((7,) * 3, (7,) * 3), [7], 1, 100)
    wrapper.lda_row_groups = ops.FUSED.groups(wrapper.token_lora_indices)
    x = torch.randn(3, 32, generator=g)
    alone = torch.zeros(3, 32)
    ops.add_lora_linear(wrapper, alone, x, a, b, 1.0, slices)
    both = torch.zeros(6, 32)
    with SharedPass().step(3):
        ops.add_lora_linear(wrapper, both, torch.cat([x, x]), a, b, 1.0, slices)
    assert torch.equal(both[:3], alone) and not both[3:].any()


def test_one_pass_needs_a_shared_base(tmp_path):
    from engine.config import PairConfig

    with pytest.raises(ValueError, match="one_pass needs an adapter pair"):
        PairConfig(str(tmp_path / "a"), str(tmp_path / "b"), one_pass=True)


def test_blockers_name_every_reason_and_pass_a_lora_stack_of_linear_layers():
    from torch import nn
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from engine.compat.shared_pass import blockers

    model = nn.Module()
    model.after, model.before = nn.Sequential(nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2))
    manager = type("Manager", (), {"lora_config": type("Config", (), {"fully_sharded_loras": True})()})()
    reasons = blockers(model, shared=False, lora_manager=manager)
    assert "the stacks do not share their base weights" in reasons
    assert any("vLLM's Attention" in r for r in reasons) and "fully sharded LoRA is on" in reasons
    fused = PunicaWrapperCPU.add_lora_linear is ops.add_lora_linear
    assert fused != any("fused CPU LoRA op is not installed" in r for r in reasons)
    assert not any("cannot check" in r for r in reasons)
