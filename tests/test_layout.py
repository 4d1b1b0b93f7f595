"""The folder tree is the architecture: what each package may import, and what engine/ holds.

Layers, lowest first: `engine` (the vLLM plugin), `demo` (the demo and test models, built with
engine's cache helpers), `api` (the HTTP server over both), and `study`, the research client,
which talks to a server over HTTP only. A module may import its own package and those below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {
    "engine": {"engine"},
    "demo": {"demo", "engine"},
    "api": {"api", "engine", "demo"},
    "study": {"study"},
}
PROJECT = {"engine", "demo", "api", "study", "benchmarks"}
NOT_THE_ENGINE = {"demo_pair", "smollm2", "tiny_models", "selftest", "vllm_patches", "patch_guard", "step_timing", "lora_cpu_ops"}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_point_down(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) - MAY_IMPORT[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in wrong.items() if v}, f"{package} may import only {sorted(MAY_IMPORT[package])}"


def test_engine_lists_only_the_engine():
    modules = {p.stem for p in (ROOT / "engine").glob("*.py")}
    assert not modules & NOT_THE_ENGINE, "demo builders live in demo/, the vLLM compatibility layer in engine/compat/"
    assert {p.stem for p in (ROOT / "engine" / "compat").glob("*.py")} >= {"vllm_patches", "patch_guard", "step_timing", "lora_cpu_ops"}


def test_seed_names_randomness_only():
    named = [str(p.relative_to(ROOT)) for package in (*MAY_IMPORT, "tests", "benchmarks") for p in (ROOT / package).rglob("*seed*")]
    assert not named, "'seed' means the random seed; the project this one replaces is 'the original'"
