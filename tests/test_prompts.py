import pytest
import torch

from fedlib.classifier import PromptClassifier, role_report
from fedlib.config import ModelConfig, TrainConfig
from fedlib.encode import collate, encode_dataset
from fedlib.tasks import get_task, load_task
from fedlib.train import local_train, make_optimizer

TASK = get_task("rte")


def _batch(model, n=4):
    ds = load_task("rte", "eval", limit=n)
    enc = encode_dataset(ds, model.info.tokenizer, model.task, model.head_kind, 64)
    return enc, collate(enc, range(n), model.info.tokenizer.pad_token_id)


def _bare_hidden(model, batch):
    info = model.info
    pos = torch.arange(batch["input_ids"].shape[1]) + info.position_offset
    kw = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
    return info.base(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=pos.expand(len(batch["input_ids"]), -1),
        output_hidden_states=True,
        **kw,
    )


def test_shapes_and_gradients_reach_exactly_non_off_prompts_and_head(tiny_backbone):
    roles = ("shared", "off", "personal")
    model = PromptClassifier(tiny_backbone, TASK, ModelConfig(prompt_len=3, layer_roles=roles))
    _, batch = _batch(model)
    logits = model(**batch)
    assert logits.shape == (4, TASK.num_labels)
    logits.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    want = {"prompt.layer.0", "prompt.layer.2"} | (
        {"head.linear.weight", "head.linear.bias"} if model.head_kind == "linear" else set()
    )
    assert grads == want
    assert "prompt.layer.1" not in dict(model.named_parameters())  # off: no prompt at all
    assert model.role_of("prompt.layer.0") == "shared" and model.role_of("prompt.layer.2") == "personal"


def test_off_layer_attention_equals_the_bare_models(tiny_backbone):
    model = PromptClassifier(
        tiny_backbone, TASK, ModelConfig(prompt_len=3, layer_roles=("off", "shared", "off"), prompt_dropout=0.0)
    ).eval()
    _, batch = _batch(model)
    _, hidden = model(**batch, output_hidden_states=True)
    bare = _bare_hidden(model, batch).hidden_states
    mask = batch["attention_mask"].bool()
    assert torch.allclose(hidden[1][mask], bare[1][mask], atol=1e-5)  # layer 0 is off
    assert not torch.allclose(hidden[2][mask], bare[2][mask], atol=1e-5)  # layer 1 carries a prompt


@pytest.mark.parametrize("how", ["all_off", "p_zero"])
def test_no_prompt_gives_the_bare_frozen_models_logits(tiny_backbone, how):
    cfg = ModelConfig(prompt_len=0) if how == "p_zero" else ModelConfig(prompt_len=4, layer_roles=("off",) * 3)
    model = PromptClassifier(tiny_backbone, TASK, cfg).eval()
    _, batch = _batch(model)
    with torch.no_grad():
        logits = model(**batch)
        out = _bare_hidden(model, batch)
        want = model.head(out.last_hidden_state, batch["attention_mask"], batch["target_pos"])
    assert torch.equal(logits, want)


