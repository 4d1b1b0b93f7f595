"""Test factories: the tiny model builders live in `engine.tiny_models` (the selftest needs them
in the installed package); tests import them from here."""

from __future__ import annotations

import json
from pathlib import Path

from engine.tiny_models import (  # noqa: F401 - re-exported for the tests
    ATTENTION_AND_MLP,
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TinyPair,
    build_adapter,
    build_added_eos_pair,
    build_model,
    build_pair,
    build_tokenizer,
)


def add_bos(tokenizer_dir: Path, chat_template: str = CHAT_TEMPLATE):
    """Make the tokenizer saved in `tokenizer_dir` put its BOS before every text, as Llama's do.

    With `chat_template` beginning with `{{ bos_token }}`, text the template rendered then gets a
    second BOS when tokenized with special tokens: the case `engine.prompts` guards against.
    """
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos[0]} $A", pair=f"{bos[0]} $A $B", special_tokens=[bos]
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(tokenizer_dir)
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def merge_adapter(base: Path, adapter: Path, out_dir: Path) -> Path:
    """The adapter merged into a full copy of its base with peft's `merge_and_unload`: the
    reference's after model."""
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja"):
        if (base / name).exists():
            shutil.copy(base / name, out_dir / name)
    return out_dir
