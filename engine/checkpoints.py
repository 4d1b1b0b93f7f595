"""Full-weight checkpoint folders, read and checked before a running stack takes their weights.

A training run saves Hugging Face folders: `config.json` and one `model.safetensors`, or shards
with a `model.safetensors.index.json` (what `save_pretrained`, the HF Trainer and FSDP's
consolidated save write). Loading one into a stack in place (`engine/weights.py`) overwrites the
stack layer by layer, so everything that can be wrong is found here first, from the files alone:

- the config: architecture, model type, hidden size, layers, heads, vocabulary (every field that
  fixes a tensor's shape) against the checkpoint the stack serves now;
- the tensors: every one the stack serves now present, no others, each with its shape, and a dtype
  a float weight can be read from;
- the bytes: each safetensors header parsed, each tensor's byte range the size its shape and dtype
  say, and every file read to its end (a truncated or unreadable shard is found before any weight
  is touched; the read also warms the page cache for the load that follows).

Nothing here imports torch or vLLM: the server checks a folder on its event loop's worker thread
while the engine keeps serving. Each problem is a `CheckpointError` naming the field and both
values.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

SHAPE_FIELDS = (
    "architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings",
)
"""Config fields that must equal the serving checkpoint's: each fixes the stack's shapes."""

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
"""safetensors dtypes a float weight is read from (vLLM's loader casts them to the stack's)."""

READ_CHUNK = 16 * 2**20


class CheckpointError(ValueError):
    """A checkpoint folder that a stack cannot take; `field` names what is wrong."""

    def __init__(self, message: str, field: str = "path"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    file: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint folder as its files describe it."""

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]
    files: tuple[Path, ...]
    bytes: int
    """The safetensors files' total size."""

    def shape_fields(self) -> dict:
        text = self.config.get("text_config") or {}
        return {name: self.config.get(name, text.get(name)) for name in SHAPE_FIELDS}


def resolve_folder(model: str) -> Path | None:
    """The local folder of `model`: a path, or a hub id already in the local cache; None if neither."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, CONFIG_FILE)
    except Exception:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _read_json(path: Path, field: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} cannot be read: {error}", field) from None
    except ValueError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}", field) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object", field)
    return data


def _weight_files(folder: Path) -> dict[str, list[str]]:
    """Each safetensors file of the folder, with the tensor names the index expects in it."""
    index = folder / INDEX_FILE
    if index.exists():
        weight_map = _read_json(index, "path").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map", "path")
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(str(file), []).append(name)
        return files
    if (folder / SINGLE_FILE).exists():
        return {SINGLE_FILE: []}
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        raise CheckpointError(f"{folder} holds PyTorch .bin/.pt weights; save it with safetensors "
                              "(save_pretrained(..., safe_serialization=True))", "path")
    raise CheckpointError(f"{folder} is not a checkpoint: it has no {SINGLE_FILE} and no {INDEX_FILE}", "path")


def _read_header(file: Path) -> tuple[dict, int]:
    """A safetensors file's header and where its data starts; CheckpointError if damaged."""
    try:
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file} is truncated: {len(head)} bytes, no safetensors header", "path")
            (size,) = struct.unpack("<Q", head)
            if size > 100 * 2**20:
                raise CheckpointError(f"{file} is not a safetensors file (header length {size})", "path")
            raw = f.read(size)
    except OSError as error:
        raise CheckpointError(f"{file} cannot be read: {error}", "path") from None
    if len(raw) < size:
        raise CheckpointError(f"{file} is truncated inside its header ({len(raw)} of {size} bytes)", "path")
    try:
        header = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{file} is not a safetensors file (its header is not JSON)", "path") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def _file_tensors(file: Path) -> dict[str, TensorInfo]:
    header, start = _read_header(file)
    tensors, end = {}, 0
    for name, entry in header.items():
        dtype, shape = entry.get("dtype"), tuple(entry.get("shape", ()))
        begin, stop = entry.get("data_offsets", (0, 0))
        if dtype not in DTYPE_BYTES:
            raise CheckpointError(f"tensor {name!r} in {file.name} has dtype {dtype}; a weight must be one of "
                                  f"{', '.join(DTYPE_BYTES)}", "dtype")
        numel = 1
        for dim in shape:
            numel *= dim
        if stop - begin != numel * DTYPE_BYTES[dtype]:
            raise CheckpointError(f"tensor {name!r} in {file.name}: {stop - begin} bytes for shape {list(shape)} "
                                  f"{dtype} ({numel * DTYPE_BYTES[dtype]} expected)", "path")
        tensors[name] = TensorInfo(dtype, shape, file.name)
        end = max(end, stop)
    actual = file.stat().st_size
    if actual < start + end:
        raise CheckpointError(f"{file} is truncated: {actual} bytes, its header says {start + end}", "path")
    return tensors


