"""The corpus mode's collecting (`lda mine --corpus`): reading a corpus file, and the server calls
that score it (POST /v1/lda/score with `promoted_k`, one pair prefill each), generate the built-in
corpus (the before model's answers at alpha -1) and extend a theme by chaining promoted tokens.

The corpus: a .txt (one text a line), a .jsonl (`text`, or `prompt` with `answer`, `completion`
or `response`; a prompt is sent as one chat user message), or `builtin`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from study.analysis.promoted import PromotedConfig
from study.collect.client import error_message, normalize_base_url
from study.collect.prompts import BUILTIN_PROMPTS
from study.errors import StudyError
from study.records import CorpusText

BUILTIN = "builtin"
ANSWER_FIELDS = ("answer", "completion", "response")
MAX_EXTEND = 16

MAX_PROMOTED_K = 20
"""The server's bound on `promoted_k` (engine/one_pass.py; tests/study/commands/test_corpus.py keeps the two
equal). A copy, since the study package talks to the engine over HTTP only and must not import it
(nor torch)."""


@dataclass(frozen=True, slots=True)
class CorpusConfig:
    """What `lda mine --corpus` does; errors name the flag."""

    corpus: Path | None
    """None: the built-in corpus."""
    base_url: str
    output_dir: Path
    promoted_k: int = MAX_PROMOTED_K
    promoted: PromotedConfig = field(default_factory=PromotedConfig)
    builtin_per_prompt: int = 10
    max_tokens: int = 64
    extend: int = 4
    top: int = 5
    concurrency: int = 16
    model: str | None = None
    api_key: str | None = None
    seed: int = 0
    progress: bool = True
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if isinstance(self.promoted_k, bool) or not 1 <= self.promoted_k <= MAX_PROMOTED_K:
            raise ValueError(f"--promoted-k: must be in [1, {MAX_PROMOTED_K}] (MAX_PROMOTED_K), got {self.promoted_k}")
        for flag, value, low, high in (("--builtin-per-prompt", self.builtin_per_prompt, 1, 100),
                                       ("--max-tokens", self.max_tokens, 1, 1024), ("--extend", self.extend, 0, MAX_EXTEND),
                                       ("--top", self.top, 1, self.promoted.themes), ("--concurrency", self.concurrency, 1, 256)):
            if not low <= value <= high:
                raise ValueError(f"{flag}: must be in [{low}, {high}], got {value}")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"--output-dir: {self.output_dir} exists and is not a directory")


def read_corpus(path: Path) -> list[CorpusText]:
    """The texts of a .txt or .jsonl corpus; ValueError naming the file (and line) otherwise."""
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"--corpus: {path} must be a .txt or .jsonl file (or '{BUILTIN}')")
    if not path.is_file():
        raise ValueError(f"--corpus: no such file: {path}")
    data = path.read_bytes()
    if (nul := data.find(b"\0")) >= 0:
        raise ValueError(f"--corpus: {path} is not text (a NUL byte at byte {nul})")
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--corpus: {path} is not UTF-8 text (byte {exc.start})") from None
    parse = _jsonl_text if path.suffix == ".jsonl" else lambda line, where: CorpusText(where, None, line)
    texts = [parse(line, f"{path.name}:{n}") for n, line in enumerate(content.splitlines(), start=1) if line.strip()]
    if not texts:
        raise ValueError(f"--corpus: {path} holds no texts")
    for t in texts:
        if t.prompt is None and len(t.text.split(None, 1)) < 2:
            raise ValueError(f"--corpus: {t.key} needs at least two words (the first is the prefix the rest is scored after)")
    return texts


def _jsonl_text(line: str, where: str) -> CorpusText:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--corpus: {where} is not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"--corpus: {where} must be a JSON object")
    if isinstance(record.get("text"), str) and record["text"].strip():
        return CorpusText(str(record.get("id", where)), None, record["text"])
    answer = next((record[f] for f in ANSWER_FIELDS if isinstance(record.get(f), str) and record[f].strip()), None)
    if isinstance(record.get("prompt"), str) and record["prompt"].strip() and answer is not None:
        return CorpusText(str(record.get("id", where)), record["prompt"], answer)
    raise ValueError(f'--corpus: {where} needs a non-empty "text", or "prompt" with one of {", ".join(ANSWER_FIELDS)}')


class CorpusClient:
    """The three calls the corpus mode makes: chat completions at alpha -1, score, score by ids."""

    def __init__(self, config: CorpusConfig) -> None:
        self.base = normalize_base_url(config.base_url)
        self.model = config.model
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(config.timeout, connect=10.0))
        self._slots = asyncio.Semaphore(config.concurrency)

    async def post(self, path: str, body: dict) -> dict:
        url = self.base + path
        async with self._slots:
            try:
                response = await self._http.post(url, json={"model": self.model, **body})
            except httpx.HTTPError as exc:
                raise StudyError(f"request to {url} failed: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            raise StudyError(f"HTTP {response.status_code} from {url}: {error_message(response)}")
        return response.json()

    async def score(self, text: CorpusText, k: int) -> dict:
        body: dict = {"continuation": text.text, "promoted_k": k, "alpha": 0.0}
        if text.prompt is not None:
            body["messages"] = [{"role": "user", "content": text.prompt}]
        else:
            first = text.text.split(None, 1)[0]
            start = text.text.index(first) + len(first)
            body.update(prompt=text.text[:start], continuation=text.text[start:])
        return await self.post("/lda/score", body)

    async def aclose(self) -> None:
        await self._http.aclose()


async def builtin_corpus(client: CorpusClient, config: CorpusConfig) -> list[CorpusText]:
    """The before model's answers to the built-in prompts (alpha -1, temperature 1, seeded)."""

    async def answer(prompt_id: str, prompt: str, index: int) -> CorpusText:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": config.max_tokens,
                "temperature": 1.0, "seed": config.seed * 1000 + index, "alpha": -1.0}
        reply = await client.post("/chat/completions", body)
        return CorpusText(f"{prompt_id} #{index}", prompt, reply["choices"][0]["message"]["content"] or "")

    jobs = [answer(pid, p, i) for pid, p in BUILTIN_PROMPTS for i in range(config.builtin_per_prompt)]
    texts = await gather(jobs, "answers at alpha -1", config.progress)
    return [t for t in texts if t.text.strip()]


