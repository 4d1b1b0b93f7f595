"""Per-request alpha: validation, and the plumbing from a request's SamplingParams to a logits row.

The merge happens inside the model's `compute_logits`, which only sees hidden states. The alpha of
each row reaches it through `RowAlphas`, a per-process table that a vLLM logits processor keeps in
step with the persistent batch: the V1 model runner calls `update_state(BatchUpdate)` before each
forward pass, and batch row i is logits row i (no speculative decoding, which refuses custom logits
processors anyway). One engine process serves one model, so one table per process is enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from engine.config.alpha import DEFAULT_ALPHA, DEFAULT_MAX_ALPHA, MIN_ALPHA
from engine.config.vllm_args import DEFAULT_ALPHA_KEY

ALPHA_KEY = "alpha"


class AlphaError(ValueError):
    """An alpha that is not a finite number in [-1, max_alpha]."""


def validate_alpha(value: object, max_alpha: float = DEFAULT_MAX_ALPHA, field: str = ALPHA_KEY) -> float:
    """Return `value` as a float, or raise AlphaError naming the field, the value and the range.

    alpha = -1 is the before model (on the shared vocabulary) and alpha = 0 the after model; below -1 the formula
    extrapolates past the base model, which no LDA use needs, so it is refused.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AlphaError(
            f"{field} must be a number in [{MIN_ALPHA:g}, {max_alpha:g}]; got {value!r} "
            f"of type {type(value).__name__}"
        )
    alpha = float(value)
    if not math.isfinite(alpha) or not MIN_ALPHA <= alpha <= max_alpha:
        raise AlphaError(f"{field} must be a finite number in [{MIN_ALPHA:g}, {max_alpha:g}]; got {value!r}")
    return alpha


def alpha_of(params: SamplingParams, default: float) -> float:
    """The alpha a request asked for through `extra_args`, else the engine default."""
    extra = params.extra_args or {}
    value = extra.get(ALPHA_KEY)
    return default if value is None else float(value)


@dataclass(slots=True)
class _Limits:
    max_alpha: float = DEFAULT_MAX_ALPHA


# The front end validates requests with the classmethod `validate_params`, which gets no config;
# the start-up function (`engine.config.process.prepare_process`) sets the engine's max alpha here
# before the engine accepts requests, and nothing else writes it.
LIMITS = _Limits()


class RowAlphas:
    """alpha per persistent-batch row, on the model's device, plus the engine default."""

    def __init__(self, max_rows: int, device: torch.device, default: float) -> None:
        self.default = default
        self.host = torch.full((max_rows,), default, dtype=torch.float32)
        self.device_values = torch.full((max_rows,), default, dtype=torch.float32, device=device)
        self.batch_size = 0
        self.prompt_row: int | None = None
        """While prompt logprobs are computed for one request, its batch row (see
        `engine.compat.vllm_patches.patch_prompt_logprobs_alpha`): every logits row then is that request's."""
        self.capture = None
        """While a one-pass scoring request's prompt rows are computed, its `engine.one_pass.PairCapture`."""

    def for_rows(self, num_rows: int) -> torch.Tensor:
        """Alphas for `num_rows` logits rows.

        Prompt logprobs of one request take that request's alpha. Other rows that are not the
        batch (the sampler warm-up) get the engine default, since row i is not request i.
        """
        if self.prompt_row is not None:
            return self.device_values.new_full((num_rows,), float(self.host[self.prompt_row]))
        if num_rows == self.batch_size:
            return self.device_values[:num_rows]
        return self.device_values.new_full((num_rows,), self.default)

    def apply(self, update: BatchUpdate) -> None:
        # Order matters (BatchUpdate's contract): removed, then added, then moved.
        for index in update.removed:
            self.host[index] = self.default
        for index, params, _, _ in update.added:
            self.host[index] = alpha_of(params, self.default)
        for src, dst, direction in update.moved:
            if direction == MoveDirectionality.SWAP:
                self.host[[src, dst]] = self.host[[dst, src]]
            else:
                self.host[dst] = self.host[src]
        self.batch_size = update.batch_size
        n = update.batch_size
        self.device_values[:n].copy_(self.host[:n], non_blocking=True)


_ROWS: RowAlphas | None = None


def install_rows(max_rows: int, device: torch.device, default: float) -> RowAlphas:
    global _ROWS
    _ROWS = RowAlphas(max_rows, device, default)
    return _ROWS


def current_rows() -> RowAlphas | None:
    return _ROWS


class AlphaLogitsProcessor(LogitsProcessor):
    """Keeps `RowAlphas` in step with the batch; the merge itself is in the model.

    `apply` returns the logits unchanged: by the time the sampler runs, `compute_logits` has
    already merged A and B with these alphas.
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        extra = sampling_params.extra_args or {}
        if extra.get(ALPHA_KEY) is not None:
            validate_alpha(extra[ALPHA_KEY], LIMITS.max_alpha)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        hf_config = vllm_config.model_config.hf_config
        default = float(getattr(hf_config, DEFAULT_ALPHA_KEY, DEFAULT_ALPHA))
        self.rows = install_rows(vllm_config.scheduler_config.max_num_seqs, device, default)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None:
            self.rows.apply(batch_update)
