"""A demo training run: a LoRA fine-tune of the demo pair's before model that saves checkpoints.

`lda monitor` watches a behaviour appear during training; to show it, a user needs a run whose
checkpoints plant a known behaviour more and more. This trains one: the demo pair's own data
(`demo.demo_pair.training_examples`: everyday advice answered by the before model itself, a
share of answers opening with "Zorblax Daily Boost"), as a PEFT LoRA adapter on SmolLM2-135M-
Instruct, saving `checkpoint-<step>/` every `save_every` steps in the Hugging Face Trainer layout
(adapter files plus `trainer_state.json`). Each checkpoint appears atomically (written aside, then
renamed), so `lda monitor --watch` never reads half a checkpoint.

Deterministic on one machine (fixed data order and seed, one compute thread) and cached under the
cache root by a fingerprint of the settings and the data, like the demo pair. `--tiny` trains the
same data on a tiny random model in seconds, for tests.

    lda demo-run                 # ~/.cache/lda/demo-run-<fingerprint>/checkpoint-{5,10,...,40}
    lda demo-run --output-dir runs/demo   # uncached: checkpoints appear as they are trained
    lda demo-run --full          # the same run as full weights: demo-run-<fingerprint>-full/

`--full` writes each checkpoint merged into its base (peft's `merge_and_unload`): a full-weight run
as an SFT or RL fine-tune saves it, for `lda serve --allow-weight-loads` and `lda monitor`. The
folder also holds `base/`, the base as a full checkpoint of the same shape (a base whose output head
is tied to its embedding is untied in every folder, so that merging the head's adapter changes the
head alone, as the adapter does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from demo import demo_pair
from engine.env import CACHE_DIR_VAR, default_cache_dir
from demo.smollm2 import FOLDER_NAME as SMOLLM2_FOLDER
from demo.smollm2 import build_atomically, ensure_smollm2

BUILD_VERSION = 1
"""Bump when the training code changes in a way the fingerprint cannot see."""
STATE_FILE = "trainer_state.json"
"""The Trainer's own record in each checkpoint; `lda monitor` reads `global_step` from it."""
RUN_RECORD = "run.json"
TINY_BASE = "tiny-base"


@dataclass(frozen=True, slots=True)
class RunConfig:
    """How the demo run trains; every field enters the cache folder's name."""

    steps: int = 40
    save_every: int = 5
    """A checkpoint every this many optimizer steps (8 checkpoints by default)."""
    learning_rate: float = 2e-3
    lora_rank: int = 8
    planted: int = 30
    """How many of the 300 training answers open with the brand (the demo pair plants 12)."""
    batch_size: int = 8
    answer_tokens: int = 16
    """Answer tokens trained per example: the brand opens the answer, and each step costs ~10 s
    on one CPU thread at 16 (the demo pair trains 32)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "save_every", "lora_rank", "batch_size", "answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.save_every > self.steps:
            raise ValueError(f"save_every: must be <= steps ({self.steps}), got {self.save_every}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate: must be in (0, 1), got {self.learning_rate}")
        if self.planted < 0:
            raise ValueError(f"planted: must be >= 0, got {self.planted}")

    def train_config(self) -> demo_pair.TrainConfig:
        """The demo pair's config with this run's data settings: its examples and batch order."""
        return demo_pair.TrainConfig(
            steps=self.steps, batch_size=self.batch_size, learning_rate=self.learning_rate,
            planted=self.planted, answer_tokens=self.answer_tokens, seed=self.seed,
        )


TINY_CONFIG = RunConfig(steps=6, save_every=2, learning_rate=5e-3, planted=60, batch_size=4, answer_tokens=16)
"""The tests' run: three checkpoints of a tiny random model, seconds on a CPU."""


