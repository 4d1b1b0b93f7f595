"""The offline library API: `LDAModelPair` for scripts and notebooks.

Same names as the original one-request-at-a-time scripts, but a list of prompts (and of alphas)
runs as one continuous batch in a single vLLM engine that holds both models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from engine.alpha import validate_alpha
from engine.config import AlphaConfig, EngineOptions, LDAConfig, adapter_pair, engine_kwargs, prepare_process
from engine.lora import lora_requests
from engine.tokenizers import CompatibilityReport, check_pair

AFTER_ALPHA, BEFORE_ALPHA = 0.0, -1.0


@dataclass(slots=True)
class LDAResult:
    prompt: str
    completion: str
    text: str
    """The formatted prompt followed by the completion."""
    tokens_generated: int
    stopped_early: bool
    """True when generation ended on a stop condition before max_new_tokens."""
    finish_reason: str
    alpha: float
    token_ids: list[int]
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache."""
    model: str | None = None
    """The LoRA adapter that was the after model, when the pair serves adapters."""


@dataclass(slots=True)
class ModelCompletion:
    model_id: str
    completion: str
    text: str
    tokens_generated: int
    stopped_early: bool


@dataclass(slots=True)
class GenerateResult:
    """Both models' completions of one prompt (the after model, then the before model)."""

    prompt: str
    after: ModelCompletion
    before: ModelCompletion


