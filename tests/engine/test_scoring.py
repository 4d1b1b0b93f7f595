"""Scoring: teacher-forced per-token logp_after / logp_before / logp_amplified against the reference.

One engine on an equal-vocabulary pair (where the merge at alpha 0 and -1 is each model's own
distribution), requests at several alphas in one batch, so the per-request alpha of prompt
logprobs is what is tested: with the engine default every amplified value would be alpha 1's.
"""

from __future__ import annotations

import math

import pytest

from engine.reference import ReferencePair, score_tokens
from engine.scoring import ScoringError, summarize
from tests.engine.engines import start_pair

pytestmark = pytest.mark.slow

PROMPTS = ["Tell me about the weather today.", "What should I do if I feel bored?", "Numbers: 0 1 2 3"]
CONTINUATIONS = ["Try a walk, a book, or a call to a friend.", "The quick brown fox", " 4 5 6 7 8 9."]
ALPHAS = [0.5, 4.0, 20.0]


@pytest.fixture(scope="module")
def engine(qwen2_pair):
    pair = start_pair(qwen2_pair, default_alpha=1.0)
    yield pair
    pair.close()


@pytest.fixture(scope="module")
def reference(qwen2_pair):
    return ReferencePair(str(qwen2_pair.after), str(qwen2_pair.before))


def test_scores_match_the_reference_at_each_requests_alpha(engine, reference):
    results = engine.score(PROMPTS, CONTINUATIONS, alpha=ALPHAS)
    for prompt, continuation, alpha, result in zip(PROMPTS, CONTINUATIONS, ALPHAS, results):
        cont_ids = engine.tokenizer.encode(continuation, add_special_tokens=False)
        assert [t.token_id for t in result.tokens] == cont_ids
        expected = score_tokens(reference, result.prompt_token_ids, cont_ids, alpha)
        for token, (after, before, amplified) in zip(result.tokens, expected, strict=True):
            assert token.logp_after == pytest.approx(after, abs=1e-4)
            assert token.logp_before == pytest.approx(before, abs=1e-4)
            assert token.logp_amplified == pytest.approx(amplified, abs=1e-3)
        diffs = [a - b for a, b, _ in expected]
        assert result.summary.sum == pytest.approx(sum(diffs), abs=1e-3)
        assert result.summary.max == pytest.approx(max(diffs), abs=1e-4)
        assert result.summary.argmax == diffs.index(max(diffs))
        assert result.alpha == alpha


def test_amplified_is_not_the_default_alpha(engine):
    # Alpha 20 and alpha 1 (the default) give different amplified values: the request's alpha is used.
    at_20, at_1 = engine.score([PROMPTS[0]] * 2, [CONTINUATIONS[0]] * 2, alpha=[20.0, 1.0])
    assert any(abs(a.logp_amplified - b.logp_amplified) > 1e-2 for a, b in zip(at_20.tokens, at_1.tokens))
    assert [a.logp_after for a in at_20.tokens] == pytest.approx([b.logp_after for b in at_1.tokens], abs=1e-5)


def test_empty_continuation_is_refused(engine):
    with pytest.raises(ScoringError, match="continuation"):
        engine.score(PROMPTS[0], "")


def test_summary_of_known_values():
    s = summarize([0.5, -1.0, 2.5])
    assert (s.sum, s.max, s.argmax, s.tokens) == (2.0, 2.5, 2, 3)
    assert math.isclose(s.mean, 2.0 / 3)


def test_the_plugin_installs_the_prompt_logprobs_patch():
    # Its target's canary is in tests/engine/test_patch_guard.py; without the patch scoring would
    # silently use the default alpha.
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from engine import vllm_patches

    vllm_patches.install()
    assert GPUModelRunner._get_prompt_logprobs_dict._lda_patched


def test_a_model_paired_with_itself_scores_zero(qwen2_pair):
    pair = start_pair(type(qwen2_pair)(qwen2_pair.after, qwen2_pair.after), default_alpha=1.0)
    try:
        results = pair.score(PROMPTS, CONTINUATIONS, alpha=[1.0, 4.0, 20.0])
    finally:
        pair.close()
    for result in results:
        assert all(abs(t.diff) < 1e-5 for t in result.tokens)
        # With A = B the amplified distribution is the model itself at every alpha.
        assert all(abs(t.logp_amplified - t.logp_after) < 1e-4 for t in result.tokens)
        assert abs(result.summary.sum) < 1e-4 and abs(result.summary.max) < 1e-5
