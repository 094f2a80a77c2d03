"""Shared fixtures: the bundled tokenizer/model and tiny random models built from configs in code."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # see ../conftest.py
TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=3)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from fedlib.models import bundled_model_path

    return AutoTokenizer.from_pretrained(bundled_model_path())


def make_tiny(kind: str, vocab_size: int):
    """A tiny random HF model of ``kind`` (3 layers, hidden 32), seeded."""
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    torch.manual_seed(0)
    if kind == "bert-mlm":
        return BertForMaskedLM(BertConfig(**TINY, vocab_size=vocab_size))
    if kind == "bert":
        return BertModel(BertConfig(**TINY, vocab_size=vocab_size))
    if kind == "roberta-mlm":
        return RobertaForMaskedLM(
            RobertaConfig(**TINY, vocab_size=vocab_size, pad_token_id=0, max_position_embeddings=140)
        )
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=3, vocab_size=vocab_size))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**TINY, num_key_value_heads=2, vocab_size=vocab_size))
    raise KeyError(kind)


TINY_KINDS = ["bert-mlm", "roberta-mlm", "bert", "gpt2", "llama"]


@pytest.fixture(params=TINY_KINDS)
def tiny_backbone(request, tokenizer):
    from fedlib.models import wrap_backbone

    model = make_tiny(request.param, tokenizer.vocab_size)
    return wrap_backbone(model, tokenizer, name=f"tiny-{request.param}")


@pytest.fixture(scope="session")
def _bundled_backbone_loaded():
    from fedlib.models import load_backbone

    return load_backbone("bundled")


@pytest.fixture
def bundled_backbone(_bundled_backbone_loaded):
    """The bundled backbone (loaded once), on the CPU: a test that runs a simulation on $FEDLIB_DEVICE (cuda
    under benchmarks/gpu_check.sh) moves the shared module there, and the next test must not inherit that."""
    _bundled_backbone_loaded.model.to("cpu")
    return _bundled_backbone_loaded
