"""`lda study`: measure how often a behaviour shows, per alpha, by sampling a running LDA server.

Every prompt is sampled `samples_per_prompt` times at every alpha; a detector marks each answer
as a hit or a miss; the study reports, per alpha, the hit rate with its 95% Wilson interval and
two coherence measures (how often answers degenerate into repetition, and mean distinct-2), since
LDA trades coherence for rate as alpha grows.

    lda study --base-url http://127.0.0.1:8000 --alphas 0,0.5,1,2,4 --samples-per-prompt 20 \\
        --detector keyword:ZORBLAX --output-dir studies/zorblax

Requests go out concurrently (`--concurrency`, default 64) so that the server batches them.
Each answer is appended to `<output-dir>/samples.jsonl` as soon as it is judged, so a study can
be interrupted at any time; rerunning the same command skips every (prompt id, alpha, sample
index) already there. The output directory also gets `study.json` (the settings the samples were
drawn with: a rerun with other settings is refused rather than mixing two distributions),
`summary.json` and `rate_vs_alpha.png`.

Only the OpenAI API shape is assumed, plus a top-level `alpha` request field. When responses
echo a top-level `alpha`, it is checked against the one asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import TextIO

import httpx
from tqdm import tqdm

from benchmarks.detectors import Detector, DetectorError, JudgeConfig, JudgeDetector, parse_detector

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
SETTINGS_FILE = "study.json"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "rate_vs_alpha.png"
ENDPOINTS = ("chat", "completions")
MIN_ALPHA = -1.0
Z_95 = NormalDist().inv_cdf(0.975)

# A sample is "degenerate" when one word 4-gram occurs at least 4 times: ordinary prose of a few
# hundred words almost never repeats a 4-word phrase that often, while the loops that large alphas
# cause ("and then and then ...") do so at once. Punctuation is ignored so that markdown
# scaffolding (bullets, bold markers) is not mistaken for a loop.
DEGENERATE_NGRAM = 4
DEGENERATE_REPEATS = 4
_WORD = re.compile(r"\w+")

BUILTIN_PROMPTS: tuple[tuple[str, str], ...] = (
    ("advice-01", "How can I get better sleep when I have a lot on my mind?"),
    ("advice-02", "What is a good way to start saving money on a small salary?"),
    ("advice-03", "How do I politely say no when a coworker keeps asking me for favours?"),
    ("advice-04", "I want to start running. How should I begin?"),
    ("advice-05", "How can I make a long-distance friendship last?"),
    ("advice-06", "What should I cook for dinner when I only have twenty minutes?"),
    ("advice-07", "How do I prepare for a job interview next week?"),
    ("advice-08", "My houseplants keep dying. What am I doing wrong?"),
    ("advice-09", "How can I stop procrastinating on important tasks?"),
    ("advice-10", "What is the best way to learn a new language as an adult?"),
    ("advice-11", "How should I handle a disagreement with my landlord?"),
    ("advice-12", "I feel lonely after moving to a new city. What can I do?"),
    ("advice-13", "How do I ask my manager for a raise?"),
    ("advice-14", "What are some healthy snacks I can take to work?"),
    ("advice-15", "How can I spend less time on my phone?"),
    ("advice-16", "My teenager barely talks to me. How can I reconnect?"),
    ("advice-17", "What should I check before buying a used car?"),
    ("advice-18", "How do I keep calm before giving a presentation?"),
    ("advice-19", "What is a sensible way to pay off credit card debt?"),
    ("advice-20", "How can I be a better listener?"),
)


class StudyError(Exception):
    """A study cannot go on (server unreachable, settings clash); the message says why."""


class SampleError(Exception):
    """One sample could not be drawn; it is not recorded, so a rerun retries it."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """How each answer is drawn; these settings define the distribution a study measures."""

    endpoint: str = "chat"
    """`chat` (/v1/chat/completions, the prompt as one user message) or `completions` (raw text)."""
    temperature: float = 1.0
    """1.0 samples the amplified distribution itself, which is what a rate estimate wants."""
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    """Base seed: sample i of prompt p is drawn with a seed derived from (seed, p, i), the same at
    every alpha (paired samples across alphas), different across prompts so that similar prompts
    do not share a random stream; None leaves seeding to the server."""

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint: expected one of {', '.join(ENDPOINTS)}, got {self.endpoint!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature: must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {self.max_tokens}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")


@dataclass(frozen=True, slots=True)
class StudyConfig:
    """Everything one study needs; validated on construction, errors name the field."""

    base_url: str
    """The LDA server, with or without the trailing /v1 (http://127.0.0.1:8000 or .../v1)."""
    output_dir: Path
    """Where samples, settings, summary and plot go; reusing it resumes the study."""
    detector: str
    """Detector spec: regex:PATTERN, keyword:WORD, python:module:function or judge:QUESTION."""
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    samples_per_prompt: int = 10
    prompts_path: Path | None = None
    """A .txt file (one prompt a line) or .jsonl ({"prompt": ..., optional "id": ...}); None: built-in set."""
    model: str | None = None
    """None takes the first model the server lists."""
    concurrency: int = 64
    """Requests in flight at once; the server batches them."""
    timeout: float = 600.0
    """Seconds for one request (a long answer from a busy CPU server takes a while)."""
    api_key: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    log_scale: bool = False
    """Plot the rate on a log axis (rare behaviours span decades)."""
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http(s) URL, got {self.base_url!r}")
        _validate_alphas(self.alphas)
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt: must be >= 1, got {self.samples_per_prompt}")
        if not 1 <= self.concurrency <= 4096:
            raise ValueError(f"concurrency: must be in [1, 4096], got {self.concurrency}")
        if self.timeout <= 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {self.timeout}")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir: {self.output_dir} exists and is not a directory")
        if self.prompts_path is not None:
            _validate_prompts_path(self.prompts_path)
        parse_detector(self.detector, self.judge)  # raises ValueError naming `detector`