def _read_to_end(file: Path) -> None:
    try:
        with file.open("rb", buffering=0) as f:
            while f.read(READ_CHUNK):
                pass
    except OSError as error:
        raise CheckpointError(f"{file} cannot be read to its end: {error}", "path") from None


def read_checkpoint(path: str | Path, read_data: bool = True) -> Checkpoint:
    """The checkpoint in folder `path`, every file checked; CheckpointError names what is wrong.

    `read_data` reads every safetensors file to its end (the sizes are checked either way)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(f"{path} does not exist on the server", "path")
    if not folder.is_dir():
        raise CheckpointError(f"{path} is not a folder (a checkpoint is a folder with config.json and safetensors)", "path")
    if not (folder / CONFIG_FILE).exists():
        raise CheckpointError(f"{folder} is not a checkpoint: it has no {CONFIG_FILE}", "path")
    config = _read_json(folder / CONFIG_FILE, "path")
    tensors: dict[str, TensorInfo] = {}
    files = []
    for name, expected in _weight_files(folder).items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{folder}: the shard {name} named in {INDEX_FILE} is missing", "path")
        found = _file_tensors(file)
        if missing := sorted(set(expected) - set(found)):
            raise CheckpointError(f"{file.name} lacks {len(missing)} tensor(s) {INDEX_FILE} puts there, e.g. {missing[0]!r}", "path")
        tensors.update(found)
        files.append(file)
    if read_data:
        for file in files:
            _read_to_end(file)
    return Checkpoint(folder, config, tensors, tuple(files), sum(f.stat().st_size for f in files))


def check_replaces(new: Checkpoint, current: Checkpoint, stack: str) -> None:
    """CheckpointError unless `new` has `current`'s shapes: the same config fields, the same tensor
    names, each tensor the same shape. dtypes may differ (the loader casts)."""
    ours, theirs = new.shape_fields(), current.shape_fields()
    for name in SHAPE_FIELDS:
        if ours[name] != theirs[name]:
            raise CheckpointError(f"{name} is {ours[name]!r} in {new.path}, but the {stack} stack serves {theirs[name]!r} "
                                  f"({current.path}): a stack takes only checkpoints of its own shape", name)
    missing = sorted(set(current.tensors) - set(new.tensors))
    if missing:
        raise CheckpointError(f"{new.path} lacks {len(missing)} tensor(s) the {stack} stack needs, e.g. {missing[0]!r}", "tensors")
    extra = sorted(set(new.tensors) - set(current.tensors))
    if extra:
        raise CheckpointError(f"{new.path} has {len(extra)} tensor(s) the {stack} stack does not take, e.g. {extra[0]!r}", "tensors")
    for name, info in sorted(new.tensors.items()):
        want = current.tensors[name].shape
        if info.shape != want:
            raise CheckpointError(f"tensor {name!r} has shape {list(info.shape)} in {new.path}, but the {stack} stack's "
                                  f"is {list(want)}", "shape")
