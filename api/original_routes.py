"""The original project's endpoints, same request and response fields, served by the one engine.

/generate_lda samples with LDA; /generate_lda_batch does so for a list of prompts, all sent to the
engine at once so they share the continuous batch with every other request; /generate returns both
models' completions (alpha 0 and alpha -1, decoded side by side in the same batch);
/tokenizer_compatibility returns the pair's report.

Each prompt is formatted (`engine.prompts`: chat, alpaca or raw) and tokenized here, in a worker
thread so a long prompt never stalls the event loop, and only after its length in characters has
been checked against the server's limit. The engine then gets token ids: the same ids for the same
message as /v1/chat/completions, with no second BOS in front of a chat template's own.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field, model_validator
from vllm import SamplingParams
from vllm.entrypoints.serve.utils.api_utils import with_cancellation
from vllm.exceptions import VLLMValidationError
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind

from api import metrics
from api.adapter_routing import after_adapter
from api.settings import LIMIT_ENV
from engine.alpha import AlphaError, validate_alpha
from engine.prompts import FormattedPrompt, PromptFormat, prompt_token_ids, render_prompt

router = APIRouter()


class SamplingFields(BaseModel):
    do_sample: bool = Field(True, description="False decodes greedily")
    temperature: float = Field(0.8, ge=0.0, le=10.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    # Bounded: an integer past 64 bits cannot reach the engine core (a 500 found by fuzzing), and
    # any top_k at or above the vocabulary size means all of it.
    top_k: int = Field(0, ge=0, le=2**31 - 1, description="0 disables top-k; at or above the vocabulary size, all of it")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="Makes sampling reproducible")
    apply_chat_template: bool = Field(True, description="False sends the prompt as it is, whatever the format")
    system_prompt: str | None = None
    prompt_format: PromptFormat | None = Field(None, description="chat, alpaca or raw; default: the server's")
    model: str | None = Field(None, description="The LoRA adapter to run as the after model (default: the first)")


class AlphaField(BaseModel):
    alpha: float | None = Field(None, description="Amplification; default: the server's default alpha")
    lda_token_scores: bool = Field(False, description="Add per-token logp_after/logp_before attribution")

    @model_validator(mode="before")
    @classmethod
    def _alpha_is_a_number(cls, data):
        # pydantic would coerce "2" to 2.0; an alpha must be a JSON number.
        if isinstance(data, dict) and isinstance(data.get("alpha"), (str, bool)):
            raise ValueError(f"alpha must be a number; got {data['alpha']!r}")
        return data


class GenerateRequest(SamplingFields):
    prompt: str = Field(..., min_length=1, description="The user message, formatted as `prompt_format` says")
    max_new_tokens: int = Field(80, ge=1, le=4096)


class LDAGenerateRequest(GenerateRequest, AlphaField):
    pass


class LDABatchRequest(SamplingFields, AlphaField):
    """The original project's batch request: its field names, ranges and defaults."""

    prompts: list[Annotated[str, Field(min_length=1)]] = Field(..., min_length=1)
    max_new_tokens: int = Field(80, ge=1, le=512)
    temperature: float = Field(0.8, gt=0.0, le=10.0, description="do_sample=false decodes greedily")


class ModelResponse(BaseModel):
    model_id: str
    completion: str
    text: str


class GenerateResponse(BaseModel):
    prompt: str
    model_1: ModelResponse
    model_2: ModelResponse


class Completion(BaseModel):
    prompt: str
    formatted_prompt: str
    completion: str
    text: str
    tokens_generated: int
    stopped_early: bool
    finish_reason: str
    token_ids: list[int]
    lda_token_scores: dict | None = None
    model: str | None = None
    """The LoRA adapter that was the after model, when the server serves adapters."""


class LDAGenerateResponse(Completion):
    alpha: float
    model_after: str
    model_before: str


class LDABatchResponse(BaseModel):
    results: list[Completion]
    alpha: float
    model_after: str
    model_before: str
    batch_size: int


@dataclass(frozen=True, slots=True)
class Prepared:
    """One prompt ready for the engine."""

    prompt: str
    formatted: FormattedPrompt
    token_ids: list[int]


def _bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=message)


def _alpha(info, req: AlphaField) -> float:
    try:
        return info.config.alpha.default_alpha if req.alpha is None else validate_alpha(req.alpha, info.config.alpha.max_alpha)
    except AlphaError as error:
        raise _bad_request(str(error)) from error


