"""Full weights into one stack of a running pair, in place: a training run watched without restarts.

Two halves, in two processes:

- `PairWeights` (the driver: `LDAModelPair`, the server) knows which checkpoint and version each
  stack serves. `prepare` checks a new folder against the stack's current checkpoint
  (`engine/checkpoints.py`: config, every tensor and shape, every byte readable) before anything is
  touched; `finish` records what the engine answered.
- `StackWeightsWorker` is mixed into vLLM's worker class (vLLM's `worker_extension_cls`, reached
  by `collective_rpc("lda_load_stack", ...)`), where the model lives. It reloads one stack with
  vLLM's layerwise reload (`model_loader/reload/layerwise.py`, what vLLM's own `reload_weights`
  uses), which restores each layer's checkpoint shapes, loads it, re-runs the layer's weight
  processing (on CPU, the oneDNN packing of every linear layer) and copies the result into the
  tensors the running model already holds, so compiled graphs and CUDA graphs keep their pointers.
  Only the named stack's modules are touched: the other stack's weights and the KV cache stay.

A failure half way (a shard that changed or broke after the checks) leaves a stack partly new.
The worker then reloads the checkpoint the stack served before, from its folder: no second copy of
the weights is kept in memory, which on a GPU would cost a whole stack of device (or pinned host)
memory. If that fails too (its folder is gone), the stack is marked unhealthy and the pair refuses
requests until a load succeeds. Keep the checkpoint a stack serves on disk until the next one is in.

Requests never see mixed weights: the library is synchronous (a load runs between `generate`
calls); the server holds new requests and lets those in flight finish on the old weights first
(`api/weights_routes.py`). The prefix cache is reset after every load, success or not: a cached
block of the old weights would otherwise be reused for a prompt that shares its prefix.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from engine.checkpoints import Checkpoint, CheckpointError, check_replaces, read_checkpoint, resolve_folder
from engine.config import PairConfig

logger = logging.getLogger("lda.weights")

STACKS = ("after", "before")
LOAD_METHOD = "lda_load_stack"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9._:+/@-]{1,128}$")


class WeightsRefused(ValueError):
    """This pair cannot take full weights into a stack (its stacks share base weights)."""


class WeightsLoadError(RuntimeError):
    """The engine failed half way; `outcome` says whether the old weights are back."""

    def __init__(self, message: str, outcome: LoadOutcome):
        super().__init__(message)
        self.outcome = outcome


class StackUnhealthy(RuntimeError):
    """A stack lost its weights (a failed load whose restore failed too): no request is served."""


class LoadOutcome(str, Enum):
    LOADED = "loaded"
    RESTORED = "restored"
    """The load failed half way and the previous weights were loaded again."""
    UNHEALTHY = "unhealthy"
    """The load failed and so did the restore: the stack's weights are a mix."""


@dataclass(slots=True)
class StackState:
    path: Path
    """The checkpoint folder the stack serves."""
    version: str
    healthy: bool = True
    checkpoint: Checkpoint | None = None
    """Its files as read at its load (read lazily for the checkpoint the engine started with)."""


@dataclass(frozen=True, slots=True)
class LoadPlan:
    stack: str
    checkpoint: Checkpoint
    version: str
    previous: Path


@dataclass(frozen=True, slots=True)
class WeightsLoad:
    """What a successful load did."""

    stack: str
    version: str
    path: str
    previous_version: str
    seconds: float
    """The engine's reload of the stack (the checks before it not included)."""
    bytes: int


def default_version(path: str | Path) -> str:
    """A checkpoint's version label when none is given: its folder's name (`checkpoint-200`)."""
    name = Path(str(path).rstrip("/")).name or str(path)
    return name if VERSION_PATTERN.match(name) else re.sub(r"[^A-Za-z0-9._:+/@-]", "_", name)[:128] or "checkpoint"


def check_version(version) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise CheckpointError(f"version must be 1 to 128 characters of letters, digits and ._:+/@-; got {version!r}", "version")
    return version


