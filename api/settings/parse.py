"""Flags and environment into validated `ServerSettings`: flags win, then the environment, then
the fields' defaults. The one place the server reads its settings' environment variables.

Everything is driven by `api.settings.table.SETTINGS`: the parser's flags, each value's source, the
dataclass it lands in, and the errors' names for it. What is not one row's business is here too:
vLLM's spellings given after `--` (its parallel options and its `--api-key`, which become ours),
and the embedded demo pair when no model is given.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, fields
from typing import Any

from api.settings.table import BY_FLAG, FIELD_DEFAULT, SETTINGS, Setting, named_errors, setting
from api.settings.values import AccessSettings, RequestLimits, ServerSettings
from engine.adapters import parse_adapter_arg
from engine.config import AlphaConfig, EngineOptions, LDAConfig, PairConfig, adapter_pair
from engine.env import VLLM_API_KEY_VAR

GROUP_CLASSES = {
    "pair": PairConfig,
    "alpha": AlphaConfig,
    "engine": EngineOptions,
    "access": AccessSettings,
    "limits": RequestLimits,
    "server": ServerSettings,
}
"""The dataclass of each group of SETTINGS: where each field's default is stated."""
PARALLEL_FLAGS = {
    "--tensor-parallel-size": "--tensor-parallel-size", "-tp": "--tensor-parallel-size",
    "--data-parallel-size": "--data-parallel-size", "-dp": "--data-parallel-size",
    "--data-parallel-size-local": "--data-parallel-size-local", "-dpl": "--data-parallel-size-local",
    "--pipeline-parallel-size": "--pipeline-parallel-size", "-pp": "--pipeline-parallel-size",
    "--distributed-executor-backend": "--distributed-executor-backend",
}
"""vLLM's spellings of the parallel options, by the flag of ours they set. Given after `--` they
would reach vLLM behind the pair's back: the CPU binding is derived from them before vLLM starts."""
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def default_of(row: Setting) -> Any:
    """A setting's default: the row's where the server's differs, else its field's."""
    if row.default is not FIELD_DEFAULT:
        return row.default
    for f in fields(GROUP_CLASSES[row.group]):
        if f.name == row.name:
            return f.default if f.default is not MISSING else (None if f.default_factory is MISSING else f.default_factory())
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lda serve",
        description="Serve a model pair with logit diff amplification over an OpenAI-compatible API. "
        "Every option also reads the environment variable shown; flags win. "
        "Arguments after `--` go to vLLM's server unchanged, except `--api-key`, which becomes "
        "this server's --api-key (it then protects every route, not only /v1).",
    )
    for row in SETTINGS:
        if row.kind is bool:
            parser.add_argument(row.flag, action="store_true", default=None, help=f"{row.help} [env {row.env}]")
        elif row.kind is list:
            parser.add_argument(row.flag, action="append", default=None, metavar=row.metavar,
                                help=f"{row.help} [env {row.env}, comma-separated]")
        else:
            default = default_of(row)
            default = "" if default is None else f", default {getattr(default, 'value', default)}"
            parser.add_argument(row.flag, type=row.kind, default=None, metavar=row.metavar,
                                help=f"{row.help} [env {row.env}{default}]")
    return parser


def env_value(row: Setting) -> Any:
    """The setting's value from the environment (its variable, then its aliases), or None."""
    for name in (row.env, *row.aliases):
        text = os.environ.get(name)
        if text:
            return _convert(name, row.kind, text)
    return None


