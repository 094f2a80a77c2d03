"""Shared fixtures: the bundled tokenizer/model and tiny random models built from configs in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# make test runs two pytest-xdist workers on 2 cores: one torch thread each, and for every process a test starts (the
# notebooks' kernels, benchmark scripts, Flower nodes), since two 2-thread torch processes slow each other ~5x here.
XDIST = os.environ.get("PYTEST_XDIST_WORKER") is not None
if XDIST:
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1 if XDIST else 2)
# The notebooks' kernels run as a user's papermill run does: figures inline (make exports MPLBACKEND=Agg for scripts,
# which would leave a kernel's figures out of its outputs) and progress as a headless kernel shows it, CI or not.
if os.environ.get("MPLBACKEND") == "Agg":
    del os.environ["MPLBACKEND"]
os.environ.setdefault("FEDLIB_PROGRESS", "headless")
EXECUTED = Path(__file__).resolve().parent.parent / "notebooks" / "runs" / "executed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """nbval keeps no executed notebook: each cell's outputs are written back into a copy,
    ``notebooks/runs/executed/<name>.ipynb``, for ``tests/test_notebooks.py`` to read (figures, progress lines)."""
    yield
    if call.when == "call" and item.path.suffix == ".ipynb" and hasattr(item, "test_outputs"):
        import nbformat

        item.cell["outputs"] = list(item.test_outputs or [])
        EXECUTED.mkdir(parents=True, exist_ok=True)
        nbformat.write(item.parent.nb, str(EXECUTED / item.path.name))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under xdist, a notebook's nbval cells and the check of the summary that run wrote
    (``tests/test_notebooks.py``) go to one worker, in that order (``--dist loadgroup``): the check reads what the
    cells wrote instead of executing the notebook again."""
    for item in items:
        name = None
        if item.path.suffix == ".ipynb":
            name = item.path.stem
        elif item.path.name == "test_notebooks.py" and hasattr(item, "callspec"):
            name = item.callspec.params.get("executed")
        if name:
            item.add_marker(pytest.mark.xdist_group(f"notebook-{name}"))


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
