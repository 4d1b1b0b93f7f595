"""Guards for the few places where this project patches another package's private internals.

A patch of private code is written against one version of it. Installed against another, it can
break the engine in ways far from the patch, and the plugin that installs our vLLM patches runs in
every vLLM process of the environment, including a plain `vllm serve` of an unrelated model. So
every patch declares what it patches (`Target`: the object, and the parameter names it calls it
with) and installs through `install_guarded`, which first checks that vLLM is the pinned version
and that each target exists with that signature. On any mismatch, or an error while installing,
it logs one line naming the patch and leaves the target untouched. `tests/test_patch_canary.py`
checks every declared target against the installed packages.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("lda.patches")

PINNED_VLLM = "0.32.0"
"""The vLLM version every patch was written and tested against (pyproject.toml pins it too)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One patched (or relied-on) callable: `module` imported, then `attr` (dotted) looked up."""

    module: str
    attr: str
    params: tuple[str, ...]
    """Its parameter names, in order, as the patch expects them."""

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"

    def resolve(self) -> object:
        obj = importlib.import_module(self.module)
        for part in self.attr.split("."):
            obj = getattr(obj, part)
        return obj


def vllm_version() -> str | None:
    try:
        import vllm

        return getattr(vllm, "__version__", None)
    except ImportError:
        return None


def mismatch(targets: tuple[Target, ...], pinned: str | None = PINNED_VLLM) -> str | None:
    """Why these targets cannot be patched safely, or None when they match what the patch expects.

    `pinned`: the vLLM version required (None: any, for targets outside vLLM)."""
    if pinned is not None and (found := vllm_version()) != pinned:
        return f"vLLM is {found}, the patch is written for {pinned}"
    for target in targets:
        try:
            obj = target.resolve()
        except (ImportError, AttributeError) as error:
            return f"{target.name} not found ({error})"
        try:
            params = tuple(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            return f"{target.name} has no readable signature"
        if params != target.params:
            return f"{target.name} takes {params}, the patch expects {target.params}"
    return None


def install_guarded(
    patch: str, targets: tuple[Target, ...], install: Callable[[], None], pinned: str | None = PINNED_VLLM
) -> bool:
    """Run `install` if the targets match; else log one line and change nothing. True if installed."""
    reason = mismatch(targets, pinned)
    if reason is not None:
        logger.warning("lda: patch %s not installed: %s", patch, reason)
        return False
    try:
        install()
    except Exception as error:  # never take a vLLM process down for a patch
        logger.warning("lda: patch %s not installed: %s: %s", patch, type(error).__name__, error)
        return False
    return True
