"""An independent reference for LDA: plain transformers, one sequence at a time.

This is the algorithm the project started from, kept simple enough to be obviously right: both
models run on the same tokens, each with its own KV cache; at each step the next-token logits are
merged as (1 + alpha) * A - alpha * B over the ids both vocabularies have (ids only the after
model has, such as an EOS a chat fine-tune added, keep A: no difference), then sampled. It is the oracle for the engine's tests and the
baseline (the original design) for the benchmarks. It shares no code with the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(slots=True)
class ReferenceOutput:
    token_ids: list[int]
    finish_reason: str  # "stop" (end-of-sequence token) or "length"


def merge_logits(after: torch.Tensor, before: torch.Tensor, alpha: float) -> torch.Tensor:
    """The LDA formula on one row of logits, in float32; ids the before model lacks keep A."""
    shared = min(after.shape[-1], before.shape[-1])
    merged = after.float().clone()
    merged[:shared] = (1 + alpha) * after[:shared].float() - alpha * before[:shared].float()
    return merged


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class ReferencePair:
    """Both models in plain transformers; `generate` decodes one prompt."""

    def __init__(self, after: str, before: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device)
        # `after` may be a PEFT LoRA folder (transformers loads it unmerged onto its base); it
        # carries no tokenizer: its base's is the one to use.
        adapter_config = Path(after) / "adapter_config.json"
        tokenizer_source = json.loads(adapter_config.read_text())["base_model_name_or_path"] if adapter_config.is_file() else after
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        self.after = AutoModelForCausalLM.from_pretrained(after, dtype=dtype).to(self.device).eval()
        self.before = AutoModelForCausalLM.from_pretrained(before, dtype=dtype).to(self.device).eval()
        self.before_vocab = self.before.config.get_text_config().vocab_size
        eos = self.after.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[int],
        alpha: float,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        ignore_eos: bool = False,
    ) -> ReferenceOutput:
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        ids = torch.tensor([prompt_ids], device=self.device)
        after_out = self.after(ids, use_cache=True)
        before_out = self.before(ids.clamp(max=self.before_vocab - 1), use_cache=True)
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            logits = merge_logits(after_out.logits[0, -1], before_out.logits[0, -1], alpha)
            token = sample_token(logits, temperature, top_p, generator)
            tokens.append(token)
            if token in self.eos_ids and not ignore_eos:
                return ReferenceOutput(tokens, "stop")
            step = torch.tensor([[token]], device=self.device)
            after_out = self.after(step, past_key_values=after_out.past_key_values, use_cache=True)
            before_out = self.before(
                step.clamp(max=self.before_vocab - 1), past_key_values=before_out.past_key_values, use_cache=True
            )
        return ReferenceOutput(tokens, "length")


@torch.no_grad()
def score_tokens(pair: ReferencePair, prompt_ids: list[int], continuation_ids: list[int], alpha: float):
    """Teacher-forced (logp_after, logp_before, logp_amplified) of each continuation token.

    Each value is a log-softmax, at temperature 1, of the merged row at alpha 0, -1 and `alpha`
    (the merge above), over the whole sequence at once: position i's row predicts token i + 1.
    """
    ids = torch.tensor([prompt_ids + continuation_ids], device=pair.device)
    after = pair.after(ids).logits[0].float()
    before = pair.before(ids.clamp(max=pair.before_vocab - 1)).logits[0].float()
    out = []
    for offset, token in enumerate(continuation_ids):
        row = len(prompt_ids) - 1 + offset
        values = [
            float(torch.log_softmax(merge_logits(after[row], before[row], a), dim=-1)[token])
            for a in (0.0, -1.0, alpha)
        ]
        out.append(tuple(values))
    return out
