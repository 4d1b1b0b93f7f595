"""What `lda mine --corpus` writes: corpus_scores.jsonl, summary.json (and corpus.jsonl when the
corpus was generated), each replaced atomically once everything is computed; and its console lines."""

from __future__ import annotations

import json
from pathlib import Path

from study.output.files import (
    CORPUS_FILE,
    CORPUS_SCORES_FILE,
    SUMMARY_FILE,
    write_atomically,
)
from study.records import CorpusText


def save(output_dir: Path, summary: dict, scores: dict[str, dict], generated: list[CorpusText] | None) -> None:
    """Write the score responses, then summary.json; `generated`, the built-in corpus drawn by this
    run, as corpus.jsonl first (a later run there reuses it)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if generated is not None:
        write_atomically(output_dir / CORPUS_FILE, "".join(
            json.dumps({"id": t.key, "prompt": t.prompt, "answer": t.text}, ensure_ascii=False) + "\n" for t in generated))
    write_atomically(output_dir / CORPUS_SCORES_FILE, "".join(
        json.dumps({"key": k, **v}, ensure_ascii=False) + "\n" for k, v in scores.items()))
    write_atomically(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def format_themes(themes: list[dict], top: int) -> str:
    lines = [f"top {min(top, len(themes))} themes (promoted tokens, by distinct texts x log(1 + mean diff)):"]
    for i, t in enumerate(themes[:top], start=1):
        shown = t.get("phrase") or t["text"]
        lines.append(f"{i:>2}. {shown!r}  texts {t['samples']}, mean diff {t['mean_diff']:+.2f}, "
                     f"variants {', '.join(map(repr, t['variants'][:4]))}")
    return "\n".join(lines) if themes else "no promoted token passed the filters"
