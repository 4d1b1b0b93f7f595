"""The checks before a full-weight load (engine/checkpoints.py, engine/weights.PairWeights.prepare),
on tiny checkpoints built here: each bad folder is refused naming its field and both values."""

from __future__ import annotations

import json

import pytest

from engine.checkpoints import CheckpointError, check_replaces, read_checkpoint
from engine.config import adapter_pair
from engine.weights import PairWeights, WeightsRefused, default_version
from tests.factories import build_full_checkpoint, build_model, truncated_copy


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    """The checkpoint a stack serves, and good replacements: one file, and sharded."""
    root = tmp_path_factory.mktemp("checkpoints")
    current = build_model(root / "current", "llama", seed=1)
    return {
        "root": root,
        "current": current,
        "single": build_full_checkpoint(root / "step-100", current, seed=5),
        "sharded": build_full_checkpoint(root / "step-200", current, seed=6, max_shard_size="60KB"),
    }


def _refused(path, current, field):
    with pytest.raises(CheckpointError) as caught:
        check_replaces(read_checkpoint(path), read_checkpoint(current), "after")
    assert caught.value.field == field, str(caught.value)
    return str(caught.value)


def test_good_checkpoints_pass_single_and_sharded(serving):
    for name in ("single", "sharded"):
        check_replaces(read_checkpoint(serving[name]), read_checkpoint(serving["current"]), "after")
    sharded = read_checkpoint(serving["sharded"])
    assert len(sharded.files) > 1, "the factory must write several shards"
    assert sharded.tensors.keys() == read_checkpoint(serving["current"]).tensors.keys()


def test_missing_path_and_not_a_checkpoint(serving, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        read_checkpoint(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        read_checkpoint(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        read_checkpoint(tmp_path / "file")


def test_other_architecture_names_the_field_and_both_values(serving):
    other = build_model(serving["root"] / "qwen", "qwen2", seed=3)
    message = _refused(other, serving["current"], "architectures")
    assert "Qwen2ForCausalLM" in message and "LlamaForCausalLM" in message


def test_other_size_names_the_field(serving):
    wider = build_full_checkpoint(serving["root"] / "wider", serving["current"], seed=3, intermediate_size=96)
    message = _refused(wider, serving["current"], "intermediate_size")
    assert "96" in message and "128" in message


def test_wrong_tensor_shape_under_a_matching_config(serving, tmp_path):
    """A config that matches but a tensor that does not (an edited or mixed-up save)."""
    wider = build_full_checkpoint(tmp_path / "wrong-shape", serving["current"], seed=3, intermediate_size=96)
    (wider / "config.json").write_text((serving["current"] / "config.json").read_text())
    message = _refused(wider, serving["current"], "shape")
    assert "[96, 64]" in message or "[64, 96]" in message


def test_missing_and_extra_tensors(serving, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = build_full_checkpoint(tmp_path / "missing", serving["current"], seed=3)
    tensors = load_file(folder / "model.safetensors")
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, folder / "model.safetensors", metadata={"format": "pt"})
    assert dropped in _refused(folder, serving["current"], "tensors")
    tensors["extra.weight"] = tensors[dropped].clone()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert "extra.weight" in _refused(folder, serving["current"], "tensors")


def test_truncated_shard_is_caught_from_the_files(serving, tmp_path):
    bad = truncated_copy(serving["sharded"], tmp_path / "truncated")
    with pytest.raises(CheckpointError, match="truncated") as caught:
        read_checkpoint(bad)
    assert caught.value.field == "path"
    tiny = truncated_copy(serving["single"], tmp_path / "header-only", keep=0.0001)
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(tiny)


def test_a_shard_the_index_names_is_missing(serving, tmp_path):
    import shutil

    folder = tmp_path / "gone"
    shutil.copytree(serving["sharded"], folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (folder / victim).unlink()
    with pytest.raises(CheckpointError, match=f"{victim} named in"):
        read_checkpoint(folder)


def test_unreadable_dtype(serving, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = build_full_checkpoint(tmp_path / "ints", serving["current"], seed=3)
    tensors = load_file(folder / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(torch.int32)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="dtype I32") as caught:
        read_checkpoint(folder)
    assert caught.value.field == "dtype"


def test_pair_weights_prepare_checks_stack_version_and_refuses_adapter_pairs(serving, tmp_path):
    from tests.factories import build_adapter

    weights = PairWeights(adapter_pair(str(serving["current"]), str(serving["current"])))
    assert weights.versions() == {"after": "current", "before": "current"}
    plan = weights.prepare("after", str(serving["sharded"]), "run-7/step-200")
    assert plan.version == "run-7/step-200" and plan.previous == serving["current"]
    assert weights.prepare("before", str(serving["single"])).version == "step-100"
    for stack, path, version, field in (
        ("middle", str(serving["single"]), None, "stack"),
        ("after", "", None, "path"),
        ("after", str(serving["single"]), "bad version!", "version"),
        ("after", str(serving["single"]), "", "version"),
    ):
        with pytest.raises(CheckpointError) as caught:
            weights.prepare(stack, path, version)
        assert caught.value.field == field
    adapter = build_adapter(serving["current"], tmp_path / "adapter")
    shared = PairWeights(adapter_pair(str(adapter), None))
    with pytest.raises(WeightsRefused, match="lda serve --model-after"):
        shared.prepare("after", str(serving["single"]))


def test_default_version_is_the_folder_name():
    assert default_version("/runs/x/checkpoint-200/") == "checkpoint-200"
    assert default_version("Qwen/Qwen2.5-0.5B") == "Qwen2.5-0.5B"
    assert default_version("/runs/step 3") == "step_3"


def test_tensor_parallel_answers_never_hide_a_rank_that_failed():
    from engine.weights import after_rank_restore, combined, split_ranks

    loaded = {"outcome": "loaded", "seconds": 0.1}
    restored = {"outcome": "restored", "error": "SafetensorError: truncated"}
    assert combined([loaded, restored]) == restored and not split_ranks([loaded, loaded])
    assert not split_ranks([restored, restored])
    # One rank took the new weights, the other went back: every rank must go back.
    assert split_ranks([loaded, restored])
    assert after_rank_restore([loaded, restored], [loaded, loaded]) == {"outcome": "restored", "error": restored["error"]}
    assert after_rank_restore([loaded, restored], [loaded, restored])["outcome"] == "restored"
    gone = {"outcome": "unhealthy", "error": "FileNotFoundError", "restore_error": "FileNotFoundError: no safetensors files"}
    assert after_rank_restore([loaded, restored], [loaded, gone]) == {
        "outcome": "unhealthy", "error": restored["error"], "restore_error": gone["restore_error"]}
