"""One pass for an adapter pair (engine/compat/shared_pass.py): both stacks' rows through the
shared base weights at once, against peft's merge_and_unload in the plain-transformers reference.

One engine with `one_pass=True` serves two adapters (rank 8 on attention and MLP; rank 32 also
on the output head) on one tiny Llama base, chunked prefill on (64 tokens a step), started as a
compiled engine (`enforce_eager=False`): vLLM 0.32 on a CPU turns compilation off for any engine
with LoRA (vllm/platforms/cpu.py, `if vllm_config.lora_config is not None: compilation_config.mode
= CompilationMode.NONE`), and a test checks that this is what ran, so every test here covers the
compiled and the eager request alike. Greedy parity, token for token: alphas -1, 0, 1 and 3; both
adapters and a row without an adapter in one batch; a chunked prompt and its prefix-cache hit.
The same engine with one pass switched off (two passes, `shared_pass.set_enabled`) gives the same
tokens and nearly the same logprobs. Scoring (engine/scoring.py) with one pass on: both of its
paths (one-pass scoring with promoted tokens, and three requests) equal the reference's values
and the two-pass engine's. TP=2, runtime adapters and the score route: tests/api/test_one_pass_server.py.
"""

import os
from functools import partial

import pytest

from engine.compat.shared_pass import set_enabled, steps_run
from engine.reference import ReferencePair, score_tokens
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
                       **{**TINY_ENGINE, "max_num_batched_tokens": 64, "enforce_eager": False})
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


def _compilation(model) -> list[tuple[str, int, bool]]:
    """In the worker: each stack's compilation mode and whether its compiled wrapper stands down."""
    return [(name, int(stack.model.compilation_config.mode), stack.model.do_not_compile)
            for name, stack in (("after", model.after), ("before", model.before))]


def test_compiled_engine_runs_eager_on_cpu_with_lora(pair):
    """Asked for a compiled engine, vLLM 0.32's CPU platform runs LoRA eager (mode 0: NONE)."""
    from vllm.config import CompilationMode

    assert pair.llm.llm_engine.vllm_config.model_config.enforce_eager is False
    assert pair.llm.llm_engine.vllm_config.compilation_config.mode == CompilationMode.NONE
    (stacks,) = pair.llm.apply_model(_compilation)
    assert stacks == [("after", CompilationMode.NONE, True), ("before", CompilationMode.NONE, True)]


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


SCORED = (PROMPTS[:4], [" Try a walk, a book, or a call to a friend."] * 2 + [" 4 5 6 7 8 9."] * 2,
          ["small", "large", "large", "small"], [-1.0, 0.0, 1.0, 3.0])


def _scores(pair, one_pass_scoring: bool, promoted_k: int = 0):
    prompts, continuations, adapters, alphas = SCORED
    return pair.score(prompts, continuations, alpha=alphas, model=adapters, apply_chat_template=False,
                      promoted_k=promoted_k, one_pass=one_pass_scoring)


def _values(results, promoted: bool = True) -> list[float]:
    """Every token's three values (and its promoted tokens' diffs), flat."""
    return [v for r in results for t in r.tokens
            for v in (t.logp_after, t.logp_before, t.logp_amplified, *(p.diff for p in t.promoted if promoted))]


def test_scores_and_promoted_tokens_match_the_reference(pair, lora_models):
    """One-pass scoring with promoted tokens, each item on its adapter and alpha, in one batch."""
    import torch

    results = _scores(pair, True, promoted_k=3)
    for result, name, alpha in zip(results, SCORED[2], SCORED[3], strict=True):
        ref = ReferencePair(str(lora_models["merged"][name]), str(lora_models["base"]))
        prompt_ids, cont_ids = result.prompt_token_ids, [t.token_id for t in result.tokens]
        expected = score_tokens(ref, prompt_ids, cont_ids, alpha)
        with torch.no_grad():
            ids = torch.tensor([prompt_ids + cont_ids])
            diff = ref.after(ids).logits[0].double().log_softmax(-1) - ref.before(ids).logits[0].double().log_softmax(-1)
        for offset, (token, values) in enumerate(zip(result.tokens, expected, strict=True)):
            # float32 against float32: 1e-4, or 1e-4 relative in the far tail (-40 and below)
            assert (token.logp_after, token.logp_before) == pytest.approx(values[:2], abs=1e-4, rel=1e-4)
            assert token.logp_amplified == pytest.approx(values[2], abs=1e-3)
            best = torch.topk(diff[len(prompt_ids) - 1 + offset], 3).values.tolist()
            assert [p.diff for p in token.promoted] == pytest.approx(best, abs=1e-3)  # differences of far-tail logps


def test_scoring_paths_agree_and_equal_two_passes(pair, request):
    """Both scoring paths with one pass on, and the one-pass path with the stacks in two passes."""
    one = _scores(pair, True, promoted_k=3)
    three = _scores(pair, False)
    request.getfixturevalue("two_passes")
    two = _scores(pair, True, promoted_k=3)
    assert _values(one, promoted=False) == pytest.approx(_values(three), abs=1e-4)
    assert _values(one) == pytest.approx(_values(two), abs=1e-4)
