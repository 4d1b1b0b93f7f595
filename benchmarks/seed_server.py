"""The seed's design behind HTTP: `ReferencePair` with one global lock, one request at a time.

This is the baseline `lda bench` measures the engine against: both models in plain transformers,
each with its own KV cache, no batching, a second request waits for the first. It exposes just
enough of the OpenAI API for vLLM's benchmark client: `/v1/completions` (prompt, max_tokens,
temperature, top_p, seed, ignore_eos, stream with usage, alpha), `/v1/models`, `/tokenize`,
`/detokenize` and `/health`.

    python -m benchmarks.seed_server --after PATH --before PATH --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine.alpha import DEFAULT_ALPHA, AlphaError, validate_alpha
from engine.reference import ReferencePair, _sample, merge_logits


def stream_tokens(
    pair: ReferencePair,
    prompt_ids: list[int],
    alpha: float,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    ignore_eos: bool,
) -> Iterator[int]:
    """`ReferencePair.generate`, one token at a time, so the server can stream each as it lands."""
    generator = None if seed is None else torch.Generator(device=pair.device).manual_seed(seed)
    with torch.no_grad():
        ids = torch.tensor([prompt_ids], device=pair.device)
        after_out = pair.after(ids, use_cache=True)
        before_out = pair.before(ids.clamp(max=pair.before_vocab - 1), use_cache=True)
        for step in range(max_new_tokens):
            logits = merge_logits(after_out.logits[0, -1], before_out.logits[0, -1], alpha)
            token = _sample(logits, temperature, top_p, generator)
            yield token
            if (token in pair.eos_ids and not ignore_eos) or step == max_new_tokens - 1:
                return
            nxt = torch.tensor([[token]], device=pair.device)
            after_out = pair.after(nxt, past_key_values=after_out.past_key_values, use_cache=True)
            before_out = pair.before(
                nxt.clamp(max=pair.before_vocab - 1), past_key_values=before_out.past_key_values, use_cache=True
            )


def _next_or_none(tokens: Iterator[int]) -> int | None:
    return next(tokens, None)


def build_app(pair: ReferencePair, model_name: str, default_alpha: float = DEFAULT_ALPHA):
    app = FastAPI(title="LDA seed design (one request at a time)")
    lock = asyncio.Lock()  # the seed's one global lock: requests run strictly one after another
    tokenizer = pair.tokenizer

    def prompt_ids(prompt) -> list[int]:
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if isinstance(prompt, str):
            return tokenizer(prompt, add_special_tokens=False)["input_ids"]
        raise HTTPException(400, "prompt must be a string or a list of token ids")

    def checked(body: dict) -> tuple[list[int], float]:
        """Prompt ids and alpha, validated before any response starts (errors are 400s)."""
        try:
            return prompt_ids(body.get("prompt", "")), validate_alpha(body.get("alpha", default_alpha))
        except AlphaError as error:
            raise HTTPException(400, str(error)) from None

    async def completion_chunks(body: dict, ids: list[int], alpha: float) -> AsyncIterator[tuple[str, str | None, int, int]]:
        """(text delta, finish_reason or None, prompt tokens, completion tokens), under the lock."""
        max_tokens = int(body.get("max_tokens") or 16)
        async with lock:
            tokens = stream_tokens(
                pair, ids, alpha, max_tokens,
                float(body.get("temperature", 1.0) or 0.0), float(body.get("top_p", 1.0)),
                body.get("seed"), bool(body.get("ignore_eos", False)),
            )
            out: list[int] = []
            text = ""
            while (token := await asyncio.to_thread(_next_or_none, tokens)) is not None:
                out.append(token)
                full = tokenizer.decode(out, skip_special_tokens=True)
                delta, text = full[len(text):], full
                done = len(out) >= max_tokens or (token in pair.eos_ids and not body.get("ignore_eos"))
                reason = None if not done else ("length" if len(out) >= max_tokens else "stop")
                yield delta, reason, len(ids), len(out)

    def chunk(rid: str, created: int, choices: list, usage: dict | None = None) -> str:
        payload = {"id": rid, "object": "text_completion", "created": created, "model": model_name, "choices": choices}
        if usage is not None:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "root": model_name}]}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await request.json()
        return {"tokens": prompt_ids(body.get("prompt", "")), "model": model_name}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await request.json()
        return {"prompt": tokenizer.decode(body.get("tokens", []))}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        ids, alpha = checked(body)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def events():
                usage = None
                async for delta, reason, n_prompt, n_out in completion_chunks(body, ids, alpha):
                    yield chunk(rid, created, [{"index": 0, "text": delta, "finish_reason": reason}])
                    usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
                if include_usage and usage is not None:
                    yield chunk(rid, created, [], usage)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text, reason, n_prompt, n_out = "", "length", 0, 0
        async for delta, finish, n_prompt, n_out in completion_chunks(body, ids, alpha):
            text, reason = text + delta, finish or reason
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "text": text, "finish_reason": reason}], "usage": usage,
        })

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seed_server", description=__doc__.splitlines()[0])
    parser.add_argument("--after", default=os.environ.get("MODEL_AFTER_ID"), help="after model path [env MODEL_AFTER_ID]")
    parser.add_argument("--before", default=os.environ.get("MODEL_BEFORE_ID"), help="before model path [env MODEL_BEFORE_ID]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--served-model-name", default="lda")
    parser.add_argument("--default-alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch compute threads (default 1, as vLLM's CPU worker; on a loaded 2-core machine two "
        "threads thrash: 16 tokens took over 120 s instead of 4 s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    if not args.after or not args.before:
        raise SystemExit("seed_server: give --after and --before (or MODEL_AFTER_ID and MODEL_BEFORE_ID)")
    torch.set_num_threads(args.threads)
    pair = ReferencePair(args.after, args.before, device=args.device, dtype=getattr(torch, args.dtype))
    app = build_app(pair, args.served_model_name, args.default_alpha)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
