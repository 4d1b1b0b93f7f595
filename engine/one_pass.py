"""One-pass scoring: both models' log-softmax, the merge's and the promoted tokens from one forward.

Scoring used to send three prompt-logprob requests per sample (alphas 0, -1 and a), three full
pair prefills, although `compute_logits` holds A and B for every position of one. Here a flagged
request's prompt rows give all three values at once, plus, per position, the top-k tokens of the
shared vocabulary by `logp_after - logp_before` ("promoted tokens"), computed where both logits
already are. The only channel from the worker to the API process that carries per-position values
is the prompt-logprobs output, so the values travel packed in its columns (`pack_columns`):

    column 0          the target token, logp_amplified     (vLLM's own first column)
    column 1          the target token, logp_after
    column 2          the target token, logp_before
    column 3 + 2j     promoted token j, its diff           (best first)
    column 4 + 2j     promoted token j, its logp_after

and the target's rank is set to `PACKED_RANK`, which no real rank can be, so the reader knows
the columns are packed. The request asks for `prompt_logprobs = columns - 1` with
`flat_logprobs=True`, so repeated token ids keep their columns (a dict would merge them).

Values equal the three-request path's: logp_after is log_softmax(A) (the merge at alpha 0 is A
exactly), logp_before is log_softmax of B with the after-only columns' A (the merge at alpha -1 is
exactly that, engine/amplify.py), both in float32. Promoted tokens range over the shared columns
only: on the after-only ones the difference is a normaliser, not an opinion of the before model.

torch only, no vLLM: `benchmarks/promoted_gpu_check.py` runs these on a GPU machine without vLLM.
"""

from __future__ import annotations

import torch

SCORE_KEY = "lda_score"
"""`SamplingParams.extra_args` key that flags a one-pass scoring request: {"promoted_k": k}."""

MAX_PROMOTED_K = 20
"""Bound on promoted tokens per position (the model-diffing toolkit mines the top 20). Each costs
two prompt-logprob columns, so the engine's `max_logprobs` must be at least `num_columns(k) - 1`."""

PACKED_RANK = -7
"""The target's rank in packed columns: vLLM's ranks are >= 1, so this marks the layout."""

FIXED_COLUMNS = 3


def num_columns(k: int) -> int:
    return FIXED_COLUMNS + 2 * k


def validate_k(k: object) -> int:
    """k as an int in [0, MAX_PROMOTED_K], or ValueError naming `promoted_k` and the bound."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_PROMOTED_K:
        raise ValueError(f"promoted_k: must be an integer in [0, {MAX_PROMOTED_K}] (MAX_PROMOTED_K); got {k!r}")
    return k


def pair_log_softmax(after: torch.Tensor, before: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_after, logp_before), float32 [rows, Va], from after [rows, Va] and before [rows, Vb] logits.

    Reads its inputs without changing them (the merge that follows may reuse A's storage)."""
    shared = min(after.shape[1], before.shape[1])
    logp_after = after.log_softmax(dim=-1, dtype=torch.float32)
    if after.shape[1] > shared:  # after-only columns keep A's logits at alpha -1, as the merge does
        before = torch.cat([before[:, :shared], after[:, shared:].to(before.dtype)], dim=1)
    else:
        before = before[:, :shared]
    return logp_after, before.log_softmax(dim=-1, dtype=torch.float32)


def promoted_tokens(
    logp_after: torch.Tensor, logp_before: torch.Tensor, k: int, shared: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the k tokens of columns [0, shared) with the largest logp_after - logp_before.

    Returns (ids int64 [rows, k], diffs float32 [rows, k], logp_after float32 [rows, k]), best first.
    """
    validate_k(k)
    diff = logp_after[:, :shared] - logp_before[:, :shared]
    diffs, ids = torch.topk(diff, min(k, shared), dim=-1)
    return ids, diffs, logp_after.gather(1, ids)


def pack_columns(
    logp_amplified: torch.Tensor,
    logp_after: torch.Tensor,
    logp_before: torch.Tensor,
    target_ids: torch.Tensor,
    k: int,
    shared: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (token ids int32, values float32, ranks int64) of vLLM's prompt-logprob tensors in the
    packed layout of the module doc, one row per position predicting `target_ids[row]`."""
    target = target_ids.to(torch.int64).unsqueeze(1)
    fixed = [logp.gather(1, target) for logp in (logp_amplified, logp_after, logp_before)]
    rows = target.shape[0]
    if k == 0:  # no full-vocabulary difference to rank
        ranks = torch.full((rows,), PACKED_RANK, dtype=torch.int64, device=target.device)
        return target.expand(rows, FIXED_COLUMNS).to(torch.int32), torch.cat(fixed, dim=1), ranks
    ids, diffs, after_at = promoted_tokens(logp_after, logp_before, k, shared)
    pair_ids = ids.unsqueeze(2).expand(rows, ids.shape[1], 2).reshape(rows, -1)
    pair_values = torch.stack([diffs, after_at], dim=2).reshape(rows, -1)
    token_ids = torch.cat([target.expand(rows, FIXED_COLUMNS), pair_ids], dim=1).to(torch.int32)
    values = torch.cat([*fixed, pair_values], dim=1)
    ranks = torch.full((rows,), PACKED_RANK, dtype=torch.int64, device=values.device)
    return token_ids, values, ranks


class PairCapture:
    """The two log-softmaxes of one request's prompt rows, taken inside `compute_logits` just before
    the merge (which may overwrite A in place), for the sampler's gather that follows to pack."""

    __slots__ = ("k", "logp_after", "logp_before", "shared")

    def __init__(self, k: int) -> None:
        self.k = validate_k(k)
        self.logp_after: torch.Tensor | None = None
        self.logp_before: torch.Tensor | None = None
        self.shared = 0

    def take(self, after: torch.Tensor, before: torch.Tensor) -> None:
        self.logp_after, self.logp_before = pair_log_softmax(after, before)
        self.shared = min(after.shape[1], before.shape[1])

    def pack(self, logp_amplified: torch.Tensor, target_ids: torch.Tensor):
        """`pack_columns` of the rows taken last; RuntimeError if `take` did not run for them."""
        if self.logp_after is None or self.logp_after.shape[0] != logp_amplified.shape[0]:
            raise RuntimeError("one-pass scoring: the pair's compute_logits did not capture these rows")
        packed = pack_columns(logp_amplified, self.logp_after, self.logp_before, target_ids, self.k, self.shared)
        self.logp_after = self.logp_before = None
        return packed
