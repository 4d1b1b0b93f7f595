"""The records passed between a study's stages: a prompt, a sample drawn for it, the sample's score,
a training run's checkpoint, a corpus text. Plain frozen dataclasses; how they are read and written lives in
`collect` (the store, the scoring pass), what is computed from them in `analysis`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

Key = tuple[str, float, int]
"""A sample's identity: (prompt id, alpha, sample index); keys samples.jsonl and scores.jsonl alike."""


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of samples.jsonl."""

    prompt_id: str
    prompt: str
    alpha: float
    sample_index: int
    text: str
    detected: bool | None
    """The detector's verdict; None when the study has no detector (`lda explore`)."""
    tokens: int | None
    finish_reason: str | None
    seed: int | None

    @property
    def key(self) -> Key:
        return (self.prompt_id, self.alpha, self.sample_index)


@dataclass(frozen=True, slots=True)
class SampleScore:
    """One line of scores.jsonl: a sample's key, its per-token values and its summary."""

    key: Key
    tokens: list[dict]
    """Each: token, logp_after, logp_before, logp_amplified, diff."""
    summary: dict
    """sum, mean, max, argmax, tokens."""

    def value(self, rank_by: str) -> float:
        return float(self.summary[rank_by])


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    """The folder's name; names the checkpoint's study subfolder and its runtime adapter."""
    path: Path
    step: int
    """The training step: trainer_state.json's global_step, else the number in the name, else the
    folder's position in name order."""
    kind: str
    """`adapter` (PEFT LoRA) or `full` (a complete model)."""


@dataclass(frozen=True, slots=True)
class CorpusText:
    """One text of a corpus (`lda mine --corpus`), keyed by its id or file:line."""

    key: str
    prompt: str | None
    """A chat user message the text answers, or None (raw text: its first word is the prompt)."""
    text: str
