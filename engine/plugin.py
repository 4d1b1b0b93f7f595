"""vLLM general plugin: makes the pair architecture known in every vLLM process.

Registered by the entry point `vllm.general_plugins: lda_pair`. vLLM may call it several times in
one process; the string form of the class defers importing the model until it is needed. It runs
in every vLLM process of the environment, serving our pair or not, so each patch it installs is
guarded (engine/compat/patch_guard.py): a mismatch logs one line and leaves vLLM as it is.
"""

from engine.config import PAIR_ARCHITECTURE


def register() -> None:
    from vllm import ModelRegistry

    from engine.compat import vllm_patches

    if PAIR_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(PAIR_ARCHITECTURE, "engine.pair_model:LDAPairForCausalLM")
    vllm_patches.install()

    from engine.compat.lora_cpu_ops import patch_cpu_lora_ops

    patch_cpu_lora_ops()

    from engine.env import step_timing_dir

    if (folder := step_timing_dir()) is not None:
        from engine.compat.step_timing import install

        install(folder)