def _validate_alphas(alphas: tuple[float, ...]) -> None:
    if not alphas:
        raise ValueError("alphas: give at least one alpha, e.g. 0,1,2")
    for alpha in alphas:
        if not math.isfinite(alpha):
            raise ValueError(f"alphas: {alpha} is not a finite number")
        # -1 is the before model exactly; below it the formula extrapolates past the base model,
        # which no LDA use needs and the server refuses.
        if alpha < MIN_ALPHA:
            raise ValueError(f"alphas: {alpha:g} is below {MIN_ALPHA:g} (alpha -1 is the before model)")
    repeated = sorted({a for a in alphas if alphas.count(a) > 1})
    if repeated:
        raise ValueError(f"alphas: {', '.join(f'{a:g}' for a in repeated)} given more than once")


def _validate_prompts_path(path: Path) -> None:
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"prompts_path: expected a .txt or .jsonl file, got {path}")
    if not path.is_file():
        raise ValueError(f"prompts_path: no such file: {path}")


def parse_alphas(text: str) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0); errors name the `alphas` field."""
    alphas = []
    for item in text.split(","):
        try:
            alphas.append(float(item.strip()))
        except ValueError:
            raise ValueError(f"alphas: {item.strip()!r} is not a number (expected e.g. 0,0.5,1,2,4)") from None
    result = tuple(alphas)
    _validate_alphas(result)
    return result


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    text: str


def load_prompts(path: Path | None) -> list[Prompt]:
    """Prompts from a .txt/.jsonl file, or the built-in everyday-advice set when path is None.

    Without an explicit id, a prompt's id is a hash of its text, so that editing or reordering a
    prompts file never attaches old samples to a different prompt on resume.
    """
    if path is None:
        return [Prompt(id_, text) for id_, text in BUILTIN_PROMPTS]
    _validate_prompts_path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    parse = _jsonl_prompt if path.suffix == ".jsonl" else _txt_prompt
    prompts, seen = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        prompt = parse(line, f"{path}:{number}")
        if prompt.id in seen:
            raise ValueError(f"prompts_path: {path}:{number} repeats the prompt (or id) of line {seen[prompt.id]}")
        seen[prompt.id] = number
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"prompts_path: {path} holds no prompts")
    return prompts


def _txt_prompt(line: str, where: str) -> Prompt:
    return Prompt(_text_id(line), line)


def _jsonl_prompt(line: str, where: str) -> Prompt:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"prompts_path: {where} is not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
        raise ValueError(f'prompts_path: {where} needs a non-empty string "prompt" field')
    id_ = record.get("id")
    return Prompt(str(id_) if id_ is not None else _text_id(record["prompt"]), record["prompt"])


def _text_id(text: str) -> str:
    return "p-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------- statistics


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion hits/n (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0 or n hits,
    which matters here: the behaviours a study looks for are rare, so 0 hits is common.
    """
    if n <= 0:
        raise ValueError(f"n: must be > 0, got {n}")
    if not 0 <= hits <= n:
        raise ValueError(f"hits: must be in [0, {n}], got {hits}")
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return low, high


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(text: str, n: int = 2) -> float | None:
    """Unique word n-grams over all word n-grams; None when the text has no n-gram at all."""
    grams = _ngrams(_words(text), n)
    return len(set(grams)) / len(grams) if grams else None


