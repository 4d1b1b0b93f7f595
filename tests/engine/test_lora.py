"""LoRA adapters as the after model, against peft's merge_and_unload in the plain-transformers reference.

One engine for the module serves two adapters on one tiny Llama base (rank 8 and rank 32, both on
the attention and MLP projections, the rank-32 one also on the output head as the LoRA demo is),
the before model being that base, so both stacks share its weights. Greedy parity, token for token: one adapter; both adapters in one batch with mixed
alphas; alpha -1 is the base alone; alpha 0 is the merged adapter model. Also: the base weights
are held once and the before stack carries no LoRA layer; prefix caching never shares KV between
adapters.
"""

import os

import pytest

from engine.lora import stack_report
from engine.reference import ReferencePair
from tests.engine.engines import PROMPTS, TINY_ENGINE
from tests.factories import ATTENTION_AND_MLP, build_adapter, build_model, merge_adapter

MAX_NEW = 20

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_models(models_root):
    root = models_root / "lora"
    base = build_model(root / "base", "llama", seed=2)
    small = build_adapter(base, root / "small", rank=8, seed=1)
    large = build_adapter(base, root / "large", rank=32, seed=3, targets=(*ATTENTION_AND_MLP, "lm_head"))
    return {
        "base": base,
        "small": small,
        "large": large,
        "merged": {name: merge_adapter(base, path, root / f"merged-{name}") for name, path in (("small", small), ("large", large))},
    }


@pytest.fixture(scope="module")
def pair(lora_models):
    from engine.library import LDAModelPair

    # apply_model ships a function to the worker; vLLM refuses that unless told it is trusted.
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    lda = LDAModelPair(
        str(lora_models["small"]), adapters=[("large", str(lora_models["large"]))], **TINY_ENGINE
    )
    yield lda
    lda.close()


@pytest.fixture(scope="module")
def references(lora_models):
    base = str(lora_models["base"])
    return {name: ReferencePair(str(path), base) for name, path in lora_models["merged"].items()}


def _expected(references, pair, prompts, adapters, alphas):
    return [
        references[name].generate(pair.tokenizer(p).input_ids, a, MAX_NEW).token_ids
        for p, name, a in zip(prompts, adapters, alphas)
    ]


def _greedy(pair, prompts, adapters, alphas):
    return pair.generate_lda(
        prompts, alpha=alphas, model=adapters, max_new_tokens=MAX_NEW, temperature=0, apply_chat_template=False
    )


def test_before_defaults_to_the_adapters_base_and_shares_it(pair, lora_models):
    assert pair.adapter_names == ["small", "large"]
    assert pair.model_before_id == str(lora_models["base"])
    assert pair.config.pair.shares_base
    assert pair.config.pair.max_lora_rank == 32


def test_one_adapter_mixed_alphas(pair, references):
    prompts = PROMPTS[:4]
    alphas = [0.0, 0.5, 1.0, 4.0]
    adapters = ["small"] * 4
    got = _greedy(pair, prompts, adapters, alphas)
    assert [r.token_ids for r in got] == _expected(references, pair, prompts, adapters, alphas)
    assert all(r.model == "small" for r in got)


def test_two_adapters_one_batch_mixed_alphas(pair, references):
    prompts = PROMPTS
    adapters = ["small", "large"] * 4
    alphas = [0.0, 0.0, 1.0, 1.0, 0.3, 20.0, 2.0, -1.0]
    got = _greedy(pair, prompts, adapters, alphas)
    expected = _expected(references, pair, prompts, adapters, alphas)
    for i, result in enumerate(got):
        assert result.token_ids == expected[i], f"prompt {i} adapter {adapters[i]} alpha {alphas[i]}"
    assert [r.model for r in got] == adapters
    # The adapters really differ: the same prompt decodes differently under each at alpha 0.
    both = _greedy(pair, [PROMPTS[0]] * 2, ["small", "large"], [0.0, 0.0])
    assert both[0].token_ids != both[1].token_ids


