"""A training run's checkpoints: which folders of RUN_DIR are checkpoints, of what kind, in step order.

`lda monitor` reads runs as trainers write them. The Hugging Face Trainer writes `checkpoint-<step>/`
folders (for a PEFT run: `adapter_config.json` and the adapter weights, beside the optimizer state
and `trainer_state.json`); other tools leave a plain list of adapter folders. Both are found here.
A checkpoint is `adapter` (a PEFT adapter: loaded into the running pair) or `full` (a complete
model: served by starting a pair for it). A trainer writes a checkpoint's files one after another,
so a folder only counts once its weights exist and have not changed for `settle_s` seconds.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from study.records import Checkpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FULL_CONFIG = "config.json"
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TRAINER_STATE = "trainer_state.json"
_TRAINER_FOLDER = re.compile(r"^checkpoint-(\d+)$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def find_checkpoints(run_dir: Path, settle_s: float = 2.0, skip: tuple[Path, ...] = ()) -> list[Checkpoint]:
    """The complete checkpoints of `run_dir` in step order: its `checkpoint-*` folders when it has
    any (Trainer layout), else every subfolder holding a model or adapter. Folders in `skip` (the
    monitor's own output) are ignored."""
    skipped = {p.resolve() for p in skip}
    folders = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.resolve() not in skipped and not p.name.startswith("."))
    trainer = [p for p in folders if _TRAINER_FOLDER.match(p.name)]
    candidates = trainer or folders
    found = []
    for position, folder in enumerate(candidates):
        kind = _kind(folder, settle_s)
        if kind is not None:
            found.append(Checkpoint(folder.name, folder, _step(folder, position), kind))
    return sorted(found, key=lambda c: (c.step, c.name))


def _kind(folder: Path, settle_s: float) -> str | None:
    if (folder / ADAPTER_CONFIG).is_file():
        return "adapter" if _settled(folder, ADAPTER_WEIGHTS, settle_s) else None
    if (folder / FULL_CONFIG).is_file():
        return "full" if _settled(folder, FULL_WEIGHTS, settle_s) else None
    return None


def _settled(folder: Path, weights: tuple[str, ...], settle_s: float) -> bool:
    """The weights exist and have not been written to for `settle_s` seconds (a trainer may still
    be writing them)."""
    files = [folder / name for name in weights if (folder / name).is_file()]
    return bool(files) and all(time.time() - f.stat().st_mtime >= settle_s for f in files)


def _step(folder: Path, position: int) -> int:
    try:
        return int(json.loads((folder / TRAINER_STATE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    match = _TRAILING_NUMBER.search(folder.name)
    return int(match.group(1)) if match else position