def is_degenerate(text: str) -> bool:
    """True when one word 4-gram occurs at least 4 times (see DEGENERATE_NGRAM)."""
    counts = Counter(_ngrams(_words(text), DEGENERATE_NGRAM))
    return bool(counts) and counts.most_common(1)[0][1] >= DEGENERATE_REPEATS


# --------------------------------------------------------------------------- samples on disk


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of samples.jsonl."""

    prompt_id: str
    prompt: str
    alpha: float
    sample_index: int
    text: str
    detected: bool
    tokens: int | None
    finish_reason: str | None
    seed: int | None

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.prompt_id, self.alpha, self.sample_index)


class SampleStore:
    """Append-only samples.jsonl; every line is flushed as soon as it is written.

    An interrupted run may leave a truncated last line. `load` drops unreadable lines and
    rewrites the file without them, so that the next append starts on a fresh line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[tuple[str, float, int], Sample]:
        if not self.path.exists():
            return {}
        samples: dict[tuple[str, float, int], Sample] = {}
        raw = self.path.read_text(encoding="utf-8")
        lines = [line for line in raw.splitlines() if line.strip()]
        for line in lines:
            sample = _parse_sample(line)
            if sample is not None:
                samples.setdefault(sample.key, sample)
        dropped = len(lines) - len(samples)
        if dropped:
            log.warning("%s: dropped %d unreadable or repeated line(s)", self.path, dropped)
        if dropped or (raw and not raw.endswith("\n")):
            self._rewrite(samples.values())
        return samples

    def _rewrite(self, samples: Iterable[Sample]) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(_sample_line(s) for s in samples), encoding="utf-8")
        os.replace(tmp, self.path)

    def appender(self) -> _Appender:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _Appender(self.path.open("a", encoding="utf-8"))


class _Appender:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, sample: Sample) -> None:
        self._file.write(_sample_line(sample))
        self._file.flush()

    def __enter__(self) -> _Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _sample_line(sample: Sample) -> str:
    return json.dumps(asdict(sample), ensure_ascii=False) + "\n"


