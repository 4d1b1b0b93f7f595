"""The original project's design behind HTTP: both models in plain transformers, behind one lock.

This is the baseline `lda bench` measures the engine against, in the two ways the original
project serves:

- one at a time (`/generate_lda`): `ReferencePair`, each model with its own KV cache, a second
  request waits for the first;
- batched (`--batched`, its `/generate_lda_batch` path, `generate_lda_batched`): the requests
  waiting when a batch starts (up to `--max-batch`) run as one static batch, left-padded, every row
  decoded for the batch's full `max_tokens` whatever its own stop; requests arriving meanwhile wait
  for the next batch.

It exposes just enough of the OpenAI API for vLLM's benchmark client: `/v1/completions` (prompt,
max_tokens, temperature, top_p, seed, ignore_eos, stream with usage, alpha), `/v1/models`,
`/tokenize`, `/detokenize` and `/health`.

    python -m benchmarks.original_server --after PATH --before PATH --port 8001 [--batched]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine.alpha import AlphaError, validate_alpha
from engine.config.alpha import DEFAULT_ALPHA
from engine.reference import ReferencePair, merge_logits, sample_token


@dataclass(slots=True)
class Job:
    """One completion request, as the decoders need it."""

    ids: list[int]
    alpha: float
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False

    def generator(self, device) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)


def stream_tokens(pair: ReferencePair, job: Job) -> Iterator[int]:
    """`ReferencePair.generate`, one token at a time, so the server can stream each as it lands."""
    generator = job.generator(pair.device)
    with torch.no_grad():
        ids = torch.tensor([job.ids], device=pair.device)
        after_out = pair.after(ids, use_cache=True)
        before_out = pair.before(ids.clamp(max=pair.before_vocab - 1), use_cache=True)
        for step in range(job.max_tokens):
            logits = merge_logits(after_out.logits[0, -1], before_out.logits[0, -1], job.alpha)
            token = sample_token(logits, job.temperature, job.top_p, generator)
            yield token
            if (token in pair.eos_ids and not job.ignore_eos) or step == job.max_tokens - 1:
                return
            nxt = torch.tensor([[token]], device=pair.device)
            after_out = pair.after(nxt, past_key_values=after_out.past_key_values, use_cache=True)
            before_out = pair.before(
                nxt.clamp(max=pair.before_vocab - 1), past_key_values=before_out.past_key_values, use_cache=True
            )


def merge_rows(after: torch.Tensor, before: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(1 + alpha) * A - alpha * B per row ([rows, V], alpha [rows, 1]), in float32; columns only the
    after model has keep its logits."""
    shared = min(after.shape[-1], before.shape[-1])
    out = after.float().clone()
    out[:, :shared] = (1 + alpha) * out[:, :shared] - alpha * before[:, :shared].float()
    return out


def batch_tokens(pair: ReferencePair, jobs: list[Job]) -> Iterator[list[int]]:
    """The original's `generate_lda_batched`: one static batch, left-padded, both models with their
    own KV cache, every row decoded for the batch's longest `max_tokens` (no early exit on EOS).
    Yields each step's tokens, one per job."""
    steps = max(job.max_tokens for job in jobs)
    width = max(len(job.ids) for job in jobs)
    pad = pair.tokenizer.pad_token_id if pair.tokenizer.pad_token_id is not None else 0
    device = pair.device
    ids = torch.tensor([[pad] * (width - len(j.ids)) + j.ids for j in jobs], device=device)
    mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    alpha = torch.tensor([[j.alpha] for j in jobs], dtype=torch.float32, device=device)
    generators = [job.generator(device) for job in jobs]
    clamp = pair.before_vocab - 1
    with torch.no_grad():
        after_out = pair.after(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        before_out = pair.before(input_ids=ids.clamp(max=clamp), attention_mask=mask, position_ids=positions, use_cache=True)
        for step in range(steps):
            logits = merge_rows(after_out.logits[:, -1], before_out.logits[:, -1], alpha)
            tokens = [sample_token(logits[i], job.temperature, job.top_p, generators[i]) for i, job in enumerate(jobs)]
            yield tokens
            if step == steps - 1:
                return
            nxt = torch.tensor(tokens, device=device).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones((len(jobs), 1))], dim=1)
            positions = positions[:, -1:] + 1
            after_out = pair.after(input_ids=nxt, attention_mask=mask, position_ids=positions,
                                   past_key_values=after_out.past_key_values, use_cache=True)
            before_out = pair.before(input_ids=nxt.clamp(max=clamp), attention_mask=mask, position_ids=positions,
                                     past_key_values=before_out.past_key_values, use_cache=True)


def _next_or_none(tokens: Iterator):
    return next(tokens, None)


class OneAtATime:
    """The original's `/generate_lda`: one global lock, one request after another."""

    def __init__(self, pair: ReferencePair) -> None:
        self.pair = pair
        self.lock = asyncio.Lock()

    async def tokens(self, job: Job) -> AsyncIterator[int]:
        async with self.lock:
            stream = stream_tokens(self.pair, job)
            while (token := await asyncio.to_thread(_next_or_none, stream)) is not None:
                yield token


