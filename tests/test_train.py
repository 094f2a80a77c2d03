import torch

from fedlib.classifier import PromptClassifier
from fedlib.config import ModelConfig, TrainConfig
from fedlib.encode import encode_dataset
from fedlib.tasks import get_task, load_task
from fedlib.train import evaluate, train_centralized


def test_centralized_training_learns_sst2_with_the_bundled_model(bundled_backbone):
    torch.manual_seed(0)
    model = PromptClassifier(bundled_backbone, get_task("sst2"), ModelConfig(prompt_len=4))
    tok = bundled_backbone.tokenizer
    train = encode_dataset(load_task("sst2", "train", limit=480), tok, model.task, "linear", 64)
    dev = encode_dataset(load_task("sst2", "eval", limit=200), tok, model.task, "linear", 64)
    hist = train_centralized(
        model, train, dev, TrainConfig(batch_size=16, max_steps=30), torch.device("cpu"), progress=False
    )
    assert hist[-1]["step"] == 30
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.05
    assert hist[-1]["metric"] > 0.7  # chance is ~0.5; 30 steps reach ~0.8


def test_same_seed_same_result(bundled_backbone):
    def run():
        torch.manual_seed(1)
        model = PromptClassifier(bundled_backbone, get_task("rte"), ModelConfig(prompt_len=2))
        data = encode_dataset(load_task("rte", "train", limit=32), bundled_backbone.tokenizer, model.task, "linear", 64)
        train_centralized(
            model, data, data, TrainConfig(batch_size=8, max_steps=4), torch.device("cpu"), progress=False, seed=3
        )
        return model.state()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mlm_and_decoder_heads_train_on_tiny_models(tokenizer):
    from fedlib.models import wrap_backbone

    from .conftest import make_tiny

    for kind in ("roberta-mlm", "gpt2"):
        backbone = wrap_backbone(make_tiny(kind, tokenizer.vocab_size), tokenizer, kind)
        model = PromptClassifier(backbone, get_task("sst2"), ModelConfig(prompt_len=4, prompt_dropout=0.0))
        data = encode_dataset(load_task("sst2", "train", limit=16), tokenizer, model.task, model.head_kind, 48)
        before = evaluate(model, data, model.task, 16, torch.device("cpu"))["loss"]
        train_centralized(
            model, data, data, TrainConfig(batch_size=16, max_steps=40, lr=0.1), torch.device("cpu"), progress=False
        )
        assert evaluate(model, data, model.task, 16, torch.device("cpu"))["loss"] < before


def test_bf16_autocast_trains_close_to_fp32(bundled_backbone):
    """train.autocast="bf16" (here on CPU): the same steps in bf16 move the prompts like fp32, not identically."""

    def run(precision):
        torch.manual_seed(1)
        model = PromptClassifier(bundled_backbone, get_task("rte"), ModelConfig(prompt_len=2))
        data = encode_dataset(load_task("rte", "train", limit=16), bundled_backbone.tokenizer, model.task, "linear", 64)
        start = {k: v.clone() for k, v in model.state().items()}
        cfg = TrainConfig(batch_size=8, max_steps=2, autocast=precision)
        train_centralized(model, data, data, cfg, torch.device("cpu"), progress=False, seed=3)
        return {k: v - start[k] for k, v in model.state().items()}

    fp32, bf16 = run("off"), run("bf16")
    moved = torch.cat([v.flatten() for v in fp32.values()])
    diff = torch.cat([(bf16[k] - fp32[k]).flatten() for k in fp32])
    assert torch.isfinite(diff).all() and 0 < diff.norm() < 0.5 * moved.norm()


def test_centralized_epochs_are_whole_passes_however_often_it_evaluates(tokenizer, monkeypatch):
    """Evaluating every 3 steps cuts one plan into slices: each of 10 examples is seen exactly ``epochs`` times (a
    plan drawn again for each slice saw some 3 or 4 times and others never)."""
    import fedlib.train as train_mod
    from fedlib.models import wrap_backbone

    from .conftest import make_tiny

    backbone = wrap_backbone(make_tiny("bert", tokenizer.vocab_size), tokenizer, "tiny-bert")
    model = PromptClassifier(backbone, get_task("sst2"), ModelConfig(prompt_len=2))
    data = encode_dataset(load_task("sst2", "train", limit=10), tokenizer, model.task, "linear", 32)
    seen, collate = [], train_mod.collate
    monkeypatch.setattr(
        train_mod, "collate", lambda d, idx, pad: (seen.extend(idx) if d is data else None) or collate(d, idx, pad)
    )
    cfg = TrainConfig(batch_size=2, epochs=2, eval_batch_size=16)
    hist = train_centralized(model, data, data, cfg, torch.device("cpu"), eval_every=3, progress=False)
    assert [h["step"] for h in hist] == [0, 3, 6, 9, 10]
    # evaluation collates all 10 once per record (5 records); training adds each example twice
    assert sorted(set(seen)) == list(range(10)) and all(seen.count(i) == 5 + 2 for i in range(10))
