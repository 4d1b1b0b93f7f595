"""Compiled mode (the GPU default) against the reference, on a cold and a warm cache, and the LoRA
adapter pair, through `lda selftest`'s own code.

One tiny pair whose after model added an EOS token (id 300) the before model lacks (300 ids). The
module starts three engines in turn, as `lda selftest` does: compiled on an empty compile cache,
compiled again on that cache, and the selftest's adapter pair (a LoRA adapter on the before model as
the after model), which vLLM 0.32 runs eager on a CPU and compiled on a GPU. Each decodes every
prompt at alpha -1, 0, 1 and 5 in one greedy batch and must match the plain-transformers reference
token for token. The compiled starts must give each stack its own AOT compile-cache entry (the
same entries on the warm start): when both stacks hashed to one entry, a GPU ran the after stack's
compiled graph for the before stack. (Eager engines of full pairs are what every other engine test
starts.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo import selftest
from demo.tiny_models import build_added_eos_pair

# Three engine starts, two of them compiling, run in the first test's setup: minutes on a busy
# 2-core machine (measured: 409 s with four other test runs beside it).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ADDED_EOS_ID = 300


@dataclass(slots=True)
class Runs:
    pair: object
    batch: list[selftest.Case]
    expected: list[list[int]]
    results: dict[str, selftest.ModeResult]
    cold_artifacts: list[Path]
    warm_artifacts: list[Path]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    from transformers import AutoTokenizer

    workdir = tmp_path_factory.mktemp("compiled")
    cache = workdir / "vllm-cache"
    saved = {k: os.environ.get(k) for k in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_COMPILE_THREADS")}
    # A fresh compile cache for this module; one inductor compile thread keeps memory down on
    # a shared machine.
    os.environ.update(VLLM_CACHE_ROOT=str(cache), TORCHINDUCTOR_COMPILE_THREADS="1")
    try:
        pair = build_added_eos_pair(workdir / "models")
        batch = selftest.cases(AutoTokenizer.from_pretrained(pair.after))
        expected = selftest.reference_tokens(pair, batch, "cpu")
        results = {"compiled-cold": selftest.run_mode("compiled-cold", pair, batch, expected, "cpu")}
        cold = selftest.aot_artifacts(cache)
        results["compiled-warm"] = selftest.run_mode("compiled-warm", pair, batch, expected, "cpu")
        warm = selftest.aot_artifacts(cache)
        lora = selftest.run(device="cpu", modes=("lora",), workdir=workdir / "lora")
        results["lora"] = lora[0]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Runs(pair, batch, expected, results, cold, warm)


def test_each_stack_has_its_own_aot_cache_entry(runs):
    assert len(runs.cold_artifacts) == 2, f"one AOT artifact per stack, got {runs.cold_artifacts}"
    assert len({p.parent.parent for p in runs.cold_artifacts}) == 2, "the stacks' cache keys must differ"
    # The keys are stable: a second start looks for (and rewrites) the same two entries.
    assert runs.warm_artifacts == runs.cold_artifacts


@pytest.mark.parametrize("mode", ["compiled-cold", "compiled-warm", "lora"])
def test_greedy_parity_with_reference(runs, mode):
    result = runs.results[mode]
    assert result.passed, "\n".join(result.mismatches)
    assert len(result.tokens) == len(selftest.PROMPTS) * len(selftest.ALPHAS)


def test_the_lora_mode_serves_an_adapter_that_changes_the_output(runs):
    """The selftest's adapter pair: alpha -1 (the base alone) and alpha 0 (base + adapter) differ."""
    tokens = runs.results["lora"].tokens
    n = len(selftest.ALPHAS)
    by_alpha = [dict(zip(selftest.ALPHAS, tokens[i * n : (i + 1) * n])) for i in range(len(selftest.PROMPTS))]
    assert any(row[-1.0] != row[0.0] for row in by_alpha)


def test_alphas_decode_differently(runs):
    """The batch really mixes alphas: each prompt's four sequences are not all alike."""
    tokens = runs.results["compiled-cold"].tokens
    n = len(selftest.ALPHAS)
    for i in range(len(selftest.PROMPTS)):
        assert len({tuple(t) for t in tokens[i * n : (i + 1) * n]}) > 1


def test_added_eos_ends_the_answer(runs):
    """The after model's own EOS, an id the before model lacks, still ends an answer."""
    stopped = [
        (c, t) for c, t in zip(runs.batch, runs.results["compiled-cold"].tokens) if t and t[-1] == ADDED_EOS_ID
    ]
    assert any(c.alpha == 0 and len(t) > 1 for c, t in stopped), "no answer at alpha 0 ended on the added EOS"
    # Every answer that ended before max_tokens ended on it: it is the after model's only EOS.
    assert all(len(t) == selftest.MAX_NEW_TOKENS or t[-1] == ADDED_EOS_ID for t in runs.results["compiled-cold"].tokens)


def test_alpha_zero_is_the_after_model_alone(runs):
    """Columns only the after model has keep its logits, so alpha 0 is the after model exactly,
    checked here against transformers' own greedy decoding of the after model."""
    import torch
    from transformers import AutoModelForCausalLM

    after = AutoModelForCausalLM.from_pretrained(runs.pair.after, dtype=torch.float32).eval()
    for case, tokens in zip(runs.batch, runs.results["compiled-cold"].tokens):
        if case.alpha != 0:
            continue
        ids = torch.tensor([case.prompt_ids])
        out = after.generate(ids, max_new_tokens=selftest.MAX_NEW_TOKENS, do_sample=False, pad_token_id=1)
        assert out[0, ids.shape[1] :].tolist() == tokens, case.prompt