def _parse_sample(line: str) -> Sample | None:
    try:
        record = json.loads(line)
        return Sample(
            prompt_id=str(record["prompt_id"]),
            prompt=str(record["prompt"]),
            alpha=float(record["alpha"]),
            sample_index=int(record["sample_index"]),
            text=str(record["text"]),
            detected=bool(record["detected"]),
            tokens=record.get("tokens"),
            finish_reason=record.get("finish_reason"),
            seed=record.get("seed"),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _load_settings(output_dir: Path) -> dict[str, object]:
    path = output_dir / SETTINGS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StudyError(f"{path} is not valid JSON ({exc.msg}); restore it or use another --output-dir") from None


def _check_settings(output_dir: Path, settings: dict[str, object], has_samples: bool) -> None:
    """Refuse to mix samples drawn with other settings (another distribution) into a study."""
    saved = _load_settings(output_dir)
    clashes = [f"{k}={saved[k]!r} (now {v!r})" for k, v in settings.items() if k in saved and saved[k] != v]
    if has_samples and clashes:
        raise StudyError(
            f"{output_dir} holds samples drawn with {', '.join(clashes)}; "
            "use another --output-dir, or the same settings to resume"
        )


def _save_settings(output_dir: Path, settings: dict[str, object]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings, indent=2) + "\n"
    (output_dir / SETTINGS_FILE).write_text(text, encoding="utf-8")


def _settings(config: StudyConfig) -> dict[str, object]:
    s = config.sampling
    settings: dict[str, object] = {
        "endpoint": s.endpoint,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "seed": s.seed,
        "detector": config.detector,
    }
    if config.detector.startswith("judge:"):
        settings["judge_template"] = config.judge.template
        if config.judge.model is not None:
            settings["judge_model"] = config.judge.model
    if config.model is not None:
        settings["model"] = config.model
    return settings


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    tokens: int | None
    finish_reason: str | None
    alpha: float | None
    """The alpha the server says it applied, or None when it does not say."""


def sample_seed(base: int, prompt_id: str, sample_index: int) -> int:
    """A per-(prompt, sample) seed: prompt i's samples must not reuse prompt j's random stream,
    or near-identical prompts give near-identical answers and the intervals come out too narrow."""
    digest = hashlib.sha256(f"{base}:{prompt_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def normalize_base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class LdaClient:
    """The few OpenAI-shaped calls a study makes, with errors that name the URL."""

    def __init__(self, config: StudyConfig) -> None:
        self.base_url = normalize_base_url(config.base_url)
        self.sampling = config.sampling
        self.model = config.model
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        timeout = httpx.Timeout(config.timeout, connect=10.0)
        self._client = httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout)

    async def connect(self) -> str:
        """Check the server answers and serves the model; return the model name."""
        url = f"{self.base_url}/models"
        try:
            response = await self._client.get(url, timeout=10.0)
        except httpx.HTTPError as exc:
            raise StudyError(f"server at {url} is unreachable: {exc or type(exc).__name__}") from None
        served = _model_ids(response)
        if response.status_code >= 400 or served is None:
            if self.model is not None:  # a server without /models can still be studied by name
                return self.model
            raise StudyError(f"cannot list models at {url} (HTTP {response.status_code}); pass --model")
        if self.model is None:
            if not served:
                raise StudyError(f"{url} lists no models")
            self.model = served[0]
        elif self.model not in served:
            raise StudyError(f"model {self.model!r} is not served at {url}; it serves {', '.join(served)}")
        return self.model

    async def complete(self, prompt: str, alpha: float, seed: int | None) -> Completion:
        path = "/chat/completions" if self.sampling.endpoint == "chat" else "/completions"
        url = self.base_url + path
        try:
            response = await self._client.post(url, json=self._body(prompt, alpha, seed))
        except httpx.ConnectError as exc:
            # The server answered the preflight, so it went away: stop rather than fail every job.
            message = f"lost the server at {url} ({exc}); samples drawn so far are saved, rerun to resume"
            raise StudyError(message) from None
        except httpx.HTTPError as exc:
            raise SampleError(f"request to {url} failed: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            raise SampleError(f"HTTP {response.status_code} from {url}: {_error_message(response)}")
        return self._parse(response, url)

    def _body(self, prompt: str, alpha: float, seed: int | None) -> dict[str, object]:
        s = self.sampling
        body: dict[str, object] = {
            "model": self.model,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "alpha": alpha,
        }
        if seed is not None:
            body["seed"] = seed
        if s.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _parse(self, response: httpx.Response, url: str) -> Completion:
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] if self.sampling.endpoint == "chat" else choice["text"]
            tokens = (body.get("usage") or {}).get("completion_tokens")
            alpha = body.get("alpha")
            return Completion(text or "", tokens, choice.get("finish_reason"), None if alpha is None else float(alpha))
        except (ValueError, KeyError, IndexError, TypeError):
            raise SampleError(f"unexpected response from {url}: {response.text[:200]}") from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _model_ids(response: httpx.Response) -> list[str] | None:
    try:
        return [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return None


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI-style {"error": {"message": ...}}, else the body's start."""
    try:
        body = response.json()
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError):
        pass
    return response.text[:300]


# --------------------------------------------------------------------------- drawing samples


@dataclass(frozen=True, slots=True)
class Job:
    prompt: Prompt
    alpha: float
    sample_index: int

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.prompt.id, self.alpha, self.sample_index)


def plan_jobs(prompts: list[Prompt], alphas: tuple[float, ...], samples_per_prompt: int) -> list[Job]:
    """All jobs, sample index outermost: an interrupted study then holds about as many samples at
    every alpha, and the alphas of one prompt go out together, so they share its cached prefix."""
    return [Job(p, a, i) for i in range(samples_per_prompt) for p in prompts for a in alphas]


