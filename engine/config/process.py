"""The one start-up function that changes process-wide state: `prepare_process`.

Everything else in `engine.config` is values and pure functions. vLLM reads some of its options
from the environment of the process that starts it (inherited by its engine and worker
processes), and its front end validates alpha with a classmethod that gets no config: those two
are set here, once, by the entry points (`lda serve`, `LDAModelPair`) before an engine starts.
`process_env` says what would be set, without setting it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from engine.config.hardware import cpu_binding_env
from engine.config.options import LDAConfig
from engine.env import BINDING_VARS, V2_RUNNER_VAR

SLOT_GUARD_REFUSAL = (
    "runtime adapters with no adapter at start-up on CPU need this project's grouped LoRA ops "
    "(engine/compat/lora_cpu_ops.py), which cannot be installed here ({why}): requests naming the served "
    "model run without an adapter (LoRA slot -1), which vLLM 0.32's own CPU ops answer with the last "
    "loaded adapter's weights, silently. Give an adapter at start-up (it becomes the served name's "
    "default), or serve on a GPU"
)
RAY_ON_CPU_REFUSAL = (
    "distributed_executor_backend=ray needs GPUs: vLLM 0.32's CPU platform has no Ray device key "
    "(vllm/v1/executor/ray_utils.py refuses it deep in the engine start); on CPU leave the backend unset (mp)"
)


def process_env(config: LDAConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables `prepare_process` sets in an environment like `environ` (a user's own value of
    any of them stands). Raises ValueError for options this machine cannot run.

    The pair's per-request alpha rides on the V1 model runner's logits-processor hooks; vLLM 0.32
    picks Model Runner V2 on GPUs, whose hooks differ, so we select V1 (the model refuses V2).
    On CPU, the workers get every core, split over the local ranks (`cpu_binding_env`), unless the
    user set vLLM's binding variables; fewer cores than ranks raises ValueError. Also refused: Ray
    on CPU, and rows without an adapter (runtime adapters, none at start-up) on CPU where the
    grouped LoRA ops that leave such rows alone cannot be installed (SLOT_GUARD_REFUSAL).
    """
    opts = config.engine
    on_cpu = opts.resolved_device() == "cpu"
    if on_cpu and opts.distributed_executor_backend == "ray":
        raise ValueError(RAY_ON_CPU_REFUSAL)
    if on_cpu and config.pair.runtime_adapters and not config.pair.adapters:
        from engine.compat.lora_cpu_ops import grouped_ops_mismatch

        if why := grouped_ops_mismatch():
            raise ValueError(SLOT_GUARD_REFUSAL.format(why=why))
    env = {V2_RUNNER_VAR: "0"}
    if on_cpu and opts.cpu_bind == "all" and not any(name in environ for name in BINDING_VARS):
        env.update(cpu_binding_env(ranks=opts.local_ranks))
    return {name: value for name, value in env.items() if name not in environ}


def prepare_process(config: LDAConfig, extra_env: Mapping[str, str] | None = None) -> None:
    """Set this process's state for an engine of `config`: `process_env`'s variables, then
    `extra_env` (the caller's own, set as given), and the alpha bound the front end validates
    requests against (`engine.alpha.LIMITS`). Call once, before the engine starts; raises
    ValueError, changing nothing, when the options cannot run here.
    """
    from engine.alpha import LIMITS

    env = {**process_env(config, os.environ), **(extra_env or {})}
    os.environ.update(env)
    LIMITS.max_alpha = config.alpha.max_alpha
