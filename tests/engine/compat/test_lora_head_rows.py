"""engine/compat/lora_head_rows.py on vLLM's own CPU punica wrapper, without an engine.

A step of two requests (3 and 2 scheduled tokens), the first on an adapter, the second on none:
the head's LoRA maps one row per request. One request's prompt rows (more rows than that) fail in
vLLM's op; inside `request_rows` they get that request's adapter delta exactly (or index -1: none), and the
step's mapping is back afterwards.
"""

from __future__ import annotations

import pytest
import torch

from engine.compat.lora_head_rows import request_rows

HIDDEN, VOCAB, RANK, ROWS = 16, 40, 4, 6


@pytest.fixture
def wrapper():
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    wrapper = PunicaWrapperCPU(64, 4, "cpu")
    # LoRA id 7 in slot 1 (slot 0 holds id 5); request 0 on id 7, request 1 on none (id 0).
    wrapper.update_metadata(LoRAMapping((7, 7, 7, 0, 0), (7, 0), is_prefill=True), [5, 7], 2, VOCAB)
    return wrapper


def _weights():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, RANK, HIDDEN, generator=g), torch.randn(2, 1, VOCAB, RANK, generator=g)


def test_the_step_maps_one_row_per_request(wrapper):
    assert wrapper.sampler_indices.tolist() == [1, -1]


def test_prompt_rows_get_their_requests_adapter(wrapper):
    lora_a, lora_b = _weights()
    x = torch.randn(ROWS, HIDDEN, generator=torch.Generator().manual_seed(1))
    with pytest.raises((IndexError, RuntimeError)):  # vLLM alone: 2 sampled rows' indices for 6 rows
        wrapper.add_lora_logits(torch.zeros(ROWS, VOCAB), x, lora_a, lora_b, 1.0)
    on_adapter = torch.zeros(ROWS, VOCAB)
    with request_rows(wrapper, 0, ROWS):
        assert wrapper.sampler_indices.tolist() == [1] * ROWS
        wrapper.add_lora_logits(on_adapter, x, lora_a, lora_b, 1.0)
    torch.testing.assert_close(on_adapter, x @ lora_a[1, 0].T @ lora_b[1, 0].T, rtol=1e-5, atol=1e-5)
    with request_rows(wrapper, 1, ROWS):  # no adapter: every row at -1 (engine/compat/lora_cpu_ops.py adds nothing)
        assert wrapper.sampler_indices.tolist() == [-1] * ROWS
    assert wrapper.sampler_indices.tolist() == [1, -1]  # the step's mapping is back


def test_no_wrapper_or_no_row_changes_nothing(wrapper):
    with request_rows(None, 0, ROWS), request_rows(wrapper, None, ROWS), request_rows(wrapper, 5, ROWS):
        assert wrapper.sampler_indices.tolist() == [1, -1]
