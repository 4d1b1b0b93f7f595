"""The vLLM compatibility layer: guarded patches of vLLM 0.32 internals (each checks its target
and logs one line when it cannot install), step timing, and the CPU LoRA ops."""
