"""Smoke test of the GPU image, without a GPU: does the image hold what `lda serve` needs?

The CI workflow runs it on the freshly built image before pushing any tag, and the Dockerfile runs
its FlashInfer check while building. It needs no GPU, no network and no model, so it catches a
broken image in about a minute, where a pod would only show the failure after pulling it:

    docker run --rm IMAGE python3 /opt/lda/deploy/smoke_test.py              # every check
    python3 deploy/smoke_test.py --check cli --check plugin                  # some checks

Checks (each prints one PASS or FAIL line; the exit status is 1 if any failed):
  cli         `lda --help`, `lda serve --help` and `lda selftest --help` exit 0
  plugin      the `vllm.general_plugins` entry point `lda_pair` loads and registers the pair
              architecture with vLLM's model registry
  vllm        vLLM is the version pyproject.toml pins (its `gpu` extra), from one distribution,
              and torch is the version that vLLM requires (nothing replaced vLLM's torch)
  flashinfer  FlashInfer's pre-built kernels are installed at flashinfer-python's version
  demo        the installed package ships the embedded default's LoRA adapter, intact and of the
              current build, so `lda serve` with no models starts without a fine-tune

Whether the pair really runs on a GPU is `lda selftest`'s job, on the GPU machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PAIR_ARCHITECTURE = "LDAPairForCausalLM"
CLI_TIMEOUT_S = 300


class CheckFailed(Exception):
    """A check's finding: what is wrong and, where known, what to do about it."""


@dataclass(slots=True, frozen=True)
class Options:
    vllm_version: str | None  # None: the pin in pyproject.toml


