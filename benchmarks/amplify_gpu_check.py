"""GPU check of the amplification step's Triton kernel: correctness against the formula and
memory bandwidth, beside the plain-torch path on the same device.

    python -m benchmarks.amplify_gpu_check            # needs a CUDA device and Triton

Prints one line per case: max abs error vs float64, time per call, effective GB/s (bytes of A
and B read plus the float32 result written).
"""

from __future__ import annotations

import sys

import torch

from engine.amplify import amplify_triton, amplify_torch

CASES = [(rows, vocab, dtype) for dtype in (torch.bfloat16, torch.float32) for vocab in (49152, 100352) for rows in (1, 64, 256, 1024)]
# Prompt logprobs over a long prompt: 16384 rows x Qwen2.5's 152064 columns is 2.5e9 elements, past
# int32 offsets (row * stride overflows from row 14123). Checked on a sample of rows (a float64
# reference of the whole would need about 100 GB).
CASES.append((16384, 152064, torch.bfloat16))
SAMPLED_ABOVE = 2**28
"""Cases with more elements than this are checked on `_sample_rows` only."""


def _sample_rows(rows: int, vocab: int) -> torch.Tensor:
    if rows * vocab <= SAMPLED_ABOVE:
        return torch.arange(rows)
    first_past_int32 = 2**31 // vocab + 1
    return torch.tensor(sorted({0, 1, first_past_int32 - 1, first_past_int32, first_past_int32 + 1, rows - 1}))


def _expected(a, b, alpha):
    """The formula in float64; ids only the after model has keep its logits (no difference)."""
    shared = min(a.shape[1], b.shape[1])
    out = a.double()
    al = alpha.double()[:, None]
    out[:, :shared] = (1 + al) * a[:, :shared].double() - al * b[:, :shared].double()
    return out


def _time(fn, iters=50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def check(rows: int, vocab: int, dtype: torch.dtype) -> tuple[float, float, float, float]:
    g = torch.Generator(device="cuda").manual_seed(0)
    a = (torch.randn(rows, vocab, device="cuda", generator=g) * 5).to(dtype)
    b = (torch.randn(rows, vocab - 48, device="cuda", generator=g) * 5).to(dtype)  # padded vocab
    alpha = torch.tensor([-1.0, 0.0, 0.3, 20.0], device="cuda").repeat(rows // 4 + 1)[:rows]
    got = amplify_triton(a.clone(), b, alpha)
    sample = _sample_rows(rows, vocab).to(a.device)
    ref = _expected(a[sample], b[sample], alpha[sample])
    err = (got[sample].double() - ref).abs().max().item()
    del got, ref
    moved = a.numel() * a.element_size() + b.numel() * b.element_size() + a.numel() * 4
    # float32 inputs are merged in place; timing on the same buffer is fine once checked.
    t_triton = _time(lambda: amplify_triton(a, b, alpha))
    t_torch = _time(lambda: amplify_torch(a, b, alpha))
    return err, t_triton, moved / t_triton / 1e9, t_torch


def main() -> int:
    if not torch.cuda.is_available():
        print("amplify_gpu_check: no CUDA device", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}")
    print(f"{'rows':>5} {'vocab':>7} {'dtype':>9} {'max_err':>9} {'triton_us':>10} {'GB/s':>7} {'torch_us':>9}")
    worst = 0.0
    for rows, vocab, dtype in CASES:
        err, t, gbs, t_torch = check(rows, vocab, dtype)
        worst = max(worst, err)
        print(f"{rows:>5} {vocab:>7} {str(dtype)[6:]:>9} {err:>9.2e} {t * 1e6:>10.1f} {gbs:>7.0f} {t_torch * 1e6:>9.1f}")
    print(f"worst abs error vs float64: {worst:.2e}")
    return 0 if worst < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
