"""The composite pair model: both decoder stacks in one vLLM model, merged in `compute_logits`.

vLLM sees one model. `forward` runs the after stack and the before stack on the same tokens and
returns both hidden states side by side on the last dimension (the runner only indexes that
tensor by row). `compute_logits` splits them, runs both heads and merges with each row's alpha.
Because both stacks' attention layers are registered, the KV-cache manager pages both caches with
one block table, and the scheduler, chunked prefill and prefix caching work for both unchanged.
Each stack's class comes from vLLM's registry, so any decoder family vLLM supports can be paired.
When the after model is a LoRA adapter on the before model, both stacks share the base weights and
vLLM's LoRA layers apply to the after stack alone (`engine/lora.py` says how and why). Such a pair
can run one pass over 2N rows instead of two passes of N (`one_pass`, off by default:
`engine/compat/shared_pass.py` says how, and when it stands down).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import nullcontext

import torch
from torch import nn
from vllm.compilation.backends import set_model_tag
from vllm.config import VllmConfig
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.model_loader.utils import initialize_model
from vllm.model_executor.models import ModelRegistry
from vllm.model_executor.models.interfaces import SupportsLoRA
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper

from engine.alpha import current_rows
from engine.config.alpha import DEFAULT_ALPHA
from engine.env import V2_RUNNER_VAR
from engine.amplify import amplify
from engine.compat import lora_head_rows, shared_pass
from engine.config import AFTER_ARCHITECTURES_KEY, BEFORE_MODEL_KEY, DEFAULT_ALPHA_KEY, ONE_PASS_KEY, SHARE_BASE_KEY
from engine.lora import confine_to_after, share_base

# Module prefixes. They must contain no digit: vLLM reads a layer's index as the only integer in
# its name, and the names must differ between stacks (attention layer names are unique keys).
AFTER, BEFORE = "after", "before"

logger = logging.getLogger("lda.pair_model")


def _stack_class(architectures: list[str], vllm_config: VllmConfig) -> type[nn.Module]:
    model_cls, _ = ModelRegistry.resolve_model_cls(architectures, vllm_config.model_config)
    return model_cls


def _build_stack(stack_config: VllmConfig, prefix: str) -> nn.Module:
    """One decoder stack, built as vLLM builds a model: under its own config.

    `initialize_model` makes `stack_config` the current vLLM config while the stack is built, and
    the torch.compile wrapper of the stack's inner model keeps the current config; its AOT compile
    cache key hashes that config (`compilation/decorators.py`). Built under the engine's config
    instead, both stacks of a same-class pair hashed to one cache entry, and on a GPU the before
    stack loaded the after stack's compiled graph, whose attention layer names point at the after
    model's KV cache. Each stack's config holds its own hf_config, so the keys differ; the
    compilation config (and its registry of attention layers) is the engine's, shared.
    """
    archs = stack_config.model_config.hf_config.architectures
    return initialize_model(vllm_config=stack_config, prefix=prefix, model_class=_stack_class(archs, stack_config))


def _before_hf_config(before: str, trust_remote_code: bool):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(before, trust_remote_code=trust_remote_code)


class LDAPairForCausalLM(nn.Module, SupportsLoRA):
    # vLLM's LoRA runner reads these; with LoRA on, the instance gets the after stack's tables.
    packed_modules_mapping: dict[str, list[str]] = {}
    embedding_modules: dict[str, str] = {}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        if vllm_config.use_v2_model_runner:
            raise RuntimeError(
                f"LDA's per-request alpha needs vLLM's V1 model runner: set {V2_RUNNER_VAR}=0 "
                "(the `lda` entry points and LDAModelPair do this for you)"
            )
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ValueError("pipeline_parallel_size > 1 is not supported by the LDA pair model")
        model_config = vllm_config.model_config
        hf_config = model_config.hf_config
        before_path = getattr(hf_config, BEFORE_MODEL_KEY, None)
        after_archs = getattr(hf_config, AFTER_ARCHITECTURES_KEY, None)
        if not before_path or not after_archs:
            raise ValueError(
                f"the pair model needs hf_overrides {BEFORE_MODEL_KEY!r} and {AFTER_ARCHITECTURES_KEY!r}; "
                "build the engine with engine.config.engine_kwargs()"
            )
        self.default_alpha = float(getattr(hf_config, DEFAULT_ALPHA_KEY, DEFAULT_ALPHA))

        self.config = hf_config  # vLLM's LoRA layers read the model's config
        share = bool(getattr(hf_config, SHARE_BASE_KEY, False))

        after_config = vllm_config.with_hf_config(hf_config, architectures=list(after_archs))
        after_cls = _stack_class(after_archs, after_config)
        self.after = _build_stack(after_config, AFTER)

        before_hf = _before_hf_config(before_path, model_config.trust_remote_code)
        before_config = vllm_config.with_hf_config(before_hf, architectures=list(before_hf.architectures))
        before_config.model_config.model = before_path
        # A before stack that shares the after stack's base weights is built without memory.
        with set_model_tag("lda_before"), torch.device("meta") if share else nullcontext():
            self.before = _build_stack(before_config, BEFORE)
        if share:
            share_base(self.before, self.after)
        self.shares_base = share
        self.one_pass_wanted = bool(getattr(hf_config, ONE_PASS_KEY, False))
        self.shared_pass: shared_pass.SharedPass | None = None
        """Set when the stacks run as one pass (`_start_one_pass`); None: two passes."""

        self.after_hidden = hf_config.get_text_config().hidden_size
        self.before_hidden = before_hf.get_text_config().hidden_size
        self.after_vocab = hf_config.get_text_config().vocab_size
        self.before_vocab = before_hf.get_text_config().vocab_size
        # Shared weights arrive once, with the after checkpoint.
        self.secondary_weights = [] if share else [DefaultModelLoader.Source(before_path, None, prefix=f"{BEFORE}.")]
        if vllm_config.lora_config is not None:
            self._adopt_lora_tables(after_cls)  # one pass is decided once LoRA is in place
        else:
            self._start_one_pass(None)

    def _start_one_pass(self, lora_manager) -> None:
        if not self.one_pass_wanted:
            return
        reasons = shared_pass.blockers(self, self.shares_base, lora_manager)
        if reasons:
            logger.warning("lda: one pass asked for, running two passes: %s", "; ".join(reasons))
            return
        self.shared_pass = shared_pass.install(self)
        logger.info("lda: the pair runs one pass over both stacks' rows (shared base weights)")

    def _adopt_lora_tables(self, after_cls: type[nn.Module]) -> None:
        """What vLLM's LoRA manager needs, taken from the after stack's class; adapter weight
        names (`model.layers...`) map into the after stack (`after.model.layers...`)."""
        if not getattr(after_cls, "supports_lora", False):
            raise ValueError(f"vLLM cannot serve LoRA adapters on {after_cls.__name__}")
        self.packed_modules_mapping = dict(after_cls.packed_modules_mapping)
        self.embedding_modules = dict(after_cls.embedding_modules)
        own = getattr(after_cls, "hf_to_vllm_mapper", None) or WeightsMapper()
        self.hf_to_vllm_mapper = own | WeightsMapper(orig_to_new_prefix={"": f"{AFTER}."})

    @property
    def lora_manager(self):
        return self.__dict__.get("_lora_manager")

    @lora_manager.setter
    def lora_manager(self, manager) -> None:
        # vLLM's LoRA manager sets this once it has wrapped every matching layer of the model:
        # the moment to take the adapters off the before stack again.
        confine_to_after(manager, self, f"{BEFORE}.")
        self.__dict__["_lora_manager"] = manager
        self._start_one_pass(manager)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.after.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # Ids only the after model has (tokens a fine-tune added, vocab padding) can be prompted
        # and sampled; the before model has no embedding for them, so keep them in its range.
        before_ids = input_ids
        if input_ids is not None and self.after_vocab > self.before_vocab:
            before_ids = input_ids.clamp(max=self.before_vocab - 1)
        one = self.shared_pass is not None and self.shared_pass.enabled
        if one and input_ids is not None and inputs_embeds is None and intermediate_tensors is None:
            return self._one_pass(input_ids, before_ids, positions)
        after_hidden = self.after(input_ids, positions, intermediate_tensors, inputs_embeds)
        before_hidden = self.before(before_ids, positions, None, None)
        return torch.cat([after_hidden, before_hidden], dim=-1)

    def _one_pass(self, input_ids: torch.Tensor, before_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Both stacks as one pass of the after stack over 2N rows: the after rows, then the
        before rows (same tokens, same positions); attention and LoRA split by row."""
        n = input_ids.shape[0]
        with self.shared_pass.step(n):
            hidden = self.after(torch.cat([input_ids, before_ids]), torch.cat([positions, positions], dim=-1), None, None)
        return torch.cat([hidden[:n], hidden[n:]], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        after_hidden, before_hidden = hidden_states.split([self.after_hidden, self.before_hidden], dim=-1)
        rows = current_rows()
        # One request's prompt rows (prompt logprobs): an lm_head adapter must run them on its slot.
        prompt_row = None if rows is None else rows.prompt_row
        head = lora_head_rows.head_wrapper(self.after) if prompt_row is not None else None
        with lora_head_rows.request_rows(head, prompt_row, after_hidden.shape[0]) if head is not None else nullcontext():
            after_logits = self.after.compute_logits(after_hidden)
        before_logits = self.before.compute_logits(before_hidden)
        if after_logits is None or before_logits is None:
            return None  # a tensor-parallel rank that does not hold the gathered logits
        if rows is not None and rows.capture is not None:
            # A one-pass scoring request's prompt rows (engine/one_pass.py): both log-softmaxes
            # now, before the merge below reuses A's storage.
            rows.capture.take(after_logits, before_logits)
        num_rows = after_logits.shape[0]
        if rows is None:
            alpha = after_logits.new_full((num_rows,), self.default_alpha, dtype=torch.float32)
        else:
            alpha = rows.for_rows(num_rows)
        return amplify(after_logits, before_logits, alpha)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # The after checkpoint streams first without a prefix; the before checkpoint follows with
        # `before.` (its Source prefix). Route each to its stack's own loader.
        def routed():
            for name, tensor in weights:
                yield (name if name.startswith(f"{BEFORE}.") else f"{AFTER}.{name}"), tensor

        return AutoWeightsLoader(self).load_weights(routed())
