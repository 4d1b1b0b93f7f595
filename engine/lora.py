"""LoRA adapters on the after stack: the base weights held once, vLLM's LoRA layers on one stack.

DESIGN (issue 13). Two ways were weighed:

1. vLLM's own LoRA machinery (`enable_lora`, `LoRARequest` per request, `LoRAModelManager`).
   It brings the punica kernels on GPU, several adapters in one continuous batch (`max_loras`),
   `max_lora_rank` checks, adapter loading and caching, `--lora-modules`-style naming in the
   OpenAI server (`/v1/models` lists adapters; the `model` field picks one) and a prefix-cache
   key that includes the adapter's name. Its one obstacle: the manager wraps every supported
   linear layer of the whole model, so it would also wrap the before stack.
2. An unmerged LoRA of our own in the after stack's linear layers. Full control, but it would
   re-implement all of the above (loading PEFT names onto vLLM's packed qkv/gate_up layers and
   their tensor-parallel shards, per-token adapter indices, kernels, cache salts).

We chose (1) and confine it to the after stack. The manager assigns itself to
`model.lora_manager` at the end of its constructor, after it wrapped the layers; the pair model
takes that assignment (a property setter) as the moment to put the before stack's original layers
back and drop them from the manager's tables (`confine_to_after`). The before stack therefore
never sees an adapter, on GPU or CPU.

The base weights are held once when the before model is the adapters' base: the before stack is
built on the meta device (no memory) and every one of its modules that owns weights is replaced
by the after stack's twin (`share_base`), so both stacks run the same parameter tensors; each
keeps its own attention layers, hence its own KV cache. Only the after checkpoint is loaded.
vLLM's manager then finds each shared layer twice; it wraps it under its `after.` name and points
the `before.` alias at the same wrapper, which `confine_to_after` undoes.

vLLM 0.32's CPU LoRA ops index the adapter slot with -1 for rows without an adapter and so pick
the last slot's weights. Two guards: every row that reaches the after stack carries an adapter
(the library, the original routes and the OpenAI middleware attach the default adapter to any
request that names none), and on CPU the plugin swaps those ops for ones grouped by adapter
(`engine/compat/lora_cpu_ops.py`), which leave rows at -1 alone, as the GPU kernels do, and are much
faster; a test sends a request without an adapter and gets the base.

Prefix caching: vLLM adds the LoRA name to each block's hash, so neither stack's KV is shared
between requests of different adapters (the before stack's could be, but one block table holds
both stacks).
"""

from __future__ import annotations

import logging

from torch import nn

from engine.adapters import AdapterSpec

