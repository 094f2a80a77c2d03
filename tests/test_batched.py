"""Batched clients (fedlib.batched) give the sequential loop's results, with dropout off."""

import pytest
import torch

from fedlib.config import ModelConfig, TrainConfig
from fedlib.models import wrap_backbone
from fedlib.simulation import Simulation, run_simulation

from .configs import build


def no_dropout_tiny(kind: str, vocab_size: int):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if kind == "bert":
        return BertModel(
            BertConfig(
                hidden_size=32,
                num_attention_heads=4,
                intermediate_size=64,
                num_hidden_layers=3,
                vocab_size=vocab_size,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        )
    return GPT2LMHeadModel(
        GPT2Config(
            n_embd=32, n_head=4, n_layer=3, vocab_size=vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
        )
    )


def cfg(batch: str, **fed):
    base = dict(
        task="rte",
        num_clients=5,
        clients_per_round=3,
        rounds=2,
        train_limit=60,
        eval_limit=20,
        seed=3,
        batch_clients=batch,
        shared_layers=1,
        eval_every=1,
    )
    return build(
        model=ModelConfig(prompt_len=3, prompt_dropout=0.0, max_length=48),
        train=TrainConfig(batch_size=4, eval_batch_size=32),
        **{**base, **fed},
    )


def _close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


@pytest.mark.parametrize(
    "kind,strategy,chunk",
    [("bert", "fedpeptao", 0), ("bert", "scaffold", 1), ("gpt2", "fedprox", 64), ("gpt2", "fedavg", 0)],
)
def test_batched_clients_equal_sequential(tokenizer, kind, strategy, chunk):
    backbone = wrap_backbone(no_dropout_tiny(kind, tokenizer.vocab_size), tokenizer, name=f"tiny-{kind}")
    seq = Simulation(cfg("off", strategy=strategy), backbone=backbone, progress=False)
    bat = Simulation(cfg("on", strategy=strategy, batch_chunk=chunk), backbone=backbone, progress=False)
    assert bat.batching() and not seq.batching()
    steps = {k: len(seq.partition.train[k]) for k in range(5)}
    assert len(set(steps.values())) > 1, "clients should differ in size, so in local steps"
    a, b = seq.run(), bat.run()
    _close(a.server.shared, b.server.shared)
    for key in a.server.controls:
        _close(a.server.controls[key], b.server.controls[key])
    for k in seq.store.clients():
        _close(seq.store.get(k), bat.store.get(k))  # personal tensors, AdamW state, SCAFFOLD c_i
    assert a.history["local_steps"].tolist() == b.history["local_steps"].tolist()
    assert a.history["bytes_up"].tolist() == b.history["bytes_up"].tolist()
    torch.testing.assert_close(
        torch.tensor(a.history["train_loss"].tolist()),
        torch.tensor(b.history["train_loss"].tolist()),
        atol=1e-5,
        rtol=1e-5,
        equal_nan=True,  # FedPepTAO's round 0 (layer selection) trains nothing
    )
    assert a.history["global_metric"].equals(b.history["global_metric"])  # NaN in round 0 (layer selection)


def test_batching_default_per_device_and_mode(bundled_backbone):
    base = dict(task="sst2", num_clients=4, clients_per_round=2, rounds=1, train_limit=16, eval_limit=8)
    auto = Simulation(build(**base), backbone=bundled_backbone, progress=False)
    assert auto.batching()  # deep prompts: joint batches (chunk size by device)
    off = Simulation(build(**base, batch_clients="off"), backbone=bundled_backbone, progress=False)
    assert not off.batching()
    lora = Simulation(build(**base, strategy="lora", batch_clients="on"), backbone=bundled_backbone, progress=False)
    assert not lora.batching()  # LoRA adapters live in the shared backbone


def test_batched_run_with_dropout_is_reproducible(bundled_backbone):
    c = build(
        model=ModelConfig(prompt_len=2),
        train=TrainConfig(batch_size=8),
        task="sst2",
        num_clients=4,
        clients_per_round=3,
        rounds=2,
        train_limit=48,
        eval_limit=16,
        batch_clients="on",
    )
    a = run_simulation(c, backbone=bundled_backbone, progress=False)
    b = run_simulation(c, backbone=bundled_backbone, progress=False)
    assert all(torch.equal(a.server.shared[k], b.server.shared[k]) for k in a.server.shared)
    assert a.history["train_loss"].notna().all()
