"""The model pair and its LoRA policy: which checkpoints, which adapters, how many slots of which rank.

`adapter_pair` turns what a user gives (an after model that may be a PEFT adapter, extra
`NAME=PATH` adapters, the runtime switch, configured limits) into a validated `PairConfig`; the
LoRA slot limits are derived here, once, for the engine arguments and the start-up log alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.adapters import (
    AdapterSpec,
    check_same_base,
    default_name,
    is_adapter,
    max_lora_rank,
    read_adapter,
    same_model,
    valid_lora_rank,
)

RUNTIME_MIN_LORA_RANK = 16
"""The smallest `max_lora_rank` when adapters may be loaded at runtime: their ranks are not known at
start-up, and 16 holds the common ranks of model organisms and trainer checkpoints (8, 16). A slot's
cost grows with the rank (every adapter row computes at the slot's rank), so it is not larger."""
RUNTIME_MIN_LORAS = 4
"""The smallest `max_loras` when adapters may be loaded at runtime: room for a few checkpoints side
by side (a monitor loads one at a time) beside the start-up adapters."""


@dataclass(slots=True)
class PairConfig:
    """The two checkpoints: model ids or local paths."""

    after: str
    """The post-trained model (A). Its tokenizer, chat template and generation config are used."""
    before: str
    """The base model (B)."""
    adapters: tuple[AdapterSpec, ...] = ()
    """LoRA adapters served as the after model, the first the default. `after` is then their base."""
    max_lora_rank: int | None = None
    """vLLM's `max_lora_rank` (set by `adapter_pair`); None without LoRA."""
    runtime_adapters: bool = False
    """Adapters may be loaded and unloaded while the server runs (`/v1/load_lora_adapter`): LoRA is
    then on even with no adapter at start-up, and the after stack without one is `after` itself."""
    max_loras: int | None = None
    """vLLM's `max_loras`: the most adapters loaded at once, each with its own slot, so any mix of
    them fits one batch (set by `adapter_pair`); None without LoRA."""
    one_pass: bool = False
    """Run a shared-base pair's two stacks as one pass over both stacks' rows (the base weights
    read once per step; engine/compat/shared_pass.py). Needs an adapter pair whose before model
    is the adapters' base; where one pass cannot run (a GPU with LoRA, other attention layers) the
    engine logs why and runs two passes. Off: two passes, the tested default."""

    def __post_init__(self) -> None:
        for name in ("after", "before"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} model must be a non-empty model id or path; got {value!r}")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique; got {names}")
        if self.max_loras is not None and self.max_loras < max(1, len(self.adapters)):
            raise ValueError(
                f"max_loras must be >= 1 and >= the {len(self.adapters)} adapters given at start-up; "
                f"got {self.max_loras}"
            )
        if self.one_pass and not self.shares_base:
            raise ValueError(
                "one_pass needs an adapter pair whose before model is the adapters' base (the stacks then "
                f"share the base weights); after={self.after!r}, before={self.before!r}, {len(self.adapters)} adapter(s)"
            )

    @property
    def lora_enabled(self) -> bool:
        """Whether the engine runs vLLM's LoRA layers on the after stack."""
        return bool(self.adapters) or self.runtime_adapters

    @property
    def shares_base(self) -> bool:
        """Whether the before stack runs the after stack's base weights (held once)."""
        return self.lora_enabled and same_model(self.after, self.before)

    def describe(self) -> str:
        """One line for the start-up log: which models, and whether the base weights are shared."""
        runtime = f"; runtime adapters allowed (max_loras {self.max_loras}, max_lora_rank {self.max_lora_rank})"
        runtime = runtime if self.runtime_adapters else ""
        if not self.adapters:
            return f"after={self.after} before={self.before}{runtime}"
        names = ", ".join(f"{a.name} (rank {a.rank})" for a in self.adapters)
        sharing = (
            "the before stack shares the base weights (held once)"
            if self.shares_base
            else f"the before model is not the adapters' base, so nothing is shared (base {self.after})"
        )
        return f"after = LoRA adapters {names} on {self.after}; before={self.before}; {sharing}{runtime}"


def lora_limits(
    specs: tuple[AdapterSpec, ...], runtime: bool, configured_rank: int | None, configured_loras: int | None
) -> tuple[int | None, int | None]:
    """(max_lora_rank, max_loras) for vLLM: the configured values, else what the start-up adapters
    need, raised to the runtime minimums when adapters may be added later; (None, None) without LoRA."""
    if not specs and not runtime:
        return None, None
    if specs:
        rank = max_lora_rank(specs, configured_rank)
    else:
        rank = valid_lora_rank(configured_rank) if configured_rank is not None else RUNTIME_MIN_LORA_RANK
    loras = len(specs)
    if runtime:
        rank = rank if configured_rank is not None else max(rank, RUNTIME_MIN_LORA_RANK)
        loras = max(RUNTIME_MIN_LORAS, len(specs) + 1)
    return rank, configured_loras if configured_loras is not None else loras


def adapter_pair(
    after: str | None,
    before: str | None,
    adapters: list[tuple[str, str]] | tuple = (),
    configured_max_rank: int | None = None,
    *,
    runtime_adapters: bool = False,
    configured_max_loras: int | None = None,
    **policy: Any,
) -> PairConfig:
    """The pair for an after model that may be a PEFT adapter, and for extra `NAME=PATH` adapters.

    An adapter as `after` becomes the first (default) adapter, named after its folder. The before
    model defaults to the adapters' base. Raises ValueError (AdapterError) naming both models when
    an adapter cannot run against the before model, or its rank exceeds `configured_max_rank`.
    With `runtime_adapters`, LoRA is on whatever was given, with room for adapters loaded later.
    `policy`: any further PairConfig field, passed through as given.
    """
    given = list(adapters)
    if after is not None and is_adapter(after):
        given.insert(0, (default_name(after), after))
        after = None
    if not given:
        if after is None or before is None:
            raise ValueError(f"give both the after and the before model (the after model {after!r} is not a LoRA adapter)")
        rank, loras = lora_limits((), runtime_adapters, configured_max_rank, configured_max_loras)
        return PairConfig(after, before, max_lora_rank=rank, runtime_adapters=runtime_adapters, max_loras=loras, **policy)
    specs = tuple(read_adapter(name, path) for name, path in given)
    base = specs[0].base
    if after is not None and not same_model(after, base):
        raise ValueError(
            f"the after model {after!r} is a full model, but adapters were given too; adapters apply to "
            f"their base {base!r}: give them alone"
        )
    before = before or base
    check_same_base(specs, before)
    rank, loras = lora_limits(specs, runtime_adapters, configured_max_rank, configured_max_loras)
    return PairConfig(base, before, specs, rank, runtime_adapters=runtime_adapters, max_loras=loras, **policy)
