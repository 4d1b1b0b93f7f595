"""Prompt logprobs through an output head with LoRA: each prompt row on its request's adapter.

vLLM 0.32's LoRA head (`LogitsProcessorWithLoRA._get_logits`) adds the adapters' deltas with the
punica wrapper's `sampler_indices`: one adapter slot per *sampled* row of the step. The runner's
prompt-logprobs loop (`GPUModelRunner._get_prompt_logprobs_dict`) calls `compute_logits` on one
request's *prompt* rows instead, whose count differs. Where the step's requests ran on two or
more slots (two adapters, or an adapter and none), the op fails and the engine dies ("The shape of
the mask [2] at index 0 does not match the shape of the indexed tensor [16, 64]"), with one pass
or two; where they ran on one slot, the rows got it by chance. Scoring (engine/scoring.py) asks
for prompt logprobs, so scoring in a mixed batch with LoRA on the head (an adapter that targets
the lm_head, or runtime adapters: vLLM then wraps every layer) took the engine down.

`request_rows` makes `sampler_indices` that request's slot on each of its n prompt rows while its
logits are computed, then puts the step's indices back. The pair model calls it
(`engine/pair_model.py`) when the prompt-logprobs patch (`engine/compat/vllm_patches.py`) names
the request's batch row; the request's slot is the one vLLM gave its sampled row (one sampled row
per request: vLLM's mapping without speculative decoding). Guarded: the punica wrapper's buffers
as vLLM 0.32.0 fills them (`PunicaWrapperBase._update_base_metadata`); on a mismatch it changes
nothing (and the head fails as it did).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

from engine.compat.patch_guard import Target, mismatch

TARGETS = (
    Target(
        "vllm.lora.punica_wrapper.punica_base",
        "PunicaWrapperBase._update_base_metadata",
        ("self", "mapping", "lora_index_to_id", "max_loras", "vocab_size"),
    ),
)
"""Where vLLM 0.32.0 writes `_sampler_indices` and `indices_len[1]`, which `request_rows` rewrites."""


@functools.cache
def _matches() -> bool:
    return mismatch(TARGETS) is None


def head_wrapper(stack):
    """The punica wrapper of a stack's output head when that head has LoRA layers, else None."""
    head = getattr(stack, "logits_processor", None)
    if getattr(head, "base_layer", None) is None:
        return None
    return getattr(head, "punica_wrapper", None)


@contextmanager
def request_rows(wrapper, batch_row: int | None, rows: int):
    """While in it, the head's LoRA runs `rows` rows, all on the slot of the request at `batch_row`."""
    sampled = getattr(wrapper, "indices_len", [None, None])[1] if wrapper is not None else None
    indices = getattr(wrapper, "_sampler_indices", None)
    if (sampled is None or batch_row is None or indices is None or not 0 <= batch_row < sampled
            or rows > indices.shape[0] or not _matches()):
        yield
        return
    saved = indices[: max(rows, sampled)].clone()
    indices[:rows] = saved[batch_row]
    wrapper.indices_len[1] = rows
    try:
        yield
    finally:
        indices[: saved.shape[0]] = saved
        wrapper.indices_len[1] = sampled