def bounded_new_tokens(info, req: GenerateRequest | LDABatchRequest) -> int:
    """The request's max_new_tokens within LDA_MAX_TOKENS: 400 naming the limit when it asks for
    more; the default (80) lowered to the limit when the request gives none."""
    limits = info.limits
    if limits.max_tokens is None:
        return req.max_new_tokens
    if "max_new_tokens" not in req.model_fields_set:
        return min(req.max_new_tokens, limits.max_tokens)
    if message := limits.too_many_tokens("max_new_tokens", req.max_new_tokens):
        raise _bad_request(message)
    return req.max_new_tokens


def _prepare(info, names: list[str], prompts: list[str], req: SamplingFields, max_new_tokens: int) -> list[Prepared]:
    """Format and tokenize every prompt; 400 naming the first that does not fit the context."""
    fmt = (req.prompt_format or info.prompt_format) if req.apply_chat_template else PromptFormat.RAW
    prepared = []
    for name, prompt in zip(names, prompts):
        formatted = render_prompt(info.tokenizer, prompt, fmt, req.system_prompt)
        ids = prompt_token_ids(info.tokenizer, formatted)
        if len(ids) + max_new_tokens > info.max_model_len:
            raise _bad_request(
                f"{name}: prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context length ({info.max_model_len})"
            )
        prepared.append(Prepared(prompt, formatted, ids))
    return prepared


async def prepare_off_loop(info, names, prompts, req: SamplingFields, max_new_tokens: int) -> list[Prepared]:
    texts = dict(zip(names, prompts)) | {"system_prompt": req.system_prompt}
    if too_long := info.limits.too_many_chars(texts):
        _field, message = too_long
        raise _bad_request(message)
    loop = asyncio.get_running_loop()
    # One worker thread: a fast tokenizer must not be entered by two threads at once.
    return await loop.run_in_executor(info.tokenize_pool, _prepare, info, names, prompts, req, max_new_tokens)


