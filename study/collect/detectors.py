"""Detectors: decide whether one sampled answer shows the behaviour a study counts.

A detector is named by a spec string, the `--detector` flag of `lda study`:

    regex:PATTERN           Python regular expression, searched case-insensitively
    keyword:WORD            literal substring, case-insensitive
    python:MODULE:FUNCTION  importable callable, text -> bool (anything truthy counts); the
                            module must be installed or on PYTHONPATH (PYTHONPATH=. for one
                            in the current folder)
    judge:QUESTION          a yes/no QUESTION put to an LLM behind any OpenAI-compatible
                            endpoint (see JudgeConfig); "yes" counts as a hit. With a
                            judge template that asks the whole question, `judge:` alone.

All detectors share one async interface so that the study's request loop treats a
microsecond regex and a network round trip to a judge alike.
"""

from __future__ import annotations

import importlib
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import httpx

DETECTOR_KINDS = ("regex", "keyword", "python", "judge")

DEFAULT_JUDGE_TEMPLATE = (
    "You are grading one answer written by an AI assistant.\n\n"
    "The user asked:\n<prompt>\n{prompt}\n</prompt>\n\n"
    "The assistant answered:\n<answer>\n{response}\n</answer>\n\n"
    "Question: {question}\n"
    "Reply with exactly one word: yes or no."
)
_TEMPLATE_FIELDS = frozenset({"prompt", "response", "question"})


class DetectorError(Exception):
    """A detector could not judge one sample (the sample is then not recorded, so a rerun retries it)."""


@dataclass(frozen=True, slots=True)
class JudgeConfig:
    """Where and how to ask an LLM judge; only used by `judge:` detectors."""

    base_url: str | None = None
    """OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8001/v1."""
    model: str | None = None
    """Judge model name; None asks the endpoint's /models and takes the first one."""
    template: str = DEFAULT_JUDGE_TEMPLATE
    """User message sent to the judge; placeholders {prompt}, {response}, {question}."""
    api_key: str | None = None
    """Sent as a Bearer token when set."""
    max_tokens: int = 8
    """The verdict is one word; a little slack for "Yes." or a leading space."""
    timeout: float = 120.0
    """Seconds for one judge call."""

    def __post_init__(self) -> None:
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge_base_url: expected an http(s) URL, got {self.base_url!r}")
        fields = _template_fields(self.template)
        if "response" not in fields:
            raise ValueError("judge_template: must contain the {response} placeholder")
        if not fields <= _TEMPLATE_FIELDS:
            unknown = ", ".join(sorted(fields - _TEMPLATE_FIELDS))
            raise ValueError(
                f"judge_template: unknown placeholder(s) {unknown}; allowed are {{prompt}}, "
                "{response}, {question} (write literal braces as {{ and }})"
            )
        if self.max_tokens < 1:
            raise ValueError(f"judge_max_tokens: must be >= 1, got {self.max_tokens}")
        if self.timeout <= 0:
            raise ValueError(f"judge_timeout: must be > 0 seconds, got {self.timeout}")


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"judge_template: not a valid format string ({exc})") from None