class StaticBatcher:
    """The original's batched path: whoever waits when the lock frees forms the next static batch.

    A row's stream ends at its own `max_tokens` or EOS, but its row keeps decoding until the batch's
    last step, as in `generate_lda_batched`."""

    def __init__(self, pair: ReferencePair, max_batch: int) -> None:
        self.pair, self.max_batch = pair, max_batch
        self.waiting: list[tuple[Job, asyncio.Queue]] = []
        self.wake = asyncio.Event()
        self.worker: asyncio.Task | None = None

    async def tokens(self, job: Job) -> AsyncIterator[int]:
        out: asyncio.Queue = asyncio.Queue()
        self.waiting.append((job, out))
        self.wake.set()
        if self.worker is None:
            self.worker = asyncio.create_task(self._run())
        while (token := await out.get()) is not None:
            yield token

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            batch, self.waiting = self.waiting[: self.max_batch], self.waiting[self.max_batch :]
            if not self.waiting:
                self.wake.clear()
            if batch:
                await asyncio.to_thread(self._decode, batch, loop)

    def _decode(self, batch: list[tuple[Job, asyncio.Queue]], loop) -> None:
        live = [True] * len(batch)

        def put(i: int, item) -> None:
            loop.call_soon_threadsafe(batch[i][1].put_nowait, item)

        try:
            for step, tokens in enumerate(batch_tokens(self.pair, [job for job, _ in batch])):
                for i, token in enumerate(tokens):
                    if not live[i]:
                        continue
                    put(i, token)
                    job = batch[i][0]
                    if step + 1 >= job.max_tokens or (token in self.pair.eos_ids and not job.ignore_eos):
                        live[i] = False
                        put(i, None)
        finally:
            for i in range(len(batch)):
                if live[i]:
                    put(i, None)


def build_app(pair: ReferencePair, model_name: str, default_alpha: float = DEFAULT_ALPHA, max_batch: int = 0):
    """The HTTP app; `max_batch` > 0 serves static batches of up to that many requests."""
    app = FastAPI(title="LDA, the original design")
    decoder = StaticBatcher(pair, max_batch) if max_batch > 0 else OneAtATime(pair)
    tokenizer = pair.tokenizer

    def prompt_ids(prompt) -> list[int]:
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if isinstance(prompt, str):
            return tokenizer(prompt, add_special_tokens=False)["input_ids"]
        raise HTTPException(400, "prompt must be a string or a list of token ids")

    def job_of(body: dict) -> Job:
        """The request's job, validated before any response starts (errors are 400s)."""
        try:
            alpha = validate_alpha(body.get("alpha", default_alpha))
        except AlphaError as error:
            raise HTTPException(400, str(error)) from None
        return Job(
            prompt_ids(body.get("prompt", "")), alpha, int(body.get("max_tokens") or 16),
            float(body.get("temperature", 1.0) or 0.0), float(body.get("top_p", 1.0)),
            body.get("seed"), bool(body.get("ignore_eos", False)),
        )

    async def completion_chunks(job: Job) -> AsyncIterator[tuple[str, str | None, int, int]]:
        """(text delta, finish_reason or None, prompt tokens, completion tokens)."""
        out: list[int] = []
        text = ""
        async for token in decoder.tokens(job):
            out.append(token)
            full = tokenizer.decode(out, skip_special_tokens=True)
            delta, text = full[len(text):], full
            done = len(out) >= job.max_tokens or (token in pair.eos_ids and not job.ignore_eos)
            reason = None if not done else ("length" if len(out) >= job.max_tokens else "stop")
            yield delta, reason, len(job.ids), len(out)

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
        job = job_of(body)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def events():
                usage = None
                async for delta, reason, n_prompt, n_out in completion_chunks(job):
                    yield chunk(rid, created, [{"index": 0, "text": delta, "finish_reason": reason}])
                    usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
                if include_usage and usage is not None:
                    yield chunk(rid, created, [], usage)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text, reason, n_prompt, n_out = "", "length", 0, 0
        async for delta, finish, n_prompt, n_out in completion_chunks(job):
            text, reason = text + delta, finish or reason
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "text": text, "finish_reason": reason}], "usage": usage,
        })

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="original_server", description=__doc__.splitlines()[0])
    parser.add_argument("--after", default=os.environ.get("MODEL_AFTER_ID"), help="after model path [env MODEL_AFTER_ID]")
    parser.add_argument("--before", default=os.environ.get("MODEL_BEFORE_ID"), help="before model path [env MODEL_BEFORE_ID]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--served-model-name", default="lda")
    parser.add_argument("--default-alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads (default 1)")
    parser.add_argument("--batched", action="store_true",
                        help="serve static batches of the waiting requests (the original's /generate_lda_batch path)")
    parser.add_argument("--max-batch", type=int, default=64, help="largest static batch with --batched (default 64)")
    return parser


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    if not args.after or not args.before:
        raise SystemExit("original_server: give --after and --before (or MODEL_AFTER_ID and MODEL_BEFORE_ID)")
    torch.set_num_threads(args.threads)
    pair = ReferencePair(args.after, args.before, device=args.device, dtype=getattr(torch, args.dtype))
    if args.max_batch < 1:
        raise SystemExit(f"original_server: --max-batch must be >= 1; got {args.max_batch}")
    app = build_app(pair, args.served_model_name, args.default_alpha, args.max_batch if args.batched else 0)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