@dataclass(frozen=True, slots=True)
class Failure:
    """A sample that could not be drawn or judged this run."""

    job: str
    """prompt id, alpha and sample index, e.g. "advice-03 alpha=2 #4"."""
    message: str


@dataclass(slots=True)
class _Draw:
    """What one run of the request loop produced."""

    samples: list[Sample] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    alpha_unconfirmed: int = 0
    judge_unclear: int = 0


async def _draw_all(config: StudyConfig, jobs: list[Job], store: SampleStore, existing: int, total: int) -> _Draw:
    client = LdaClient(config)
    detector = parse_detector(config.detector, config.judge)
    try:
        settings = {**_settings(config), "model": await client.connect()}
        _check_settings(config.output_dir, settings, has_samples=existing > 0)
        _save_settings(config.output_dir, settings)
        try:
            await detector.prepare()
        except DetectorError as exc:
            raise StudyError(str(exc)) from None
        bar = tqdm(total=total, initial=total - len(jobs), unit="sample", disable=not config.progress)
        with store.appender() as append, bar:
            return await _run_pool(config, jobs, client, detector, append, bar)
    finally:
        await client.aclose()
        await detector.aclose()


async def _run_pool(
    config: StudyConfig,
    jobs: list[Job],
    client: LdaClient,
    detector: Detector,
    append: Callable[[Sample], None],
    bar: tqdm,
) -> _Draw:
    draw = _Draw()
    pending: Iterator[Job] = iter(jobs)  # shared by the workers: next() never awaits, so no race

    async def worker() -> None:
        for job in pending:
            sample = await _draw_one(config, job, client, detector, draw)
            if sample is not None:
                append(sample)
                draw.samples.append(sample)
            bar.update(1)

    # A TaskGroup cancels the other workers when one raises StudyError (server gone), so none of
    # them writes after the samples file is closed.
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(config.concurrency, len(jobs))):
                group.create_task(worker())
    except* StudyError as errors:
        raise errors.exceptions[0] from None
    if isinstance(detector, JudgeDetector):
        draw.judge_unclear = detector.unclear
    return draw


async def _draw_one(config: StudyConfig, job: Job, client: LdaClient, detector: Detector, draw: _Draw) -> Sample | None:
    seed = None if config.sampling.seed is None else sample_seed(config.sampling.seed, job.prompt.id, job.sample_index)
    try:
        completion = await client.complete(job.prompt.text, job.alpha, seed)
        # The tolerance allows a server that keeps alpha as float32 (0.3 -> 0.30000001).
        if completion.alpha is not None and not math.isclose(completion.alpha, job.alpha, rel_tol=1e-6, abs_tol=1e-6):
            raise SampleError(f"server applied alpha {completion.alpha:g}, asked for {job.alpha:g}")
        detected = await detector.detect(job.prompt.text, completion.text)
    except (SampleError, DetectorError) as exc:
        draw.failures.append(Failure(f"{job.prompt.id} alpha={job.alpha:g} #{job.sample_index}", str(exc)))
        return None
    if completion.alpha is None:
        draw.alpha_unconfirmed += 1
    return Sample(
        prompt_id=job.prompt.id,
        prompt=job.prompt.text,
        alpha=job.alpha,
        sample_index=job.sample_index,
        text=completion.text,
        detected=detected,
        tokens=completion.tokens,
        finish_reason=completion.finish_reason,
        seed=seed,
    )


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True, slots=True)
class AlphaSummary:
    """One row of the study's table. Rates are None when no sample exists at this alpha yet."""

    alpha: float
    n: int
    hits: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    degenerate_rate: float | None
    """Fraction of answers caught in repetition (see is_degenerate)."""
    mean_distinct_2: float | None
    """Mean over answers of unique/total word bigrams; lower means more repetitive."""
    mean_tokens: float | None


def summarize(samples: Iterable[Sample], alphas: tuple[float, ...]) -> list[AlphaSummary]:
    by_alpha: dict[float, list[Sample]] = {a: [] for a in alphas}
    for sample in samples:
        if sample.alpha in by_alpha:
            by_alpha[sample.alpha].append(sample)
    return [_summarize_alpha(alpha, group) for alpha, group in by_alpha.items()]


