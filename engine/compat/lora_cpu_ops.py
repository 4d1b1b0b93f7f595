"""vLLM's CPU LoRA ops, grouped by adapter: faster, and rows without an adapter left alone.

vLLM 0.32's CPU punica wrapper (`vllm/lora/punica_wrapper/punica_cpu.py`) runs the pure-torch ops
of `vllm/lora/ops/torch_ops/lora_ops.py`. Those gather a copy of the adapter matrix for every token
(`weights[indices]`) and multiply token by token (`einsum("bi, boi -> bo")`); and a row without an
adapter has index -1, which picks the last slot's weights (upstream fixes open, not in 0.32).
Measured on SmolLM2-135M with a rank-32 adapter on 2 cores, that made the adapter pair decode at
about 0.2x the merged pair (docs/performance/lora.md).

The replacements below compute the same products one adapter at a time: one matmul per adapter
present in the batch (usually one), over that adapter's rows, and nothing for rows at -1, as the
GPU kernels do. Signatures and output conventions are those of the originals. Installed on CPU
only, for vLLM 0.32.0 only, and only where the wrapper module still holds the six names.
"""

from __future__ import annotations

import torch

from engine.compat.patch_guard import Target, install_guarded

_NAMES = ("bgmv_expand", "bgmv_expand_slice", "bgmv_shrink", "sgmv_expand", "sgmv_expand_slice", "sgmv_shrink")


def _per_adapter(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """rows x weights[indices[row]]^T, grouped by adapter; rows at index < 0 stay zero."""
    w = weights.squeeze(1) if weights.dim() == 4 else weights  # [slots, out, in]
    x = inputs.to(dtype)
    present = indices.unique().tolist()
    if len(present) == 1 and present[0] >= 0:
        return x @ w[present[0]].to(dtype).T
    out = x.new_zeros((x.shape[0], w.shape[1]))
    for slot in present:
        if slot >= 0:
            rows = indices == slot
            out[rows] = x[rows] @ w[slot].to(dtype).T
    return out


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling):
    rows = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, rows, scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs=False):
    rows = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, rows, add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset, slice_size, add_inputs=False):
    rows = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, rows, slice_offset, slice_size, add_inputs)


_PUNICA = "vllm.lora.punica_wrapper.punica_cpu"
TARGETS = (
    Target(_PUNICA, "bgmv_expand", ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "add_inputs")),
    Target(_PUNICA, "bgmv_expand_slice", ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor",
                                          "slice_offset", "slice_size", "add_inputs")),
    Target(_PUNICA, "bgmv_shrink", ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "scaling")),
    Target(_PUNICA, "sgmv_expand", ("inputs", "lora_b_weights", "output_tensor", "b_seq_start_loc", "seq_len_tensor",
                                    "lora_indices_tensor", "batches", "max_seq_length", "token_nums", "add_inputs")),
    Target(_PUNICA, "sgmv_expand_slice", ("inputs", "lora_b_weights", "output_tensor", "b_seq_start_loc",
                                          "seq_len_tensor", "lora_indices_tensor", "batches", "max_seq_length",
                                          "token_nums", "slice_offset", "slice_size", "add_inputs")),
    Target(_PUNICA, "sgmv_shrink", ("inputs", "lora_a_weights", "output_tensor", "b_seq_start_loc", "seq_len_tensor",
                                    "lora_indices_tensor", "batches", "max_seq_length", "token_nums", "scaling")),
)
"""vLLM 0.32.0's CPU LoRA ops this module replaces, as the CPU punica wrapper calls them."""


def _point_punica_at_grouped_ops() -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    for name in _NAMES:
        setattr(punica_cpu, name, globals()[name])


def patch_cpu_lora_ops() -> bool:
    """Point vLLM's CPU punica wrapper at the grouped ops (CPU only, through the patch guard:
    pinned vLLM, each op present with its signature); True if installed."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    return install_guarded("cpu_lora_ops", TARGETS, _point_punica_at_grouped_ops)
