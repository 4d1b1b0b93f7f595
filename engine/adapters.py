"""PEFT LoRA adapters as the after model: finding them, reading them, and refusing bad ones early.

Most public model organisms are LoRA adapters on their base, not full checkpoints. An adapter is a
folder (or hub id) holding `adapter_config.json`; its `base_model_name_or_path` names the model it
was trained on. This module turns adapter folders into validated `AdapterSpec` values before any
engine starts, so that a wrong pairing (a base of another architecture, hidden size or vocabulary
than the before model; a rank above the configured maximum) fails in seconds with a message naming
both models, instead of after a minute of loading or, worse, at the first request.

How the adapters are then served (vLLM's own LoRA machinery, confined to the after stack, with the
base weights held once) is in `engine/lora.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
# The ranks vLLM 0.32 accepts as `max_lora_rank` (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class AdapterError(ValueError):
    """An adapter that cannot be served against the configured before model."""


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """One LoRA adapter served as an after model."""

    name: str
    """What the OpenAI `model` field and the original routes' `model` field call it."""
    path: str
    """A local folder holding adapter_config.json and the adapter weights."""
    base: str
    """The adapter's `base_model_name_or_path`: the model it was trained on."""
    rank: int
    """The largest rank in the adapter (`r`, or its `rank_pattern` overrides)."""
    target_modules: tuple[str, ...]


def _local_folder(model: str) -> Path | None:
    """`model` as a local folder holding an adapter config, fetching only the config for hub ids."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path if (path / ADAPTER_CONFIG).is_file() else None
    if path.exists() or model.count("/") != 1:
        return None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        hf_hub_download(model, ADAPTER_CONFIG)
        return Path(snapshot_download(model))
    except Exception:  # not on the hub, offline, or not an adapter: then it is a full model
        return None


def is_adapter(model: str) -> bool:
    """True when `model` (a folder or hub id) is a PEFT adapter rather than a full checkpoint."""
    return _local_folder(model) is not None


def read_adapter(name: str, model: str) -> AdapterSpec:
    """Read and check one adapter's config; AdapterError names the adapter and what is wrong."""
    folder = _local_folder(model)
    if folder is None:
        raise AdapterError(f"adapter {name!r}: {model!r} is not a PEFT adapter (no {ADAPTER_CONFIG} found)")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as error:
        raise AdapterError(f"adapter {name!r}: cannot read {folder / ADAPTER_CONFIG}: {error}") from None
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise AdapterError(f"adapter {name!r} ({model}) is a {kind} adapter; only LoRA adapters can be served")
    if config.get("use_dora"):
        raise AdapterError(f"adapter {name!r} ({model}) uses DoRA, which vLLM 0.32 cannot serve")
    base = config.get("base_model_name_or_path")
    if not base:
        raise AdapterError(f"adapter {name!r} ({model}) names no base_model_name_or_path; give the before model explicitly")
    ranks = [int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    targets = config.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    return AdapterSpec(name=name, path=str(folder), base=str(base), rank=max(ranks), target_modules=targets)


def parse_adapter_arg(value: str) -> tuple[str, str]:
    """`NAME=PATH` (as the server's settings give adapters) into its two parts."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise AdapterError(f"an adapter must be given as NAME=PATH; got {value!r}")
    return name.strip(), path.strip()


def default_name(model: str) -> str:
    """The served name of an adapter given as the after model: its folder's (or hub id's) last part."""
    return Path(model.rstrip("/")).name or model


def valid_lora_rank(configured: int) -> int:
    """`configured` if vLLM accepts it as `max_lora_rank`; AdapterError naming the accepted ranks."""
    if configured not in VLLM_LORA_RANKS:
        raise AdapterError(
            f"max_lora_rank must be one of {VLLM_LORA_RANKS}; got {configured}"
        )
    return configured


def check_rank(adapter: AdapterSpec, max_rank: int) -> None:
    """AdapterError naming the adapter, its rank and the setting when it does not fit `max_rank`."""
    if adapter.rank > max_rank:
        raise AdapterError(
            f"adapter {adapter.name!r} ({adapter.path}) has rank {adapter.rank}, above max_lora_rank {max_rank}; "
            "raise max_lora_rank"
        )


def max_lora_rank(adapters: tuple[AdapterSpec, ...], configured: int | None) -> int:
    """The `max_lora_rank` to give vLLM: the configured one, else the smallest vLLM rank that fits."""
    largest = max(a.rank for a in adapters)
    if configured is not None:
        valid_lora_rank(configured)
        for adapter in adapters:
            check_rank(adapter, configured)
        return configured
    for rank in VLLM_LORA_RANKS:
        if rank >= largest:
            return rank
    raise AdapterError(f"adapter rank {largest} is above the largest rank vLLM serves ({VLLM_LORA_RANKS[-1]})")


# Config fields that must agree for an adapter trained on one model to run on another's weights.
_SHAPE_FIELDS = ("model_type", "hidden_size", "vocab_size")


def _shape(model: str) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model).get_text_config()
    return {f: getattr(config, f, None) for f in _SHAPE_FIELDS}


def check_same_base(adapters: tuple[AdapterSpec, ...], before: str) -> None:
    """Every adapter's base must match the before model in architecture, hidden size and vocabulary:
    one base serves every adapter, and the merge compares the two models' logits id by id.

    Raises AdapterError naming the adapter's base, the before model and the fields that differ.
    """
    try:
        before_shape = _shape(before)
    except (OSError, ValueError) as error:
        raise AdapterError(f"cannot read the before model {before!r}: {error}") from None
    bases = {a.base for a in adapters}
    if len(bases) > 1:
        raise AdapterError(f"all adapters must share one base model; they name {sorted(bases)}")
    for adapter in adapters:
        try:
            base_shape = _shape(adapter.base)
        except (OSError, ValueError) as error:
            raise AdapterError(f"adapter {adapter.name!r}: cannot read its base model {adapter.base!r}: {error}") from None
        differ = [f"{f} {base_shape[f]} vs {before_shape[f]}" for f in _SHAPE_FIELDS if base_shape[f] != before_shape[f]]
        if differ:
            raise AdapterError(
                f"adapter {adapter.name!r} was trained on {adapter.base!r}, which differs from the before model "
                f"{before!r}: {', '.join(differ)}"
            )


def check_joins(adapter: AdapterSpec, base: str, before: str, max_rank: int, targets: list[str] | None) -> None:
    """The start-up checks, for an adapter added to a running pair: AdapterError naming the problem.

    `base` is the after stack's weights (what every served adapter applies to), `targets` the
    modules the engine gave LoRA layers (None: every module vLLM supports). Rank first (no file
    beyond the adapter's config is read), then the shape against the before model (which names the
    fields that differ), then the base itself: an adapter of another checkpoint with the same
    shapes would run on weights it was not trained on.
    """
    check_rank(adapter, max_rank)
    check_same_base((adapter,), before)
    if not same_model(adapter.base, base):
        raise AdapterError(
            f"adapter {adapter.name!r} was trained on {adapter.base!r}, but this server's adapters apply to "
            f"{base!r}; serve it from a server started on its base"
        )
    missing = sorted(set(adapter.target_modules) - set(targets)) if targets is not None else []
    if missing:
        raise AdapterError(
            f"adapter {adapter.name!r} targets {', '.join(missing)}, which this server gave no LoRA layers "
            f"(it serves {', '.join(targets)}, the start-up adapters' targets); give it at start-up instead"
        )


def same_model(a: str, b: str) -> bool:
    """Whether two model ids or paths name the same checkpoint (so its weights can be shared)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")