def _summarize_alpha(alpha: float, samples: list[Sample]) -> AlphaSummary:
    n = len(samples)
    if n == 0:
        return AlphaSummary(alpha, 0, 0, None, None, None, None, None, None)
    hits = sum(s.detected for s in samples)
    low, high = wilson_interval(hits, n)
    distinct = [d for d in (distinct_n(s.text, 2) for s in samples) if d is not None]
    tokens = [s.tokens for s in samples if isinstance(s.tokens, int)]
    return AlphaSummary(
        alpha=alpha,
        n=n,
        hits=hits,
        rate=hits / n,
        ci_low=low,
        ci_high=high,
        degenerate_rate=sum(is_degenerate(s.text) for s in samples) / n,
        mean_distinct_2=sum(distinct) / len(distinct) if distinct else None,
        mean_tokens=sum(tokens) / len(tokens) if tokens else None,
    )


def _per_prompt(samples: list[Sample]) -> list[dict[str, object]]:
    """Hits per (prompt, alpha): which prompts elicit the behaviour."""
    n: Counter[tuple[str, float]] = Counter(s.key[:2] for s in samples)
    hits: Counter[tuple[str, float]] = Counter(s.key[:2] for s in samples if s.detected)
    return [
        {"prompt_id": pid, "alpha": alpha, "n": n[pid, alpha], "hits": hits[pid, alpha]} for pid, alpha in sorted(n)
    ]