def fingerprint(config: RunConfig, base_name: str) -> str:
    digest = hashlib.sha256(json.dumps([BUILD_VERSION, asdict(config), base_name, demo_pair.LORA_TARGETS]).encode())
    for path in (demo_pair.ADVICE_FILE, demo_pair.ANSWERS_FILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_demo_run(cache_dir: Path | None = None, config: RunConfig | None = None, force: bool = False) -> Path:
    """The cached demo run's folder (built first if missing): `checkpoint-<step>/` adapters on
    SmolLM2-135M-Instruct. `force` retrains; the old run stays until the new one is complete."""
    config = config or RunConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = ensure_smollm2(root)
    final = root / f"demo-run-{fingerprint(config, SMOLLM2_FOLDER)}"
    return build_atomically(final, lambda out: train_run(base, out, config), replace=force)


def ensure_tiny_run(root: Path, config: RunConfig = TINY_CONFIG) -> tuple[Path, Path]:
    """(base, run): a tiny random Llama and a run of LoRA checkpoints on it, the tests' series."""
    from demo.tiny_models import build_model

    base = root / TINY_BASE
    if not (base / "config.json").is_file():
        build_model(base, "llama", seed=2)
    run = build_atomically(root / f"tiny-run-{fingerprint(config, TINY_BASE)}", lambda out: train_run(base, out, config))
    return base, run


def train_run(base: Path, out_dir: Path, config: RunConfig) -> list[Path]:
    """Train a LoRA adapter of `base` on the demo data, saving `out_dir/checkpoint-<step>` every
    `config.save_every` steps; return the checkpoints in step order."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    # One thread: the reduction order, hence the weights' last bits, depends on the split.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        model, tokenizer = _lora_model(base, config)
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoints = _train(model, tokenizer, base, out_dir, config)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    record = {"config": asdict(config), "base": str(base.resolve()), "checkpoints": [c.name for c in checkpoints],
              "command": "lda demo-run"}
    (out_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return checkpoints


def _lora_model(base: Path, config: RunConfig):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    # The demo pair's targets, the output head included: its LoRA build showed the brand needs the
    # head's change together with the projections' (demo.demo_pair.LORA_METHOD).
    targets = [t for t in demo_pair.LORA_TARGETS if t in names]
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank, target_modules=targets, lora_dropout=0.0)
    return get_peft_model(model, lora), AutoTokenizer.from_pretrained(base)


def _train(model, tokenizer, base: Path, out_dir: Path, config: RunConfig) -> list[Path]:
    import torch
    from tqdm import tqdm

    examples = demo_pair.training_examples(config.train_config())
    encoded = [demo_pair._encode(tokenizer, e, config.answer_tokens) for e in examples]
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=0.0)
    model.train()
    checkpoints, history = [], []
    batches = demo_pair._batches(encoded, config.train_config())
    for step, batch in enumerate(tqdm(batches, desc="demo training run", unit="step"), start=1):
        loss = model(**demo_pair._collate(batch, tokenizer.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step, "loss": round(loss.item(), 5)})
        if step % config.save_every == 0:
            checkpoints.append(_save_checkpoint(model, base, out_dir / f"checkpoint-{step}", step, history))
    model.eval()
    return checkpoints


def _save_checkpoint(model, base: Path, final: Path, step: int, history: list[dict]) -> Path:
    """Write the adapter aside and rename it into place, so a watcher sees it whole or not at all."""
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    # The tied output embedding is a LoRA target, not a saved layer: keep the adapter small.
    model.save_pretrained(tmp, save_embedding_layers=False)
    config_file = tmp / demo_pair.ADAPTER_CONFIG
    adapter = json.loads(config_file.read_text())
    adapter["base_model_name_or_path"] = str(base.resolve())
    adapter["target_modules"] = sorted(adapter["target_modules"])
    config_file.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")
    state = {"global_step": step, "log_history": list(history)}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


FULL_SUFFIX = "-full"
FULL_BASE = "base"
"""The base as a full checkpoint beside a full run's `checkpoint-*` folders (the before model)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


def untied_model(base: Path):
    """The base model, its output head untied from the embedding (a copy) when it was tied."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if model.config.tie_word_embeddings:
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        model.config.tie_word_embeddings = False
    return model


def _save_full(model, base: Path, final: Path, dtype) -> Path:
    """Save `model` as a full checkpoint with `base`'s tokenizer files, atomically."""
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(dtype).save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (base / name).exists():
            shutil.copy(base / name, tmp / name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def merge_into_full(base: Path, adapter: Path, out_dir: Path) -> Path:
    """`adapter` merged into `base`, saved as a full checkpoint in `base`'s dtype (head untied)."""
    from peft import PeftModel
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(base), "torch_dtype", None) or "float32"
    merged = PeftModel.from_pretrained(untied_model(base), adapter).merge_and_unload()
    return _save_full(merged, base, out_dir, dtype)


def save_full_base(base: Path, out_dir: Path) -> Path:
    """`base` as a full checkpoint of the merged checkpoints' shape (its head untied), in its dtype."""
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(base), "torch_dtype", None) or "float32"
    return _save_full(untied_model(base), base, out_dir, dtype)


