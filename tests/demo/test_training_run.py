"""`lda demo-run`'s tiny variant: the Trainer layout, one adapter per checkpoint, deterministic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from demo.training_run import RUN_RECORD, STATE_FILE, TINY_CONFIG, RunConfig, cli, ensure_tiny_run, train_run


def _weights_hash(checkpoint: Path) -> str:
    return hashlib.sha256((checkpoint / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_the_tiny_run_saves_a_peft_adapter_every_save_every_steps(tmp_path: Path):
    from peft import PeftConfig
    from safetensors.torch import load_file

    base, run = ensure_tiny_run(tmp_path)
    checkpoints = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for step, checkpoint in zip((2, 4, 6), checkpoints):
        state = json.loads((checkpoint / STATE_FILE).read_text())
        assert state["global_step"] == step and [h["step"] for h in state["log_history"]] == list(range(1, step + 1))
        assert PeftConfig.from_pretrained(checkpoint).base_model_name_or_path == str(base.resolve())
    # Training moves the adapter: LoRA's B starts at zero and differs at every checkpoint.
    b = [{k: v for k, v in load_file(p / "adapter_model.safetensors").items() if "lora_B" in k} for p in checkpoints]
    assert all(float(t.abs().max()) > 0 for t in b[0].values())
    assert any(float((b[2][k] - b[0][k]).abs().max()) > 0 for k in b[0])
    assert json.loads((run / RUN_RECORD).read_text())["checkpoints"] == [p.name for p in checkpoints]
    assert not list(run.glob(".tmp-*"))


def test_the_run_is_deterministic(tmp_path: Path):
    base, run = ensure_tiny_run(tmp_path / "a")
    again = train_run(base, tmp_path / "b", TINY_CONFIG)
    assert [_weights_hash(p) for p in again] == [_weights_hash(run / p.name) for p in again]


@pytest.mark.parametrize(("fields", "message"), [
    ({"save_every": 0}, "save_every"), ({"steps": 4, "save_every": 5}, "save_every"),
    ({"learning_rate": 2.0}, "learning_rate"), ({"planted": -1}, "planted"),
])
def test_bad_settings_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**fields)


def test_the_command_refuses_bad_input(capsys):
    assert cli(["--save-every", "0"]) == 2
    assert "save_every" in capsys.readouterr().err
    assert cli(["--tiny"]) == 2
    assert "--output-dir" in capsys.readouterr().err


def test_the_full_run_is_each_adapter_merged_into_the_base(tmp_path: Path):
    """`lda demo-run --full --tiny`: every checkpoint as full weights whose logits are the adapter's on
    the base, a `base/` of the same shape, the trainer's state kept; checkable by the weights route."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from demo.training_run import FULL_BASE, FULL_SUFFIX
    from engine.checkpoints import check_replaces, read_checkpoint

    assert cli(["--tiny", "--full", "--output-dir", str(tmp_path)]) == 0
    base, run = ensure_tiny_run(tmp_path)
    full = run.with_name(run.name + FULL_SUFFIX)
    assert sorted(p.name for p in full.iterdir()) == [FULL_BASE, "checkpoint-2", "checkpoint-4", "checkpoint-6"]
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        for name in ("checkpoint-2", "checkpoint-6"):
            adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / name)
            merged = AutoModelForCausalLM.from_pretrained(full / name)
            torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
            assert (full / name / STATE_FILE).exists()
            check_replaces(read_checkpoint(full / name), read_checkpoint(full / FULL_BASE), "after")
        plain = AutoModelForCausalLM.from_pretrained(base)(ids).logits
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(full / FULL_BASE)(ids).logits, plain)
    assert cli(["--tiny", "--full", "--output-dir", str(tmp_path)]) == 0  # built once: a rerun finds it
