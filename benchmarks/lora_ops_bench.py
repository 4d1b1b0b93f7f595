"""The CPU LoRA ops' cost per decoder layer, without an engine: vLLM's wrapper slice by slice
(on the grouped ops) against the fused linear LoRA (engine/compat/lora_cpu_ops.py), its products
as aten matmuls (float32 shrink) and on vLLM's packed oneDNN GEMM (what the worker runs).

    python -m benchmarks.lora_ops_bench [--batches 4 16 64] [--rank 32] [--iters 200] [--one-pass]

At SmolLM2-135M's shapes (hidden 576, MLP 1536, q 576, k and v 192; bf16; one adapter on every
row, decode), it times one layer's four LoRA modules (qkv, o, gate_up, down) each way, and the
layer's base GEMMs on vLLM's oneDNN handlers for scale. `--one-pass`: each batch is the after rows
of a one-pass step (engine/compat/shared_pass.py): the inputs hold twice the rows, the adapter
applies to the first half, and the base GEMMs run over all of them. Prints microseconds per layer
(median of --iters; on a loaded machine the minimum says more: `--stat min`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

MODULES = {"qkv": (576, (576, 192, 192)), "o": (576, (576,)), "gate_up": (576, (1536, 1536)), "down": (1536, (576,))}


def _time_us(fn, iters: int, stat: str = "median") -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return (statistics.median(times) if stat == "median" else min(times)) * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora_ops_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--one-pass", action="store_true", help="inputs of 2x the rows, the adapter on the first half")
    parser.add_argument("--stat", choices=["median", "min"], default="median")
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.rank < 1 or args.iters < 1:
        parser.error("--batches, --rank and --iters must be at least 1")

    from vllm import _custom_ops as vllm_ops
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper import punica_cpu

    from engine.compat import lora_cpu_ops as ops

    for name in ("bgmv_expand", "bgmv_expand_slice", "bgmv_shrink", "sgmv_expand", "sgmv_expand_slice", "sgmv_shrink"):
        setattr(punica_cpu, name, getattr(ops, name))
    per_slice = ops.ORIGINAL.get("add_lora_linear", punica_cpu.PunicaWrapperCPU.add_lora_linear)
    update = ops.ORIGINAL.get("update_metadata", punica_cpu.PunicaWrapperCPU.update_metadata)
    g = torch.Generator().manual_seed(0)
    dt = torch.bfloat16
    layers = {
        name: (tuple(torch.randn(1, 1, args.rank, fan_in, generator=g).to(dt) for _ in outs),
               tuple(torch.randn(1, 1, out, args.rank, generator=g).to(dt) for out in outs),
               torch.randn(sum(outs), fan_in, generator=g).to(dt), outs)
        for name, (fan_in, outs) in MODULES.items()
    }
    handlers = {name: vllm_ops.create_onednn_mm(layer[2].t(), 32) for name, layer in layers.items()}
    rows = 2 if args.one_pass else 1
    print(f"torch threads {torch.get_num_threads()}; us per layer (4 LoRA modules), {args.stat} of {args.iters}"
          + ("; one pass: 2x the rows, the adapter on the first half" if args.one_pass else ""))
    print(f"{'batch':>5} {'per-slice':>10} {'fused aten':>11} {'fused oneDNN':>13} {'speed-up':>9} {'base GEMMs':>11}")
    for n in args.batches:
        wrapper = punica_cpu.PunicaWrapperCPU(max_num_batched_tokens=max(args.batches), max_batches=max(args.batches), device="cpu")
        update(wrapper, LoRAMapping((1,) * n, (1,) * n, is_prefill=False), [1], 1, 1000)
        wrapper.lda_row_groups = ops.FUSED.groups(wrapper.token_lora_indices)
        inputs = {name: torch.randn(rows * n, layer[2].shape[1], generator=g).to(dt) for name, layer in layers.items()}
        outputs = {name: torch.zeros(rows * n, layer[2].shape[0], dtype=dt) for name, layer in layers.items()}

        def run(fn):
            for name, (a, b, _, outs) in layers.items():
                fn(wrapper, outputs[name], inputs[name], a, b, 1.0, outs)

        def fused(onednn: bool):
            ops.FUSED.onednn = onednn
            ops.FUSED.slots_written()  # rebuild the stacked weights the chosen way
            ops.FUSED.adapter_rows = n if args.one_pass else None
            try:
                return _time_us(lambda: run(ops.add_lora_linear), args.iters, args.stat)
            finally:
                ops.FUSED.adapter_rows = None

        ops.FUSED.adapter_rows = n if args.one_pass else None
        try:
            old = None if args.one_pass else _time_us(lambda: run(per_slice), args.iters, args.stat)
        finally:
            ops.FUSED.adapter_rows = None
        default = ops.FUSED.onednn
        aten, onednn = fused(False), fused(True)
        ops.FUSED.onednn = default
        base = _time_us(lambda: [vllm_ops.onednn_mm(handlers[k], inputs[k], None) for k in layers], args.iters, args.stat)
        said_old = f"{'-':>10}" if old is None else f"{old:>10.0f}"
        print(f"{n:>5} {said_old} {aten:>11.0f} {onednn:>13.0f} {aten / onednn:>8.2f}x {base:>11.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
