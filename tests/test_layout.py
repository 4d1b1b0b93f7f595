"""The folder tree is the architecture: what each package may import, and what engine/ holds.

Layers, lowest first: `engine` (the vLLM plugin), `demo` (the demo and test models, built with
engine's cache helpers), `api` (the HTTP server over both), and `study`, the research client,
which talks to a server over HTTP only. A module may import its own package and those below it.
"""

from __future__ import annotations

import ast
import re
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


# The study package's rooms: what each may import of study (besides the shared top-level modules).
STUDY = ROOT / "study"
STUDY_SHARED = {"study.errors", "study.config", "study.records"}
ROOMS_MAY_IMPORT = {
    "analysis": {"study.analysis"},
    "collect": {"study.collect", "study.analysis", "study.output.files"},  # the folder layout, not the outputs
    "output": {"study.output", "study.analysis"},
    "commands": {"study.collect", "study.analysis", "study.output", "study.commands"},
}
IO_MODULES = {"httpx", "subprocess", "socket", "asyncio", "shutil", "tempfile", "urllib", "requests", "matplotlib",
              "tqdm", "logging", "os", "pathlib", "io"}
"""What analysis may not import: it computes on records; files, the network and the console are the other rooms'."""


def _study_imports(path: Path) -> set[str]:
    """The study modules `path` imports (full dotted names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "study"}


def _allowed(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("room", sorted(ROOMS_MAY_IMPORT))
def test_study_rooms_import_only_their_own_and_lower_rooms(room):
    allowed = ROOMS_MAY_IMPORT[room] | STUDY_SHARED | {"study"}
    wrong = {}
    for path in (STUDY / room).glob("*.py"):
        # `from study.output import files` names the module study.output.files: check the deepest name
        names = {n for n in _study_imports(path) if not any(m.startswith(n + ".") for m in _study_imports(path))}
        bad = sorted(n for n in names if not _allowed(n, allowed))
        if bad:
            wrong[str(path.relative_to(ROOT))] = bad
    assert not wrong, f"study/{room}/ may import only {sorted(allowed)}"


def test_study_analysis_does_no_io():
    wrong = {}
    for path in (STUDY / "analysis").glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        calls = {node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "open", "input")}
        if (imported & IO_MODULES) | calls:
            wrong[str(path.relative_to(ROOT))] = sorted((imported & IO_MODULES) | calls)
    assert not wrong, "study/analysis/ is pure functions: no files, network or console"


def test_study_shared_modules_import_nothing_above_them():
    for name in ("errors", "records"):
        assert not _study_imports(STUDY / f"{name}.py"), f"study/{name}.py is the bottom layer"


def test_the_study_map_names_every_module():
    """study/__init__.py's map lists each module under its room's heading (a newcomer finds any
    function from the folder names)."""
    import study

    sections: dict[str, set[str]] = {"": set()}
    room = ""
    for line in study.__doc__.splitlines():
        words = line.split()
        if line.startswith("    ") and not line.startswith("      ") and words and words[0].endswith("/"):
            room = words[0].rstrip("/")
            sections[room] = set()
        elif line.startswith("    ") and words:
            # One or two columns a line, two spaces or more apart: NAME  description  NAME  description
            cells = re.split(r"\s{2,}", line.strip())
            sections[room] |= {cell for cell in cells[::2] if cell.isidentifier()}
    missing = []
    for path in STUDY.rglob("*.py"):
        if path.stem == "__init__":
            continue
        where = path.parent.relative_to(STUDY).as_posix()
        where = "" if where == "." else where
        if path.stem not in sections.get(where, set()):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, "add these to the map in study/__init__.py, under their room"
