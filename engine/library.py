"""The offline library API: `LDAModelPair` for scripts and notebooks.

Same names as the original one-request-at-a-time scripts, but a list of prompts (and of alphas)
runs as one continuous batch in a single vLLM engine that holds both models.

vLLM spawns its engine processes, and a spawned process re-runs the script that started it. A
script that builds an `LDAModelPair` at module level would build it again in the engine process
(Python's multiprocessing then fails with a bootstrapping error that names neither this library
nor the fix). `LDAModelPair` detects that case and says what to add: `if __name__ == "__main__":`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from engine.alpha import validate_alpha
from engine.config import AlphaConfig, EngineOptions, LDAConfig, adapter_pair, engine_kwargs, prepare_process
from engine.lora import lora_requests
from engine.prompts import FormattedPrompt, PromptFormat, prompt_token_ids, render_prompt
from engine.tokenizers import CompatibilityReport, check_pair
from engine.weights import LOAD_METHOD, PairWeights, WeightsLoad, after_rank_restore, combined, split_ranks

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


def formatted_prompt(
    tokenizer,
    prompt: str,
    apply_chat_template: bool = True,
    system_prompt: str | None = None,
    prompt_format: PromptFormat | str = PromptFormat.CHAT,
) -> FormattedPrompt:
    """The prompt in `prompt_format`, or as it is when `apply_chat_template` is False."""
    fmt = PromptFormat.parse(prompt_format) if apply_chat_template else PromptFormat.RAW
    return render_prompt(tokenizer, prompt, fmt, system_prompt)


def format_prompt(
    tokenizer,
    prompt: str,
    apply_chat_template: bool = True,
    system_prompt: str | None = None,
    prompt_format: PromptFormat | str = PromptFormat.CHAT,
) -> str:
    """The prompt's text as the after model expects it (see `engine.prompts`)."""
    return formatted_prompt(tokenizer, prompt, apply_chat_template, system_prompt, prompt_format).text


MAIN_GUARD_HELP = (
    "LDAModelPair was created while vLLM's engine process was starting. vLLM spawns its engine, "
    "and a spawned process re-runs your script; put the code that creates LDAModelPair under "
    "`if __name__ == \"__main__\":` (see the library example in docs/serving/library.md)."
)


