"""One pass for an adapter pair (engine/compat/shared_pass.py): both stacks' rows through the
shared base weights at once, against peft's merge_and_unload in the plain-transformers reference.

One engine with `one_pass=True` serves two adapters (rank 8 on attention and MLP; rank 32 also
on the output head) on one tiny Llama base, chunked prefill on (64 tokens a step). Greedy parity,
token for token: alphas -1, 0, 1 and 3; both adapters and a row without an adapter in one batch;
a chunked prompt and its prefix-cache hit. The same engine with one pass switched off (two
passes, `shared_pass.set_enabled`) gives the same tokens and nearly the same logprobs.
"""

import os
from functools import partial

import pytest

from engine.compat.shared_pass import set_enabled, steps_run
from engine.reference import ReferencePair
from tests.engine.engines import LONG_PROMPT, PROMPTS, TINY_ENGINE
from tests.factories import ATTENTION_AND_MLP, build_adapter, build_model, merge_adapter

MAX_NEW = 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_models(models_root):
    root = models_root / "lora-one-pass"
    base = build_model(root / "base", "llama", seed=2)
    small = build_adapter(base, root / "small", rank=8, seed=1)
    large = build_adapter(base, root / "large", rank=32, seed=3, targets=(*ATTENTION_AND_MLP, "lm_head"))
    merged = {name: merge_adapter(base, path, root / f"merged-{name}") for name, path in (("small", small), ("large", large))}
    return {"base": base, "small": small, "large": large, "merged": merged}


@pytest.fixture(scope="module")
def pair(lora_models):
    from engine.library import LDAModelPair

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # apply_model
    lda = LDAModelPair(str(lora_models["small"]), adapters=[("large", str(lora_models["large"]))], one_pass=True,
                       **{**TINY_ENGINE, "max_num_batched_tokens": 64})
    yield lda
    lda.close()


@pytest.fixture(scope="module")
def references(lora_models):
    base = str(lora_models["base"])
    refs = {name: ReferencePair(str(path), base) for name, path in lora_models["merged"].items()}
    refs[None] = ReferencePair(base, base)
    return refs


@pytest.fixture
def two_passes(pair):
    """The same engine with one pass off for the test's duration."""
    assert pair.llm.apply_model(partial(set_enabled, on=False)) == [True]
    yield
    pair.llm.apply_model(partial(set_enabled, on=True))


def _greedy(pair, prompts, adapters, alphas, **kwargs):
    return pair.generate_lda(prompts, alpha=alphas, model=adapters, max_new_tokens=MAX_NEW, temperature=0,
                             apply_chat_template=False, **kwargs)


def _expected(references, pair, prompts, adapters, alphas):
    return [references[name].generate(pair.tokenizer(p).input_ids, a, MAX_NEW).token_ids
            for p, name, a in zip(prompts, adapters, alphas)]


def test_one_pass_is_on_and_runs(pair):
    assert pair.llm.apply_model(partial(set_enabled, on=True)) == [True]
    (before,) = pair.llm.apply_model(steps_run)
    _greedy(pair, PROMPTS[:2], ["small"] * 2, [1.0, 1.0])
    (after,) = pair.llm.apply_model(steps_run)
    assert after - before >= MAX_NEW  # a prefill and a step per token, each as one pass


def test_one_adapter_alphas(pair, references):
    prompts, alphas = PROMPTS[:4], [-1.0, 0.0, 1.0, 3.0]
    got = _greedy(pair, prompts, ["small"] * 4, alphas)
    assert [r.token_ids for r in got] == _expected(references, pair, prompts, ["small"] * 4, alphas)


def _engine(pair, prompts, adapters, alphas):
    """Greedy through vLLM directly (a row may have no adapter): token ids and their logprobs."""
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0, max_tokens=MAX_NEW, logprobs=0, extra_args={"alpha": a}) for a in alphas]
    lora = [pair._lora[name] if name else None for name in adapters]
    outs = pair.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
    ids = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[step[t].logprob for t, step in zip(i, o.outputs[0].logprobs)] for i, o in zip(ids, outs)]
    return ids, logprobs


MIXED = (PROMPTS[:6], ["small", "large", None, "large", "small", None], [0.0, 1.0, 3.0, -1.0, 3.0, 1.0])


def test_two_adapters_and_a_base_row_in_one_batch(pair, references):
    """Both adapters and a request without any (its after stack is the base) decode together."""
    got, _ = _engine(pair, *MIXED)
    assert got == _expected(references, pair, *MIXED)


def test_chunked_prefill_and_prefix_cache_hit(pair, references):
    first = _greedy(pair, [LONG_PROMPT], ["large"], [3.0])[0]
    again = _greedy(pair, [LONG_PROMPT], ["large"], [3.0])[0]
    assert len(pair.tokenizer(LONG_PROMPT).input_ids) > 64, "the prompt must span several prefill chunks"
    assert again.cached_tokens > 0
    expected = _expected(references, pair, [LONG_PROMPT], ["large"], [3.0])[0]
    assert first.token_ids == expected and again.token_ids == expected


def test_same_as_two_passes(pair, request):
    prompts, adapters, alphas = [*MIXED[0], LONG_PROMPT], [*MIXED[1], "large"], [*MIXED[2], 3.0]
    one_ids, one_lp = _engine(pair, prompts, adapters, alphas)
    request.getfixturevalue("two_passes")
    (steps,) = pair.llm.apply_model(steps_run)
    two_ids, two_lp = _engine(pair, prompts, adapters, alphas)
    assert pair.llm.apply_model(steps_run) == [steps], "one pass switched off: two passes ran"
    assert one_ids == two_ids
    worst = max(abs(x - y) for a, b in zip(one_lp, two_lp) for x, y in zip(a, b))
    assert worst < 1e-4, worst