def _params(req: SamplingFields, max_new_tokens: int, alpha: float, seed: int | None) -> SamplingParams:
    greedy = not req.do_sample or req.temperature == 0
    return SamplingParams(
        max_tokens=max_new_tokens,
        temperature=0.0 if greedy else req.temperature,
        top_p=1.0 if greedy else req.top_p,
        top_k=req.top_k,
        seed=seed,
        extra_args={"alpha": alpha},
        # One output at the end, fully detokenized (no partial UTF-8 held back), as the
        # OpenAI endpoints do for non-streaming requests.
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def request_adapter(request: Request, model: str | None):
    """The adapter's name and LoRARequest a request runs (`after_adapter`: the rule of every
    route), a 404 in FastAPI's format for a name not served."""
    try:
        return after_adapter(request.app, model)
    except LookupError as error:
        raise HTTPException(status_code=404, detail=str(error)) from error


def _after_id(info, lora) -> str:
    """The after model's id: the adapter's path, else the after checkpoint."""
    return info.config.pair.after if lora is None else lora.lora_path


async def _complete(request: Request, prepared: Prepared, params: SamplingParams, lora_request=None):
    """Run one request to completion; abort it if the client goes away."""
    engine = request.app.state.engine_client
    request_id = f"lda-{uuid.uuid4().hex}"
    final = None
    try:
        async for output in engine.generate(
            TokensPrompt(prompt_token_ids=prepared.token_ids), params, request_id, lora_request=lora_request
        ):
            final = output
    except asyncio.CancelledError:
        await engine.abort(request_id)
        raise
    except (ValueError, VLLMValidationError) as error:  # the engine's own request validation
        raise _bad_request(str(error)) from error
    return final.outputs[0]


async def _complete_all(request: Request, prepared: list[Prepared], params: list[SamplingParams], lora_request=None):
    """All requests at once, so the engine batches them; if one fails, the others are aborted."""
    tasks = [asyncio.ensure_future(_complete(request, p, sp, lora_request)) for p, sp in zip(prepared, params)]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _completion(prepared: Prepared, out, scores: dict | None = None, adapter: str | None = None) -> Completion:
    return Completion(
        prompt=prepared.prompt,
        formatted_prompt=prepared.formatted.text,
        completion=out.text,
        text=prepared.formatted.text + out.text,
        tokens_generated=len(out.token_ids),
        stopped_early=out.finish_reason == "stop",
        finish_reason=out.finish_reason or "length",
        token_ids=list(out.token_ids),
        lda_token_scores=scores,
        model=adapter,
    )


@router.post("/generate_lda", response_model=LDAGenerateResponse)
@with_cancellation
async def generate_lda(req: LDAGenerateRequest, raw_request: Request) -> LDAGenerateResponse:
    info = raw_request.app.state.lda
    alpha = _alpha(info, req)
    adapter, lora = request_adapter(raw_request, req.model)
    max_new_tokens = bounded_new_tokens(info, req)
    [prepared] = await prepare_off_loop(info, ["prompt"], [req.prompt], req, max_new_tokens)
    out = await _complete(raw_request, prepared, _params(req, max_new_tokens, alpha, req.seed), lora)
    metrics.record_generation(alpha, len(out.token_ids))
    scores = await _token_scores(raw_request, prepared, out.token_ids, alpha, lora) if req.lda_token_scores else None
    return LDAGenerateResponse(
        **_completion(prepared, out, scores, adapter).model_dump(),
        alpha=alpha,
        model_after=_after_id(info, lora),
        model_before=info.config.pair.before,
    )


@router.post("/generate_lda_batch", response_model=LDABatchResponse)
@with_cancellation
async def generate_lda_batch(req: LDABatchRequest, raw_request: Request) -> LDABatchResponse:
    info = raw_request.app.state.lda
    limit = info.limits.max_batch_prompts
    if len(req.prompts) > limit:
        raise _bad_request(f"prompts has {len(req.prompts)} items; the limit is {LIMIT_ENV['max_batch_prompts']}={limit}")
    alpha = _alpha(info, req)
    adapter, lora = request_adapter(raw_request, req.model)
    names = [f"prompts[{i}]" for i in range(len(req.prompts))]
    max_new_tokens = bounded_new_tokens(info, req)
    prepared = await prepare_off_loop(info, names, req.prompts, req, max_new_tokens)
    # Prompt i gets seed + i, so repeated prompts give different samples (as LDAModelPair does).
    params = [_params(req, max_new_tokens, alpha, None if req.seed is None else req.seed + i) for i in range(len(prepared))]
    outs = await _complete_all(raw_request, prepared, params, lora)
    for out in outs:
        metrics.record_generation(alpha, len(out.token_ids))
    scores = [None] * len(outs)
    if req.lda_token_scores:
        scores = await asyncio.gather(
            *(_token_scores(raw_request, p, out.token_ids, alpha, lora) for p, out in zip(prepared, outs))
        )
    return LDABatchResponse(
        results=[_completion(p, out, score, adapter) for p, out, score in zip(prepared, outs, scores)],
        alpha=alpha,
        model_after=_after_id(info, lora),
        model_before=info.config.pair.before,
        batch_size=len(prepared),
    )


async def _token_scores(request: Request, prepared: Prepared, token_ids, alpha: float, lora_request=None) -> dict | None:
    """The scoring pass of api/token_scores.py for the generated tokens (None when there are none)."""
    from api.score_routes import attribution
    from engine.scoring import ScoreInput

    if not token_ids:
        return None
    item = ScoreInput(list(prepared.token_ids), list(token_ids), alpha)
    return await attribution(request.app.state.engine_client, request.app.state.lda.tokenizer, item, lora_request)


@router.post("/generate", response_model=GenerateResponse)
@with_cancellation
async def generate(req: GenerateRequest, raw_request: Request) -> GenerateResponse:
    info = raw_request.app.state.lda
    adapter, lora = request_adapter(raw_request, req.model)
    max_new_tokens = bounded_new_tokens(info, req)
    [prepared] = await prepare_off_loop(info, ["prompt"], [req.prompt], req, max_new_tokens)
    params = [_params(req, max_new_tokens, alpha, req.seed) for alpha in (0.0, -1.0)]
    after, before = await _complete_all(raw_request, [prepared, prepared], params, lora)
    metrics.record_generation(0.0, len(after.token_ids))
    metrics.record_generation(-1.0, len(before.token_ids))
    text = prepared.formatted.text
    return GenerateResponse(
        prompt=req.prompt,
        model_1=ModelResponse(model_id=_after_id(info, lora), completion=after.text, text=text + after.text),
        model_2=ModelResponse(model_id=info.config.pair.before, completion=before.text, text=text + before.text),
    )


@router.get("/tokenizer_compatibility")
async def tokenizer_compatibility(request: Request) -> dict:
    report = request.app.state.lda.compatibility
    warning = "; ".join(report.warnings) or None
    return {
        "compatible": report.compatible,
        "vocab_size_1": report.vocab_size_after,
        "vocab_size_2": report.vocab_size_before,
        "vocabs_match": report.vocabs_match,
        "warning": warning,
        **{k: v for k, v in report.to_dict().items() if k not in ("compatible", "vocabs_match")},
    }
