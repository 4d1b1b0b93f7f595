"""The grouped CPU LoRA ops against vLLM 0.32's own torch ops: equal where a row has an adapter,
and no delta (not the last slot's) where it has none."""

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as vllm_ops

from engine.compat import lora_cpu_ops as ours

T, IN, RANK, OUT, SLOTS = 7, 64, 8, 96, 3


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(T, IN, generator=g), torch.randn(SLOTS, 1, RANK, IN, generator=g),
            torch.randn(SLOTS, 1, OUT, RANK, generator=g), torch.randn(T, RANK, generator=g))


@pytest.mark.parametrize("indices", [[0, 1, 1, 2, 0, 2, 1], [2] * T])
def test_same_as_vllm_where_every_row_has_an_adapter(tensors, indices):
    x, a, b, h = tensors
    idx = torch.tensor(indices)
    expected, got = torch.zeros(T, RANK), torch.zeros(T, RANK)
    vllm_ops.bgmv_shrink(x, a, expected, idx, 0.5)
    ours.bgmv_shrink(x, a, got, idx, 0.5)
    torch.testing.assert_close(got, expected)
    base = torch.randn(T, 200)
    expected, got = base.clone(), base.clone()
    vllm_ops.bgmv_expand_slice(h, b, expected, idx, 10, OUT, True)
    ours.bgmv_expand_slice(h, b, got, idx, 10, OUT, True)
    torch.testing.assert_close(got, expected)
    expected, got = base[:, :OUT].clone(), base[:, :OUT].clone()
    vllm_ops.bgmv_expand(h, b, expected, idx, True)
    ours.bgmv_expand(h, b, got, idx, True)
    torch.testing.assert_close(got, expected)


def test_rows_without_an_adapter_get_no_delta(tensors):
    x, a, b, h = tensors
    seq_lens, slots = torch.tensor([3, 4]), torch.tensor([2, -1])
    shrunk = torch.zeros(T, RANK)
    ours.sgmv_shrink(x, a, shrunk, None, seq_lens, slots, 2, 4, T, 1.0)
    assert shrunk[3:].abs().sum() == 0
    out = torch.ones(T, OUT)
    ours.sgmv_expand(h, b, out, None, seq_lens, slots, 2, 4, T, True)
    assert torch.equal(out[3:], torch.ones(4, OUT))
    # vLLM 0.32's own op gives those rows the last slot's weights: the bug this module avoids.
    theirs = torch.zeros(T, RANK)
    vllm_ops.sgmv_shrink(x, a, theirs, None, seq_lens, slots, 2, 4, T, 1.0)
    assert theirs[3:].abs().sum() > 0