def check_stack(stack) -> str:
    if stack not in STACKS:
        raise CheckpointError(f"stack must be 'after' or 'before'; got {stack!r}", "stack")
    return stack


SHARED_BASE_HELP = (
    "this pair's after model is LoRA adapters on the before model, so both stacks run the same base "
    "weights and one stack cannot take full weights alone. To watch full-weight checkpoints, start a "
    "server on two full checkpoints: `lda serve --model-after <checkpoint> --model-before <base> "
    "--allow-weight-loads` (an adapter becomes a full checkpoint with peft's merge_and_unload, or "
    "`lda demo-run --full`)"
)


class PairWeights:
    """The checkpoint and version each stack of a pair serves, and the checks before a load."""

    def __init__(self, pair: PairConfig) -> None:
        self.pair = pair
        self.stacks = {
            "after": StackState(Path(pair.after), default_version(pair.after)),
            "before": StackState(Path(pair.before), default_version(pair.before)),
        }

    def versions(self) -> dict[str, str]:
        return {name: state.version for name, state in self.stacks.items()}

    def unhealthy(self) -> list[str]:
        return [name for name, state in self.stacks.items() if not state.healthy]

    def check_healthy(self) -> None:
        if bad := self.unhealthy():
            raise StackUnhealthy(f"the {' and '.join(bad)} stack's weights are incomplete after a failed load whose "
                                 "restore failed too; load a checkpoint into it (POST /v1/lda/weights or "
                                 "LDAModelPair.load_weights) before generating")

    def _current(self, stack: str) -> Checkpoint:
        state = self.stacks[stack]
        if state.checkpoint is None:
            folder = resolve_folder(str(state.path))
            if folder is None:
                raise CheckpointError(f"the {stack} stack's checkpoint {state.path} is not on this machine's disk "
                                      "to compare with; start the server from a local folder", "path")
            state.checkpoint = read_checkpoint(folder, read_data=False)
            state.path = folder
        return state.checkpoint

    def prepare(self, stack, path, version=None) -> LoadPlan:
        """Check `path` against the stack's current checkpoint (blocking: reads every file).

        CheckpointError names the field; WeightsRefused when the pair's stacks share base weights."""
        if self.pair.lora_enabled:
            raise WeightsRefused(SHARED_BASE_HELP)
        stack = check_stack(stack)
        if not isinstance(path, str) or not path.strip():
            raise CheckpointError("path must be a non-empty string: a checkpoint folder on the server", "path")
        version = default_version(path) if version is None else check_version(version)
        current = self._current(stack)
        new = read_checkpoint(path)
        check_replaces(new, current, stack)
        return LoadPlan(stack, new, version, self.stacks[stack].path)

    def finish(self, plan: LoadPlan, answer: dict) -> WeightsLoad:
        """Record the engine's answer to `plan`; WeightsLoadError unless the new weights are in."""
        state = self.stacks[plan.stack]
        outcome = LoadOutcome(answer["outcome"])
        if outcome is LoadOutcome.LOADED:
            previous = state.version
            state.path, state.version, state.checkpoint, state.healthy = plan.checkpoint.path, plan.version, plan.checkpoint, True
            return WeightsLoad(plan.stack, plan.version, str(plan.checkpoint.path), previous, answer["seconds"], plan.checkpoint.bytes)
        if outcome is LoadOutcome.RESTORED:
            state.healthy = True
            raise WeightsLoadError(f"loading {plan.checkpoint.path} into the {plan.stack} stack failed half way "
                                   f"({answer['error']}); its previous weights ({state.version}) were loaded again", outcome)
        state.healthy = False
        raise WeightsLoadError(f"loading {plan.checkpoint.path} into the {plan.stack} stack failed half way "
                               f"({answer['error']}) and reloading its previous weights from {plan.previous} failed too "
                               f"({answer['restore_error']}): the stack is unhealthy until a load succeeds", outcome)


