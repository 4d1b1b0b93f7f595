"""`lda mine --corpus`: mine promoted tokens over a corpus scored teacher-forced (prefill only).

    lda mine --corpus builtin --base-url http://127.0.0.1:8000 -o corpus-mine
    lda mine --corpus texts.jsonl --base-url http://127.0.0.1:8000 -o corpus-mine --promoted-k 20

Every text of the corpus is scored by POST /v1/lda/score with `promoted_k` (one pair prefill,
engine/one_pass.py): per position the top-k tokens of the whole vocabulary by
`logp_after - logp_before`. study/analysis/promoted.py turns them into themes, as a model-diffing toolkit
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
import os
from dataclasses import dataclass
from pathlib import Path

from study.analysis.promoted import (
    DEFAULT_MIN_DIFF,
    DEFAULT_MIN_LOGP_AFTER,
    DEFAULT_THEMES,
    PromotedConfig,
    mine_promoted,
    public,
    token_table,
)
from study.collect.corpus import (
    BUILTIN,
    MAX_EXTEND,
    MAX_PROMOTED_K,
    CorpusClient,
    CorpusConfig,
    builtin_corpus,
    extend_phrase,
    gather,
    read_corpus,
)
from study.commands import base
from study.output.corpus_report import format_themes, save
from study.output.files import CORPUS_FILE, CORPUS_SCORES_FILE, SUMMARY_FILE
from study.records import CorpusText

PROG = "lda mine --corpus"


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
        replies = await gather([client.score(t, config.promoted_k) for t in texts], "texts scored", config.progress)
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


def summary_of(config: CorpusConfig, result: CorpusResult) -> dict:
    return {
        "mode": "corpus",
        "corpus": str(config.corpus) if config.corpus else BUILTIN,
        "texts": len(result.texts),
        "scored_tokens": sum(len(v["tokens"]) for v in result.scores.values()),
        "promoted_k": config.promoted_k,
        "filters": {"min_logp_after": config.promoted.min_logp_after, "min_diff": config.promoted.min_diff},
        "themes": [public(t) for t in result.themes],
        "promoted_tokens": result.tokens,
    }


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
        save(config.output_dir, summary_of(config, result), result.scores, result.texts if result.generated else None)
        print(format_themes(result.themes, config.top))
        print(f"\n{len(result.texts)} texts, {sum(len(v['tokens']) for v in result.scores.values())} tokens scored; "
              f"wrote {SUMMARY_FILE} and {CORPUS_SCORES_FILE} in {config.output_dir}/")
        return base.OK

    return base.run(PROG, work)
