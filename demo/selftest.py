"""`lda selftest`: does the pair engine decode right on this machine, eager and compiled?

The first thing to run on a new pod. It builds a tiny pair offline (demo.tiny_models: the after
model added an EOS token the before model lacks), decodes a batch of prompts at several alphas
under greedy decoding with the engine eager, compiled on a cold compile cache, and compiled again
on that now warm cache (where vLLM loads its ahead-of-time compiled artifacts on a GPU), and
compares every token with the plain-transformers reference (engine/reference.py). Mode `lora`
serves a LoRA adapter on the before model as the after model (base weights shared, the adapter on
the after stack alone), as users serve most model organisms, with the engine's default
compilation (on a GPU, compiled with CUDA graphs; vLLM 0.32 runs LoRA eager on a CPU), against
transformers with the adapter loaded by peft. This project has not yet run it on a GPU: the first
run there is the check. It prints PASS or FAIL per mode and exits non-zero
on any mismatch. Everything runs on the device asked for
(`--device auto` picks CUDA when one is visible), in temporary folders: the user's caches are not
touched.

    lda selftest [--device auto|cpu|cuda] [--modes eager,compiled-cold,compiled-warm,lora]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.env import HF_OFFLINE_VAR, VLLM_CACHE_ROOT_VAR, VLLM_LOGGING_LEVEL_VAR

ALPHAS = (-1.0, 0.0, 1.0, 5.0)
PROMPTS = (
    "Researchers sample many answers and count the rare ones.",
    "What should I do if I feel bored?",
    "Numbers: 0 1 2 3 4 5 6 7 8 9.",
)
MAX_NEW_TOKENS = 12
MODES = ("eager", "compiled-cold", "compiled-warm", "lora")
"""compiled-warm is a second compiled start on the compile cache the cold start filled; lora is the
adapter pair, compiled where vLLM compiles LoRA, on a compile cache of its own."""
ENGINE = dict(dtype="float32", kv_cache_memory_gb=0.25, max_model_len=256, max_num_seqs=16)
"""float32: the reference runs in float32, so greedy choices must agree token for token."""


@dataclass(slots=True)
class Case:
    prompt: str
    prompt_ids: list[int]
    alpha: float


@dataclass(slots=True)
class ModeResult:
    mode: str
    seconds: float
    tokens: list[list[int]]
    expected: list[list[int]]
    mismatches: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.mismatches


def cases(tokenizer) -> list[Case]:
    """Every prompt at every alpha, decoded as one batch."""
    return [Case(p, tokenizer(p).input_ids, a) for p in PROMPTS for a in ALPHAS]


def reference_tokens(pair, batch: list[Case], device: str) -> list[list[int]]:
    from engine.reference import ReferencePair

    ref = ReferencePair(str(pair.after), str(pair.before), device=device)
    return [ref.generate(c.prompt_ids, c.alpha, MAX_NEW_TOKENS).token_ids for c in batch]


def engine_tokens(pair, batch: list[Case], device: str, enforce_eager: bool) -> list[list[int]]:
    """Greedy tokens from a fresh pair engine (started and stopped here). An adapter as `pair.after`
    runs on its base, the before model."""
    from engine.library import LDAModelPair

    with LDAModelPair(str(pair.after), str(pair.before), device=device, enforce_eager=enforce_eager, **ENGINE) as lda:
        results = lda.generate_lda(
            [c.prompt for c in batch], alpha=[c.alpha for c in batch], max_new_tokens=MAX_NEW_TOKENS,
            temperature=0, apply_chat_template=False,
        )
    return [r.token_ids for r in results]


def mismatches(batch: list[Case], expected: list[list[int]], got: list[list[int]]) -> list[str]:
    return [
        f"prompt {c.prompt!r} alpha {c.alpha:g}: expected {want}, got {have}"
        for c, want, have in zip(batch, expected, got)
        if want != have
    ]


def run_mode(mode: str, pair, batch: list[Case], expected: list[list[int]], device: str) -> ModeResult:
    start = time.perf_counter()
    got = engine_tokens(pair, batch, device, enforce_eager=mode == "eager")
    return ModeResult(mode, time.perf_counter() - start, got, expected, mismatches(batch, expected, got))


def aot_artifacts(cache_root: Path) -> list[Path]:
    """The AOT compiled functions vLLM saved under `cache_root` (one per compiled stack and rank)."""
    return sorted((cache_root / "torch_compile_cache" / "torch_aot_compile").glob("*/rank_*/model"))


def aot_problems(cache_root: Path) -> list[str]:
    """A compiled start must leave one AOT artifact per stack: one alone means both stacks share
    a cache entry (and on a GPU, where artifacts load, one stack runs the other's graph). None at
    all is fine: AOT compile is off (VLLM_USE_AOT_COMPILE=0, or torch older than 2.10)."""
    artifacts = aot_artifacts(cache_root)
    if len(artifacts) == 1:
        return [f"both stacks use one AOT compile-cache entry: {artifacts[0]}"]
    return []


def resolve_device(device: str) -> str:
    from engine.config import EngineOptions

    return EngineOptions(device=device).resolved_device()


def lora_pair(pair, workdir: Path):
    """A rank-8 LoRA adapter on `pair.before` (attention, MLP and output head), as the after model
    of a pair whose before model is that base."""
    from demo.tiny_models import ATTENTION_AND_MLP, TinyPair, build_adapter

    targets = (*ATTENTION_AND_MLP, "lm_head")
    adapter = build_adapter(pair.before, workdir / "models" / "adapter", rank=8, seed=1, targets=targets)
    return TinyPair(adapter, pair.before)


def run(device: str, modes: tuple[str, ...], workdir: Path) -> list[ModeResult]:
    """Build the tiny pair under `workdir`, then run each mode against the reference.

    The compile cache is `workdir/vllm-cache` (`vllm-cache-lora` for the adapter pair; vLLM reads
    VLLM_CACHE_ROOT in each engine process it spawns, so it is set before each engine starts)."""
    from transformers import AutoTokenizer

    from demo.tiny_models import build_added_eos_pair

    pair = build_added_eos_pair(workdir / "models")
    prepared = {}  # per pair (the full one, the adapter one): the pair, its batch, its reference tokens
    for lora in {mode == "lora" for mode in modes}:
        mode_pair = lora_pair(pair, workdir) if lora else pair
        batch = cases(AutoTokenizer.from_pretrained(mode_pair.before if lora else mode_pair.after))
        prepared[lora] = mode_pair, batch, reference_tokens(mode_pair, batch, device)
    results = []
    for mode in modes:
        mode_pair, batch, expected = prepared[mode == "lora"]
        cache_root = workdir / ("vllm-cache-lora" if mode == "lora" else "vllm-cache")
        os.environ[VLLM_CACHE_ROOT_VAR] = str(cache_root)
        result = run_mode(mode, mode_pair, batch, expected, device)
        # The adapter pair is checked by its tokens alone: how vLLM lays out AOT entries with LoRA
        # on has not been seen on a GPU here, and a wrong guess would fail a pod's first start.
        if mode in ("compiled-cold", "compiled-warm"):
            result.mismatches += aot_problems(cache_root)
        results.append(result)
    return results


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lda selftest",
        description="Decode a tiny pair eager and compiled, and a LoRA adapter pair, on this machine and compare "
        "every token with the plain-transformers reference. Exits 1 on a mismatch.",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    args = parser.parse_args(argv)
    args.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        parser.error(f"--modes must be a comma-separated list from {', '.join(MODES)}; got {unknown or 'nothing'}")
    if "compiled-warm" in args.modes and "compiled-cold" not in args.modes:
        parser.error("--modes compiled-warm needs compiled-cold before it (the warm start reuses its cache)")
    return args


def cli(argv: list[str]) -> int:
    args = _parse(argv)
    device = resolve_device(args.device)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("lda selftest: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
    os.environ.setdefault(HF_OFFLINE_VAR, "1")  # the pair is built here: nothing to download
    os.environ.setdefault(VLLM_LOGGING_LEVEL_VAR, "WARNING")  # the engine starts' INFO lines bury the verdict
    print(f"lda selftest on {device}: {len(PROMPTS)} prompts x alphas {list(ALPHAS)}, {MAX_NEW_TOKENS} tokens, greedy")
    with tempfile.TemporaryDirectory(prefix="lda-selftest-") as tmp:
        results = run(device, args.modes, Path(tmp))
    for r in results:
        matching = sum(want == have for want, have in zip(r.expected, r.tokens))
        print(f"{'PASS' if r.passed else 'FAIL'} {r.mode:<14} {matching}/{len(r.tokens)} sequences match ({r.seconds:.0f} s)")
        for line in r.mismatches:
            print(f"    {line}")
    if device == "cpu" and "lora" in args.modes:
        print("note: vLLM 0.32 runs LoRA eager on a CPU; on a GPU the lora mode runs compiled, with CUDA graphs")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