def _in_spawned_bootstrap() -> bool:
    """True while a spawned child re-runs the parent's script (the test multiprocessing's own
    `_check_not_importing_main` makes, before it raises its bootstrapping error)."""
    import multiprocessing

    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _main_script_unguarded() -> bool:
    """True when the main module is a script file with no `__name__ == "__main__"` test."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not str(path).endswith(".py"):
        return False
    try:
        source = Path(path).read_text(errors="replace")
    except OSError:
        return False
    return "__main__" not in source


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
    max_num_seqs, max_num_batched_tokens, enable_prefix_caching, block_size, kv_cache_memory_gb,
    gpu_memory_utilization, tensor_parallel_size, enforce_eager, seed.

    `model_after_id` may be a PEFT LoRA adapter; `model_before_id` then defaults to its base.
    `adapters` adds more adapters on the same base as (name, path) pairs; `generate_lda(model=...)`
    picks one per prompt (default: the first). `one_pass` runs an adapter pair's two stacks as one
    pass over their shared base weights (`PairConfig.one_pass`).
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
        prompt_format: PromptFormat | str = PromptFormat.CHAT,
        one_pass: bool = False,
        **engine_options,
    ) -> None:
        if _in_spawned_bootstrap():
            # Exit quietly: this process is vLLM's engine, not the user's; the parent reports.
            raise SystemExit(MAIN_GUARD_HELP)
        self.prompt_format = PromptFormat.parse(prompt_format)
        pair = adapter_pair(model_after_id, model_before_id, list(adapters), max_lora_rank)
        self.config = LDAConfig(
            replace(pair, one_pass=True) if one_pass else pair,
            AlphaConfig(default_alpha, max_alpha),
            _engine_options(engine_options),
        )
        pair = self.config.pair
        self._lora = lora_requests(pair.adapters)
        # Before the engine starts: a mismatch found after a minute of loading wastes that minute.
        self._compatibility = check_pair(pair.after, pair.before, strict=strict_tokenizers)
        prepare_process(self.config)
        from vllm import LLM

        try:
            self.llm = LLM(**engine_kwargs(self.config))
        except Exception as error:
            if _main_script_unguarded():
                raise RuntimeError(MAIN_GUARD_HELP) from error
            raise
        self.tokenizer = self.llm.get_tokenizer()
        self.weights = PairWeights(pair)

    def load_weights(self, stack: str, path: str, version: str | None = None) -> WeightsLoad:
        """Load the full-weight checkpoint folder `path` into one stack ("after" or "before"), in place.

        The folder is checked against the stack's current checkpoint first (config, every tensor and
        shape, every file readable to its end): a CheckpointError names the field and both values,
        and the old weights stay. `version` labels the new weights (default: the folder's name); the
        `weights_versions` property lists both stacks'. A failure half way reloads the previous
        weights and raises WeightsLoadError (see engine/weights.py). The prefix cache is reset.
        """
        plan = self.weights.prepare(stack, path, version)
        try:
            answers = self.llm.collective_rpc(LOAD_METHOD, args=(plan.stack, str(plan.checkpoint.path), str(plan.previous)))
            answer = combined(answers)
            if split_ranks(answers):
                back = self.llm.collective_rpc(LOAD_METHOD, args=(plan.stack, str(plan.previous), str(plan.previous)))
                answer = after_rank_restore(answers, back)
        finally:
            self.llm.reset_prefix_cache()
        return self.weights.finish(plan, answer)

    @property
    def weights_versions(self) -> dict[str, str]:
        """The weight version each stack serves: the startup folders' names until a load."""
        return self.weights.versions()

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

    def format_prompt(
        self,
        prompt: str,
        apply_chat_template: bool = True,
        system_prompt: str | None = None,
        prompt_format: PromptFormat | str | None = None,
    ) -> str:
        """The prompt's text as the engine sees it (default format: the pair's `prompt_format`)."""
        return self._formatted(prompt, apply_chat_template, system_prompt, prompt_format).text

    def _formatted(self, prompt, apply_chat_template, system_prompt, prompt_format) -> FormattedPrompt:
        fmt = self.prompt_format if prompt_format is None else prompt_format
        return formatted_prompt(self.tokenizer, prompt, apply_chat_template, system_prompt, fmt)

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
        prompt_format: PromptFormat | str | None = None,
        model: str | Sequence[str] | None = None,
    ) -> LDAResult | list[LDAResult]:
        """Sample with LDA. A list of prompts returns a list of results, decoded as one batch.

        `model` names the LoRA adapter (one, or one per prompt) when the pair serves adapters.

        `alpha` may be one value or one per prompt (default: the engine's default alpha).
        `seed` makes sampling reproducible; prompt i of a list uses seed + i, so repeated prompts
        give different samples. temperature 0 is greedy. `prompt_format` (chat, alpaca or raw;
        default: the pair's) applies when `apply_chat_template` is True; False sends the text as it is.
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
            apply_chat_template, system_prompt, ignore_eos, prompt_format, loras,
        )
        return results[0] if single else results

    def score(
        self,
        prompt: str | Sequence[str],
        continuation: str | Sequence[int] | Sequence[str | Sequence[int]],
        alpha: float | Sequence[float] | None = None,
        apply_chat_template: bool = True,
        system_prompt: str | None = None,
        prompt_format: PromptFormat | str | None = None,
        model: str | Sequence[str] | None = None,
        promoted_k: int = 0,
        one_pass: bool | None = None,
    ):
        """Teacher-forced attribution of `continuation` after `prompt` (see engine/scoring.py).

        Each continuation token gets logp_after, logp_before and logp_amplified (at `alpha`,
        default: the engine's); the result's summary holds the sum, mean and max of
        logp_after - logp_before. A continuation is text or token ids. Lists of prompts and
        continuations (same length) are scored as one batch and return a list. The prompt is
        formatted and tokenized as `generate_lda` does; `model` names the adapter, as there.
        `promoted_k` adds each position's top promoted tokens (engine/one_pass.py); `one_pass`
        False forces the three-request path (default: one pass where its patch installed).
        """
        from engine.scoring import ScoreInput

        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        continuations = [continuation] if single else list(continuation)
        if len(continuations) != len(prompts):
            raise ValueError(f"continuation has {len(continuations)} values for {len(prompts)} prompts")
        alphas = _as_list(self.config.alpha.default_alpha if alpha is None else alpha, len(prompts), "alpha")
        items = [
            ScoreInput(
                prompt_token_ids(self.tokenizer, self._formatted(p, apply_chat_template, system_prompt, prompt_format)),
                self._continuation_ids(c),
                validate_alpha(a, self.config.alpha.max_alpha),
                promoted_k,
            )
            for p, c, a in zip(prompts, continuations, alphas)
        ]
        results = self._score(items, self._lora_requests(model, len(items)), one_pass)
        return results[0] if single else results

    def _continuation_ids(self, continuation) -> list[int]:
        if isinstance(continuation, str):
            return self.tokenizer.encode(continuation, add_special_tokens=False)
        return [int(t) for t in continuation]

    def _score(self, items, loras: list, one_pass: bool | None = None) -> list:
        from vllm.inputs import TokensPrompt

        from engine.scoring import assemble_outputs, engine_requests
        from engine.compat.vllm_patches import one_pass_available

        self.weights.check_healthy()
        one_pass = one_pass_available() if one_pass is None else one_pass
        per_item = [engine_requests(item, one_pass) for item in items]
        requests = [r for rs in per_item for r in rs]
        # Each item's requests (one, or alpha 0, -1 and its own) run under that item's adapter.
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids, _ in requests],
            [params for _, params in requests],
            use_tqdm=False,
            lora_request=[lora for lora, rs in zip(loras, per_item) for _ in rs],
        )
        decode = lambda t: self.tokenizer.decode([t])  # noqa: E731
        width = len(per_item[0]) if per_item else 0
        return [
            assemble_outputs(item, outputs[width * i : width * (i + 1)], decode, one_pass)
            for i, item in enumerate(items)
        ]

    def generate(self, prompt: str, **sampling) -> GenerateResult:
        """Both models' completions of `prompt` (alpha 0 and alpha -1), in one batch.

        alpha -1 is the before model on the shared vocabulary: ids only the after model has (an
        added chat EOS) keep the after model's logits there."""
        after, before = self.generate_lda([prompt, prompt], alpha=[AFTER_ALPHA, BEFORE_ALPHA], **sampling)
        as_completion = lambda r, model_id: ModelCompletion(  # noqa: E731
            model_id, r.completion, r.text, r.tokens_generated, r.stopped_early
        )
        return GenerateResult(prompt, as_completion(after, self.model_after_id), as_completion(before, self.model_before_id))

    def _run(self, prompts, alphas, max_new_tokens, temperature, top_p, top_k, seed, stop,
             apply_chat_template, system_prompt, ignore_eos, prompt_format, loras) -> list[LDAResult]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.weights.check_healthy()
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1; got {max_new_tokens!r}")
        formatted = [self._formatted(p, apply_chat_template, system_prompt, prompt_format) for p in prompts]
        # Our own token ids, so chat-rendered text gets no second BOS (see engine.prompts).
        inputs = [TokensPrompt(prompt_token_ids=prompt_token_ids(self.tokenizer, f)) for f in formatted]
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
        outputs = self.llm.generate(inputs, params, use_tqdm=len(prompts) > 1, lora_request=loras)
        results = []
        for prompt, fmt, alpha, out, lora in zip(prompts, formatted, alphas, outputs, loras):
            completion = out.outputs[0]
            results.append(
                LDAResult(
                    prompt=prompt,
                    completion=completion.text,
                    text=fmt.text + completion.text,
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
