"""engine/one_pass.py without an engine: the packed layout, the vocab rule and the bound on k."""

from __future__ import annotations

import pytest
import torch

from engine.amplify import amplify_torch
from engine.one_pass import (
    MAX_PROMOTED_K,
    PACKED_RANK,
    PairCapture,
    num_columns,
    pack_columns,
    pair_log_softmax,
    promoted_tokens,
    validate_k,
)


def _logits(rows=3, va=40, vb=36):
    g = torch.Generator().manual_seed(0)
    return torch.randn(rows, va, generator=g) * 3, torch.randn(rows, vb, generator=g) * 3


def test_log_softmaxes_equal_the_merge_at_alpha_0_and_minus_1():
    # The three-request path's values: log-softmax of the merge at 0 and -1 (after-only columns keep A).
    after, before = _logits()
    logp_after, logp_before = pair_log_softmax(after, before)
    at = lambda a: amplify_torch(after.clone(), before, torch.full((3,), a)).log_softmax(-1)  # noqa: E731
    assert torch.equal(logp_after, at(0.0))
    assert torch.equal(logp_before, at(-1.0))
    assert torch.equal(after, _logits()[0])  # inputs untouched


def test_promoted_tokens_rank_the_shared_columns_by_diff():
    after, before = _logits()
    before[:, 7] -= 100.0  # token 7 strongly promoted everywhere
    logp_after, logp_before = pair_log_softmax(after, before)
    ids, diffs, after_at = promoted_tokens(logp_after, logp_before, 4, shared=36)
    assert ids.shape == (3, 4) and bool((ids < 36).all())
    assert ids[:, 0].tolist() == [7, 7, 7]
    expected = (logp_after[:, :36] - logp_before[:, :36]).topk(4)
    assert torch.equal(diffs, expected.values)
    assert torch.equal(after_at, logp_after.gather(1, ids))


def test_packed_columns_layout():
    after, before = _logits()
    logp_after, logp_before = pair_log_softmax(after, before)
    amplified = amplify_torch(after.clone(), before, torch.full((3,), 2.0)).log_softmax(-1)
    targets = torch.tensor([1, 38, 5])  # 38: an after-only id
    ids, values, ranks = pack_columns(amplified, logp_after, logp_before, targets, 2, 36)
    assert ids.shape == values.shape == (3, num_columns(2)) and ids.dtype == torch.int32
    assert ranks.tolist() == [PACKED_RANK] * 3
    assert ids[:, :3].tolist() == [[t] * 3 for t in targets.tolist()]
    rows = torch.arange(3)
    assert torch.equal(values[:, 0], amplified[rows, targets])
    assert torch.equal(values[:, 1], logp_after[rows, targets])
    assert torch.equal(values[:, 2], logp_before[rows, targets])
    top_ids, top, _ = promoted_tokens(logp_after, logp_before, 2, 36)
    assert ids[:, 3::2].tolist() == top_ids.tolist() == ids[:, 4::2].tolist()
    assert torch.equal(values[:, 3::2], top)
    assert torch.equal(values[:, 4::2], logp_after.gather(1, top_ids))


@pytest.mark.parametrize("k", [-1, MAX_PROMOTED_K + 1, 2.5, True, "3"])
def test_k_outside_its_bound_names_the_field_and_the_limit(k):
    with pytest.raises(ValueError, match=rf"promoted_k: must be an integer in \[0, {MAX_PROMOTED_K}\] \(MAX_PROMOTED_K\)"):
        validate_k(k)


def test_capture_refuses_rows_it_did_not_take():
    capture = PairCapture(1)
    after, before = _logits()
    with pytest.raises(RuntimeError, match="did not capture"):
        capture.pack(after.log_softmax(-1), torch.tensor([0, 1, 2]))
    capture.take(after, before)
    ids, _, _ = capture.pack(after.log_softmax(-1), torch.tensor([0, 1, 2]))
    assert ids.shape == (3, num_columns(1))
    with pytest.raises(RuntimeError):  # taken once, packed once
        capture.pack(after.log_softmax(-1), torch.tensor([0, 1, 2]))


def test_importable_without_vllm():
    import subprocess
    import sys

    code = "import sys; sys.modules['vllm'] = None; import engine.one_pass; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "ok"


def test_k_0_packs_the_three_values_only():
    after, before = _logits()
    logp_after, logp_before = pair_log_softmax(after, before)
    targets = torch.tensor([0, 1, 2])
    ids, values, ranks = pack_columns(logp_after, logp_after, logp_before, targets, 0, 36)
    assert ids.shape == values.shape == (3, num_columns(0)) and ranks.tolist() == [PACKED_RANK] * 3
    assert torch.equal(values[:, 2], logp_before[torch.arange(3), targets])


def test_the_engine_allows_the_columns_of_the_largest_k():
    from engine.config import SCORING_MAX_LOGPROBS

    assert SCORING_MAX_LOGPROBS == num_columns(MAX_PROMOTED_K) - 1
