"""Tiny model pairs built offline: no model hub, a few seconds, a few MB.

The tests and `lda selftest` both need small pairs they can build anywhere (a fresh GPU pod, a
CI runner), so the builders live in the package. Each pair shares one byte-level BPE tokenizer
trained on local text. Model families are chosen by their transformers config class; weights are
random but seeded, so every build is identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|end|>", "<|pad|>", "<|bos|>", "<|user|>", "<|assistant|>", "<|system|>"]

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A model diff shows what post-training changed. "
    "Researchers sample many answers and count the rare ones. Tell me about the weather today. "
    "What should I do if I feel bored? Try a walk, a book, or a call to a friend. "
    "Numbers: 0 1 2 3 4 5 6 7 8 9. Logits, alpha, amplification, before, after, tokens. "
)


@dataclass(frozen=True, slots=True)
class TinyPair:
    after: Path
    before: Path


def build_tokenizer(out_dir: Path, vocab_size: int = 300, added_eos: str | None = None):
    """Train a byte-level BPE tokenizer of exactly `vocab_size` ids and save it with a chat template.

    `added_eos`: a special token appended after the trained ids (id `vocab_size`) that becomes the
    end-of-sequence token, as chat fine-tunes add `<|im_end|>` to their base's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|end|>",
        pad_token="<|pad|>",
        bos_token="<|bos|>",
    )
    if added_eos is not None:
        fast.add_special_tokens({"additional_special_tokens": [added_eos]})
        fast.eos_token = added_eos
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _config(family: str, vocab_size: int, tokenizer, **overrides):
    from transformers import LlamaConfig, Olmo2Config, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    common.update(overrides)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "olmo2": Olmo2Config}[family]
    if family == "qwen2":
        common.setdefault("use_sliding_window", False)
    return cls(**common)


def build_model(
    out_dir: Path,
    family: str = "llama",
    seed: int = 0,
    vocab_size: int = 300,
    tokenizer_vocab: int = 300,
    added_eos: str | None = None,
    **config_overrides,
) -> Path:
    """Save a random-init causal LM of `family` with the shared tiny tokenizer into `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = build_tokenizer(out_dir, vocab_size=tokenizer_vocab, added_eos=added_eos)
    config = _config(family, vocab_size, tokenizer, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Random init gives near-uniform logits; a wider spread makes greedy choices decisive,
        # so parity tests compare real decisions, not float-rounding ties.
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id
    )
    model.save_pretrained(out_dir)
    return out_dir


def build_pair(root: Path, family: str = "llama", vocab_after: int = 300, vocab_before: int = 300) -> TinyPair:
    """A tiny (after, before) pair of one family: same tokenizer, different seeds."""
    after = build_model(root / f"{family}-after-{vocab_after}", family, seed=1, vocab_size=vocab_after)
    before = build_model(root / f"{family}-before-{vocab_before}", family, seed=2, vocab_size=vocab_before)
    return TinyPair(after=after, before=before)


ADDED_EOS = "<|im_end|>"
_EOS_LIKE_TOKEN, _EOS_MARGIN = 17, 1.05


def build_added_eos_pair(root: Path, family: str = "llama") -> TinyPair:
    """A pair whose after model added an end-of-turn token the before model lacks.

    The after model's tokenizer and head have one more id (300, `<|im_end|>`, its EOS) than the
    before model's 300, as a chat fine-tune adds `<|im_end|>` to its base. A random head would
    almost never pick the new id, so its row is 1.05x the row of an ordinary token (17): the after
    model ends its answer where it would have said that token, on some prompts after a few tokens.
    """
    import torch
    from transformers import AutoModelForCausalLM

    before = build_model(root / f"{family}-added-eos-before", family, seed=2)
    after = build_model(root / f"{family}-added-eos-after", family, seed=1, vocab_size=301, added_eos=ADDED_EOS)
    model = AutoModelForCausalLM.from_pretrained(after, dtype=torch.float32)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[300] = head[_EOS_LIKE_TOKEN] * _EOS_MARGIN
    model.save_pretrained(after)
    return TinyPair(after=after, before=before)


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