logger = logging.getLogger("lda.lora")


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _owns_weights(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def share_base(before: nn.Module, after: nn.Module) -> int:
    """Make `before` (built on the meta device) run `after`'s weights; return the modules shared.

    Every module of `before` that owns parameters, attention layers excepted (each stack must keep
    its own KV cache), is replaced by the module of the same name in `after`. Tensors still on
    the meta device afterwards (buffers such as attention scales or a rotary cache) are taken
    from `after` too: both stacks were built from the same config, so they hold the same values.
    """
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase

    twins = dict(after.named_modules(remove_duplicate=False))
    shared: list[str] = []
    for name, module in list(before.named_modules(remove_duplicate=False)):
        if not name or any(name.startswith(f"{done}.") for done in shared):
            continue
        if isinstance(module, AttentionLayerBase) or not _owns_weights(module):
            continue
        twin = twins.get(name)
        if twin is None or type(twin) is not type(module):
            raise RuntimeError(f"cannot share the base weights: before stack's {name} has no twin in the after stack")
        _set_submodule(before, name, twin)
        shared.append(name)
    _fill_meta_tensors(before, after)
    return len(shared)


def _fill_meta_tensors(before: nn.Module, after: nn.Module) -> None:
    after_params = dict(after.named_parameters(remove_duplicate=False))
    after_buffers = dict(after.named_buffers(remove_duplicate=False))
    for name, module in before.named_modules(remove_duplicate=False):
        prefix = f"{name}." if name else ""
        for table, source in ((module._parameters, after_params), (module._buffers, after_buffers)):
            for key, tensor in list(table.items()):
                if tensor is None or not tensor.is_meta:
                    continue
                twin = source.get(prefix + key)
                if twin is None or twin.shape != tensor.shape:
                    raise RuntimeError(f"cannot share the base weights: no twin for the before stack's {prefix}{key}")
                table[key] = twin


def confine_to_after(manager, model: nn.Module, before_prefix: str) -> int:
    """Undo vLLM's LoRA wrapping under `before_prefix`; return how many layers were unwrapped.

    Guarded: if the manager does not look as in vLLM 0.32 (a `modules` dict of wrapped layers),
    nothing is changed and the error says why, because serving adapters on both stacks would be
    silently wrong.
    """
    from vllm.lora.layers import BaseLayerWithLoRA  # also the lm_head's LogitsProcessorWithLoRA

    modules = getattr(manager, "modules", None)
    if not isinstance(modules, dict):
        raise RuntimeError("vLLM's LoRA manager has no `modules` table (not vLLM 0.32?): cannot keep LoRA off the before stack")
    unwrapped = 0
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name.startswith(before_prefix) and isinstance(module, BaseLayerWithLoRA):
            _set_submodule(model, name, module.base_layer)
            unwrapped += 1
    for name in [n for n in modules if n.startswith(before_prefix)]:
        del modules[name]
        getattr(manager, "packed_modules", {}).pop(name, None)
    return unwrapped


def lora_requests(adapters: tuple[AdapterSpec, ...]) -> dict[str, object]:
    """One `LoRARequest` per adapter, ids 1..n in the given order (the first is the default)."""
    from vllm.lora.request import LoRARequest

    return {a.name: LoRARequest(a.name, i + 1, a.path) for i, a in enumerate(adapters)}


def _packed_bytes(module: nn.Module, tensor) -> int:
    """Bytes of a linear layer's weight that vLLM's CPU GEMM dispatch moved into a packed copy
    (it then leaves an empty `weight`): the copy has the weight's logical size."""
    sizes = getattr(module, "input_size_per_partition", None), getattr(module, "output_size_per_partition", None)
    if tensor.numel() == 0 and None not in sizes and hasattr(module, "cpu_linear"):
        return sizes[0] * sizes[1] * tensor.element_size()
    return 0


def resident_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights `model` holds: distinct parameter and buffer storage (shared tensors
    counted once), plus the packed copies of linear weights on CPU, once per distinct layer."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():  # each distinct module once
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor.is_meta:
                continue
            total += _packed_bytes(module, tensor)
            key = tensor.untyped_storage().data_ptr()
            if tensor.numel() and key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total


def lora_slot_bytes(model: nn.Module) -> int:
    """Bytes of the LoRA weight slots vLLM allocated (`max_loras` x `max_lora_rank` per layer)."""
    from vllm.lora.layers import BaseLayerWithLoRA

    total = 0
    for module in model.modules():
        if isinstance(module, BaseLayerWithLoRA):
            for name in ("lora_a_stacked", "lora_b_stacked"):
                total += sum(t.numel() * t.element_size() for t in getattr(module, name, ()) if t is not None)
    return total


def stack_report(model: nn.Module) -> dict:
    """What the pair model holds, for tests and the memory benchmark (run it in the worker with
    `LLM.apply_model`): LoRA-wrapped layers per stack, modules with weights the stacks share (vLLM
    shares weightless rotary embeddings between any two stacks by itself), weight bytes."""
    from vllm.lora.layers import BaseLayerWithLoRA

    wrapped = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, BaseLayerWithLoRA)]
    after = {n: getattr(m, "base_layer", m) for n, m in model.after.named_modules(remove_duplicate=False)}
    shared = [
        n for n, m in model.before.named_modules(remove_duplicate=False) if n and after.get(n) is m and _owns_weights(m)
    ]
    return {
        "wrapped_after": [n for n in wrapped if n.startswith("after.")],
        "wrapped_before": [n for n in wrapped if n.startswith("before.")],
        "shared_modules": shared,
        "resident_weight_bytes": resident_weight_bytes(model),
        "lora_slot_bytes": lora_slot_bytes(model),
    }