def pinned_vllm_version(pyproject: Path = PYPROJECT) -> str:
    """The version in pyproject.toml's `gpu` extra (`vllm==X`), the project's one vLLM pin."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for line in extras["gpu"]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == "vllm":
            pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            if len(pins) == 1:
                return pins[0]
    raise ValueError(f"{pyproject}: the `gpu` extra has no `vllm==VERSION` pin")


def check_cli(options: Options) -> str:
    commands = (["lda", "--help"], ["lda", "serve", "--help"], ["lda", "selftest", "--help"])
    for command in commands:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        except FileNotFoundError:
            raise CheckFailed("`lda` is not on PATH: the project is not installed") from None
        if result.returncode != 0:
            head = (result.stderr or result.stdout).strip().splitlines()[:2]
            raise CheckFailed(f"`{' '.join(command)}` exited {result.returncode}: " + " | ".join(head))
    return ", ".join(f"`{' '.join(command)}`" for command in commands) + " exit 0"


def check_plugin(options: Options) -> str:
    entry_points = [ep for ep in metadata.entry_points(group="vllm.general_plugins") if ep.name == "lda_pair"]
    if len(entry_points) != 1:
        raise CheckFailed(f"expected one `vllm.general_plugins` entry point `lda_pair`, found {len(entry_points)}")
    entry_points[0].load()()
    from vllm import ModelRegistry

    if PAIR_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        raise CheckFailed(f"the plugin ran but vLLM's registry has no {PAIR_ARCHITECTURE}")
    return f"entry point {entry_points[0].value} registered {PAIR_ARCHITECTURE}"


def _distributions_providing(package: str) -> list[str]:
    return sorted(set(metadata.packages_distributions().get(package, [])))


def check_vllm(options: Options) -> str:
    import vllm

    expected = options.vllm_version or pinned_vllm_version()
    if vllm.__version__ != expected:
        raise CheckFailed(f"vLLM is {vllm.__version__}, the project pins {expected}")
    providers = _distributions_providing("vllm")
    if len(providers) != 1:
        raise CheckFailed(f"the `vllm` package comes from {len(providers)} distributions: {providers}")
    torch_version = Version(metadata.version("torch"))
    required = [
        Requirement(line) for line in metadata.requires(providers[0]) or []
        if canonicalize_name(Requirement(line).name) == "torch"
    ]
    applicable = [r for r in required if r.marker is None or r.marker.evaluate()]
    if not applicable:
        raise CheckFailed(f"{providers[0]} declares no torch requirement for this platform")
    for requirement in applicable:
        if not requirement.specifier.contains(torch_version, prereleases=True):
            raise CheckFailed(f"torch is {torch_version}, but {providers[0]} requires {requirement}")
    return f"{providers[0]} {vllm.__version__} with torch {torch_version} (it requires {applicable[0].specifier})"


def _installed_public_version(distribution: str) -> str | None:
    try:
        return Version(metadata.version(distribution)).public
    except metadata.PackageNotFoundError:
        return None


def check_flashinfer(options: Options) -> str:
    """vLLM 0.32's own rule (vllm/utils/flashinfer.py, warn_if_flashinfer_kernels_missing), minus
    the GPU: flashinfer-cubin, and from CUDA 12.9 on flashinfer-jit-cache, must be installed at
    flashinfer-python's version. Otherwise FlashInfer downloads and compiles kernels at every
    start, which needs nvcc, or refuses to import kernels of another version."""
    flashinfer = _installed_public_version("flashinfer-python")
    if flashinfer is None:
        raise CheckFailed("flashinfer-python is not installed (the official vLLM image has it)")
    import torch

    packages = []
    if os.environ.get("VLLM_HAS_FLASHINFER_CUBIN", "0") in ("", "0"):
        packages.append("flashinfer-cubin")
    if torch.version.cuda is not None and Version(torch.version.cuda) >= Version("12.9"):
        packages.append("flashinfer-jit-cache")
    installed = {name: _installed_public_version(name) for name in packages}
    wrong = {name: version for name, version in installed.items() if version != flashinfer}
    if wrong:
        found = ", ".join(f"{name} {version or 'not installed'}" for name, version in wrong.items())
        raise CheckFailed(f"flashinfer-python {flashinfer} but {found}; fix: `vllm download-kernels`")
    found = ", ".join(f"{name} {version}" for name, version in installed.items()) or "no kernel packages needed"
    return f"flashinfer-python {flashinfer}: {found} (torch CUDA {torch.version.cuda})"


def check_demo(options: Options) -> str:
    from demo import demo_pair

    shipped, wanted = demo_pair.shipped_fingerprint(), demo_pair.fingerprint(demo_pair.lora_config(demo_pair.LORA_RANK))
    if shipped != wanted:
        raise CheckFailed(f"{demo_pair.SHIPPED_DIR} holds build {shipped}, not the default {wanted}: "
                          "`lda serve` without models would fine-tune first")
    try:
        demo_pair.verify_shipped_weights()
    except RuntimeError as error:
        raise CheckFailed(f"the image's copy is damaged: {error}") from None
    weights = demo_pair.SHIPPED_DIR / demo_pair.ADAPTER_WEIGHTS
    return f"demo adapter build {shipped} at {demo_pair.SHIPPED_DIR} ({weights.stat().st_size / 2**20:.1f} MB, sha256 ok)"


CHECKS: dict[str, Callable[[Options], str]] = {
    "cli": check_cli,
    "plugin": check_plugin,
    "vllm": check_vllm,
    "flashinfer": check_flashinfer,
    "demo": check_demo,
}


def run_checks(names: list[str], options: Options) -> bool:
    passed = True
    for name in names:
        try:
            detail = CHECKS[name](options)
        except CheckFailed as failure:
            print(f"FAIL {name}: {failure}", flush=True)
            passed = False
        except Exception as error:  # an unexpected error is a failed check, reported on one line
            print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
            passed = False
        else:
            print(f"PASS {name}: {detail}", flush=True)
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="append", choices=list(CHECKS), dest="checks",
        help="run only this check (repeatable); default: all",
    )
    parser.add_argument(
        "--vllm-version", default=None,
        help=f"the vLLM version to expect (default: the pin in {PYPROJECT})",
    )
    args = parser.parse_args(argv)
    return 0 if run_checks(args.checks or list(CHECKS), Options(vllm_version=args.vllm_version)) else 1


if __name__ == "__main__":
    sys.exit(main())