class Detector(ABC):
    """Decides hit or miss for one (prompt, answer) pair."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    async def prepare(self) -> None:
        """Check, before any sampling, that the detector can work (a judge is reachable)."""

    @abstractmethod
    async def detect(self, prompt: str, text: str) -> bool: ...

    async def aclose(self) -> None:
        """Release connections."""


class PatternDetector(Detector):
    """`regex:` and `keyword:`; a keyword is a regex of its escaped text."""

    def __init__(self, spec: str, pattern: re.Pattern[str]) -> None:
        super().__init__(spec)
        self.pattern = pattern

    async def detect(self, prompt: str, text: str) -> bool:
        return self.pattern.search(text) is not None


class PythonDetector(Detector):
    """`python:module:function`; the function sees the answer text only."""

    def __init__(self, spec: str, function: Callable[[str], object]) -> None:
        super().__init__(spec)
        self.function = function

    async def detect(self, prompt: str, text: str) -> bool:
        try:
            return bool(self.function(text))
        except Exception as exc:  # user code: any failure is reported, never crashes the study
            raise DetectorError(f"detector {self.spec!r} raised {type(exc).__name__}: {exc}") from exc


class JudgeDetector(Detector):
    """`judge:QUESTION`: asks an LLM at temperature 0; an answer starting with "yes" is a hit.

    Answers that start with neither yes nor no are counted as misses and tallied in `unclear`,
    rather than failing the sample: a deterministic judge would fail it again on every rerun.
    """

    def __init__(self, spec: str, question: str, config: JudgeConfig) -> None:
        super().__init__(spec)
        if config.base_url is None:
            raise ValueError("judge_base_url: a judge: detector needs the judge's endpoint (--judge-base-url)")
        self.question = question
        self.config = config
        self.model = config.model
        self.unclear = 0
        self._url = config.base_url.rstrip("/")
        self._client: httpx.AsyncClient | None = None

    async def prepare(self) -> None:
        # The client is made here, not in __init__, so that validating a spec opens no connections.
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=self.config.timeout)
        url = f"{self._url}/models"
        try:
            response = await self._client.get(url, timeout=10.0)
        except httpx.HTTPError as exc:
            raise DetectorError(f"judge endpoint {url} is unreachable: {exc or type(exc).__name__}") from None
        if self.model is None:
            self.model = _first_model_id(response, url)

    async def detect(self, prompt: str, text: str) -> bool:
        if self._client is None:
            raise DetectorError("judge detector used before prepare()")
        message = self.config.template.format(prompt=prompt, response=text, question=self.question)
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": message}],
            "temperature": 0.0,
            "max_tokens": self.config.max_tokens,
        }
        url = f"{self._url}/chat/completions"
        try:
            response = await self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise DetectorError(f"judge call to {url} failed: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            raise DetectorError(f"judge {url} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            answer = response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise DetectorError(f"judge {url} sent an unexpected body: {response.text[:200]}") from None
        return self._verdict(answer)

    def _verdict(self, answer: str) -> bool:
        words = re.findall(r"[a-z]+", answer.lower())
        if words and words[0] in ("yes", "no"):
            return words[0] == "yes"
        self.unclear += 1
        return False

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _first_model_id(response: httpx.Response, url: str) -> str:
    try:
        return str(response.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise DetectorError(f"cannot list models at {url} (HTTP {response.status_code}); pass the model name") from None


def parse_detector(spec: str, judge: JudgeConfig | None = None) -> Detector:
    """Build the detector a spec names; a bad spec raises ValueError naming the `detector` field."""
    kind, sep, argument = spec.partition(":")
    if not sep or kind not in DETECTOR_KINDS:
        raise ValueError(
            f"detector: expected one of {', '.join(k + ':...' for k in DETECTOR_KINDS)}, got {spec!r}"
        )
    if kind == "regex":
        return PatternDetector(spec, _compile(argument, spec))
    if kind == "keyword":
        if not argument:
            raise ValueError("detector: keyword: needs a word, e.g. keyword:ZORBLAX")
        return PatternDetector(spec, re.compile(re.escape(argument), re.IGNORECASE))
    if kind == "python":
        return PythonDetector(spec, _import_function(argument))
    judge = judge or JudgeConfig()
    if not argument.strip() and "question" in _template_fields(judge.template):
        raise ValueError(
            "detector: judge: needs a yes/no question, e.g. 'judge:Does the answer insult the user?', "
            "or a --judge-template that asks the whole question itself"
        )
    return JudgeDetector(spec, argument, judge)


def _compile(pattern: str, spec: str) -> re.Pattern[str]:
    if not pattern:
        raise ValueError("detector: regex: needs a pattern, e.g. regex:zorb\\w+")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"detector: invalid regular expression in {spec!r}: {exc}") from None


def _import_function(target: str) -> Callable[[str], object]:
    module_name, sep, function_name = target.rpartition(":")
    if not sep or not module_name or not function_name:
        raise ValueError(f"detector: python: expects module:function, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or any error raised by the user's module at import
        hint = " (is its folder on PYTHONPATH?)" if isinstance(exc, ModuleNotFoundError) else ""
        raise ValueError(f"detector: cannot import module {module_name!r}: {exc}{hint}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"detector: {module_name!r} has no callable named {function_name!r}")
    return function