def format_prompt(tokenizer, prompt: str, apply_chat_template: bool = True, system_prompt: str | None = None) -> str:
    """The prompt as the after model expects it: its chat template when asked and available."""
    if not apply_chat_template or not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _engine_options(options: dict) -> EngineOptions:
    known = {f.name for f in fields(EngineOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown engine option(s) {unknown}; accepted: {sorted(known)}")
    return EngineOptions(**options)


def _as_list(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} prompts")
        return list(value)
    return [value] * n


class LDAModelPair:
    """Both models of a pair in one vLLM engine.

    `engine_options` are `EngineOptions` fields (vLLM's names): device, dtype, max_model_len,
    max_num_seqs, max_num_batched_tokens, enable_prefix_caching, kv_cache_memory_gb,
    gpu_memory_utilization, tensor_parallel_size, enforce_eager, seed.

    `model_after_id` may be a PEFT LoRA adapter; `model_before_id` then defaults to its base.
    `adapters` adds more adapters on the same base as (name, path) pairs; `generate_lda(model=...)`
    picks one per prompt (default: the first).
    """

    def __init__(
        self,
        model_after_id: str | None,
        model_before_id: str | None = None,
        *,
        adapters: Sequence[tuple[str, str]] = (),
        max_lora_rank: int | None = None,
        default_alpha: float = 1.0,
        max_alpha: float = 100.0,
        strict_tokenizers: bool = False,
        **engine_options,
    ) -> None:
        self.config = LDAConfig(
            adapter_pair(model_after_id, model_before_id, list(adapters), max_lora_rank),
            AlphaConfig(default_alpha, max_alpha),
            _engine_options(engine_options),
        )
        pair = self.config.pair
        self._lora = lora_requests(pair.adapters)
        # Before the engine starts: a mismatch found after a minute of loading wastes that minute.
        self._compatibility = check_pair(pair.after, pair.before, strict=strict_tokenizers)
        prepare_process(self.config)
        from vllm import LLM

        self.llm = LLM(**engine_kwargs(self.config))
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def __enter__(self) -> LDAModelPair:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model_after_id(self) -> str:
        """The after model: its checkpoint, or the default adapter's folder."""
        pair = self.config.pair
        return pair.adapters[0].path if pair.adapters else pair.after

    @property
    def adapter_names(self) -> list[str]:
        return list(self._lora)

    def _lora_requests(self, model, n: int) -> list:
        """One LoRARequest per prompt: every row carries an adapter (see engine/lora.py)."""
        if not self._lora:
            if model is not None:
                raise ValueError("model= picks a LoRA adapter, but this pair serves none")
            return [None] * n
        names = _as_list(model if model is not None else self.adapter_names[0], n, "model")
        unknown = sorted({m for m in names if m not in self._lora})
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; this pair serves {self.adapter_names}")
        return [self._lora[m] for m in names]

    @property
    def model_before_id(self) -> str:
        return self.config.pair.before

    def tokenizer_compatibility(self) -> CompatibilityReport:
        return self._compatibility

    def format_prompt(self, prompt: str, apply_chat_template: bool = True, system_prompt: str | None = None) -> str:
        return format_prompt(self.tokenizer, prompt, apply_chat_template, system_prompt)

    def generate_lda(
        self,
        prompt: str | Sequence[str],
        alpha: float | Sequence[float] | None = None,
        max_new_tokens: int = 80,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | None = None,
        apply_chat_template: bool = True,
        system_prompt: str | None = None,
        ignore_eos: bool = False,
        model: str | Sequence[str] | None = None,
    ) -> LDAResult | list[LDAResult]:
        """Sample with LDA. A list of prompts returns a list of results, decoded as one batch.

        `model` names the LoRA adapter (one, or one per prompt) when the pair serves adapters.

        `alpha` may be one value or one per prompt (default: the engine's default alpha).
        `seed` makes sampling reproducible; prompt i of a list uses seed + i, so repeated prompts
        give different samples. temperature 0 is greedy.
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        alphas = _as_list(self.config.alpha.default_alpha if alpha is None else alpha, len(prompts), "alpha")
        alphas = [validate_alpha(a, self.config.alpha.max_alpha) for a in alphas]
        loras = self._lora_requests(model, len(prompts))
        results = self._run(
            prompts, alphas, max_new_tokens, temperature, top_p, top_k, seed, stop,
            apply_chat_template, system_prompt, ignore_eos, loras,
        )
        return results[0] if single else results

    def generate(self, prompt: str, **sampling) -> GenerateResult:
        """Both models' completions of `prompt` (alpha 0 and alpha -1), in one batch."""
        after, before = self.generate_lda([prompt, prompt], alpha=[AFTER_ALPHA, BEFORE_ALPHA], **sampling)
        as_completion = lambda r, model_id: ModelCompletion(  # noqa: E731
            model_id, r.completion, r.text, r.tokens_generated, r.stopped_early
        )
        return GenerateResult(prompt, as_completion(after, self.model_after_id), as_completion(before, self.model_before_id))

    def _run(self, prompts, alphas, max_new_tokens, temperature, top_p, top_k, seed, stop,
             apply_chat_template, system_prompt, ignore_eos, loras) -> list[LDAResult]:
        from vllm import SamplingParams

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1; got {max_new_tokens!r}")
        formatted = [self.format_prompt(p, apply_chat_template, system_prompt) for p in prompts]
        params = [
            SamplingParams(
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=None if seed is None else seed + i,
                stop=stop,
                ignore_eos=ignore_eos,
                extra_args={"alpha": a},
            )
            for i, a in enumerate(alphas)
        ]
        outputs = self.llm.generate(formatted, params, use_tqdm=len(prompts) > 1, lora_request=loras)
        results = []
        for prompt, text, alpha, out, lora in zip(prompts, formatted, alphas, outputs, loras):
            completion = out.outputs[0]
            results.append(
                LDAResult(
                    prompt=prompt,
                    completion=completion.text,
                    text=text + completion.text,
                    tokens_generated=len(completion.token_ids),
                    stopped_early=completion.finish_reason == "stop",
                    finish_reason=completion.finish_reason or "length",
                    alpha=alpha,
                    token_ids=list(completion.token_ids),
                    cached_tokens=out.num_cached_tokens or 0,
                    model=lora.lora_name if lora is not None else None,
                )
            )
        return results
