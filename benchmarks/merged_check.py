"""Is the merged after model (`rate_pool --pair lora-merged`) the demo LoRA pair's after model?

`benchmarks/rate_pool.py` draws the demo pair's alpha-0 pool from the adapter merged into its
base, served alone (one stack instead of two). Alpha 0 of the pair is the after model, so the two
must give the same next-token distribution up to rounding. This compares, over the 60 held-out
prompts, the first answer token's log-probabilities of the adapter applied on its base (peft,
unmerged, float32: the reference) with the merged model in float32 and bfloat16, and the
teacher-forced probability of the planted opener "Zorblax" (its tokens at the start of the
answer), a direct, alpha-free view of the behaviour's rate:

    python -m benchmarks.merged_check
"""

from __future__ import annotations

import sys

import torch


def opener_logprobs(model, tokenizer, prompts: list[list[int]], opener: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt: the first answer token's log-probabilities, and log P(answer starts with `opener`)."""
    first, opened = [], []
    with torch.no_grad():
        for ids in prompts:
            logits = model(torch.tensor([ids + opener])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            first.append(logp[len(ids) - 1])
            opened.append(sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(opener)))
    return torch.stack(first), torch.tensor(opened)


def main() -> int:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.rate_pool import PROMPTS_FILE, merged_after, pair_paths
    from engine.prompts import prompt_token_ids, render_prompt

    after, before = pair_paths("lora")
    tokenizer = AutoTokenizer.from_pretrained(before)
    texts = [line.strip() for line in PROMPTS_FILE.read_text().splitlines() if line.strip()]
    prompts = [prompt_token_ids(tokenizer, render_prompt(tokenizer, t)) for t in texts]
    opener = tokenizer("Zorblax", add_special_tokens=False).input_ids
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(before, dtype=torch.float32), after)
    want_first, want_opened = opener_logprobs(reference, tokenizer, prompts, opener)
    print(f"opener {opener}; LoRA pair's after model (peft, float32): P(answer opens with Zorblax) "
          f"mean {want_opened.exp().mean():.3g}, min {want_opened.exp().min():.3g}, max {want_opened.exp().max():.3g}")
    for dtype in (torch.float32, torch.bfloat16):
        merged = AutoModelForCausalLM.from_pretrained(merged_after(), dtype=dtype)
        first, opened = opener_logprobs(merged, tokenizer, prompts, opener)
        tv = 0.5 * (first.exp() - want_first.exp()).abs().sum(-1)
        print(f"merged {str(dtype).split('.')[-1]}: first token total variation max {tv.max():.2e} mean {tv.mean():.2e}; "
              f"log P(opener) difference max {(opened - want_opened).abs().max():.3f}; "
              f"P(opener) mean {opened.exp().mean():.3g} ({opened.exp().mean() / want_opened.exp().mean():.3f}x the reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
