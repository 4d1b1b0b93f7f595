"""One pass over both stacks of a shared-base pair: the attention split and the conditions (issue 30).

When the before stack is the after stack's base (an adapter pair, `engine/lora.py`), both stacks
run the same weights on the same tokens at the same positions; they differ only in their KV
caches and in the LoRA deltas of the after stack. So the pair model can run the after stack once
over 2N rows, the after rows then the before rows, reading each base weight once per step:

- each attention layer of the after stack is split (`SplitAttention`): its first N rows go
  through the after stack's own attention layer (the after KV cache), the other N through the
  before stack's twin layer (the before KV cache). Both layers read the step's attention
  metadata for N tokens, as in two passes: both caches are paged with one block table, so the
  scheduler, chunked prefill and prefix caching are unchanged;
- LoRA applies to the first N rows only: the fused CPU op (`engine/compat/lora_cpu_ops.py`)
  limits its adapter rows to them (`FUSED.adapter_rows`); the before rows are rows without an
  adapter, as they are in two passes.

The split replaces the `forward` of each after-stack `Attention` instance (not the class), checked
against vLLM 0.32's signature by the patch guard. One pass is used only where all of it holds
(`blockers`): shared base weights, vLLM's `Attention` in every layer, no LoRA on the embedding
and no fully sharded LoRA (those call other punica ops), and on a LoRA engine the fused CPU op
installed (on a GPU the punica kernels would need the token index extended to 2N rows: not done).
Otherwise the pair runs its two passes and one log line says why.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn

from engine.compat.patch_guard import Target, mismatch

logger = logging.getLogger("lda.shared_pass")

_ATTENTION = "vllm.model_executor.layers.attention.attention"
TARGETS = (
    Target(_ATTENTION, "Attention.forward", ("self", "query", "key", "value", "output_shape", "output_dtype")),
)
"""vLLM 0.32.0's attention layer, whose instances' forward the split wraps."""


class SplitAttention:
    """The forward of one after-stack attention layer in a one-pass step: rows [0, n) through the
    after layer, rows [n, 2n) through the before stack's twin. Outside a one-pass step (`rows`
    None), the after layer alone, as vLLM built it."""

    def __init__(self, state: SharedPass, after_forward, before: nn.Module) -> None:
        self.state, self.after_forward, self.before = state, after_forward, before

    def __call__(self, query, key, value, output_shape=None, output_dtype=None):
        n = self.state.rows
        if n is None:
            return self.after_forward(query, key, value, output_shape, output_dtype)
        half = None if output_shape is None else torch.Size((n, *output_shape[1:]))
        after = self.after_forward(query[:n], key[:n], value[:n], half, output_dtype)
        before = self.before(query[n:], key[n:], value[n:], half, output_dtype)
        return torch.cat([after, before])


class SharedPass:
    """The pair's one-pass state: how many after rows the current step has (None: not in one)."""

    def __init__(self) -> None:
        self.rows: int | None = None
        self.enabled = True
        """Off: two passes on the same engine (`set_enabled`), to compare the two modes."""
        self.steps = 0
        """Forward passes run as one pass (tests read it with `steps_run`)."""

    @contextmanager
    def step(self, n: int):
        from engine.compat.lora_cpu_ops import FUSED

        self.rows, FUSED.adapter_rows = n, n
        self.steps += 1
        try:
            yield
        finally:
            self.rows, FUSED.adapter_rows = None, None


def attention_twins(after: nn.Module, before: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(after layer, before layer) for every attention layer, matched by name within the stacks."""
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase

    theirs = {n: m for n, m in before.named_modules() if isinstance(m, AttentionLayerBase)}
    ours = [(n, m) for n, m in after.named_modules() if isinstance(m, AttentionLayerBase)]
    if len(ours) != len(theirs) or any(n not in theirs for n, _ in ours):
        return []
    return [(m, theirs[n]) for n, m in ours]


def blockers(model: nn.Module, shared: bool, lora_manager) -> list[str]:
    """Why this pair cannot run in one pass here (empty: it can)."""
    from vllm.model_executor.layers.attention.attention import Attention

    why = []
    if not shared:
        why.append("the stacks do not share their base weights")
    if (reason := mismatch(TARGETS)) is not None:
        why.append(reason)
    twins = attention_twins(model.after, model.before)
    if not twins or not all(type(a) is Attention and type(b) is Attention for a, b in twins):
        why.append("not every layer's attention is vLLM's Attention, matched between the stacks")
    if lora_manager is not None:
        try:
            why += _lora_blockers(model, lora_manager)
        except (ImportError, AttributeError) as error:  # never take the engine down for the check
            why.append(f"cannot check the LoRA layers ({error})")
    return why


def _lora_blockers(model: nn.Module, lora_manager) -> list[str]:
    from vllm.lora.layers import LogitsProcessorWithLoRA
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from engine.compat import lora_cpu_ops

    why = []
    if PunicaWrapperCPU.add_lora_linear is not lora_cpu_ops.add_lora_linear:
        why.append("the fused CPU LoRA op is not installed (on a GPU, one pass with LoRA is not built yet)")
    if getattr(getattr(lora_manager, "lora_config", None), "fully_sharded_loras", False):
        why.append("fully sharded LoRA is on")
    for name, module in model.after.named_modules():
        wrapped = getattr(module, "base_layer", None) is not None
        if wrapped and not isinstance(module, (BaseLinearLayerWithLoRA, LogitsProcessorWithLoRA)):
            why.append(f"after.{name} has a LoRA layer other than a linear or the head ({type(module).__name__})")
        elif wrapped and "Sharded" in type(module).__name__:
            why.append(f"after.{name} has a sharded LoRA layer")
    return why


def install(model: nn.Module) -> SharedPass:
    """Split every after-stack attention layer (instances only); the state that drives them."""
    state = SharedPass()
    for after, before in attention_twins(model.after, model.before):
        after.forward = SplitAttention(state, after.forward, before)
    return state


def set_enabled(model: nn.Module, on: bool) -> bool:
    """Turn one pass on or off in a running pair (`LLM.apply_model(partial(set_enabled, on=...))`);
    True if the pair has one pass installed at all."""
    state = getattr(model, "shared_pass", None)
    if state is not None:
        state.enabled = on
    return state is not None


def steps_run(model: nn.Module) -> int | None:
    """How many forward passes ran as one pass (None: the pair has none installed)."""
    state = getattr(model, "shared_pass", None)
    return None if state is None else state.steps
