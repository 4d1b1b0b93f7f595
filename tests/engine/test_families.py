"""More decoder families through the same plugin: each stack's class comes from vLLM's registry.

Qwen2: parity with the reference, and alpha = 0 / alpha = -1 against vLLM serving the after /
before model alone (no plugin involved). OLMo2 (the seed's example family): parity.
"""

import pytest

from tests.engine.engines import ALPHAS, PROMPTS, reference_tokens, single_model_tokens, start_pair

MAX_NEW = 16

pytestmark = pytest.mark.slow


def _check_parity(lda, pair):
    results = lda.generate_lda(PROMPTS, alpha=ALPHAS, max_new_tokens=MAX_NEW, temperature=0, apply_chat_template=False)
    prompt_ids = [lda.tokenizer(p).input_ids for p in PROMPTS]
    expected = reference_tokens(pair, prompt_ids, ALPHAS, MAX_NEW)
    for i, result in enumerate(results):
        assert result.token_ids == expected[i], f"prompt {i} alpha {ALPHAS[i]}"


def test_qwen2_parity_and_endpoints_equal_single_models(qwen2_pair):
    alone_after = single_model_tokens(qwen2_pair.after, PROMPTS, MAX_NEW)
    alone_before = single_model_tokens(qwen2_pair.before, PROMPTS, MAX_NEW)
    with start_pair(qwen2_pair) as lda:
        _check_parity(lda, qwen2_pair)
        n = len(PROMPTS)
        both = lda.generate_lda(
            PROMPTS * 2, alpha=[0.0] * n + [-1.0] * n, max_new_tokens=MAX_NEW, temperature=0, apply_chat_template=False
        )
    assert [r.token_ids for r in both[:n]] == alone_after
    assert [r.token_ids for r in both[n:]] == alone_before
    assert alone_after != alone_before


def test_olmo2_parity(olmo2_pair):
    with start_pair(olmo2_pair) as lda:
        _check_parity(lda, olmo2_pair)
