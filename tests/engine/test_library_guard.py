"""The library example (docs/serving/library.md) pasted into a script without `if __name__ == "__main__":`.

vLLM spawns its engine, and the spawned process re-runs the script; without the guard it would
build a second pair there and fail with multiprocessing's bootstrapping error. The user must get
a message that says what to add instead.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.library import MAIN_GUARD_HELP

pytestmark = pytest.mark.slow

SCRIPT = """
from engine.library import LDAModelPair

pair = LDAModelPair({after!r}, {before!r}, device="cpu", dtype="float32", kv_cache_memory_gb=0.25, max_model_len=128)
print(pair.generate_lda("hi", max_new_tokens=2).completion)
"""


def test_unguarded_script_is_told_to_add_the_main_guard(llama_pair, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT.format(after=str(llama_pair.after), before=str(llama_pair.before)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line == f"RuntimeError: {MAIN_GUARD_HELP}"
    assert 'if __name__ == "__main__":' in MAIN_GUARD_HELP