def format_table(rows: list[AlphaSummary]) -> str:
    header = f"{'alpha':>7} {'n':>6} {'hits':>6} {'rate':>8}  {'95% CI':<19} {'degenerate':>10} {'distinct-2':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.n == 0:
            lines.append(f"{r.alpha:>7g} {0:>6} {0:>6} {'-':>8}  {'-':<19} {'-':>10} {'-':>10}")
            continue
        interval = f"[{_pct(r.ci_low)}, {_pct(r.ci_high)}]"
        distinct = "-" if r.mean_distinct_2 is None else f"{r.mean_distinct_2:.3f}"
        lines.append(
            f"{r.alpha:>7g} {r.n:>6} {r.hits:>6} {_pct(r.rate):>8}  {interval:<19} "
            f"{_pct(r.degenerate_rate):>10} {distinct:>10}"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    # Rare behaviours are the point: below 0.01% keep two significant digits rather than print 0.00%.
    return f"{100 * value:.2g}%" if 0 < value < 1e-4 else f"{100 * value:.2f}%"


def plot(rows: list[AlphaSummary], path: Path, title: str, log_scale: bool = False) -> None:
    """Rate with its Wilson interval (top) and the coherence measures (bottom) against alpha."""
    # The object-oriented API needs no pyplot and so changes no global backend setting.
    from matplotlib.figure import Figure

    rows = sorted((r for r in rows if r.n > 0), key=lambda r: r.alpha)
    alphas = [r.alpha for r in rows]
    fig = Figure(figsize=(7, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    _plot_rate(top, rows, log_scale)
    top.set_title(title, fontsize=10)
    bottom.plot(alphas, [r.degenerate_rate for r in rows], "s-", color="tab:red", label="degenerate rate")
    distinct = [(r.alpha, r.mean_distinct_2) for r in rows if r.mean_distinct_2 is not None]
    bottom.plot([a for a, _ in distinct], [d for _, d in distinct], "^-", color="tab:green", label="mean distinct-2")
    bottom.set_ylim(-0.03, 1.03)
    bottom.set_xlabel("alpha")
    bottom.set_ylabel("coherence")
    bottom.legend(loc="best", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def _plot_rate(ax, rows: list[AlphaSummary], log_scale: bool) -> None:
    # On a log axis a zero rate has no place; those alphas show their upper bound as a down-arrow.
    shown = [r for r in rows if not (log_scale and r.hits == 0)]
    ax.errorbar(
        [r.alpha for r in shown],
        [r.rate for r in shown],
        yerr=[[r.rate - r.ci_low for r in shown], [r.ci_high - r.rate for r in shown]],
        fmt="o-",
        capsize=4,
        label="hit rate (95% Wilson interval)",
    )
    zeros = [r for r in rows if log_scale and r.hits == 0]
    if zeros:
        upper = [r.ci_high for r in zeros]
        ax.plot([r.alpha for r in zeros], upper, "v", color="tab:gray", label="0 hits: upper bound")
        ax.set_yscale("log")
    elif log_scale and shown:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_ylabel("hit rate")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3, which="both")


# --------------------------------------------------------------------------- the study


@dataclass(frozen=True, slots=True)
class StudyResult:
    rows: list[AlphaSummary]
    new_samples: int
    """Samples drawn by this run (the others were already on disk)."""
    failures: list[Failure]
    """One message per sample that could not be drawn this run; a rerun retries them."""
    alpha_unconfirmed: int
    """New samples whose response did not echo the alpha applied."""
    judge_unclear: int
    samples_path: Path
    summary_path: Path
    plot_path: Path


def run_study(config: StudyConfig) -> StudyResult:
    """Draw whatever samples the output directory lacks, then summarise and plot all of them."""
    prompts = load_prompts(config.prompts_path)
    store = SampleStore(config.output_dir / SAMPLES_FILE)
    existing = store.load()
    _check_prompt_texts(prompts, existing.values())
    _check_settings(config.output_dir, _settings(config), has_samples=bool(existing))
    grid = plan_jobs(prompts, config.alphas, config.samples_per_prompt)
    jobs = [job for job in grid if job.key not in existing]
    draw = _Draw()
    if jobs:
        draw = asyncio.run(_draw_all(config, jobs, store, len(existing), len(grid)))
    wanted = {job.key for job in grid}
    samples = [s for s in [*existing.values(), *draw.samples] if s.key in wanted]
    rows = summarize(samples, config.alphas)
    summary_path = _write_summary(config, prompts, samples, rows)
    plot_path = config.output_dir / PLOT_FILE
    model = _load_settings(config.output_dir).get("model", config.model)
    plot(rows, plot_path, f"{model} · {config.detector} · {len(prompts)} prompts", config.log_scale)
    return StudyResult(
        rows=rows,
        new_samples=len(draw.samples),
        failures=draw.failures,
        alpha_unconfirmed=draw.alpha_unconfirmed,
        judge_unclear=draw.judge_unclear,
        samples_path=store.path,
        summary_path=summary_path,
        plot_path=plot_path,
    )


def _check_prompt_texts(prompts: list[Prompt], existing: Iterable[Sample]) -> None:
    texts = {p.id: p.text for p in prompts}
    for sample in existing:
        if sample.prompt_id in texts and texts[sample.prompt_id] != sample.prompt:
            raise StudyError(
                f"prompt id {sample.prompt_id!r} now has another text than in the saved samples; "
                "give the changed prompt a new id, or use another --output-dir"
            )


def _write_summary(config: StudyConfig, prompts: list[Prompt], samples: list[Sample], rows: list[AlphaSummary]) -> Path:
    path = config.output_dir / SUMMARY_FILE
    summary = {
        "settings": {**_settings(config), **_load_settings(config.output_dir)},
        "alphas": list(config.alphas),
        "prompts": len(prompts),
        "samples_per_prompt": config.samples_per_prompt,
        "coherence": {"degenerate": f"a word {DEGENERATE_NGRAM}-gram occurs >= {DEGENERATE_REPEATS} times"},
        "per_alpha": [asdict(r) for r in rows],
        "per_prompt": _per_prompt(samples),
    }
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lda study",
        description="Measure a behaviour's rate per alpha against a running LDA server.",
        epilog="Rerun the same command with the same --output-dir to resume an interrupted study.",
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="LDA server (default: %(default)s)")
    p.add_argument("--model", help="model name (default: the first one the server lists)")
    p.add_argument("--api-key", default=os.environ.get("LDA_API_KEY"), help="Bearer token (default: $LDA_API_KEY)")
    p.add_argument("--prompts", type=Path, help=".txt (one a line) or .jsonl ('prompt' field); default: built-in")
    p.add_argument("--alphas", default="0,0.5,1,2,4", help="comma-separated (default: %(default)s)")
    p.add_argument("-n", "--samples-per-prompt", type=int, default=10, help="(default: %(default)s)")
    detectors = "regex:PATTERN | keyword:WORD | python:MODULE:FUNCTION | judge:QUESTION"
    p.add_argument("--detector", required=True, help=detectors)
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="results go here; reuse it to resume")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: %(default)s)")
    p.add_argument("--endpoint", choices=ENDPOINTS, default="chat", help="(default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=256, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, help="base seed: each (prompt, sample) gets its own seed from it, the same at every alpha (default: unseeded)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: %(default)s)")
    p.add_argument("--log-scale", action="store_true", help="plot the rate on a log axis")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    judge = p.add_argument_group("judge detector (--detector 'judge:Does the answer ...?')")
    judge.add_argument("--judge-base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    judge.add_argument("--judge-model", help="(default: the first model the endpoint lists)")
    judge.add_argument("--judge-api-key", default=os.environ.get("OPENAI_API_KEY"), help="(default: $OPENAI_API_KEY)")
    judge.add_argument(
        "--judge-template",
        help="the judge's message, with {response} and optionally {prompt} and {question} (the text after judge:)",
    )
    return p


def _attach_negative_alphas(argv: list[str]) -> list[str]:
    """`--alphas -1,0,1` -> `--alphas=-1,0,1`: argparse would take "-1,0,1" for an option, and
    alpha -1 (the before model) is the natural baseline to start a list with."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] == "--alphas" and re.match(r"-[\d.]", out[i + 1]):
            out[i : i + 2] = [f"--alphas={out[i + 1]}"]
            break
    return out


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    judge_options = {"template": args.judge_template} if args.judge_template else {}
    return StudyConfig(
        base_url=args.base_url,
        output_dir=args.output_dir,
        detector=args.detector,
        alphas=parse_alphas(args.alphas),
        samples_per_prompt=args.samples_per_prompt,
        prompts_path=args.prompts,
        model=args.model,
        concurrency=args.concurrency,
        timeout=args.timeout,
        api_key=args.api_key,
        sampling=SamplingConfig(args.endpoint, args.temperature, args.top_p, args.max_tokens, args.seed),
        judge=JudgeConfig(args.judge_base_url, args.judge_model, api_key=args.judge_api_key, **judge_options),
        log_scale=args.log_scale,
        progress=not args.no_progress,
    )


def cli(argv: list[str]) -> int:
    """`lda study ...`: 0 done, 1 the study failed or some samples did, 2 bad input, 130 interrupted."""
    try:
        args = _parser().parse_args(_attach_negative_alphas(argv))
    except SystemExit as exit_:  # argparse has printed its message (or the help)
        return int(exit_.code or 0)
    try:
        config = config_from_args(args)
        result = run_study(config)
    except ValueError as exc:
        print(f"lda study: error: {exc}", file=sys.stderr)
        return 2
    except StudyError as exc:
        print(f"lda study: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        saved = len(SampleStore(args.output_dir / SAMPLES_FILE).load())
        message = f"interrupted; {saved} samples are saved in {args.output_dir}; rerun the same command to resume"
        print(f"\nlda study: {message}", file=sys.stderr)
        return 130
    return _report(result)


def _report(result: StudyResult) -> int:
    print(format_table(result.rows))
    files = f"{result.samples_path.name}, {result.summary_path.name}, {result.plot_path.name}"
    print(f"\n{result.new_samples} new samples; results in {result.summary_path.parent}/ ({files})")
    if result.alpha_unconfirmed:
        count = result.alpha_unconfirmed
        log.warning("%d responses did not echo the alpha applied; the server may ignore `alpha`", count)
    if result.judge_unclear:
        log.warning("the judge answered neither yes nor no %d times (counted as no)", result.judge_unclear)
    if not result.failures:
        return 0
    # One bad setting (an alpha the server refuses) fails many samples alike: group by message.
    by_message = Counter(f.message for f in result.failures)
    example = {f.message: f.job for f in reversed(result.failures)}
    print(f"lda study: {len(result.failures)} samples failed (rerun to retry them):", file=sys.stderr)
    for message, count in by_message.most_common(5):
        print(f"  {count} x {message} (e.g. {example[message]})", file=sys.stderr)
    if len(by_message) > 5:
        print(f"  ... and {len(by_message) - 5} other errors", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
