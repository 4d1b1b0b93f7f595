"""POST /v1/lda/score: teacher-forced attribution of a given continuation (engine/scoring.py).

The prompt is chat `messages` (formatted with the after model's chat template) or raw text
`prompt`; the continuation is scored token by token, in one engine request (one pair prefill,
engine/one_pass.py) or, where that patch could not install, three that go out together.
`promoted_k` adds, per position, the top-k tokens of the whole shared vocabulary by
`logp_after - logp_before` (one pass only). Concurrent calls are batched by the engine like any
other requests. Errors use the OpenAI error format of the other /v1 routes.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from jinja2 import TemplateError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from vllm.exceptions import VLLMValidationError

from api.adapter_routing import after_adapter
from engine.alpha import AlphaError, validate_alpha
from engine.prompts import PromptFormat, prompt_token_ids, render_prompt
from engine.one_pass import MAX_PROMOTED_K
from engine.scoring import ScoreInput, ScoringError, assemble_outputs, engine_requests, result_dict

router = APIRouter()


class ChatMessage(BaseModel):
    role: str
    content: str


class ScoreRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1, description="A chat prompt")
    prompt: str | None = Field(None, min_length=1, description="A raw-text prompt (no template)")
    continuation: str | list[int] = Field(..., description="Text or token ids to score after the prompt")
    alpha: float | None = Field(None, description="alpha of logp_amplified; default: the server's")
    promoted_k: int = Field(
        0, description=f"per position, the top-k tokens by logp_after - logp_before (0 to {MAX_PROMOTED_K})"
    )
    prompt_format: Literal["chat", "alpaca", "raw"] | None = Field(
        None, description="chat: `prompt` is one user message; alpaca: the Alpaca template; raw (default for `prompt`): as is"
    )


def _error(message: str, param: str | None, status: int = 400) -> JSONResponse:
    body = {"error": {"message": message, "type": "BadRequestError", "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def prompt_ids(tokenizer, req: ScoreRequest) -> list[int]:
    if (req.messages is None) == (req.prompt is None):
        raise ScoringError("messages: give exactly one of `messages` (chat) or `prompt` (raw text)")
    if req.messages is not None:
        messages = [m.model_dump() for m in req.messages]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except (ValueError, TemplateError) as error:  # no template, or one that refuses these roles
            raise ScoringError(f"messages: the chat template cannot format them: {error}") from None
        # The OpenAI chat route tokenizes the templated text without adding special tokens again.
        return tokenizer.encode(text, add_special_tokens=False)
    # The original routes' formats, tokenized as they tokenize them (engine/prompts.py).
    formatted = render_prompt(tokenizer, req.prompt, PromptFormat.parse(req.prompt_format or "raw"))
    return prompt_token_ids(tokenizer, formatted)


def _continuation_ids(tokenizer, continuation: str | list[int]) -> list[int]:
    if isinstance(continuation, str):
        return tokenizer.encode(continuation, add_special_tokens=False)
    return list(continuation)


def _texts(req: ScoreRequest) -> dict[str, str | None]:
    texts = {"prompt": req.prompt, "continuation": req.continuation if isinstance(req.continuation, str) else None}
    texts.update({f"messages[{i}].content": m.content for i, m in enumerate(req.messages or [])})
    return texts


def build_input(info, req: ScoreRequest) -> ScoreInput:
    """Validate and tokenize one request; ScoringError/AlphaError name the field."""
    alpha = info.config.alpha.default_alpha if req.alpha is None else validate_alpha(req.alpha, info.config.alpha.max_alpha)
    item = ScoreInput(
        prompt_ids(info.tokenizer, req), _continuation_ids(info.tokenizer, req.continuation), alpha, req.promoted_k
    )
    vocab = len(info.tokenizer)
    if any(not 0 <= t < vocab for t in item.continuation_token_ids):
        raise ScoringError(f"continuation: token ids must be in [0, {vocab})")
    total = len(item.prompt_token_ids) + len(item.continuation_token_ids)
    if total + 1 > info.max_model_len:
        raise ScoringError(f"continuation: prompt + continuation ({total} tokens) exceed the context length ({info.max_model_len})")
    return item


@functools.cache
def one_pass() -> bool:
    """Whether the engine scores in one pass (its patch's targets match; asked once)."""
    from engine.compat.vllm_patches import one_pass_available

    return one_pass_available()


async def _run(engine, ids: list[int], params, lora_request=None):
    request_id = f"lda-score-{uuid.uuid4().hex}"
    final = None
    try:
        async for output in engine.generate({"prompt_token_ids": ids}, params, request_id, lora_request=lora_request):
            final = output
    except asyncio.CancelledError:
        await engine.abort(request_id)
        raise
    return final


async def attribution(engine, tokenizer, item: ScoreInput, lora_request=None) -> dict:
    """`score_item` for text just generated: when the engine refuses the scoring pass (a
    generation that filled the context leaves no room for it), that choice's scores are an
    `{"error": ...}` object rather than the whole response failing after the generation ran."""
    try:
        return await score_item(engine, tokenizer, item, lora_request)
    except (ValueError, VLLMValidationError) as error:
        return {"error": f"lda_token_scores: not computed: {error}"}


async def score_item(engine, tokenizer, item: ScoreInput, lora_request=None) -> dict:
    """Score one validated item on the engine (under `lora_request`, the adapter that is the after
    model, if the server serves adapters); the dict of engine.scoring.result_dict."""
    requests = engine_requests(item, one_pass())
    outputs = await asyncio.gather(*(_run(engine, ids, params, lora_request) for ids, params in requests))
    return result_dict(assemble_outputs(item, outputs, lambda t: tokenizer.decode([t]), one_pass()))


@router.post("/v1/lda/score")
async def score(raw_request: Request):
    try:
        req = ScoreRequest.model_validate(await raw_request.json())
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:
            return _error(f"the body must be a JSON object: {first['msg']}", None)
        return _error(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", str(first["loc"][0]))
    except ValueError:
        return _error("the body must be a JSON object", None)
    info = raw_request.app.state.lda
    if too_long := info.limits.too_many_chars(_texts(req)):
        field, message = too_long
        return _error(message, field)
    try:
        # Templates and tokenizers are CPU work: off the event loop, as the original routes do.
        item = await asyncio.get_running_loop().run_in_executor(info.tokenize_pool, build_input, info, req)
    except AlphaError as error:
        return _error(str(error), "alpha")
    except ScoringError as error:
        return _error(str(error), str(error).split(":", 1)[0])
    try:
        _, lora = after_adapter(raw_request.app, req.model)
    except LookupError as error:
        return _error(str(error), "model", 404)
    try:
        body = await score_item(raw_request.app.state.engine_client, info.tokenizer, item, lora)
    except (ValueError, VLLMValidationError) as error:
        return _error(str(error), None)
    except RuntimeError as error:  # the engine did not pack one-pass scores: the server's fault, said so
        return _error(str(error), None, 503)
    return {"object": "lda.score", "model": req.model, **body}

