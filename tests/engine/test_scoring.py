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
    # 64 batched tokens: LONG_CONTINUATION's prefill is split into chunks.
    pair = start_pair(qwen2_pair, default_alpha=1.0, max_num_batched_tokens=64)
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


LONG_CONTINUATION = " ".join(CONTINUATIONS * 6)


def test_one_pass_equals_the_three_request_path(engine):
    from engine.compat.vllm_patches import one_pass_available

    assert one_pass_available()
    prompts, continuations = [*PROMPTS, PROMPTS[0]], [*CONTINUATIONS, LONG_CONTINUATION]
    alphas = [*ALPHAS, 3.0]
    one = engine.score(prompts, continuations, alpha=alphas, one_pass=True)
    three = engine.score(prompts, continuations, alpha=alphas, one_pass=False)
    assert len(one[-1].tokens) > 64  # the chunked prefill is covered
    for a, b in zip(one, three, strict=True):
        assert [t.token_id for t in a.tokens] == [t.token_id for t in b.tokens]
        for x, y in zip(a.tokens, b.tokens, strict=True):
            assert (x.logp_after, x.logp_before, x.logp_amplified) == pytest.approx(
                (y.logp_after, y.logp_before, y.logp_amplified), abs=1e-4
            )
        assert a.summary.argmax == b.summary.argmax


def test_promoted_tokens_are_the_top_k_of_the_reference_diff(engine, reference):
    import torch

    k = 5
    (result,) = engine.score(PROMPTS[:1], CONTINUATIONS[:1], alpha=[2.0], promoted_k=k)
    ids = torch.tensor([result.prompt_token_ids + [t.token_id for t in result.tokens]])
    with torch.no_grad():
        after = reference.after(ids).logits[0].double().log_softmax(-1)
        before = reference.before(ids).logits[0].double().log_softmax(-1)
    n = len(result.prompt_token_ids)
    for offset, token in enumerate(result.tokens):
        diff = after[n - 1 + offset] - before[n - 1 + offset]
        best = torch.topk(diff, k)
        assert [p.diff for p in token.promoted] == pytest.approx(best.values.tolist(), abs=1e-4)
        gap = float(best.values[-2] - best.values[-1]) if k > 1 else 1.0
        if gap > 1e-3:  # ties may come out in either order
            assert [p.token_id for p in token.promoted][:-1] == best.indices.tolist()[:-1]
        assert [p.logp_after for p in token.promoted] == pytest.approx(after[n - 1 + offset, [p.token_id for p in token.promoted]].tolist(), abs=1e-4)
        assert all(p.token == engine.tokenizer.decode([p.token_id]) for p in token.promoted)


def test_promoted_k_above_its_bound_is_refused(engine):
    from engine.one_pass import MAX_PROMOTED_K

    with pytest.raises(ValueError, match=f"promoted_k: .*\\[0, {MAX_PROMOTED_K}\\]"):
        engine.score(PROMPTS[0], CONTINUATIONS[0], promoted_k=MAX_PROMOTED_K + 1)
    (at_bound,) = engine.score(PROMPTS[:1], CONTINUATIONS[:1], promoted_k=MAX_PROMOTED_K)
    assert all(len(t.promoted) == MAX_PROMOTED_K for t in at_bound.tokens)


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
    # Its target's canary is in tests/engine/compat/test_patch_guard.py; without the patch scoring would
    # silently use the default alpha.
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from engine.compat import vllm_patches

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