def combined(answers: list[dict]) -> dict:
    """One answer for a load from every worker's (tensor-parallel ranks each load their shard): the
    worst outcome, so one rank's failure is never hidden behind another's success."""
    order = [LoadOutcome.UNHEALTHY.value, LoadOutcome.RESTORED.value, LoadOutcome.LOADED.value]
    return min(answers, key=lambda a: order.index(a["outcome"]))


def split_ranks(answers: list[dict]) -> bool:
    """True when some ranks took the new weights and others did not: a mixed model, unless the ranks
    that loaded are sent back to the previous checkpoint too (`after_rank_restore`)."""
    outcomes = {a["outcome"] for a in answers}
    return LoadOutcome.LOADED.value in outcomes and len(outcomes) > 1


def after_rank_restore(first: list[dict], restore: list[dict]) -> dict:
    """The answer once every rank was asked to reload the previous checkpoint after a split load."""
    failed = combined(first)
    # Asked to load the previous checkpoint (restoring from it again on a failure), a rank that
    # answers loaded or restored holds the previous weights either way.
    if all(a["outcome"] != LoadOutcome.UNHEALTHY.value for a in restore):
        return {"outcome": LoadOutcome.RESTORED.value, "error": failed.get("error", "another rank failed")}
    worst = combined(restore)
    return {"outcome": LoadOutcome.UNHEALTHY.value, "error": failed.get("error", "another rank failed"),
            "restore_error": worst.get("restore_error") or worst.get("error", "a rank's restore failed")}


def _weight_files(folder: Path) -> list[str]:
    return [str(f) for f in sorted(folder.glob("*.safetensors"))]


def reload_stack(stack, folder: Path, vllm_config) -> None:
    """Load the checkpoint in `folder` into `stack` (a vLLM model) in place, layer by layer.

    Raises if any of the stack's parameters got no weight (the layers loaded stay loaded)."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

    files = _weight_files(folder)
    if not files:
        raise FileNotFoundError(f"no safetensors files in {folder}")
    expected = {name for name, _ in stack.named_parameters()}
    with set_current_vllm_config(vllm_config):
        initialize_layerwise_reload(stack)
        try:
            loaded = stack.load_weights(safetensors_weights_iterator(files, use_tqdm_on_load=False))
        finally:
            finalize_layerwise_reload(stack, vllm_config.model_config)
    if loaded is not None and (missing := sorted(expected - set(loaded))):
        raise ValueError(f"{len(missing)} parameter(s) got no weight, e.g. {missing[0]}")


def load_stack(model, stack: str, path: str, previous: str, vllm_config) -> dict:
    """The worker's half of a load: `path` into `model.<stack>`, else `previous` back. Never raises:
    the answer says what happened (an exception through collective_rpc would lose its type)."""
    module = getattr(model, stack)
    started = time.perf_counter()
    try:
        reload_stack(module, Path(path), vllm_config)
    except Exception as error:
        logger.exception("loading %s into the %s stack failed; reloading %s", path, stack, previous)
        reason = f"{type(error).__name__}: {error}"
        try:
            reload_stack(module, resolve_folder(previous) or Path(previous), vllm_config)
        except Exception as second:
            logger.exception("reloading %s into the %s stack failed too", previous, stack)
            return {"outcome": LoadOutcome.UNHEALTHY.value, "error": reason, "restore_error": f"{type(second).__name__}: {second}"}
        return {"outcome": LoadOutcome.RESTORED.value, "error": reason}
    return {"outcome": LoadOutcome.LOADED.value, "seconds": time.perf_counter() - started}


class StackWeightsWorker:
    """Mixed into vLLM's worker class (`worker_extension_cls`): what `collective_rpc` can call.

    vLLM refuses an extension whose attribute names clash with the worker's: ours start `lda_`."""

    def lda_load_stack(self, stack: str, path: str, previous: str) -> dict:
        return load_stack(self.model_runner.get_model(), stack, path, previous, self.vllm_config)