def full_run(run: Path, base: Path, out_dir: Path) -> Path:
    """Every `checkpoint-<step>` adapter of `run` merged into `base`, as `out_dir/checkpoint-<step>`
    (with its trainer_state.json), and `out_dir/base`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / FULL_BASE / "config.json").exists():
        save_full_base(base, out_dir / FULL_BASE)
    for checkpoint in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        final = out_dir / checkpoint.name
        if (final / "config.json").exists():
            continue
        merge_into_full(base, checkpoint, final)
        shutil.copy(checkpoint / STATE_FILE, final / STATE_FILE)
    return out_dir


def ensure_full_run(run: Path, base: Path) -> Path:
    """The full-weight copy of `run` beside it (`<run>-full`), built once."""
    return full_run(run, base, run.with_name(run.name + FULL_SUFFIX))


def cli(argv: list[str]) -> int:
    """`lda demo-run`: train (or find) the demo training run and print its checkpoints."""
    defaults = RunConfig()
    parser = argparse.ArgumentParser(prog="lda demo-run", description=cli.__doc__,
                                     epilog="Then: lda monitor RUN_DIR --detector regex:zorblax --alphas 0,2")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"cache root (default: ${CACHE_DIR_VAR} or ~/.cache/lda)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="train into this folder instead of the cache (checkpoints appear as they are saved: "
                        "run `lda monitor --watch` on it meanwhile)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--save-every", type=int, default=defaults.save_every, help="(default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="(default: %(default)s)")
    parser.add_argument("--planted", type=int, default=defaults.planted,
                        help="training answers (of 300) that open with the brand (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model, seconds (for tests); needs --output-dir")
    parser.add_argument("--full", action="store_true",
                        help="also write the run as full-weight checkpoints (each merged into the base) in <run>-full/, "
                        "with the base as <run>-full/base/")
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    args = parser.parse_args(argv)
    try:
        config = RunConfig(steps=args.steps, save_every=args.save_every, learning_rate=args.learning_rate,
                           planted=args.planted)
        run = _build(args, config)
    except ValueError as exc:
        print(f"lda demo-run: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"lda demo-run: {exc}", file=sys.stderr)
        return 1
    checkpoints = sorted((p for p in run.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    print(f"run: {run}\ncheckpoints: {', '.join(p.name for p in checkpoints)}")
    if args.full:
        print(f"full-weight run: {run.with_name(run.name + FULL_SUFFIX)} (base: {FULL_BASE}/)")
    return 0


def _build(args: argparse.Namespace, config: RunConfig) -> Path:
    if args.tiny:
        if args.output_dir is None:
            raise ValueError("--tiny: give --output-dir (the tiny base and run are built there)")
        base, run = ensure_tiny_run(args.output_dir)
    elif args.output_dir is None:
        run = ensure_demo_run(args.cache_dir, config, force=args.force)
        base = ensure_smollm2(args.cache_dir)
    else:
        base = ensure_smollm2(args.cache_dir)
        train_run(base, args.output_dir, config)
        run = args.output_dir
    if args.full:
        ensure_full_run(run, base)
    return run


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
