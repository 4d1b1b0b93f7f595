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

Fused linear LoRA (issue 30). vLLM's CPU wrapper runs a linear layer's LoRA as one shrink and one
expand per output slice (6 calls for a packed qkv layer, 4 for gate_up), each paying the same
fixed cost (the grouping by adapter, dtype casts, an output slice update) on a few-microsecond
matmul. `FusedLinearLoRA` replaces `PunicaWrapperCPU.add_lora_linear` with one shrink and one
expand per adapter present: the slices' A matrices stacked into one [slices * rank, in] matrix and
their B matrices into one block-diagonal [sum(out), slices * rank] matrix (the zero blocks add
exact zeros), both built once per LoRA slot and rebuilt only after vLLM writes a slot
(`LoRAModelManager.activate_adapter`, the one place that does). The rows of each adapter are
found once per batch mapping (`update_metadata`), not in every call. The arithmetic is the
original's: the shrink in float32, scaled, the expand in the output's dtype from the shrink
rounded to it, then added to the output.
"""

from __future__ import annotations

import torch

from engine.compat.patch_guard import Target, install_guarded, mismatch

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


class FusedLinearLoRA:
    """The fused `add_lora_linear`, its per-mapping row groups and its stacked-weight cache.

    One instance per process (the patched methods reach it through the module global `FUSED`);
    the row groups are kept on each punica wrapper instance, the weights per LoRA layer (keyed by
    its first A tensor, held to rule out a reused id)."""

    def __init__(self) -> None:
        self.generation = 0
        """Bumped whenever vLLM writes a LoRA slot: every stacked copy older than it is stale."""
        self.weights: dict[int, dict] = {}
        self.onednn = False
        """Run the products on vLLM's oneDNN GEMM handlers where it has them. Off by default:
        twice as fast as the aten matmuls alone (`benchmarks/lora_ops_bench.py`) but slower in the
        engine's worker on 2 cores (139 against 88 ms a one-pass step at batch 16, interleaved:
        `benchmarks/lora_cost.py --onednn`; docs/performance/lora.md)."""
        self.adapter_rows: int | None = None
        """In a one-pass step of a shared-base pair (engine/compat/shared_pass.py), the after
        rows: the first `adapter_rows` rows of every input; the rest are the before stack's rows,
        which get no delta. None otherwise."""

    def slots_written(self) -> None:
        self.generation += 1

    @staticmethod
    def groups(indices: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
        """(slot, rows) for each adapter slot in `indices`; rows None when every row has it. Rows
        at -1 (no adapter) are in no group."""
        present = [s for s in indices.unique().tolist() if s >= 0]
        if len(present) == 1 and bool((indices == present[0]).all()):
            return [(present[0], None)]
        return [(s, (indices == s).nonzero().squeeze(1)) for s in present]

    def stacked(self, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], dtype: torch.dtype):
        """The layer's stacked weights for every slot, built at most once per slot generation:
        `a` [slots, n * rank, in] float32 and `b` [slots, sum(out), n * rank] block-diagonal in
        `dtype`, and where vLLM's oneDNN GEMM can run them (`onednn_handlers`), `gemm`: per slot
        the (shrink, expand) handlers holding packed copies of a[slot] and b[slot] in `dtype`."""
        key = id(lora_a[0])
        entry = self.weights.get(key)
        if entry is not None and entry["generation"] == self.generation and entry["anchor"] is lora_a[0] \
                and entry["b"].dtype == dtype:
            return entry
        a = torch.cat([t.squeeze(1) for t in lora_a], dim=1)
        slots, rank = lora_b[0].shape[0], lora_b[0].shape[-1]
        outs = [t.shape[2] for t in lora_b]
        b = lora_b[0].new_zeros((slots, sum(outs), rank * len(lora_b)), dtype=dtype)
        row = 0
        for i, t in enumerate(lora_b):
            b[:, row : row + outs[i], i * rank : (i + 1) * rank] = t.squeeze(1)
            row += outs[i]
        entry = {"generation": self.generation, "anchor": lora_a[0], "a": a.float(), "b": b, "gemm": None}
        if self.onednn and a.dtype == dtype:
            entry["gemm"] = onednn_handlers(a, b)
        self.weights[key] = entry
        return entry

    def apply(self, wrapper, y: torch.Tensor, x: torch.Tensor, lora_a, lora_b, scale: float, output_slices) -> None:
        groups = getattr(wrapper, "lda_row_groups", None)
        if groups is None:  # a mapping this process set before the patch: group now, once
            groups = wrapper.lda_row_groups = self.groups(wrapper.token_lora_indices)
        if not groups:
            return
        entry = self.stacked(lora_a, lora_b, y.dtype)
        out_y = y.view(-1, y.shape[-1])
        x = x.view(-1, x.shape[-1])
        if self.adapter_rows is not None:  # before any cast: the before rows need none
            out_y, x = out_y[: self.adapter_rows], x[: self.adapter_rows]
        width = sum(output_slices)
        target = out_y[:, :width] if width != out_y.shape[1] else out_y
        gemm = entry["gemm"]
        if gemm is not None and scale == 1.0 and x.dtype == y.dtype:
            # vLLM's oneDNN GEMM on packed weights: the shrink rounded to y's dtype from its
            # float32 accumulator, as the float32 path below does at scale 1 (what vLLM passes).
            from vllm import _custom_ops as ops

            for slot, rows in groups:
                shrink, expand = gemm[slot]
                if rows is None:
                    target += ops.onednn_mm(expand, ops.onednn_mm(shrink, x, None), None)
                else:
                    target.index_add_(0, rows, ops.onednn_mm(expand, ops.onednn_mm(shrink, x[rows], None), None))
            return
        a, b = entry["a"], entry["b"]
        x = x.float()
        if len(groups) == 1 and groups[0][1] is None:
            slot = groups[0][0]
            shrunk = x @ a[slot].T
            if scale != 1.0:
                shrunk = scale * shrunk
            target += shrunk.to(y.dtype) @ b[slot].T
            return
        delta = out_y.new_zeros((x.shape[0], width))
        for slot, rows in groups:
            shrunk = x[rows] @ a[slot].T
            if scale != 1.0:
                shrunk = scale * shrunk
            delta[rows] = shrunk.to(y.dtype) @ b[slot].T
        target += delta


def onednn_handlers(a: torch.Tensor, b: torch.Tensor) -> list | None:
    """Per slot, vLLM's oneDNN GEMM handlers (shrink by a[slot], expand by b[slot]), the ones its
    CPU linear layers run on (`vllm._custom_ops.create_onednn_mm`); None where this build of vLLM
    has no oneDNN or refuses the shapes. A handler holds its own packed copy of the weights.

    Why: one aten matmul on a few rows costs 100 to 200 us in the worker (dispatch, a oneDNN
    primitive looked up per call, casts to float32 and back), where the packed oneDNN GEMM costs
    about half (benchmarks/lora_ops_bench.py; docs/performance/lora.md)."""
    from vllm import _custom_ops as ops

    if not getattr(ops, "_supports_onednn", False) or a.dtype not in (torch.bfloat16, torch.float32):
        return None
    try:
        return [(ops.create_onednn_mm(a[s].t(), 32), ops.create_onednn_mm(b[s].t(), 32)) for s in range(a.shape[0])]
    except RuntimeError:
        return None


FUSED = FusedLinearLoRA()


def set_onednn(model, on: bool) -> bool:
    """The fused op's products on oneDNN handlers (True) or aten matmuls (False, the default), in a running
    worker (`LLM.apply_model(partial(set_onednn, on=...))`), to compare the two; True."""
    if FUSED.onednn != on:
        FUSED.onednn = on
        FUSED.slots_written()  # rebuild the stacked weights the chosen way
    return True


def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs):
    """`PunicaWrapperCPU.add_lora_linear`, fused (see the module's docstring); a caller's own
    buffer or extra options go to vLLM's original."""
    if buffer is not None or kwargs or len(lora_a_stacked) != len(output_slices):
        if FUSED.adapter_rows is not None:  # vLLM's op would give the before rows the adapter
            raise RuntimeError("one-pass step: vLLM's own add_lora_linear cannot leave the before rows alone")
        return ORIGINAL["add_lora_linear"](self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices,
                                           buffer=buffer, **kwargs)
    FUSED.apply(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices)
    return None


def update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs):
    ORIGINAL["update_metadata"](self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
    self.lda_row_groups = FUSED.groups(self.token_lora_indices)


def activate_adapter(self, lora_id):
    try:
        return ORIGINAL["activate_adapter"](self, lora_id)
    finally:
        FUSED.slots_written()


ORIGINAL: dict[str, object] = {}
"""vLLM's methods the fused op replaces, kept for what it hands back to them."""


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
    Target(_PUNICA, "PunicaWrapperCPU.add_lora_linear", ("self", "y", "x", "lora_a_stacked", "lora_b_stacked",
                                                         "scale", "output_slices", "buffer", "kwargs")),
    Target(_PUNICA, "PunicaWrapperCPU.update_metadata", ("self", "mapping", "lora_index_to_id", "max_loras",
                                                         "vocab_size", "kwargs")),
    Target("vllm.lora.model_manager", "LoRAModelManager.activate_adapter", ("self", "lora_id")),
)
"""vLLM 0.32.0's CPU LoRA ops and wrapper methods this module replaces, as vLLM calls them."""


def _point_punica_at_grouped_ops() -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    from vllm.lora.model_manager import LoRAModelManager

    for name in _NAMES:
        setattr(punica_cpu, name, globals()[name])
    wrapper = punica_cpu.PunicaWrapperCPU
    if "add_lora_linear" not in ORIGINAL:  # the plugin may run twice in a process
        ORIGINAL.update(add_lora_linear=wrapper.add_lora_linear, update_metadata=wrapper.update_metadata,
                        activate_adapter=LoRAModelManager.activate_adapter)
    wrapper.add_lora_linear = add_lora_linear
    wrapper.update_metadata = update_metadata
    LoRAModelManager.activate_adapter = activate_adapter


def patch_cpu_lora_ops() -> bool:
    """Point vLLM's CPU punica wrapper at the grouped ops (CPU only, through the patch guard:
    pinned vLLM, each op present with its signature); True if installed."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    return install_guarded("cpu_lora_ops", TARGETS, _point_punica_at_grouped_ops)


def grouped_ops_mismatch() -> str | None:
    """Why the grouped ops would not install in this vLLM (None: they would). Checked at start in
    the server's process; the engine's processes install them from the same vLLM."""
    return mismatch(TARGETS)
