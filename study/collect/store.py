"""The sample store: samples.jsonl, appended and flushed one judged answer at a time, so that a study
can be interrupted at any moment and resumed."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from study.output.files import write_atomically
from study.records import Sample

log = logging.getLogger(__name__)



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
        samples, raw, lines = self._parse()
        dropped = len(lines) - len(samples)
        if dropped:
            log.warning("%s: dropped %d unreadable or repeated line(s)", self.path, dropped)
        if dropped or (raw and not raw.endswith("\n")):
            self._rewrite(samples.values())
        return samples

    def read(self) -> dict[tuple[str, float, int], Sample]:
        """The readable samples, leaving the file as it is (for tools that only read a study)."""
        return self._parse()[0] if self.path.exists() else {}

    def _parse(self) -> tuple[dict[tuple[str, float, int], Sample], str, list[str]]:
        samples: dict[tuple[str, float, int], Sample] = {}
        raw = self.path.read_text(encoding="utf-8")
        lines = [line for line in raw.splitlines() if line.strip()]
        for line in lines:
            sample = _parse_sample(line)
            if sample is not None:
                samples.setdefault(sample.key, sample)
        return samples, raw, lines

    def _rewrite(self, samples: Iterable[Sample]) -> None:
        write_atomically(self.path, "".join(_sample_line(s) for s in samples))

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
            detected=None if record["detected"] is None else bool(record["detected"]),
            tokens=record.get("tokens"),
            finish_reason=record.get("finish_reason"),
            seed=record.get("seed"),
        )
    except (ValueError, KeyError, TypeError):
        return None