def _convert(name: str, kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ValueError(f"{name} must be true or false; got {text!r}")
    if kind is list:
        return [v for v in text.split(",") if v.strip()]
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be of type {kind.__name__}; got {text!r}") from None


def given_values(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """What was set, by group and field: each flag, else its environment, else a row's own
    default; fields left out take their dataclass default."""
    groups: dict[str, dict[str, Any]] = {group: {} for group in GROUP_CLASSES}
    for row in SETTINGS:
        value = getattr(args, row.dest)
        if value is None:
            value = env_value(row)
        if value is None and row.default is not FIELD_DEFAULT:
            value = row.default
        if value is not None:
            groups[row.group][row.name] = (not value) if row.negates else value
    return groups


def _lift_parallel_args(vllm_args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The parallel options given after `--` (by our flag names), apart from the other vLLM flags."""
    lifted, rest, i = {}, [], 0
    while i < len(vllm_args):
        name, eq, value = vllm_args[i].partition("=")
        if name not in PARALLEL_FLAGS:
            rest.append(vllm_args[i])
        elif eq:
            lifted[PARALLEL_FLAGS[name]] = value
        elif i + 1 < len(vllm_args):
            i += 1
            lifted[PARALLEL_FLAGS[name]] = vllm_args[i]
        else:
            raise ValueError(f"{name} after `--` needs a value")
        i += 1
    return lifted, rest


def _merge_parallel(args, values: dict[str, dict[str, Any]], lifted: dict[str, str]) -> None:
    """vLLM's spelling of a parallel option (after `--`) counts as our flag: it beats the
    environment, and a different value given both ways is refused rather than one silently lost."""
    for flag, text in lifted.items():
        row = BY_FLAG[flag]
        try:
            value = row.kind(text)
        except ValueError:
            raise ValueError(f"{flag} must be of type {row.kind.__name__}; got {text!r}") from None
        ours = getattr(args, row.dest)
        if ours is not None and ours != value:
            raise ValueError(f"{flag} is given twice with different values ({ours} and {value} after `--`)")
        values[row.group][row.name] = value


def default_pair() -> tuple[str, str]:
    """The embedded pair: the demo's LoRA adapter on SmolLM2, installed on first use from the copy
    shipped in the repository (no fine-tune; see `lda demo-pair --lora`)."""
    from demo.demo_pair import LORA_RANK, ensure_demo_pair, lora_config

    try:
        pair = ensure_demo_pair(config=lora_config(LORA_RANK))
    except (RuntimeError, OSError) as error:  # a damaged install, a full disk: say so, no traceback
        after = setting("pair.after").env
        raise ValueError(f"cannot set up the embedded demo pair (no {after} given): {error}") from None
    return str(pair.after), str(pair.before)


def _split_vllm_api_key(vllm_args: list[str]) -> tuple[list[str], list[str]]:
    """vLLM's `--api-key` values (it takes one or more) apart from the other vLLM flags."""
    keys, rest, i = [], [], 0
    while i < len(vllm_args):
        arg = vllm_args[i]
        if arg.startswith("--api-key="):
            keys.append(arg.split("=", 1)[1])
        elif arg == "--api-key":
            while i + 1 < len(vllm_args) and not vllm_args[i + 1].startswith("-"):
                i += 1
                keys.append(vllm_args[i])
            if not keys:
                raise ValueError("--api-key after `--` needs a value")
        else:
            rest.append(arg)
        i += 1
    return keys, rest


def _api_key(ours: str | None, vllm_keys: list[str]) -> str | None:
    """One key for every route: ours, or vLLM's spelling of it (after `--`, or VLLM_API_KEY).

    vLLM's own key protects only /v1; it becomes ours so that no spelling leaves a route open.
    """
    env_key = os.environ.get(VLLM_API_KEY_VAR)
    others = [*vllm_keys, *([env_key] if env_key else [])]
    if len(set(others)) > 1:
        raise ValueError(f"give one API key: vLLM's --api-key (after `--`) and {VLLM_API_KEY_VAR} differ or list several")
    if ours is not None and others and others[0] != ours:
        raise ValueError(f"two different API keys: {setting('access.api_key').label} and vLLM's --api-key / {VLLM_API_KEY_VAR}")
    return ours if ours is not None else (others[0] if others else None)


def _pair(values: dict[str, Any]) -> PairConfig:
    """The pair from its settings; neither model given: the embedded demo pair."""
    after, before = values.pop("after", None), values.pop("before", None)
    adapters = [parse_adapter_arg(v) for v in values.pop("adapters", [])]
    if after is None and before is None and not adapters:
        after, before = default_pair()
    elif after is None and not adapters:
        a, b = setting("pair.after"), setting("pair.before")
        raise ValueError(f"give both {a.env} and {b.env} (or {a.flag} and {b.flag}), or neither")
    return adapter_pair(
        after, before, adapters, values.pop("max_lora_rank", None),
        configured_max_loras=values.pop("max_loras", None), **values,
    )


def parse_settings(argv: list[str]) -> ServerSettings:
    """Flags and environment into validated settings; raises ValueError naming the bad option."""
    ours, vllm_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    values = given_values(args)
    vllm_keys, vllm_args = _split_vllm_api_key(vllm_args)
    lifted, vllm_args = _lift_parallel_args(vllm_args)
    _merge_parallel(args, values, lifted)
    values["access"]["api_key"] = _api_key(values["access"].get("api_key"), vllm_keys)
    access = AccessSettings(**values["access"])
    limits = RequestLimits(**values["limits"])
    config = LDAConfig(
        pair=named_errors("pair", lambda: _pair(values["pair"])),
        alpha=named_errors("alpha", lambda: AlphaConfig(**values["alpha"])),
        engine=named_errors("engine", lambda: EngineOptions(**values["engine"])),
    )
    return ServerSettings(config=config, vllm_args=vllm_args, access=access, limits=limits, **values["server"])
