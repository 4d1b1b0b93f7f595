"""The engine against the independent reference, on a Llama pair whose vocab sizes differ (352/300).

One engine for the module: greedy parity for a mixed-alpha batch with chunked prefill and prefix
caching, seeded sampling, the library API's result fields, and alpha validation.
"""

import math

import pytest
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError

from engine.alpha import AlphaError
from tests.engine.engines import ALPHAS, LONG_PROMPT, PROMPTS, reference_tokens, start_pair

MAX_NEW = 24
BATCHED_TOKENS = 64

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(llama_pair):
    lda = start_pair(llama_pair, max_num_batched_tokens=BATCHED_TOKENS)
    yield lda
    lda.close()


def _greedy(pair, prompts, alphas):
    return pair.generate_lda(prompts, alpha=alphas, max_new_tokens=MAX_NEW, temperature=0, apply_chat_template=False)


def test_greedy_parity_mixed_alphas_chunked_prefill_and_prefix_cache(pair, llama_pair):
    prompts = PROMPTS + [LONG_PROMPT]
    alphas = ALPHAS + [1.0]
    prompt_ids = [pair.tokenizer(p).input_ids for p in prompts]
    assert len(prompt_ids[-1]) > BATCHED_TOKENS, "the long prompt must need chunked prefill"
    expected = reference_tokens(llama_pair, prompt_ids, alphas, MAX_NEW)

    first = _greedy(pair, prompts, alphas)
    # Same prompts again, alphas rotated: the prefixes now come from the cache, and alpha must
    # not matter to the cached KV.
    rotated = alphas[1:] + alphas[:1]
    expected_rotated = reference_tokens(llama_pair, prompt_ids, rotated, MAX_NEW)
    second = _greedy(pair, prompts, rotated)

    for i, result in enumerate(first):
        assert result.token_ids == expected[i], f"prompt {i} alpha {alphas[i]}"
    for i, result in enumerate(second):
        assert result.token_ids == expected_rotated[i], f"prompt {i} alpha {rotated[i]} (cached prefix)"
    # The batch really mixes alphas: the extremes decode differently.
    assert first[0].token_ids != first[4].token_ids
    assert sum(r.cached_tokens for r in second) > 0, "the second pass must hit the prefix cache"


def test_result_fields(pair):
    result = pair.generate_lda("Tell me about the weather today.", alpha=0.3, max_new_tokens=8, temperature=0)
    assert result.alpha == 0.3
    assert result.tokens_generated == len(result.token_ids) <= 8
    assert result.finish_reason in ("stop", "length")
    assert result.stopped_early == (result.finish_reason == "stop")
    assert result.text.endswith(result.completion)
    assert "<|assistant|>" in result.text  # the chat template was applied


def test_generate_returns_both_models(pair):
    both = pair.generate("hello there", max_new_tokens=8, temperature=0, apply_chat_template=False)
    after = pair.generate_lda("hello there", alpha=0, max_new_tokens=8, temperature=0, apply_chat_template=False)
    before = pair.generate_lda("hello there", alpha=-1, max_new_tokens=8, temperature=0, apply_chat_template=False)
    assert both.after.completion == after.completion
    assert both.before.completion == before.completion
    assert both.after.model_id == pair.model_after_id and both.before.model_id == pair.model_before_id


def test_prompt_formats_reach_the_engine(pair):
    """alpaca (per call) decodes exactly its text sent raw; chat adds the template."""
    alpaca = pair.generate_lda("hello there", alpha=0.5, max_new_tokens=6, temperature=0, prompt_format="alpaca")
    assert alpaca.text.startswith("### Instruction:\nhello there\n\n### Response:\n")
    raw = pair.generate_lda("### Instruction:\nhello there\n\n### Response:\n", alpha=0.5, max_new_tokens=6, temperature=0, prompt_format="raw")
    assert raw.token_ids == alpaca.token_ids
    assert pair.format_prompt("hi", prompt_format="chat") == "<|user|>hi<|end|><|assistant|>"


def test_seeded_sampling_is_reproducible(pair):
    kwargs = dict(alpha=1.0, max_new_tokens=20, temperature=1.0, top_p=0.9, apply_chat_template=False)
    prompts = PROMPTS[:4]
    first = pair.generate_lda(prompts, seed=1234, **kwargs)
    again = pair.generate_lda(prompts, seed=1234, **kwargs)
    other = pair.generate_lda(prompts, seed=99, **kwargs)
    assert [r.completion for r in first] == [r.completion for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]


@pytest.mark.parametrize("alpha", [math.nan, "2", -1.5, 100.5])
def test_invalid_alpha_library(pair, alpha):
    with pytest.raises(AlphaError, match=r"alpha must be .*\[-1, 100\]"):
        pair.generate_lda("hi", alpha=alpha, max_new_tokens=2)


@pytest.mark.parametrize("alpha", [math.nan, "2", -3, 1e9])
def test_invalid_alpha_engine_admission(pair, alpha):
    """Requests that bypass the library (raw SamplingParams) are refused at admission too."""
    with pytest.raises(VLLMValidationError, match=r"alpha must be .*\[-1, 100\]"):
        pair.llm.generate(["hi"], SamplingParams(max_tokens=2, extra_args={"alpha": alpha}), use_tqdm=False)
    # ... and the engine still serves.
    assert pair.generate_lda("hi", alpha=1.0, max_new_tokens=2, temperature=0).tokens_generated >= 1


def test_default_alpha_applies_when_none_given(pair, llama_pair):
    prompt_ids = [pair.tokenizer(PROMPTS[3]).input_ids]
    default = pair.config.alpha.default_alpha
    expected = reference_tokens(llama_pair, prompt_ids, [default], MAX_NEW)[0]
    got = pair.generate_lda(PROMPTS[3], max_new_tokens=MAX_NEW, temperature=0, apply_chat_template=False)
    assert got.token_ids == expected and got.alpha == default
