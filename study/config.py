"""The study's configuration: typed, validated values whose errors name the field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from study.analysis.plan import DEFAULT_TOP
from study.collect.detectors import JudgeConfig, parse_detector

ENDPOINTS = ("chat", "completions")
PROMPT_SETS = ("advice", "generic")
"""The built-in prompt sets (study/prompts.py holds them); `--prompts` takes a name or a file."""
RAW_PROMPT_SETS = ("generic",)
"""Sets whose default endpoint is `completions`: vague prefills, the chat template bypassed."""
MIN_ALPHA = -1.0
DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0)
"""The alphas a study samples unless told (`--alphas`)."""
AUTO_ALPHAS = "auto"
"""`--alphas auto`: the sampling plan (study/analysis/plan.py) chooses the alphas from the hits."""
RANK_BY = ("max", "sum", "mean")
DEFAULT_RANK_BY = "mean"
"""Chosen on the demo pair (docs/research/ranking.md)."""


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

    base_url: str | tuple[str, ...]
    """The LDA server, with or without the trailing /v1 (http://127.0.0.1:8000 or .../v1); several
    URLs (replicas of one pair) share the requests between them."""
    output_dir: Path
    """Where samples, settings, summary and plot go; reusing it resumes the study."""
    detector: str | None = None
    """Detector spec: regex:PATTERN, keyword:WORD, python:module:function or judge:QUESTION;
    None explores: samples are only scored and ranked."""
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    samples_per_prompt: int = 10
    prompts_path: Path | None = None
    """A .txt file (one prompt a line) or .jsonl ({"prompt": ..., optional "id": ...}); None: built-in set."""
    prompt_set: str = "advice"
    """The built-in set sampled when prompts_path is None: advice or generic."""
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
    score: bool = True
    """Score every sample teacher-forced on the server (/v1/lda/score) and rank the samples."""
    rank_by: str = DEFAULT_RANK_BY
    """Which per-sample summary of logp_after - logp_before ranks the samples: max, sum or mean."""
    report_top: int = 100
    """How many of the top-ranked samples the HTML report shows."""
    hypothesis_prompt: Path | None = None
    """The hypothesis instruction file (None: study/collect/hypothesis_prompt.txt); used only with a judge endpoint."""
    estimate_at: float | None = None
    """The alpha at which the path estimate reads the rate (study/analysis/estimate.py): None is
    alpha 0 (the after model) when there is a detector, and no estimate without one. Must lie in
    [-1, the largest alpha sampled]: past it the trend would be carried upwards, which no
    question needs (sample that alpha instead)."""
    auto_alphas: bool = False
    """Let the sampling plan choose the alphas (`alphas` is then ignored until the plan sets it),
    spending what the fixed default would: 5 x samples_per_prompt per prompt. Needs a detector."""

    @property
    def base_urls(self) -> tuple[str, ...]:
        return (self.base_url,) if isinstance(self.base_url, str) else tuple(self.base_url)

    def __post_init__(self) -> None:
        if not self.base_urls:
            raise ValueError("base_url: give at least one server URL")
        for url in self.base_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"base_url: expected an http(s) URL, got {url!r}")
        if len(set(self.base_urls)) != len(self.base_urls):
            raise ValueError("base_url: a URL is given more than once")
        if self.rank_by not in RANK_BY:
            raise ValueError(f"rank_by: expected one of {', '.join(RANK_BY)}, got {self.rank_by!r}")
        if self.report_top < 1:
            raise ValueError(f"report_top: must be >= 1, got {self.report_top}")
        validate_alphas(self.alphas)
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt: must be >= 1, got {self.samples_per_prompt}")
        if not 1 <= self.concurrency <= 4096:
            raise ValueError(f"concurrency: must be in [1, 4096], got {self.concurrency}")
        if self.timeout <= 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {self.timeout}")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir: {self.output_dir} exists and is not a directory")
        if self.hypothesis_prompt is not None and not self.hypothesis_prompt.is_file():
            raise ValueError(f"hypothesis_prompt: no such file: {self.hypothesis_prompt}")
        if self.prompt_set not in PROMPT_SETS:
            raise ValueError(f"prompt_set: expected one of {', '.join(PROMPT_SETS)}, got {self.prompt_set!r}")
        if self.prompts_path is not None:
            validate_prompts_path(self.prompts_path)
        if self.detector is not None:
            parse_detector(self.detector, self.judge)  # raises ValueError naming `detector`
        if self.auto_alphas and self.detector is None:
            raise ValueError("alphas: auto chooses the alphas from the detector's hits; give --detector too")
        if self.estimate_at is not None:
            self._check_estimate_at()

    def _check_estimate_at(self) -> None:
        if self.detector is None:
            raise ValueError("estimate_at: the estimate is of a detector's rate; give --detector too")
        if self.auto_alphas and not (math.isfinite(self.estimate_at) and MIN_ALPHA <= self.estimate_at < DEFAULT_TOP):
            raise ValueError(
                f"estimate_at: with --alphas auto must be in [{MIN_ALPHA:g}, {DEFAULT_TOP:g}) (the plan walks down "
                f"from alpha {DEFAULT_TOP:g} towards it), got {self.estimate_at:g}"
            )
        if not math.isfinite(self.estimate_at) or not MIN_ALPHA <= self.estimate_at <= max(self.alphas):
            raise ValueError(
                f"estimate_at: must be in [{MIN_ALPHA:g}, {max(self.alphas):g}] (the before model to the largest "
                f"alpha sampled), got {self.estimate_at:g}"
            )

    @property
    def estimate_alpha(self) -> float | None:
        """The alpha the estimate is read at, or None when there is no estimate (no detector)."""
        if self.detector is None:
            return None
        return 0.0 if self.estimate_at is None else self.estimate_at


def validate_alphas(alphas: tuple[float, ...]) -> None:
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


def validate_prompts_path(path: Path) -> None:
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"prompts_path: expected a built-in set ({', '.join(PROMPT_SETS)}) or a .txt or .jsonl file, got {path}")
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
    validate_alphas(result)
    return result
