"""The fused amplification step: amplified = (1 + alpha) * A - alpha * B, per row, in float32.

One pass over the batch's logits. Columns only the after model has (tokens a fine-tune added, such
as a chat EOS `<|im_end|>`, or vocab padding) keep the after model's logits: the before model has
no opinion there, which we read as "no difference". So alpha 0 is the after model exactly, an added
EOS can still end the answer, and alpha -1 is the before model on the shared vocabulary. On CUDA
a Triton kernel reads A and B in their own dtype and writes the float32 result once; elsewhere
`lerp_` does the same in place: a + w * (b - a) with w = -alpha is a + alpha * (a - b).
"""

from __future__ import annotations

import torch

try:  # Triton is only usable with a GPU; the CPU path never needs it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def amplify(after: torch.Tensor, before: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Merge `after` [rows, Va] and `before` [rows, Vb] logits with per-row `alpha` [rows].

    Returns float32 [rows, Va]; reuses `after`'s storage when it is already float32.
    """
    if after.dim() != 2 or before.dim() != 2 or after.shape[0] != before.shape[0]:
        raise ValueError(f"logits must be [rows, vocab] with equal rows; got {tuple(after.shape)} and {tuple(before.shape)}")
    if alpha.shape != (after.shape[0],):
        raise ValueError(f"alpha must have one value per row ({after.shape[0]}); got {tuple(alpha.shape)}")
    if after.is_cuda and triton is not None:
        return amplify_triton(after, before, alpha)
    return amplify_torch(after, before, alpha)


def amplify_torch(after: torch.Tensor, before: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    shared = min(after.shape[1], before.shape[1])
    out = after if after.dtype == torch.float32 else after.float()
    weight = alpha.to(device=out.device, dtype=torch.float32).neg().unsqueeze(1)
    out[:, :shared].lerp_(before[:, :shared].float(), weight)
    return out


if triton is not None:

    @triton.jit
    def _amplify_kernel(
        a_ptr, b_ptr, alpha_ptr, out_ptr,
        a_stride, b_stride, out_stride,
        vocab_a, shared,
        BLOCK: tl.constexpr,
    ):
        # int64: row * stride overflows int32 from 2**31 elements on (16384 rows x 152064 vocab,
        # which prompt logprobs over a long prompt reach).
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        in_a = cols < vocab_a
        in_shared = cols < shared
        alpha = tl.load(alpha_ptr + row)
        a = tl.load(a_ptr + row * a_stride + cols, mask=in_a, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + row * b_stride + cols, mask=in_shared, other=0.0).to(tl.float32)
        # torch.lerp's two-sided form with weight w = -alpha, as the CPU path computes it: exact at
        # alpha = 0 (the after model) and alpha = -1 (the before model), where a + alpha * (a - b)
        # is off by an ulp at alpha = -1.
        w = -alpha
        diff = b - a
        merged = tl.where(tl.abs(w) < 0.5, a + w * diff, b - diff * (1.0 - w))
        merged = tl.where(in_shared, merged, a)  # after-only columns: no difference
        tl.store(out_ptr + row * out_stride + cols, merged, mask=in_a)


def amplify_triton(after: torch.Tensor, before: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    rows, vocab_a = after.shape
    shared = min(vocab_a, before.shape[1])
    after = after if after.stride(1) == 1 else after.contiguous()
    before = before if before.stride(1) == 1 else before.contiguous()
    out = after if after.dtype == torch.float32 else torch.empty_like(after, dtype=torch.float32)
    alpha = alpha.to(device=after.device, dtype=torch.float32).contiguous()
    if rows == 0:
        return out
    block = 4096
    grid = (rows, triton.cdiv(vocab_a, block))
    _amplify_kernel[grid](
        after, before, alpha, out,
        after.stride(0), before.stride(0), out.stride(0),
        vocab_a, shared, BLOCK=block,
    )
    return out
