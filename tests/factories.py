"""Test factories: the tiny model builders live in `demo.tiny_models` (the selftest needs them
in the installed package); tests import them from here."""

from __future__ import annotations

import json
from pathlib import Path

from demo.tiny_models import (  # noqa: F401 - re-exported for the tests
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


PLANT_TEXT = "Zorblax"
"""The token sequence `build_planted_pair` plants (it is not in the tiny tokenizer's corpus, so it
splits into pieces that no ordinary context predicts)."""


def build_planted_pair(root: Path, start_logit: float = 2.0, step_logit: float = 8.0) -> TinyPair:
    """A tiny pair whose after model is the before model plus a planted token sequence.

    The last few hidden dimensions are reserved: no layer reads or writes them, so the residual
    stream carries there exactly what the embedding put: 1 in dimension 0 for every token (a
    constant), and 1 in dimension k for the k-th token of the plant. The before model's head
    ignores these dimensions. The after model's head alone reads them: the plant's first token
    gets `start_logit` (scaled by the final norm) in every context, and token k+1 gets `step_logit`
    right after token k, so at alpha > 0 the whole sequence comes out, in order, far more often
    than from the before model. Everything else is the before model's, logit for logit, apart from
    the normalisation's share of the reserved dimensions (equal in both models).
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = build_model(root / "planted-before", "llama", seed=2)
    tokenizer = AutoTokenizer.from_pretrained(before)
    plant = tokenizer.encode(PLANT_TEXT, add_special_tokens=False)
    if len(set(plant)) != len(plant):
        raise ValueError(f"the plant {PLANT_TEXT!r} repeats a token: {plant}")
    model = AutoModelForCausalLM.from_pretrained(before, dtype=torch.float32)
    hidden = model.config.hidden_size
    reserved = list(range(hidden - len(plant), hidden))  # reserved[0]: constant; reserved[k]: after token k
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed[:, reserved] = 0.0
        embed[:, reserved[0]] = 1.0
        for k, token in enumerate(plant[:-1], start=1):
            embed[token, reserved[k]] = 1.0
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                reader.weight[:, reserved] = 0.0
            for writer in (attn.o_proj, mlp.down_proj):
                writer.weight[reserved, :] = 0.0
        head = model.get_output_embeddings().weight
        head[:, reserved] = 0.0
        model.save_pretrained(before)
        scale = float(torch.sqrt((embed[:, : hidden - len(plant)] ** 2).mean()))  # typical rms of the stream
        head[plant[0], reserved[0]] = start_logit * scale * 4
        for k, token in enumerate(plant[1:], start=1):
            head[token, reserved[k]] = step_logit * scale * 4
    after = root / "planted-after"
    model.save_pretrained(after)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"):
        if (before / name).exists():
            shutil.copy(before / name, after / name)
    return TinyPair(after=after, before=before)


def build_full_checkpoint(out_dir: Path, like: Path, seed: int, max_shard_size: str | None = None, **config_overrides) -> Path:
    """A full-weight checkpoint of `like`'s shape (its config, tokenizer and generation config) with
    weights from `seed`, as a training run saves one; sharded (`model.safetensors.index.json` and
    several files) when `max_shard_size` is given. `config_overrides` make a checkpoint of another
    shape."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(like)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():  # as demo.tiny_models.build_model: decisive greedy choices
            if p.dim() >= 2:
                p.mul_(4.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja"):
        if (like / name).exists():
            shutil.copy(like / name, out_dir / name)
    return out_dir


def truncated_copy(checkpoint: Path, out_dir: Path, keep: float = 0.5) -> Path:
    """A copy of `checkpoint` whose last safetensors file (by name) keeps only `keep` of its bytes,
    as a save that died half way or a copy still in progress leaves it."""
    import shutil

    shutil.copytree(checkpoint, out_dir)
    last = sorted(out_dir.glob("*.safetensors"))[-1]
    data = last.read_bytes()
    last.write_bytes(data[: int(len(data) * keep)])
    return out_dir
