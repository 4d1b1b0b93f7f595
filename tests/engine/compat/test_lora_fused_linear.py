"""The fused linear LoRA (one shrink and one expand per adapter for all of a layer's slices)
against vLLM 0.32's CPU wrapper running the grouped ops slice by slice: the same output for packed
and single layers, one adapter or several, rows without an adapter, prefill and decode."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from engine.compat import lora_cpu_ops as ours

IN, RANK, SLOTS = 64, 8, 3
LORA_IDS = [11, 12, 13]  # slot i holds adapter id LORA_IDS[i]; id 0 is "no adapter"


def _weights(slices: tuple[int, ...], dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = tuple((torch.randn(SLOTS, 1, RANK, IN, generator=g) * 0.2).to(dtype) for _ in slices)
    b = tuple((torch.randn(SLOTS, 1, out, RANK, generator=g) * 0.2).to(dtype) for out in slices)
    return a, b


def _wrapper(token_ids: list[int], prefill: bool) -> PunicaWrapperCPU:
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=8, device="cpu")
    mapping = LoRAMapping(index_mapping=tuple(token_ids), prompt_mapping=tuple(token_ids), is_prefill=prefill)
    ours.ORIGINAL.get("update_metadata", PunicaWrapperCPU.update_metadata)(wrapper, mapping, LORA_IDS, SLOTS, 1000)
    wrapper.lda_row_groups = ours.FUSED.groups(wrapper.token_lora_indices)
    return wrapper


@pytest.fixture
def grouped_ops(monkeypatch):
    """vLLM's wrapper on the grouped per-slice ops (what ran before the fused op)."""
    for name in ("bgmv_expand", "bgmv_expand_slice", "bgmv_shrink", "sgmv_expand", "sgmv_expand_slice", "sgmv_shrink"):
        monkeypatch.setattr(punica_cpu, name, getattr(ours, name))
    return ours.ORIGINAL.get("add_lora_linear", PunicaWrapperCPU.add_lora_linear)


def _both(grouped_ops, token_ids, prefill, slices, dtype, scale=1.0, seed=0):
    a, b = _weights(slices, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(len(token_ids), IN, generator=g).to(dtype)
    y = torch.randn(len(token_ids), sum(slices), generator=g).to(dtype)
    expected, got = y.clone(), y.clone()
    grouped_ops(_wrapper(token_ids, prefill), expected, x, a, b, scale, slices)
    ours.add_lora_linear(_wrapper(token_ids, prefill), got, x, a, b, scale, slices)
    return y, expected, got


BATCHES = {
    "one adapter": [12] * 6,
    "two adapters and base rows": [11, 0, 12, 12, 0, 11, 11],
    "base rows only": [0] * 5,
}


@pytest.mark.parametrize("slices", [(48, 16, 16), (40, 40), (64,)], ids=["qkv", "gate_up", "single"])
@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fused_equals_the_per_slice_ops(grouped_ops, slices, batch, prefill, dtype):
    token_ids = BATCHES[batch]
    y, expected, got = _both(grouped_ops, token_ids, prefill, slices, dtype, scale=0.5 if prefill else 1.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    base_rows = [i for i, t in enumerate(token_ids) if t == 0]
    assert torch.equal(got[base_rows], y[base_rows])  # rows without an adapter: untouched
    if len(base_rows) < len(token_ids):
        assert not torch.equal(got, y)


def test_fused_is_exact_in_bf16_for_one_adapter(grouped_ops):
    """The block-diagonal expand adds exact zeros: bitwise the per-slice result here."""
    _, expected, got = _both(grouped_ops, [13] * 9, False, (48, 16, 16), torch.bfloat16)
    assert torch.equal(got, expected)


def test_a_written_slot_is_seen_after_activation(grouped_ops):
    slices = (48, 16, 16)
    a, b = _weights(slices, torch.bfloat16)
    x = torch.randn(4, IN).to(torch.bfloat16)
    wrapper = _wrapper([11] * 4, False)
    first = torch.zeros(4, sum(slices), dtype=torch.bfloat16)
    ours.add_lora_linear(wrapper, first, x, a, b, 1.0, slices)
    for t in b:  # vLLM writes a new adapter into slot 0 (B negated), as activate_adapter does
        t[0].mul_(-1)
    ours.FUSED.slots_written()
    second = torch.zeros(4, sum(slices), dtype=torch.bfloat16)
    ours.add_lora_linear(wrapper, second, x, a, b, 1.0, slices)
    torch.testing.assert_close(second, -first, rtol=0, atol=1e-2)


def test_groups_name_each_slot_and_leave_out_base_rows():
    groups = ours.FUSED.groups(torch.tensor([1, -1, 0, 1, -1]))
    assert [(s, r.tolist()) for s, r in groups] == [(0, [2]), (1, [0, 3])]
    assert ours.FUSED.groups(torch.tensor([2, 2, 2])) == [(2, None)]
    assert ours.FUSED.groups(torch.tensor([-1, -1])) == []


@pytest.mark.parametrize("batch", ["one adapter", "two adapters and base rows"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_the_onednn_products_equal_the_aten_ones(batch, dtype):
    """At scale 1 (what vLLM passes) the products can run on vLLM's packed oneDNN GEMM: the same
    output as the float32 aten path (`FUSED.onednn` off), and the one-pass before rows untouched."""
    slices, token_ids = (48, 16, 16), BATCHES[batch]
    a, b = _weights(slices, dtype)
    g = torch.Generator().manual_seed(5)
    n = len(token_ids)
    x = torch.randn(2 * n, IN, generator=g).to(dtype)  # a one-pass step: after rows, then before rows
    y = torch.randn(2 * n, sum(slices), generator=g).to(dtype)
    outputs, default = {}, ours.FUSED.onednn
    try:
        for onednn in (False, True):
            ours.FUSED.onednn, ours.FUSED.adapter_rows = onednn, n
            ours.FUSED.slots_written()
            outputs[onednn] = y.clone()
            ours.add_lora_linear(_wrapper(token_ids, False), outputs[onednn], x, a, b, 1.0, slices)
            assert (ours.FUSED.weights[id(a[0])]["gemm"] is not None) == onednn
    finally:
        ours.FUSED.onednn, ours.FUSED.adapter_rows = default, None
    torch.testing.assert_close(outputs[True], outputs[False], rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert torch.equal(outputs[True][n:], y[n:])
    assert not torch.equal(outputs[True][:n], y[:n])
