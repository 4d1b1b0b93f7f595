"""An adapter pair whose before model is not the adapters' base: nothing is shared, and vLLM's
LoRA layers, which wrap the before stack's own layers too, are taken off it again.

Greedy parity against peft's merged model for two adapters and mixed alphas in one batch.
"""

import os

import pytest

from engine.lora import stack_report
from engine.reference import ReferencePair
from tests.engine.engines import PROMPTS, TINY_ENGINE
from tests.factories import build_adapter, build_model, merge_adapter

MAX_NEW = 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(models_root):
    root = models_root / "lora-unshared"
    base = build_model(root / "base", "llama", seed=2)
    adapters = {"a": build_adapter(base, root / "a", rank=8, seed=5), "b": build_adapter(base, root / "b", rank=32, seed=6)}
    return {
        "base": base,
        "before": build_model(root / "before", "llama", seed=7),
        "adapters": adapters,
        "merged": {n: merge_adapter(base, p, root / f"merged-{n}") for n, p in adapters.items()},
    }


@pytest.fixture(scope="module")
def pair(models):
    from engine.library import LDAModelPair

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # for apply_model(stack_report)
    lda = LDAModelPair(
        str(models["adapters"]["a"]), str(models["before"]), adapters=[("b", str(models["adapters"]["b"]))], **TINY_ENGINE
    )
    yield lda
    lda.close()


def test_nothing_shared_and_no_lora_on_the_before_stack(pair):
    assert not pair.config.pair.shares_base
    (report,) = pair.llm.apply_model(stack_report)
    assert report["wrapped_before"] == [] and report["shared_modules"] == []
    assert len(report["wrapped_after"]) == 8


def test_two_adapters_mixed_alphas_against_another_before_model(pair, models):
    refs = {n: ReferencePair(str(p), str(models["before"])) for n, p in models["merged"].items()}
    prompts = PROMPTS[:6]
    adapters = ["a", "b", "a", "b", "a", "b"]
    alphas = [0.0, 0.0, 1.0, 2.0, -1.0, 0.5]
    got = pair.generate_lda(prompts, alpha=alphas, model=adapters, max_new_tokens=MAX_NEW, temperature=0, apply_chat_template=False)
    expected = [refs[n].generate(pair.tokenizer(p).input_ids, a, MAX_NEW).token_ids for p, n, a in zip(prompts, adapters, alphas)]
    assert [r.token_ids for r in got] == expected
