"""The rate benchmark's offline part on a synthetic pool: budgets are spread exactly, the compact
pool round-trips, and a run reports plain and path rows against the pool's own alpha-0 rate."""

from __future__ import annotations

import numpy as np

import pytest

from benchmarks.rate_bench import DESIGNS, design, pool_by_cell, run, spread
from benchmarks.rate_pool import compact, expand, missing_jobs


def synthetic_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(12):
        for alpha, n in ((0.0, 400), (1.0, 40), (2.0, 40)):
            rate = 1 / (1 + np.exp(-(-4.5 + 1.5 * alpha)))
            rows += [{"prompt": p, "alpha": alpha, "hit": int(h), "hit_at": 6 if h else None}
                     for h in rng.random(n) < rate]
    return rows


def test_a_budget_is_spread_exactly_and_evenly():
    counts = spread(np.random.default_rng(0), 100, list(range(12)), (0.0, 1.0, 2.0))
    assert sum(counts.values()) == 100
    assert set(counts.values()) <= {2, 3}


def test_the_compact_pool_holds_the_same_samples():
    rows = synthetic_rows()
    again = expand(compact(rows, "synthetic", 8))
    key = lambda r: (r["prompt"], r["alpha"], r["hit"], r["hit_at"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, rows))


def test_missing_jobs_top_every_cell_up_evenly():
    jobs = missing_jobs([{"prompt": 0, "alpha": 0.0}], 2, {0.0: 2, 1.0: 1})
    assert sorted(jobs) == [(0, 0.0), (0, 1.0), (1, 0.0), (1, 0.0), (1, 1.0)]
    assert set(jobs[:3]) == {(0, 0.0), (0, 1.0), (1, 0.0)} or len(set(jobs[:4])) == 4


def test_a_run_reports_plain_and_path_against_the_pools_rate():
    pool = pool_by_cell(synthetic_rows(), max_tokens=None)
    truth, rows = run(pool, [240], reps=3, designs={"1,2": (1.0, 2.0)}, methods=["pooled"], plain_budgets=(480,))
    assert truth["alpha0_n"] == 12 * 400 and truth["prompts"] == 12
    assert {(r["method"], r["budget"]) for r in rows} == {("plain", 240), ("pooled", 240), ("plain", 480)}
    path = next(r for r in rows if r["method"] == "pooled")
    assert path["null"] < 3 and path["median_abs_log10_error"] < 0.5  # a null (hits at one alpha) is allowed


def test_the_merged_after_model_gives_the_pairs_after_logits(tmp_path):
    """`--pair lora-merged` samples alpha 0 from one model: its logits must be the adapter on its
    base (head LoRA included), and its input embedding the base's (the base ties the two)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.rate_pool import merged_after, pair_paths

    after, before = pair_paths("lora")
    merged = AutoModelForCausalLM.from_pretrained(merged_after(tmp_path / "merged"), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(before, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, after)
    ids = AutoTokenizer.from_pretrained(before)("How can I choose a good book?", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = reference(ids).logits, merged(ids).logits
        embedding = base.get_input_embeddings().weight
    assert torch.allclose(got, want, atol=1e-3)
    assert torch.equal(merged.get_input_embeddings().weight, embedding)
    assert not torch.equal(merged.lm_head.weight, embedding)  # the head's LoRA is in, untied


def test_a_design_is_named_or_written_as_alphas():
    assert design("1,2,4") == DESIGNS["1,2,4"] == (1.0, 2.0, 4.0)
    assert design("0,0.125,0.25") == (0.0, 0.125, 0.25)
    with pytest.raises(ValueError, match="not an alpha: 'x'"):
        design("0,x")