def test_alpha_minus_one_is_the_base_alone(pair, lora_models):
    from transformers import AutoModelForCausalLM  # noqa: F401  (the reference loads it)

    base = ReferencePair(str(lora_models["base"]), str(lora_models["base"]))
    prompts = PROMPTS[:3] * 2
    adapters = ["small"] * 3 + ["large"] * 3
    got = _greedy(pair, prompts, adapters, [-1.0] * 6)
    expected = [base.generate(pair.tokenizer(p).input_ids, 0.0, MAX_NEW).token_ids for p in prompts]
    assert [r.token_ids for r in got] == expected


def test_alpha_zero_is_the_merged_adapter_model(pair, lora_models):
    prompts = PROMPTS[3:6]
    for name in ("small", "large"):
        merged = ReferencePair(str(lora_models["merged"][name]), str(lora_models["merged"][name]))
        got = _greedy(pair, prompts, [name] * 3, [0.0] * 3)
        expected = [merged.generate(pair.tokenizer(p).input_ids, 0.0, MAX_NEW).token_ids for p in prompts]
        assert [r.token_ids for r in got] == expected, name


def test_base_weights_held_once_and_lora_only_on_the_after_stack(pair, lora_models):
    (report,) = pair.llm.apply_model(stack_report)
    assert report["wrapped_before"] == []
    # qkv, o, gate_up, down in each of 2 layers, and the after stack's logits (its lm_head): only
    # what the adapters target (engine.config.lora_targets).
    assert len(report["wrapped_after"]) == 9 and "after.logits_processor" in report["wrapped_after"]
    assert "model.layers.0.self_attn.qkv_proj" in report["shared_modules"]
    assert "model.embed_tokens" in report["shared_modules"] and "lm_head" in report["shared_modules"]
    # Both stacks together hold the base once (plus the LoRA slots), not twice.
    base_bytes = sum(f.stat().st_size for f in lora_models["base"].glob("*.safetensors"))
    assert report["resident_weight_bytes"] < 1.5 * base_bytes


def test_prefix_cache_is_never_shared_between_adapters(pair, references):
    long_prompt = " ".join(PROMPTS)  # longer than one 128-token CPU block
    first = _greedy(pair, [long_prompt], ["small"], [1.0])[0]
    other = _greedy(pair, [long_prompt], ["large"], [1.0])[0]
    again = _greedy(pair, [long_prompt], ["small"], [1.0])[0]
    assert other.cached_tokens == 0, "the large adapter must not reuse the small adapter's KV"
    assert again.cached_tokens > 0, "the same adapter reuses its own cached prefix"
    expected = _expected(references, pair, [long_prompt] * 2, ["small", "large"], [1.0, 1.0])
    assert [first.token_ids, other.token_ids] == expected
    assert again.token_ids == first.token_ids


def test_a_row_without_an_adapter_runs_the_base(pair, lora_models, references):
    """A request sent straight to the engine without a LoRARequest, batched with one that has the
    last slot's adapter: its after stack must be the base (engine/compat/lora_cpu_ops.py on CPU)."""
    from vllm import SamplingParams

    base = ReferencePair(str(lora_models["base"]), str(lora_models["base"]))
    prompts = PROMPTS[:2]
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, extra_args={"alpha": 0.0})
    outs = pair.llm.generate(prompts, [params] * 2, lora_request=[pair._lora["large"], None], use_tqdm=False)
    ids = [pair.tokenizer(p).input_ids for p in prompts]
    assert list(outs[0].outputs[0].token_ids) == references["large"].generate(ids[0], 0.0, MAX_NEW).token_ids
    assert list(outs[1].outputs[0].token_ids) == base.generate(ids[1], 0.0, MAX_NEW).token_ids


def test_unknown_adapter_is_refused(pair):
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['nope'\]; this pair serves \['small', 'large'\]"):
        pair.generate_lda("hi", model="nope", max_new_tokens=2)


def _fused_lora_installed(model) -> bool:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from engine.compat import lora_cpu_ops

    return PunicaWrapperCPU.add_lora_linear is lora_cpu_ops.add_lora_linear


def test_the_parity_above_ran_the_fused_cpu_lora(pair):
    """Every test above ran the fused linear LoRA of engine/compat/lora_cpu_ops.py in the worker."""
    assert pair.llm.apply_model(_fused_lora_installed) == [True]
