"""Test factories: the tiny model builders live in `engine.tiny_models` (the selftest needs them
in the installed package); tests import them from here."""

from __future__ import annotations

import json
from pathlib import Path

from engine.tiny_models import (  # noqa: F401 - re-exported for the tests
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TinyPair,
    build_added_eos_pair,
    build_model,
    build_pair,
    build_tokenizer,
)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path
