"""The original project's endpoints, same request and response fields, served by the one engine.

/generate_lda samples with LDA; /generate returns both models' completions (alpha 0 and alpha -1,
decoded side by side in the same batch); /tokenizer_compatibility returns the pair's report.
"""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field, model_validator
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind
from vllm.entrypoints.serve.utils.api_utils import with_cancellation
from vllm.exceptions import VLLMValidationError

from api import metrics
from engine.alpha import AlphaError, validate_alpha
from engine.library import format_prompt

router = APIRouter()


class GenerateRequest(BaseModel):
    prompt: str = Field(..., min_length=1, description="The user message (formatted as chat unless disabled)")
    max_new_tokens: int = Field(80, ge=1, le=4096)
    do_sample: bool = Field(True, description="False decodes greedily")
    temperature: float = Field(0.8, ge=0.0, le=10.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="Makes sampling reproducible")
    apply_chat_template: bool = True
    system_prompt: str | None = None
    model: str | None = Field(None, description="The LoRA adapter to run as the after model (default: the first)")


class LDAGenerateRequest(GenerateRequest):
    alpha: float | None = Field(None, description="Amplification; default: the server's default alpha")

    @model_validator(mode="before")
    @classmethod
    def _alpha_is_a_number(cls, data):
        # pydantic would coerce "2" to 2.0; an alpha must be a JSON number.
        if isinstance(data, dict) and isinstance(data.get("alpha"), (str, bool)):
            raise ValueError(f"alpha must be a number; got {data['alpha']!r}")
        return data


class ModelResponse(BaseModel):
    model_id: str
    completion: str
    text: str


class GenerateResponse(BaseModel):
    prompt: str
    model_1: ModelResponse
    model_2: ModelResponse


class LDAGenerateResponse(BaseModel):
    prompt: str
    formatted_prompt: str
    completion: str
    text: str
    alpha: float
    model_after: str
    model_before: str
    tokens_generated: int
    stopped_early: bool
    finish_reason: str
    token_ids: list[int]
    model: str | None = None
    """The LoRA adapter that was the after model, when the server serves adapters."""


def _format(tokenizer, req: GenerateRequest) -> str:
    return format_prompt(tokenizer, req.prompt, req.apply_chat_template, req.system_prompt)


def _params(req: GenerateRequest, alpha: float) -> SamplingParams:
    greedy = not req.do_sample or req.temperature == 0
    return SamplingParams(
        max_tokens=req.max_new_tokens,
        temperature=0.0 if greedy else req.temperature,
        top_p=1.0 if greedy else req.top_p,
        top_k=req.top_k,
        seed=req.seed,
        extra_args={"alpha": alpha},
        # One output at the end, fully detokenized (no partial UTF-8 held back), as the
        # OpenAI endpoints do for non-streaming requests.
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def _adapter(request: Request, model: str | None):
    """The adapter's name and LoRARequest a request runs (None, None without adapters): the same
    LoRARequest vLLM's OpenAI server made for that name, so both share loaded weights and cache."""
    routing = request.app.state.lda.adapters
    if routing is None:
        if model is not None:
            raise HTTPException(status_code=404, detail=f"model {model!r}: this server serves no LoRA adapters")
        return None, None
    try:
        name = routing.resolve(model)
    except LookupError as error:
        raise HTTPException(status_code=404, detail=str(error)) from error
    return name, request.app.state.openai_serving_models.lora_requests[name]


def _after_id(info, name: str | None) -> str:
    if name is None:
        return info.config.pair.after
    return next(a.path for a in info.config.pair.adapters if a.name == name)


async def _complete(request: Request, prompt: str, params: SamplingParams, lora_request=None):
    """Run one request to completion; abort it if the client goes away."""
    engine = request.app.state.engine_client
    request_id = f"lda-{uuid.uuid4().hex}"
    final = None
    try:
        async for output in engine.generate(prompt, params, request_id, lora_request=lora_request):
            final = output
    except asyncio.CancelledError:
        await engine.abort(request_id)
        raise
    except (ValueError, VLLMValidationError) as error:  # the engine's own request validation
        raise HTTPException(status_code=400, detail=str(error)) from error
    return final.outputs[0]


def _check_length(request: Request, formatted: str, max_new_tokens: int) -> None:
    info = request.app.state.lda
    n_prompt = len(info.tokenizer(formatted).input_ids)
    if n_prompt + max_new_tokens > info.max_model_len:
        raise HTTPException(
            status_code=400,
            detail=f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context length ({info.max_model_len})",
        )


@router.post("/generate_lda", response_model=LDAGenerateResponse)
@with_cancellation
async def generate_lda(req: LDAGenerateRequest, raw_request: Request) -> LDAGenerateResponse:
    request = raw_request
    info = request.app.state.lda
    try:
        alpha = info.config.alpha.default_alpha if req.alpha is None else validate_alpha(req.alpha, info.config.alpha.max_alpha)
    except AlphaError as error:
        raise HTTPException(status_code=400, detail=str(error)) from error
    adapter, lora = _adapter(request, req.model)
    formatted = _format(info.tokenizer, req)
    _check_length(request, formatted, req.max_new_tokens)
    out = await _complete(request, formatted, _params(req, alpha), lora)
    metrics.record_generation(alpha, len(out.token_ids))
    return LDAGenerateResponse(
        prompt=req.prompt,
        formatted_prompt=formatted,
        completion=out.text,
        text=formatted + out.text,
        alpha=alpha,
        model_after=_after_id(info, adapter),
        model_before=info.config.pair.before,
        tokens_generated=len(out.token_ids),
        stopped_early=out.finish_reason == "stop",
        finish_reason=out.finish_reason or "length",
        token_ids=list(out.token_ids),
        model=adapter,
    )


@router.post("/generate", response_model=GenerateResponse)
@with_cancellation
async def generate(req: GenerateRequest, raw_request: Request) -> GenerateResponse:
    request = raw_request
    info = request.app.state.lda
    adapter, lora = _adapter(request, req.model)
    formatted = _format(info.tokenizer, req)
    _check_length(request, formatted, req.max_new_tokens)
    after, before = await asyncio.gather(
        _complete(request, formatted, _params(req, 0.0), lora), _complete(request, formatted, _params(req, -1.0), lora)
    )
    metrics.record_generation(0.0, len(after.token_ids))
    metrics.record_generation(-1.0, len(before.token_ids))
    return GenerateResponse(
        prompt=req.prompt,
        model_1=ModelResponse(model_id=_after_id(info, adapter), completion=after.text, text=formatted + after.text),
        model_2=ModelResponse(model_id=info.config.pair.before, completion=before.text, text=formatted + before.text),
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