def test_backbone_is_bit_identical_after_training(tiny_backbone):
    model = PromptClassifier(tiny_backbone, TASK, ModelConfig(prompt_len=2))
    before = {n: p.clone() for n, p in model.backbone.named_parameters()}
    prompts_before = model.state()
    enc, _ = _batch(model, 8)
    cfg = TrainConfig(batch_size=4, lr=0.1)
    local_train(model, make_optimizer(model, cfg), enc, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert all(torch.equal(before[n], p) for n, p in model.backbone.named_parameters())
    assert any(not torch.equal(prompts_before[n], v) for n, v in model.state().items())


def test_role_report_counts_params_and_bytes(bundled_backbone):
    model = PromptClassifier(
        bundled_backbone,
        get_task("sst2"),
        ModelConfig(prompt_len=8, layer_roles=("shared",) * 2 + ("personal",) * 2 + ("off",) * 2, head_role="personal"),
    )
    rep = role_report(model)
    per_layer = 8 * 2 * 384  # P x 2 x d (docs/method.md, "Partial prompt tuning")
    head = 384 * 2 + 2
    assert rep["shared"] == {"params": 2 * per_layer, "bytes": 2 * per_layer * 4}
    assert rep["personal"] == {"params": 2 * per_layer + head, "bytes": (2 * per_layer + head) * 4}
    assert rep["off"]["params"] == 2 * per_layer
    assert role_report(model, ("shared",) * 6)["shared"]["params"] == 6 * per_layer
    assert sum(p.numel() for p in model.trainable().values()) == rep["shared"]["params"] + rep["personal"]["params"]


def test_state_round_trip_by_role_and_errors(bundled_backbone):
    model = PromptClassifier(
        bundled_backbone, get_task("sst2"), ModelConfig(prompt_len=4, layer_roles=("shared", "personal") * 3)
    )
    shared = model.state("shared")
    assert sorted(shared) == [
        "head.linear.bias",
        "head.linear.weight",
        "prompt.layer.0",
        "prompt.layer.2",
        "prompt.layer.4",
    ]
    zeros = {k: torch.zeros_like(v) for k, v in shared.items()}
    model.load_state(zeros)
    assert all(torch.equal(v, zeros[k]) for k, v in model.state("shared").items())
    with pytest.raises(KeyError, match="not a trainable tensor"):
        model.load_state({"prompt.layer.9": torch.zeros(4, 768)})
    with pytest.raises(ValueError, match="does not fit"):
        model.load_state({"prompt.layer.0": torch.zeros(5, 768)})
    ones = {"prompt.layer.0": torch.ones(4, 768), "prompt.layer.2": torch.ones(3, 768)}  # 2nd does not fit
    with pytest.raises(ValueError):
        model.load_state(ones)
    assert torch.equal(model.state()["prompt.layer.0"], zeros["prompt.layer.0"])  # nothing loaded half-way


def test_set_roles_turns_layers_on_and_off(bundled_backbone):
    model = PromptClassifier(bundled_backbone, get_task("sst2"), ModelConfig(prompt_len=4))
    model.set_roles(("off",) * 5 + ("shared",))
    assert [n for n in model.trainable() if n.startswith("prompt")] == ["prompt.layer.5"]
    model.set_roles(("personal",) * 6)
    assert len([n for n in model.trainable() if n.startswith("prompt")]) == 6
    with pytest.raises(ValueError, match="roles must be 6 entries"):
        model.set_roles(("shared",) * 5)


def test_reparametrisation_mlp(bundled_backbone):
    model = PromptClassifier(bundled_backbone, get_task("sst2"), ModelConfig(prompt_len=3, reparam_hidden=16))
    names = set(model.trainable())
    assert {"prompt.layer.0", "prompt.reparam.0.weight", "prompt.reparam.2.weight"} <= names
    assert model.state("shared")["prompt.layer.0"].shape == (3, 384)
    _, batch = _batch(model)
    model(**batch).sum().backward()
    assert model.prompt.reparam[0].weight.grad is not None


def test_only_shared_masks_personal_layers_like_off(bundled_backbone):
    cfg = ModelConfig(
        prompt_len=3, layer_roles=("shared", "personal", "shared", "personal", "off", "off"), prompt_dropout=0.0
    )
    model = PromptClassifier(bundled_backbone, get_task("sst2"), cfg).eval()
    twin = PromptClassifier(
        bundled_backbone, get_task("sst2"), cfg.replace(layer_roles=("shared", "off", "shared", "off", "off", "off"))
    ).eval()
    twin.load_state(model.state("shared"))
    _, batch = _batch(model)
    with torch.no_grad(), model.only_shared():
        masked = model(**batch)
    with torch.no_grad():
        assert torch.allclose(masked, twin(**batch), atol=1e-5)
        assert not torch.allclose(masked, model(**batch), atol=1e-5)  # restored afterwards


def test_shallow_prompt_prepends_input_vectors(bundled_backbone):
    model = PromptClassifier(bundled_backbone, get_task("rte"), ModelConfig(prompt_len=5, prompt_mode="shallow"))
    assert sorted(n for n in model.trainable() if "prompt" in n) == ["input_prompt.input"]
    assert model.role_of("input_prompt.input") == "shared"
    _, batch = _batch(model)
    logits, hidden = model(**batch, output_hidden_states=True)
    assert logits.shape == (4, 2) and hidden[-1].shape[1] == batch["input_ids"].shape[1]
    logits.sum().backward()
    assert model.input_prompt.input.grad.abs().sum() > 0


def test_lora_mode_trains_adapters_through_peft(tokenizer):
    from fedlib.models import wrap_backbone

    from .conftest import make_tiny

    backbone = wrap_backbone(make_tiny("bert", tokenizer.vocab_size), tokenizer, "tiny-bert")
    frozen = {n: p.clone() for n, p in backbone.model.named_parameters()}
    model = PromptClassifier(backbone, get_task("rte"), ModelConfig(prompt_mode="lora", lora_r=2))
    lora = [n for n in model.trainable() if ".lora_" in n]
    assert len(lora) == 3 * 2 * 2 and all(model.role_of(n) == "shared" for n in lora)  # 3 layers x (q, v) x (A, B)
    enc, _ = _batch(model, 8)
    cfg = TrainConfig(batch_size=4, lr=0.05)
    local_train(model, make_optimizer(model, cfg), enc, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert all(torch.equal(frozen[n], p) for n, p in backbone.model.named_parameters() if n in frozen)
    # the caller's backbone gets no adapters: a second classifier on it neither resets nor freezes the first's
    assert not any(".lora_" in n for n, _ in backbone.model.named_parameters())
    trained = {n: p.detach().clone() for n, p in model.trainable().items()}
    PromptClassifier(backbone, get_task("rte"), ModelConfig(prompt_mode="lora", lora_r=2))
    PromptClassifier(backbone, get_task("rte"), ModelConfig())
    assert sorted(model.trainable()) == sorted(trained)
    assert all(torch.equal(trained[n], p) for n, p in model.trainable().items())


def test_a_bf16_backbone_runs_with_fp32_prompts_head_and_adapters(tokenizer):
    from fedlib.models import wrap_backbone

    from .conftest import make_tiny

    backbone = wrap_backbone(make_tiny("bert", tokenizer.vocab_size).to(torch.bfloat16), tokenizer, "tiny-bert")
    for mode in ("deep", "lora"):
        model = PromptClassifier(backbone, get_task("rte"), ModelConfig(prompt_mode=mode, lora_r=2))
        assert all(p.dtype == torch.float32 for p in model.trainable().values()), mode  # AdamW's decay survives
        _, batch = _batch(model)
        assert model(**batch).shape == (4, 2)  # the linear head took the bf16 states


def test_prompts_turned_on_later_are_made_on_the_models_device(tiny_backbone):
    """With every layer off there is no prompt parameter to read the device from: a layer turned on later (layer
    selection, local_only) must still get its prompt where the model is."""
    model = PromptClassifier(tiny_backbone, TASK, ModelConfig(prompt_len=2, layer_roles=("off",) * 3)).to("meta")
    model.set_roles(("personal",) * 3)
    assert {p.device.type for p in model.prompt.parameters()} == {"meta"}


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_the_last_hidden_state_is_the_last_blocks_output(tiny_backbone, mode):
    """Layer scores read hidden_states[L] as layer L's output. Hugging Face's decoders (GPT-2's ln_f, Llama's norm)
    return it after their final norm; the classifier returns the block's own output, of which the final norm gives
    the backbone's last_hidden_state (encoders: the last hidden state is that output already)."""
    model = PromptClassifier(tiny_backbone, TASK, ModelConfig(prompt_len=3, prompt_mode=mode, prompt_dropout=0.0))
    model.eval()
    _, batch = _batch(model)
    with torch.no_grad():
        _, hidden = model(**batch, output_hidden_states=True)
        if mode == "deep":
            last = model.encode(
                batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
            ).last_hidden_state
        else:  # the head's input: the real tokens of the backbone's last_hidden_state
            seen = {}
            handle = model.head.register_forward_pre_hook(lambda _m, args: seen.update(h=args[0]))
            model(**batch)
            handle.remove()
            last = seen["h"]
    assert len(hidden) == 4 and hidden[-1].shape == last.shape == (*batch["input_ids"].shape, 32)
    final_norm = getattr(model.info.base, "ln_f", None) or getattr(model.info.base, "norm", None)
    if model.info.kind == "decoder":
        assert not torch.allclose(hidden[-1], last, atol=1e-4)
        assert torch.allclose(final_norm(hidden[-1]), last, atol=1e-5)
    else:
        assert final_norm is None and torch.allclose(hidden[-1], last, atol=1e-6)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_off_layers_ignore_the_prefix_in_an_unpadded_batch(tiny_backbone, attention):
    """An encoder's unpadded batch reaches attention with no mask; the off layers' prefix columns must still be
    masked, under eager attention too (it adds its mask to the scores: a bool mask there masked nothing)."""
    import contextlib

    from fedlib.prompts import eager_attention

    roles = ("off", "shared", "off")
    model = PromptClassifier(tiny_backbone, TASK, ModelConfig(prompt_len=3, layer_roles=roles, prompt_dropout=0.0))
    model.eval()
    enc, batch = _batch(model)
    one = collate(enc, [0], model.info.tokenizer.pad_token_id)
    assert one["attention_mask"].all() and not batch["attention_mask"].all()
    with torch.no_grad(), contextlib.nullcontext() if attention == "sdpa" else eager_attention(model.backbone):
        _, hidden = model(**one, output_hidden_states=True)
        bare = _bare_hidden(model, one).hidden_states
        alone, padded = model(**one), model(**batch)[:1]
    assert torch.allclose(hidden[1], bare[1], atol=1e-5)  # layer 0 is off: the bare model's layer
    assert torch.allclose(alone, padded, atol=1e-5)  # padding changes nothing
