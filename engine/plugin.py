"""vLLM general plugin: makes the pair architecture known in every vLLM process.

Registered by the entry point `vllm.general_plugins: lda_pair`. vLLM may call it several times in
one process; the string form of the class defers importing the model until it is needed. It runs
in every vLLM process of the environment, serving our pair or not, so each patch it installs is
guarded (engine/compat/patch_guard.py): a mismatch logs one line and leaves vLLM as it is.
"""

import logging

from engine.config import PAIR_ARCHITECTURE
from engine.env import vllm_configures_logging

PROJECT_LOGGER = "lda"
"""The parent of every logger of this project (`lda.pair_model`, `lda.weights`, `lda.server`, ...)."""


def configure_project_logging() -> None:
    """INFO lines of `lda.*` on stderr in a process that configured no logging of its own.

    vLLM's engine-core and worker processes give vLLM's logger a handler and leave the root logger
    bare, so `lda.*` INFO lines there (the one pass switched on, a checkpoint's weights loaded) went
    nowhere; only warnings reached stderr through Python's last-resort handler. Where the root
    logger has a handler (the API server's `configure_logging`, a user's own set-up) or vLLM was
    told to leave logging alone (`VLLM_CONFIGURE_LOGGING=0`), nothing changes.
    """
    project = logging.getLogger(PROJECT_LOGGER)
    if project.handlers or logging.getLogger().handlers or not vllm_configures_logging():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s", "%m-%d %H:%M:%S"))
    project.addHandler(handler)
    project.setLevel(logging.INFO)
    project.propagate = False


def register() -> None:
    from vllm import ModelRegistry

    configure_project_logging()

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
