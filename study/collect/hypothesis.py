"""The optional hypothesis line: an LLM reads the top themes and says, in one paragraph, what changed.

Off unless a judge endpoint is given (`--judge-base-url`, the OpenAI-compatible endpoint the judge
detector already uses). The instruction lives in one editable text file, `hypothesis_prompt.txt`
beside this module (or any file passed as `--hypothesis-prompt`), with a `{themes}` placeholder
that receives the themes and their contexts. The answer is a reading aid, not a measurement:
nothing in the mining or the ranking depends on it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import httpx

from study.analysis.naming import Naming
from study.analysis.themes import Theme
from study.collect.detectors import JudgeConfig
from study.errors import StudyError

log = logging.getLogger(__name__)

DEFAULT_PROMPT_FILE = Path(__file__).with_name("hypothesis_prompt.txt")
THEMES_SHOWN = 10
"""Themes put in the prompt; below the tenth they are mostly noise."""
MAX_TOKENS = 300


def load_prompt(path: Path | None = None) -> str:
    """The instruction template; ValueError naming `hypothesis_prompt` when it is unusable."""
    path = path or DEFAULT_PROMPT_FILE
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"hypothesis_prompt: cannot read {path} ({exc})") from None
    if "{themes}" not in template:
        raise ValueError(f"hypothesis_prompt: {path} must contain the {{themes}} placeholder")
    return template


def describe_themes(themes: list[Theme]) -> str:
    """The themes as the prompt shows them: text, samples per alpha, mean diff, contexts."""
    lines = []
    for number, theme in enumerate(themes[:THEMES_SHOWN], start=1):
        per_alpha = ", ".join(f"alpha {a}: {n}" for a, n in theme.samples_per_alpha.items())
        lines.append(f'{number}. "{theme.text}" in {theme.samples} samples ({per_alpha}); mean diff {theme.mean_diff:.2f} nats')
        lines += [f'   - "...{c["text"]}..."' for c in theme.contexts]
    return "\n".join(lines)


def hypothesize(themes: list[Theme], judge: JudgeConfig, template: str) -> str:
    """Ask the judge endpoint for one paragraph; StudyError naming the URL when it cannot answer."""
    if judge.base_url is None:
        raise ValueError("judge_base_url: the hypothesis needs an endpoint (--judge-base-url)")
    base = judge.base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {judge.api_key}"} if judge.api_key else {}
    with httpx.Client(headers=headers, timeout=judge.timeout) as client:
        model = judge.model or _first_model(client, f"{base}/models")
        body = {
            "model": model,
            "messages": [{"role": "user", "content": template.replace("{themes}", describe_themes(themes))}],
            "temperature": 0.0,
            "max_tokens": MAX_TOKENS,
        }
        url = f"{base}/chat/completions"
        try:
            response = client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise StudyError(f"hypothesis: {url} failed: {exc or type(exc).__name__}") from None
    if response.status_code >= 400:
        raise StudyError(f"hypothesis: {url} answered HTTP {response.status_code}: {response.text[:200]}")
    try:
        return " ".join((response.json()["choices"][0]["message"]["content"] or "").split())
    except (ValueError, KeyError, IndexError, TypeError):
        raise StudyError(f"hypothesis: {url} sent an unexpected body: {response.text[:200]}") from None


def with_hypothesis(naming: Naming, judge: JudgeConfig | None, prompt: str | None) -> Naming:
    """`naming` with the judge's hypothesis, when a judge endpoint and a prompt template are given
    and there are themes; a judge that fails is logged and leaves the hypothesis out (the themes
    stand on their own)."""
    if judge is None or judge.base_url is None or prompt is None or not naming.themes:
        return naming
    try:
        return dataclasses.replace(naming, hypothesis=hypothesize(naming.themes, judge, prompt))
    except StudyError as exc:
        log.warning("%s; summary.json has no hypothesis", exc)
        return naming


def _first_model(client: httpx.Client, url: str) -> str:
    try:
        return str(client.get(url, timeout=10.0).json()["data"][0]["id"])
    except httpx.HTTPError as exc:
        raise StudyError(f"hypothesis: {url} is unreachable: {exc or type(exc).__name__}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise StudyError(f"hypothesis: cannot list models at {url}; pass --judge-model") from None
