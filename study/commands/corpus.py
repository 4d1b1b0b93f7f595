"""`lda mine --corpus`: mine promoted tokens over a corpus scored teacher-forced (prefill only).

    lda mine --corpus builtin --base-url http://127.0.0.1:8000 -o corpus-mine
    lda mine --corpus texts.jsonl --base-url http://127.0.0.1:8000 -o corpus-mine --promoted-k 20

Every text of the corpus is scored by POST /v1/lda/score with `promoted_k` (one pair prefill,
engine/one_pass.py): per position the top-k tokens of the whole vocabulary by
`logp_after - logp_before`. study/promoted.py turns them into themes, as a model-diffing toolkit
mines a web corpus; each of the top themes' text is then extended by chaining: its strongest
context plus the token is scored again and the promoted token the after model likes best at the
new last position is appended, a few times (all teacher-forced, no sampling).

The corpus: a .txt (one text a line), a .jsonl (`text`, or `prompt` with `answer`, `completion`
or `response`; a prompt is sent as one chat user message), or `builtin`: the before model's own
answers to the built-in advice prompts, generated on the server at alpha -1 on first use and kept
as corpus.jsonl in the output directory (reused on later runs there).

Writes, only once everything is computed (each file replaced atomically): corpus_scores.jsonl
(the score responses), summary.json ({"themes": [...], "promoted_tokens": [...], ...}). Bad input
(a corpus that is not UTF-8 text, a bad line, promoted_k above MAX_PROMOTED_K (the server's bound)) is
exit code 2 with a message naming it, before anything is sent or written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from study.analysis.promoted import (
    DEFAULT_MIN_DIFF,
    DEFAULT_MIN_LOGP_AFTER,
    DEFAULT_THEMES,
    PromotedConfig,
    mine_promoted,
    public,
    token_table,
)
from study.collect.client import _error_message, normalize_base_url
from study.collect.prompts import BUILTIN_PROMPTS
from study.commands import base
from study.errors import StudyError
from study.output.files import (
    CORPUS_FILE,
    CORPUS_SCORES_FILE,
    SUMMARY_FILE,
    write_atomically,
)

PROG = "lda mine --corpus"
BUILTIN = "builtin"
ANSWER_FIELDS = ("answer", "completion", "response")
MAX_EXTEND = 16

MAX_PROMOTED_K = 20
"""The server's bound on `promoted_k` (engine/one_pass.py; tests/study/test_corpus.py keeps the two
equal). A copy, since the study package talks to the engine over HTTP only and must not import it
(nor torch)."""


@dataclass(frozen=True, slots=True)
class CorpusText:
    key: str
    prompt: str | None
    """A chat user message the text answers, or None (raw text: its first word is the prompt)."""
    text: str


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


# --------------------------------------------------------------------------- reading


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


# --------------------------------------------------------------------------- the server


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
            raise StudyError(f"HTTP {response.status_code} from {url}: {_error_message(response)}")
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
    texts = await _gather(jobs, "answers at alpha -1", config.progress)
    return [t for t in texts if t.text.strip()]


async def _gather(jobs: list, unit: str, progress: bool) -> list:
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


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class CorpusResult:
    texts: list[CorpusText]
    scores: dict[str, dict]
    themes: list[dict]
    tokens: list[dict]
    generated: bool


async def run(config: CorpusConfig, texts: list[CorpusText] | None) -> CorpusResult:
    """Score the corpus (generating the built-in one when `texts` is None) and mine it."""
    client = CorpusClient(config)
    try:
        generated = texts is None
        if texts is None:
            texts = await builtin_corpus(client, config)
        replies = await _gather([client.score(t, config.promoted_k) for t in texts], "texts scored", config.progress)
        scores = {t.key: r for t, r in zip(texts, replies, strict=True)}
        pairs = [(key, reply["tokens"]) for key, reply in scores.items()]
        themes = mine_promoted(pairs, config.promoted)
        by_key = {t.key: t for t in texts}
        for theme in themes[: config.top]:
            phrase = await extend_phrase(client, theme, scores, by_key, config) if config.extend else ""
            if phrase and phrase.casefold() != theme["text"]:
                theme["phrase"] = phrase
        return CorpusResult(texts, scores, themes, token_table(pairs, config.promoted), generated)
    finally:
        await client.aclose()


def save(config: CorpusConfig, result: CorpusResult) -> None:
    config.output_dir.mkdir(parents=True, exist_ok=True)
    if result.generated:
        write_atomically(config.output_dir / CORPUS_FILE, "".join(
            json.dumps({"id": t.key, "prompt": t.prompt, "answer": t.text}, ensure_ascii=False) + "\n" for t in result.texts))
    write_atomically(config.output_dir / CORPUS_SCORES_FILE, "".join(
        json.dumps({"key": k, **v}, ensure_ascii=False) + "\n" for k, v in result.scores.items()))
    summary = {
        "mode": "corpus",
        "corpus": str(config.corpus) if config.corpus else BUILTIN,
        "texts": len(result.texts),
        "scored_tokens": sum(len(v["tokens"]) for v in result.scores.values()),
        "promoted_k": config.promoted_k,
        "filters": {"min_logp_after": config.promoted.min_logp_after, "min_diff": config.promoted.min_diff},
        "themes": [public(t) for t in result.themes],
        "promoted_tokens": result.tokens,
    }
    write_atomically(config.output_dir / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def format_themes(themes: list[dict], top: int) -> str:
    lines = [f"top {min(top, len(themes))} themes (promoted tokens, by distinct texts x log(1 + mean diff)):"]
    for i, t in enumerate(themes[:top], start=1):
        shown = t.get("phrase") or t["text"]
        lines.append(f"{i:>2}. {shown!r}  texts {t['samples']}, mean diff {t['mean_diff']:+.2f}, "
                     f"variants {', '.join(map(repr, t['variants'][:4]))}")
    return "\n".join(lines) if themes else "no promoted token passed the filters"


# --------------------------------------------------------------------------- the command


def corpus_parser() -> argparse.ArgumentParser:
    p = base.parser(PROG, "Mine promoted tokens over a corpus scored teacher-forced.")
    p.add_argument("--corpus", required=True, help=f"'{BUILTIN}' or a .txt / .jsonl file")
    p.add_argument("--base-url", default=os.environ.get("LDA_BASE_URL", "http://127.0.0.1:8000"), help="(default: %(default)s)")
    p.add_argument("-o", "--output-dir", type=Path, required=True)
    p.add_argument("--promoted-k", type=int, default=MAX_PROMOTED_K, help=f"per position, at most {MAX_PROMOTED_K} (default: %(default)s)")
    p.add_argument("--min-logp-after", type=float, default=DEFAULT_MIN_LOGP_AFTER, help="(default: %(default)s)")
    p.add_argument("--min-diff", type=float, default=DEFAULT_MIN_DIFF, help="(default: %(default)s)")
    p.add_argument("--themes", type=int, default=DEFAULT_THEMES, help="themes kept (default: %(default)s)")
    p.add_argument("--top", type=int, default=5, help="themes printed and extended (default: %(default)s)")
    p.add_argument("--extend", type=int, default=4, help=f"tokens chained onto each top theme, at most {MAX_EXTEND} (default: %(default)s)")
    p.add_argument("--builtin-per-prompt", type=int, default=10, help="built-in corpus: answers per prompt (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="built-in corpus: tokens per answer (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--model")
    p.add_argument("--api-key", default=os.environ.get("LDA_API_KEY"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    promoted = PromotedConfig(args.min_logp_after, args.min_diff, args.themes)
    return CorpusConfig(
        corpus=None if args.corpus == BUILTIN else Path(args.corpus), base_url=args.base_url,
        output_dir=args.output_dir, promoted_k=args.promoted_k, promoted=promoted,
        builtin_per_prompt=args.builtin_per_prompt, max_tokens=args.max_tokens, extend=args.extend, top=args.top,
        concurrency=args.concurrency, model=args.model, api_key=args.api_key, seed=args.seed, progress=not args.no_progress,
    )


def cli(argv: list[str]) -> int:
    """0 done, 2 bad input (nothing sent or written), 1 the server failed (nothing written)."""
    args = base.parse(corpus_parser(), argv)
    if isinstance(args, int):
        return args

    def work() -> int:
        config = config_from_args(args)
        texts = None
        if config.corpus is not None:
            texts = read_corpus(config.corpus)
        elif (config.output_dir / CORPUS_FILE).is_file():
            texts = read_corpus(config.output_dir / CORPUS_FILE)
        result = asyncio.run(run(config, texts))
        save(config, result)
        print(format_themes(result.themes, config.top))
        print(f"\n{len(result.texts)} texts, {sum(len(v['tokens']) for v in result.scores.values())} tokens scored; "
              f"wrote {SUMMARY_FILE} and {CORPUS_SCORES_FILE} in {config.output_dir}/")
        return base.OK

    return base.run(PROG, work)
