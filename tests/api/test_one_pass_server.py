"""One pass for an adapter pair (`--one-pass`) on a real TP=2 server, with an adapter loaded at
runtime and the score route.

One server for the module: a tiny Llama base with a rank-8 adapter (attention, MLP and the output
head) as the after model, the base as the before model, `--one-pass`, `--tensor-parallel-size 2`
(each rank its own core, as in test_scale_out.py) and runtime adapters allowed. Both ranks must
say that they run one pass, and run every step as one (their step records, `LDA_STEP_TIMING_DIR`).
Greedy tokens at alpha -1, 0, 1 and 3, in one batch, equal the independent reference (peft's
`merge_and_unload` in plain transformers; the two-pass mode meets the same kind of reference in
test_lora_server.py and tests/engine/test_lora_one_pass.py); so do a second adapter's, loaded
through POST /v1/load_lora_adapter while one pass is on and decoding beside the first. POST
/v1/lda/score on either adapter (one-pass scoring, promoted tokens) equals the reference's values.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from engine.env import BINDING_VARS
from engine.reference import ReferencePair, score_tokens
from tests.factories import ATTENTION_AND_MLP, build_adapter, build_model, merge_adapter
from tests.servers import free_port, start_server, tiny_server_env

pytestmark = pytest.mark.slow

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Numbers: 0 1 2 3 4 5 6 7 8 9."]
ALPHAS = [-1.0, 0.0, 1.0, 3.0]
MAX_TOKENS = 12
CONTINUATION = " Try a walk, a book, or a call to a friend."


@pytest.fixture(scope="module")
def models(models_root):
    root = models_root / "one-pass-server"
    base = build_model(root / "base", "llama", seed=2)
    # The start-up adapter also targets the output head (its LoRA then runs on the gathered logits).
    adapters = {"small": build_adapter(base, root / "small", rank=8, seed=1, targets=(*ATTENTION_AND_MLP, "lm_head")),
                "runtime": build_adapter(base, root / "runtime", rank=16, seed=3)}
    merged = {name: merge_adapter(base, path, root / f"merged-{name}") for name, path in adapters.items()}
    return SimpleNamespace(base=base, adapters=adapters, merged=merged)


@pytest.fixture(scope="module")
def steps_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("one-pass-tp2-steps")


@pytest.fixture(scope="module")
def server(models, steps_dir, tmp_path_factory):
    env = tiny_server_env(SimpleNamespace(after=models.adapters["small"], before=models.base), free_port(),
                          LDA_ONE_PASS="1", LDA_ALLOW_RUNTIME_ADAPTERS="1", LDA_STEP_TIMING_DIR=str(steps_dir))
    for name in (*BINDING_VARS, "LDA_CPU_BIND"):  # each rank gets its own core, as in test_scale_out.py
        env.pop(name, None)
    handle = start_server([sys.executable, "-m", "api.cli", "serve", "--tensor-parallel-size", "2"], env,
                          tmp_path_factory.mktemp("one-pass-tp2") / "server.log")
    yield handle
    assert handle.stop() == 0, handle.log()[-3000:]


@pytest.fixture(scope="module")
def references(models):
    return {name: ReferencePair(str(path), str(models.base)) for name, path in models.merged.items()}


def _post(server, path, body) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=300)


def _complete(server, model: str, prompt: str, alpha: float) -> list[int]:
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "alpha": alpha,
            "return_token_ids": True}
    reply = _post(server, "/v1/completions", body)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["token_ids"]


def _concurrently(calls) -> list:
    """Run the calls at once (so that the engine batches them); their results in order."""
    results: list = [None] * len(calls)
    threads = [threading.Thread(target=lambda i=i, c=c: results.__setitem__(i, c())) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def _expected(references, name: str, prompt: str, alpha: float) -> list[int]:
    ref = references[name]
    return ref.generate(ref.tokenizer(prompt).input_ids, alpha, MAX_TOKENS).token_ids


def test_tp2_greedy_matches_the_reference_at_every_alpha(server, references, steps_dir):
    cases = [(p, a) for p in PROMPTS for a in ALPHAS]
    got = _concurrently([lambda p=p, a=a: _complete(server, "small", p, a) for p, a in cases])
    assert got == [_expected(references, "small", p, a) for p, a in cases]
    assert got[0] != got[3]  # alpha -1 (the base) and 3 decode differently
    # Both ranks ran those steps, every one of them as one pass.
    ranks = [[json.loads(line) for line in f.read_text().splitlines()] for f in sorted(steps_dir.glob("steps-*.jsonl"))]
    assert len(ranks) == 2 and all(len(steps) >= MAX_TOKENS for steps in ranks), [len(s) for s in ranks]
    assert all(step.get("one_pass") is True for steps in ranks for step in steps)
    log = server.log()
    assert log.count("the pair runs one pass over both stacks' rows") == 2 and "running two passes" not in log


@pytest.fixture(scope="module")
def runtime_adapter(server, models):
    reply = _post(server, "/v1/load_lora_adapter", {"lora_name": "runtime", "lora_path": str(models.adapters["runtime"])})
    assert reply.status_code == 200, reply.text
    return "runtime"


def test_an_adapter_loaded_at_runtime_decodes_beside_the_first(server, references, runtime_adapter):
    cases = [(name, PROMPTS[i % 2], a) for i, a in enumerate(ALPHAS) for name in ("runtime", "small")]
    got = _concurrently([lambda c=c: _complete(server, *c) for c in cases])
    assert got == [_expected(references, *c) for c in cases]
    # At alpha -1 both are the base; at 3 the two adapters must decode differently.
    assert got[0] == got[1] and got[6] != got[7]


@pytest.mark.parametrize("model", ["small", "runtime"])
def test_scores_and_promoted_tokens_match_the_reference(server, references, runtime_adapter, model):
    import torch

    ref = references[model]
    prompt_ids = ref.tokenizer(PROMPTS[0]).input_ids
    cont_ids = ref.tokenizer.encode(CONTINUATION, add_special_tokens=False)
    for alpha in ALPHAS:
        reply = _post(server, "/v1/lda/score", {"model": model, "prompt": PROMPTS[0], "continuation": cont_ids,
                                                 "alpha": alpha, "promoted_k": 3})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["prompt_tokens"] == len(prompt_ids) and body["model"] == model
        for token, (after, before, amplified) in zip(body["tokens"], score_tokens(ref, prompt_ids, cont_ids, alpha), strict=True):
            # float32 against float32: 1e-4, or 1e-4 relative in the far tail (-37 and below)
            assert token["logp_after"] == pytest.approx(after, abs=1e-4, rel=1e-4)
            assert token["logp_before"] == pytest.approx(before, abs=1e-4, rel=1e-4)
            assert token["logp_amplified"] == pytest.approx(amplified, abs=1e-3, rel=1e-4)
    with torch.no_grad():
        ids = torch.tensor([prompt_ids + cont_ids])
        ref_after = ref.after(ids).logits[0].double().log_softmax(-1)
        diff = ref_after - ref.before(ids).logits[0].double().log_softmax(-1)
    for offset, token in enumerate(body["tokens"]):
        row = len(prompt_ids) - 1 + offset
        best = torch.topk(diff[row], 3)
        for promoted, value, token_id in zip(token["promoted"], best.values.tolist(), best.indices.tolist(), strict=True):
            # A diff of two logprobs: each within 1e-4 relative (the far tail, as above).
            after = float(ref_after[row, token_id])
            assert promoted["diff"] == pytest.approx(value, abs=1e-4 + 1e-4 * (abs(after) + abs(after - value)))
