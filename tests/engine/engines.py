"""Engine-start helpers for the engine tests: tiny, float32 (to compare with the reference exactly)."""

from __future__ import annotations

import gc

from engine.library import LDAModelPair
from engine.reference import ReferencePair

TINY_ENGINE = dict(dtype="float32", kv_cache_memory_gb=0.25, max_model_len=512, max_num_seqs=16)

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The quick brown fox jumps over the lazy dog. Tell me about the weather today.",
    "The quick brown fox jumps over the lazy dog. What should I do if I feel bored?",
    "Researchers sample many answers and count the rare ones.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9.",
    "Logits, alpha, amplification, before, after, tokens.",
    "Try a walk, a book, or a call to a friend.",
    "A model diff shows what post-training changed.",
]
# Longer than max_num_batched_tokens below, so its prefill is split into chunks.
# Longer than one KV block (128 tokens on CPU), so the second pass can hit the prefix cache.
LONG_PROMPT = " ".join(PROMPTS[:4])
ALPHAS = [-1.0, 0.0, 0.3, 1.0, 20.0, 0.5, 2.0, 5.0]


def start_pair(pair, **overrides) -> LDAModelPair:
    return LDAModelPair(str(pair.after), str(pair.before), **{**TINY_ENGINE, **overrides})


def reference_tokens(pair, prompt_token_ids, alphas, max_new_tokens):
    ref = ReferencePair(str(pair.after), str(pair.before))
    return [ref.generate(ids, a, max_new_tokens).token_ids for ids, a in zip(prompt_token_ids, alphas)]


def single_model_tokens(model, prompts, max_new_tokens) -> list[list[int]]:
    """Greedy tokens from vLLM serving one model alone (no plugin involved)."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(model), dtype="float32", kv_cache_memory_bytes=2**28, max_model_len=512,
        max_num_seqs=16, enforce_eager=True, seed=0,
    )
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_new_tokens), use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    del llm
    gc.collect()
    return tokens