async def gather(jobs: list, unit: str, progress: bool) -> list:
    bar = tqdm(total=len(jobs), unit=unit.split()[0], desc=unit, disable=not progress)

    async def one(job):
        result = await job
        bar.update(1)
        return result

    try:
        return await asyncio.gather(*(one(j) for j in jobs))
    finally:
        bar.close()


async def extend_phrase(client: CorpusClient, theme: dict, scored: dict[str, dict], texts: dict[str, CorpusText],
                        config: CorpusConfig) -> str:
    """The theme's strongest token, then up to `extend` promoted tokens the after model likes
    best at each following position (scored by token ids, teacher-forced)."""
    best = theme["_best"]
    text = texts[best.key]
    score = scored[best.key]
    ids = [t["token_id"] for t in score["tokens"][: best.position]] + [best.token_id]
    pieces = [best.token]
    for _ in range(config.extend):
        body: dict = {"continuation": [*ids, ids[-1]], "promoted_k": config.promoted_k, "alpha": 0.0}
        if text.prompt is not None:
            body["messages"] = [{"role": "user", "content": text.prompt}]
        else:
            first = text.text.split(None, 1)[0]
            body["prompt"] = text.text[: text.text.index(first) + len(first)]
        reply = await client.post("/lda/score", body)
        candidates = [p for p in reply["tokens"][-1].get("promoted", []) if p["diff"] >= config.promoted.min_diff]
        if not candidates:
            break
        nxt = max(candidates, key=lambda p: p["logp_after"])
        if nxt["logp_after"] < config.promoted.min_logp_after:
            break
        ids.append(nxt["token_id"])
        pieces.append(nxt["token"])
    return " ".join("".join(pieces).split())
