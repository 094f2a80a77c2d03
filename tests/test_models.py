import pytest

from fedlib.models import ModelNotFoundError, load_backbone

from .conftest import make_tiny


def test_bundled_model_loads_offline(bundled_backbone):
    b = bundled_backbone
    assert (b.kind, b.has_lm_head, b.num_layers, b.hidden_size, b.kv_dim) == ("encoder", False, 6, 384, 384)
    assert not any(p.requires_grad for p in b.model.parameters())
    assert sum(p.numel() for p in b.model.parameters()) == pytest.approx(22.7e6, rel=0.01)


def test_missing_model_says_what_was_tried_and_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_backbone("no-such-org/no-such-model")
    msg = str(err.value)
    assert "'no-such-org/no-such-model'" in msg and "offline" in msg and "name='bundled'" in msg


@pytest.mark.parametrize(
    "kind,head,want",
    [
        ("gpt2", "auto", ("decoder", "lm")),
        ("llama", "auto", ("decoder", "lm")),
        ("bert-mlm", "auto", ("encoder", "mlm")),
        ("roberta-mlm", "linear", ("encoder", "linear")),
    ],
)
def test_local_folder_through_auto_classes(tmp_path, tokenizer, kind, head, want):
    from fedlib.classifier import resolve_head

    model = make_tiny(kind, tokenizer.vocab_size)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    b = load_backbone(str(tmp_path), head=head)
    assert (b.kind, resolve_head(b, head)) == want


def test_wrong_head_for_model_kind(tmp_path, tokenizer):
    make_tiny("gpt2", tokenizer.vocab_size).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="head='mlm' needs an encoder"):
        load_backbone(str(tmp_path), head="mlm")
