"""What `lda_token_scores: true` costs: the same requests with the flag off and on, interleaved.

    python -m benchmarks.token_scores_cost --base-url http://127.0.0.1:8000 --concurrency 16 \\
        --rounds 3 --max-tokens 40

Each round sends `concurrency` identical-shape chat requests at once with the flag off, then the
same with it on (seeded, so both generate the same tokens), and records the wall time of each
batch; alternating the two inside each round spreads a shared machine's slow spells over both.
Prints each round and the median ratio on/off.

    python -m benchmarks.token_scores_cost --flag-off-overhead

measures, in process, what the middleware adds to a request without the flag: the same ASGI call
with and without `TokenScoresMiddleware` around an app that only reads the body and answers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import httpx

PROMPTS = [
    "How can I get better sleep when I have a lot on my mind?",
    "What is a good way to start saving money on a small salary?",
    "How do I prepare for a job interview next week?",
    "How can I stop procrastinating on important tasks?",
]


async def _batch(client: httpx.AsyncClient, url: str, n: int, max_tokens: int, flag: bool, seed: int) -> float:
    def body(i: int) -> dict:
        request = {
            "model": "lda", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 1.0, "seed": seed + i, "alpha": 1.0,
        }
        if flag:
            request["lda_token_scores"] = True
        return request

    start = time.perf_counter()
    replies = await asyncio.gather(*(client.post(url, json=body(i)) for i in range(n)))
    elapsed = time.perf_counter() - start
    bad = [r.status_code for r in replies if r.status_code != 200]
    if bad:
        raise SystemExit(f"token_scores_cost: {len(bad)} requests failed (HTTP {bad[0]})")
    if flag and not all(r.json()["choices"][0].get("lda_token_scores") for r in replies):
        raise SystemExit("token_scores_cost: the server returned no lda_token_scores")
    return elapsed


async def run(base_url: str, concurrency: int, rounds: int, max_tokens: int) -> int:
    url = base_url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        await _batch(client, url, concurrency, max_tokens, False, 0)  # warm-up
        ratios = []
        for r in range(rounds):
            off = await _batch(client, url, concurrency, max_tokens, False, 1000 * r)
            on = await _batch(client, url, concurrency, max_tokens, True, 1000 * r)
            ratios.append(on / off)
            print(f"round {r + 1}: flag off {off:.2f} s, flag on {on:.2f} s, on/off {on / off:.2f}")
    print(f"median on/off over {rounds} rounds: {statistics.median(ratios):.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}), concurrency {concurrency}, {max_tokens} tokens")
    return 0


async def flag_off_overhead(calls: int = 20000) -> int:
    """Microseconds the middleware adds to a request without the flag (median of 5 runs)."""
    import json as json_

    from api.token_scores import TokenScoresMiddleware

    body = json_.dumps({"model": "lda", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 40}).encode()
    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        return None

    wrapped = TokenScoresMiddleware(app, default_alpha=1.0)

    async def timed(handler) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await handler(scope, receive, send)
        return (time.perf_counter() - start) / calls * 1e6

    runs = [(await timed(app), await timed(wrapped)) for _ in range(5)]
    bare = statistics.median(r[0] for r in runs)
    with_mw = statistics.median(r[1] for r in runs)
    print(f"flag off: {bare:.2f} us per call without the middleware, {with_mw:.2f} us with it "
          f"(+{with_mw - bare:.2f} us per request), {calls} calls x 5 runs")
    return 0


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.token_scores_cost")
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=40)
    p.add_argument("--flag-off-overhead", action="store_true", help="time the middleware alone, no server")
    args = p.parse_args(argv)
    if args.flag_off_overhead:
        return asyncio.run(flag_off_overhead())
    return asyncio.run(run(args.base_url, args.concurrency, args.rounds, args.max_tokens))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
