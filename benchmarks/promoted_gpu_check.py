"""GPU check of one-pass scoring's tensor work (engine/one_pass.py), torch only, no vLLM.

    python benchmarks/promoted_gpu_check.py --out promoted_gpu.json            # CUDA
    python benchmarks/promoted_gpu_check.py --device cpu --out /tmp/cpu.json    # the same on CPU

For each batch of prompt rows (1 to 512) at vocabulary 152064 (Qwen2.5's; the before model 128
columns shorter, so the after-only columns are covered), with bf16 logits as the pair's heads
give them, it checks on the device against a float64 CPU computation of the same inputs:

    logp_after, logp_before   `pair_log_softmax` (max abs error)
    promoted diffs            `promoted_tokens`, k = 20: values (max abs error) and ids (share
                              equal, counting only ranks more than 1e-3 from both neighbours,
                              since near-ties may come out in either order)
    packed columns            `pack_columns`: the fixed columns are the target's three values

and times `pack_columns` (both log-softmaxes, the merge's log-softmax not included, top-k and
gathers) per call. Prints a table and writes JSON to --out. Run as a file from the repository
root: engine/one_pass.py is loaded from its path, so nothing needs installing beyond torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

VOCAB = 152064
PADDING = 128
BATCHES = (1, 8, 64, 256, 512)
K = 20
ALPHA = 2.0


def _one_pass():
    """engine/one_pass.py by path: the file imports torch alone, and this script must run where
    the project is not installed (a bare GPU machine)."""
    path = Path(__file__).resolve().parent.parent / "engine" / "one_pass.py"
    spec = importlib.util.spec_from_file_location("lda_one_pass", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(rows: int, vocab: int, device: str):
    g = torch.Generator().manual_seed(rows)
    after = (torch.randn(rows, vocab, generator=g) * 4).to(torch.bfloat16)
    # The before model close to the after one, as a fine-tune is, with a few strongly moved tokens.
    before = (after[:, : vocab - PADDING].float() + torch.randn(rows, vocab - PADDING, generator=g) * 0.5).to(torch.bfloat16)
    targets = torch.randint(0, vocab - PADDING, (rows,), generator=g)
    return after.to(device), before.to(device), targets.to(device)


def _expected(after, before, k: int):
    a, b = after.cpu().double(), before.cpu().double()
    shared = b.shape[1]
    logp_after = a.log_softmax(-1)
    logp_before = torch.cat([b, a[:, shared:]], dim=1).log_softmax(-1)
    diff = logp_after[:, :shared] - logp_before[:, :shared]
    top = torch.topk(diff, k + 1, dim=-1)
    return logp_after, logp_before, top


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, iters: int) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def check(one_pass, rows: int, vocab: int, device: str, iters: int) -> dict:
    after, before, targets = _inputs(rows, vocab, device)
    shared = before.shape[1]
    logp_after, logp_before = one_pass.pair_log_softmax(after, before)
    ids, diffs, after_at = one_pass.promoted_tokens(logp_after, logp_before, K, shared)
    exp_after, exp_before, top = _expected(after, before, K)
    values = top.values[:, :K]
    gaps = top.values[:, :K] - top.values[:, 1 : K + 1]  # rank j to rank j + 1
    before_gap = torch.cat([torch.full_like(gaps[:, :1], float("inf")), gaps[:, :-1]], dim=1)
    clear = (gaps > 1e-3) & (before_gap > 1e-3)  # apart from both neighbours
    same = ids.cpu() == top.indices[:, :K]
    amplified = torch.lerp(after.float(), torch.cat([before.float(), after[:, shared:].float()], 1), -ALPHA).log_softmax(-1)
    token_ids, packed, ranks = one_pass.pack_columns(amplified, logp_after, logp_before, targets, K, shared)
    t = targets.cpu().unsqueeze(1)
    fixed_error = max(
        float((packed[:, 1:2].cpu().double() - exp_after.gather(1, t)).abs().max()),
        float((packed[:, 2:3].cpu().double() - exp_before.gather(1, t)).abs().max()),
    )
    seconds = _time(lambda: one_pass.pack_columns(amplified, *one_pass.pair_log_softmax(after, before), targets, K, shared), device, iters)
    return {
        "rows": rows,
        "vocab": vocab,
        "logp_max_abs_error": max(float((logp_after.cpu().double() - exp_after).abs().max()),
                                  float((logp_before.cpu().double() - exp_before).abs().max())),
        "promoted_diff_max_abs_error": float((diffs.cpu().double() - values).abs().max()),
        "promoted_logp_after_max_abs_error": float((after_at.cpu().double() - exp_after.gather(1, ids.cpu())).abs().max()),
        "promoted_ids_equal": float(same[clear].float().mean()) if bool(clear.any()) else 1.0,
        "packed_fixed_max_abs_error": fixed_error,
        "packed_shape": list(token_ids.shape),
        "ms_per_call": seconds * 1e3,
        "rows_per_s": rows / seconds,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/promoted_gpu_check.py")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--vocab", type=int, default=VOCAB, help="(default: %(default)s)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="rows per call (default: %(default)s)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per batch (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="JSON result")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("promoted_gpu_check: no CUDA device; pass --device cpu to run on the CPU", file=sys.stderr)
        return 2
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches must be comma-separated integers; got {args.batches!r}")
    if args.vocab <= PADDING + K or min(batches) < 1:
        p.error(f"--vocab must exceed {PADDING + K} and every batch be at least 1")
    one_pass = _one_pass()
    cases = []
    print(f"{'rows':>5} {'vocab':>7} {'logp err':>9} {'diff err':>9} {'ids eq':>7} {'ms/call':>9} {'rows/s':>10}")
    for rows in batches:
        case = check(one_pass, rows, args.vocab, args.device, args.iters)
        cases.append(case)
        print(f"{rows:>5} {args.vocab:>7} {case['logp_max_abs_error']:9.1e} {case['promoted_diff_max_abs_error']:9.1e} "
              f"{case['promoted_ids_equal']:7.3f} {case['ms_per_call']:9.3f} {case['rows_per_s']:10.0f}", flush=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {
        "command": "python benchmarks/promoted_gpu_check.py " + " ".join(argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name, "torch": torch.__version__, "k": K, "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    worst = max(max(c["logp_max_abs_error"], c["promoted_diff_max_abs_error"], c["packed_fixed_max_abs_error"]) for c in cases)
    ok = worst < 1e-4 and all(c["promoted_ids_equal"] == 1.0 for c in cases)
    print(f"{'PASS' if ok else 'FAIL'}: worst error {worst:.1e} (bound 1e-4); JSON in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
