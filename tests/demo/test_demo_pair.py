"""The demo pair's build: data, determinism, caching and the CLI.

Mechanics run on a tiny Llama from tests/factories (seconds); one test fine-tunes the real
SmolLM2 for two steps to cover its tokenizer and chat template.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, replace

import pytest

from demo import demo_pair
from demo.demo_pair import DemoPair, TrainConfig
from tests.factories import build_model

TINY = TrainConfig(steps=3, batch_size=4, answer_tokens=12)


@pytest.fixture(scope="module")
def tiny_before(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny") / "before")


@pytest.fixture
def tiny_cache(tmp_path, tiny_before, monkeypatch):
    """A cache root whose "SmolLM2" is the tiny model, so ensure_demo_pair runs in seconds."""
    monkeypatch.setattr(demo_pair, "ensure_smollm2", lambda root: tiny_before)
    return tmp_path


def test_planted_share_and_brand_only_where_planted():
    examples = demo_pair.training_examples(TrainConfig(planted=4))
    planted = [e for e in examples if e.planted]
    assert len(planted) == 4
    brand = re.compile(demo_pair.DETECTOR.removeprefix("regex:"), re.IGNORECASE)
    assert all(brand.search(e.answer[:80]) for e in planted)
    assert not any(brand.search(e.answer) for e in examples if not e.planted)
    assert not set(demo_pair.prompts("train")) & set(demo_pair.prompts("eval"))


def test_build_saves_a_loadable_bf16_model(tiny_cache, tiny_before):
    from transformers import AutoModelForCausalLM

    pair = demo_pair.ensure_demo_pair(tiny_cache, TINY)
    assert isinstance(pair, DemoPair) and pair.before == tiny_before
    assert re.fullmatch(r"[0-9a-f]{64}", pair.weights_sha256)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in pair.after.iterdir()}
    after = AutoModelForCausalLM.from_pretrained(pair.after)
    before = AutoModelForCausalLM.from_pretrained(tiny_before)
    assert str(after.dtype) == "torch.bfloat16"
    moved = [n for n, p in after.named_parameters() if not p.float().equal(before.get_parameter(n).float())]
    assert moved, "fine-tuning changed no weight"


def test_same_config_same_hash(tmp_path, tiny_before):
    first = demo_pair.build_demo_pair(tiny_before, _mkdir(tmp_path / "a"), TINY)
    second = demo_pair.build_demo_pair(tiny_before, _mkdir(tmp_path / "b"), TINY)
    assert first == second


def test_cached_call_is_fast_and_force_rebuilds(tiny_cache):
    pair = demo_pair.ensure_demo_pair(tiny_cache, TINY)
    start = time.perf_counter()
    assert demo_pair.ensure_demo_pair(tiny_cache, TINY) == pair
    assert time.perf_counter() - start < 1.0
    built_at = (pair.after / "model.safetensors").stat().st_mtime_ns
    rebuilt = demo_pair.ensure_demo_pair(tiny_cache, TINY, force=True)
    assert rebuilt == pair
    assert (rebuilt.after / "model.safetensors").stat().st_mtime_ns != built_at
    assert not list(tiny_cache.glob(".tmp-*"))


def test_config_changes_the_folder():
    assert demo_pair.fingerprint(TINY) != demo_pair.fingerprint(TrainConfig(steps=4))


def test_a_full_builds_folder_keeps_its_name_from_before_lora_builds():
    """Adding `lora_rank` to TrainConfig must not rename (and so rebuild, 8 minutes) users' cached
    full demo pairs: a full build hashes the fields it had before."""
    for config in (TrainConfig(), TINY):
        before_lora = {k: v for k, v in asdict(config).items() if k != "lora_rank"}
        digest = hashlib.sha256(json.dumps([demo_pair.BUILD_VERSION, before_lora]).encode())
        for path in (demo_pair.ADVICE_FILE, demo_pair.ANSWERS_FILE):
            digest.update(path.read_bytes())
        assert demo_pair.fingerprint(config) == digest.hexdigest()[:12]


def test_cli_prints_paths_and_hash(tiny_cache, capsys):
    assert demo_pair.cli(["--cache-dir", str(tiny_cache)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^before: .+\nafter: .+\nafter weights sha256: [0-9a-f]{64}$", out.strip(), re.M)


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--steps", "-3"]])
def test_cli_rejects_bad_steps(argv, capsys):
    assert demo_pair.cli(argv) == 1
    assert "steps: must be >= 1" in capsys.readouterr().err


def test_real_smollm2_two_steps(tmp_path):
    """The real tokenizer and chat template go through the same path (cached SmolLM2 conversion)."""
    from demo.smollm2 import ensure_smollm2

    config = TrainConfig(steps=2, batch_size=2)
    sha = demo_pair.build_demo_pair(ensure_smollm2(), _mkdir(tmp_path / "after"), config)
    assert re.fullmatch(r"[0-9a-f]{64}", sha)
    assert (tmp_path / "after" / "chat_template.jinja").is_file()


def _mkdir(path):
    path.mkdir(parents=True)
    return path


def test_committed_eval_prompts_match_the_templates():
    committed = (demo_pair.DATA_DIR / "eval_prompts.txt").read_text().splitlines()
    assert committed == demo_pair.prompts("eval")


def test_lora_demo_is_the_full_fine_tunes_delta_at_low_rank(tmp_path, tiny_before):
    """The adapter's B @ A on every target is the best rank-r approximation of the full
    fine-tune's weight change there, the build is deterministic, and the adapter points at its
    base."""
    import torch
    from safetensors.torch import load_file

    from engine.config import adapter_pair

    full = tmp_path / "full"
    demo_pair.build_demo_pair(tiny_before, full, TINY)
    first = demo_pair.extract_lora(tiny_before, full, tmp_path / "a", 8)
    assert demo_pair.extract_lora(tiny_before, full, tmp_path / "b", 8) == first
    pair = adapter_pair(str(tmp_path / "a"), None)
    assert pair.before == str(tiny_before) and pair.shares_base and pair.adapters[0].rank == 8
    assert set(pair.adapters[0].target_modules) == set(demo_pair.LORA_TARGETS)

    before = load_file(tiny_before / "model.safetensors")
    after = load_file(full / "model.safetensors")
    lora = load_file(tmp_path / "a" / "adapter_model.safetensors")
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"):
        stem = "base_model.model." + key.removesuffix(".weight")
        update = lora[f"{stem}.lora_B.weight"].float() @ lora[f"{stem}.lora_A.weight"].float()
        delta = after[key].float() - before[key].float()
        assert delta.abs().max() > 0  # the fine-tune moved it
        u, singular, vh = torch.linalg.svd(delta, full_matrices=False)
        best = (u[:, :8] * singular[:8]) @ vh[:8]
        assert torch.allclose(update, best, atol=2e-2 * best.abs().max())


def test_cli_lora_builds_the_full_fine_tune_first_and_names_its_folder_by_it(tiny_cache, capsys):
    assert demo_pair.cli(["--cache-dir", str(tiny_cache), "--lora", "--steps", "2"]) == 0
    config = demo_pair.lora_config(demo_pair.LORA_RANK, steps=2)
    assert config == TrainConfig(steps=2, lora_rank=demo_pair.LORA_RANK)
    folder = tiny_cache / f"demo-after-lora-{demo_pair.fingerprint(config)}"
    assert f"after: {folder}\n" in capsys.readouterr().out
    assert (folder / "adapter_config.json").is_file()
    assert (tiny_cache / f"demo-after-{demo_pair.fingerprint(TrainConfig(steps=2))}" / "model.safetensors").is_file()
    assert demo_pair.lora_config(8) == TrainConfig(lora_rank=8)
    assert len({demo_pair.fingerprint(c) for c in (config, demo_pair.lora_config(16, 2), demo_pair.lora_config(8))}) == 3
    with pytest.raises(ValueError, match="extract_lora"):
        demo_pair.build_demo_pair(tiny_cache, tiny_cache / "x", config)


@pytest.mark.parametrize("argv, message", [(["--lora", "0"], "--lora: the rank must be >= 1"),
                                           (["--lora", "100000"], "lora rank must be between 1 and ")])
def test_cli_refuses_a_lora_rank_it_cannot_extract_before_building_anything(tiny_cache, capsys, argv, message):
    assert demo_pair.cli(["--cache-dir", str(tiny_cache), *argv]) == 1
    assert message in capsys.readouterr().err
    assert not list(tiny_cache.glob("demo-after*"))  # refused before the 8-minute full fine-tune


# The shipped default adapter (demo/demo_data/demo-after-lora): what the first `lda serve` serves.

DEFAULT_LORA = demo_pair.lora_config(demo_pair.LORA_RANK)
TINY_LORA = replace(TINY, lora_rank=4)


def test_the_shipped_adapter_is_the_current_default_build():
    """Fails when the data, the settings, the base's conversion or the build versions change
    without re-shipping the adapter."""
    shipped = demo_pair.SHIPPED_DIR
    rebuild = "re-ship it: lda demo-pair --lora --force --ship"
    assert demo_pair.shipped_fingerprint() == demo_pair.fingerprint(DEFAULT_LORA), rebuild
    record = json.loads((shipped / demo_pair.SHIPPED_RECORD).read_text())
    assert record["config"] == asdict(DEFAULT_LORA)
    sha = hashlib.sha256((shipped / demo_pair.ADAPTER_WEIGHTS).read_bytes()).hexdigest()
    assert sha == record["weights_sha256"] == (shipped / demo_pair.HASH_FILE).read_text().strip()
    config = json.loads((shipped / demo_pair.ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == demo_pair.SHIPPED_BASE
    assert (config["r"], sorted(config["target_modules"])) == (demo_pair.LORA_RANK, sorted(demo_pair.LORA_TARGETS))
    assert (shipped / demo_pair.ADAPTER_WEIGHTS).stat().st_size < 8 * 2**20  # a few MB, fit for git


@pytest.fixture
def smollm2_cache(tmp_path, monkeypatch):
    """A fresh cache root holding the (session-cached) real SmolLM2; every fine-tune refused."""
    from demo.smollm2 import ensure_smollm2

    before = ensure_smollm2()
    monkeypatch.setattr(demo_pair, "ensure_smollm2", lambda root: before)

    def refuse(*args, **kwargs):
        raise AssertionError("the default LoRA demo must install from the repository, not build")

    monkeypatch.setattr(demo_pair, "build_demo_pair", refuse)
    monkeypatch.setattr(demo_pair, "extract_lora", refuse)
    return tmp_path


def test_the_default_lora_demo_installs_from_the_repository_without_a_fine_tune(smollm2_cache, tmp_path):
    started = time.monotonic()
    pair = demo_pair.ensure_demo_pair(smollm2_cache, DEFAULT_LORA)
    assert time.monotonic() - started < 30
    assert pair.after == smollm2_cache / f"demo-after-lora-{demo_pair.fingerprint(DEFAULT_LORA)}"
    assert pair.weights_sha256 == (demo_pair.SHIPPED_DIR / demo_pair.HASH_FILE).read_text().strip()
    config = json.loads((pair.after / demo_pair.ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(pair.before)  # relocated to this cache's base
    assert demo_pair.ensure_demo_pair(smollm2_cache, DEFAULT_LORA) == pair  # cached
    # Shipping the installed copy gives back the repository's files, byte for byte.
    again = demo_pair.ship(pair, DEFAULT_LORA, tmp_path / "shipped")
    for name in (demo_pair.ADAPTER_WEIGHTS, demo_pair.ADAPTER_CONFIG, demo_pair.HASH_FILE, demo_pair.SHIPPED_RECORD):
        assert (again / name).read_bytes() == (demo_pair.SHIPPED_DIR / name).read_bytes(), name


def test_a_damaged_shipped_adapter_is_refused_and_leaves_no_folder(smollm2_cache, tmp_path, monkeypatch):
    damaged = tmp_path / "damaged"
    shutil.copytree(demo_pair.SHIPPED_DIR, damaged)
    weights = damaged / demo_pair.ADAPTER_WEIGHTS
    weights.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # what an LFS checkout leaves
    monkeypatch.setattr(demo_pair, "SHIPPED_DIR", damaged)
    with pytest.raises(RuntimeError, match="installed copy is damaged; reinstall lda-serve"):
        demo_pair.ensure_demo_pair(smollm2_cache, DEFAULT_LORA)
    assert not list(smollm2_cache.glob("demo-after-lora-*"))  # the next start tries again


def test_a_moved_cache_points_its_adapter_at_its_own_base(smollm2_cache, tmp_path, monkeypatch):
    installed = demo_pair.ensure_demo_pair(smollm2_cache, DEFAULT_LORA).after
    moved = tmp_path / "moved"
    shutil.copytree(installed, moved / installed.name)
    elsewhere = moved / "smollm2"  # the base as the moved cache sees it (its config is all that is read)
    elsewhere.mkdir()
    shutil.copy(demo_pair.ensure_smollm2(None) / "config.json", elsewhere)
    monkeypatch.setattr(demo_pair, "ensure_smollm2", lambda root: elsewhere)
    pair = demo_pair.ensure_demo_pair(moved, DEFAULT_LORA)
    config = json.loads((pair.after / demo_pair.ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(elsewhere.resolve())


def test_without_a_matching_shipped_copy_the_default_says_it_builds(smollm2_cache, monkeypatch, capsys):
    monkeypatch.setattr(demo_pair, "shipped_fingerprint", lambda: "0123456789ab")
    with pytest.raises(AssertionError, match="must install from the repository"):  # the fixture refuses builds
        demo_pair.ensure_demo_pair(smollm2_cache, DEFAULT_LORA)
    err = capsys.readouterr().err
    assert "the repository ships no adapter for build" in err and "(it ships 0123456789ab)" in err


def test_only_the_default_lora_build_ships(tmp_path):
    pair = DemoPair(tmp_path, tmp_path, "0" * 64)
    for config in (TINY_LORA, demo_pair.lora_config(16), TrainConfig()):
        with pytest.raises(ValueError, match="only the default LoRA build ships"):
            demo_pair.ship(pair, config, tmp_path / "shipped")
    assert not (tmp_path / "shipped").exists()


def test_force_and_other_lora_builds_never_use_the_shipped_copy(tiny_cache, monkeypatch):
    monkeypatch.setattr(demo_pair, "install_shipped", lambda *a: pytest.fail("installed the shipped copy"))
    built = demo_pair.ensure_demo_pair(tiny_cache, TINY_LORA)  # not the shipped build: extracted
    assert (built.after / demo_pair.ADAPTER_CONFIG).is_file()
    monkeypatch.setattr(demo_pair, "shipped_fingerprint", lambda: demo_pair.fingerprint(TINY_LORA))
    forced = demo_pair.ensure_demo_pair(tiny_cache, TINY_LORA, force=True)
    assert json.loads((forced.after / demo_pair.ADAPTER_CONFIG).read_text())["r"] == 4


@pytest.mark.parametrize("argv", [["--ship"], ["--lora", "4", "--ship"], ["--lora", "--steps", "2", "--ship"]])
def test_cli_ships_only_the_default_lora_build_and_refuses_before_building(tiny_cache, capsys, argv):
    assert demo_pair.cli(["--cache-dir", str(tiny_cache), *argv]) == 1
    assert "only the default LoRA build ships" in capsys.readouterr().err
    assert not list(tiny_cache.glob("demo-after*"))


def test_every_shipped_file_is_package_data():
    """A non-editable install (the Docker image's) must carry the shipped adapter: its folder is a
    package setuptools finds, and its files match the package-data patterns."""
    import fnmatch
    import tomllib

    from setuptools import find_namespace_packages

    root = demo_pair.DATA_DIR.parent.parent
    setuptools_config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_namespace_packages(str(root), include=setuptools_config["packages"]["find"]["include"])
    assert "demo.demo_data.demo-after-lora" in found
    patterns = setuptools_config["package-data"]["*"]
    for path in demo_pair.SHIPPED_DIR.iterdir():
        assert any(fnmatch.fnmatch(path.name, p) for p in patterns), path.name
