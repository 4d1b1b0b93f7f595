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


ATTENTION_AND_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_adapter(
    base: Path, out_dir: Path, rank: int = 8, seed: int = 0, targets=ATTENTION_AND_MLP, scale: float = 0.5
) -> Path:
    """Save a PEFT LoRA adapter on `base` whose A and B are both random (peft starts B at zero,
    which would make the adapter a no-op), large enough to change greedy choices."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(out_dir)
    return out_dir


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
