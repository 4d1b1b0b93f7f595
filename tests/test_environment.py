"""Environment variables: each name typed once, in one of the two tables, and the process
environment changed in one start-up function only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from api.settings import SETTINGS
from engine import env

ROOT = Path(__file__).resolve().parents[1]
TABLES = {ROOT / "engine" / "env.py", ROOT / "api" / "settings" / "table.py"}
START_UP = ROOT / "engine" / "config" / "process.py"
CHECKED = ("engine", "api", "demo")


def _names() -> set[str]:
    ours = {row.env for row in SETTINGS} | {a for row in SETTINGS for a in row.aliases}
    return ours | {v for k, v in vars(env).items() if k.endswith("_VAR") and isinstance(v, str)}


def _strings(tree: ast.AST):
    """String constants that are not docstrings (prose may name a variable)."""
    prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            yield node


def _modules():
    for package in CHECKED:
        yield from (ROOT / package).rglob("*.py")


def test_every_variable_name_is_typed_once_in_a_table():
    names = _names()
    assert len(names) > 40
    pattern = re.compile(rf"\b({'|'.join(map(re.escape, sorted(names)))})\b")
    retyped = [
        f"{path.relative_to(ROOT)}:{node.lineno} {match.group(0)}"
        for path in _modules() if path not in TABLES
        for node in _strings(ast.parse(path.read_text()))
        if (match := pattern.search(node.value))
    ]
    assert not retyped, "name variables through engine/env.py or api/settings/table.py"


def test_no_name_is_in_both_tables():
    ours = [row.env for row in SETTINGS]
    assert len(set(ours)) == len(ours)
    engine_vars = [v for k, v in vars(env).items() if k.endswith("_VAR")]
    assert not set(ours) & set(engine_vars)


def _environment_writes(tree: ast.AST) -> list[int]:
    writes = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            writes += [node.lineno for t in targets if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ"]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, method = ast.unparse(node.func.value), node.func.attr
            if (owner == "os.environ" and method in {"update", "setdefault", "pop", "clear"}) or (owner == "os" and method in {"putenv", "unsetenv"}):
                writes.append(node.lineno)
    return writes


def test_only_the_start_up_function_changes_the_environment():
    found = {
        str(path.relative_to(ROOT)): lines
        for package in ("engine", "api") for path in (ROOT / package).rglob("*.py")
        if (lines := _environment_writes(ast.parse(path.read_text())))
    }
    assert list(found) == [str(START_UP.relative_to(ROOT))], found
