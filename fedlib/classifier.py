"""The prompted classifier: a frozen backbone + deep prompts + a head (``docs/method.md``, "Partial prompt tuning").

Trainable parameters are named ``prompt.layer.<l>``, ``prompt.reparam.*`` and ``head.linear.*``; each
has a role (``shared``, ``personal``) so that federated code can take out the part that travels
(:meth:`PromptClassifier.state`), send it, and load it back (:meth:`PromptClassifier.load_state`).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from .config import ModelConfig
from .heads import LinearHead, VerbalizerHead, label_token_ids
from .models import Backbone, auto_head, backbone_for
from .prompts import ROLES, DeepPrompt, InputPrompt, use_prefix_attention
from .tasks import TaskSpec, get_task

__all__ = ["PromptClassifier", "build_classifier", "resolve_head"]


def resolve_head(backbone: Backbone, head: str) -> str:
    """``"auto"`` -> ``"lm"`` for decoders, ``"mlm"`` for encoders with an MLM head, else ``"linear"``."""
    if head != "auto":
        if head == "lm" and backbone.kind != "decoder":
            raise ValueError(f"head='lm' needs a decoder; {backbone.name!r} is an encoder")
        if head == "mlm" and (backbone.kind != "encoder" or not backbone.has_lm_head):
            raise ValueError(f"head='mlm' needs an encoder loaded with its MLM head; {backbone.name!r} has none")
        return head
    return auto_head(backbone.kind == "decoder", backbone.has_lm_head)


class PromptClassifier(nn.Module):
    """``forward(batch) -> logits [B, C]`` for a task, with the backbone frozen.

    Positions are numbered from 0 for the real tokens (``position_ids`` passed explicitly), so the
    prefix does not shift them: the reference's RoBERTa offset overflow (``docs/deviations.md``) cannot happen.
    LoRA adds modules to the backbone, so it works on a copy unless ``owned`` (the caller loaded it for this model).
    """

    def __init__(self, backbone: Backbone, task: TaskSpec, cfg: ModelConfig, owned: bool = False) -> None:
        super().__init__()
        if cfg.prompt_mode == "lora" and not owned:  # LoRA adds modules to the backbone: its own copy
            backbone = copy.copy(backbone)
            backbone.model = copy.deepcopy(backbone.model)
        self.info, self.task, self.cfg = backbone, task, cfg
        self.head_kind = resolve_head(backbone, cfg.head)
        self.backbone = backbone.model
        self.backbone.requires_grad_(False)
        roles = cfg.layer_roles or ("shared",) * backbone.num_layers
        if cfg.prompt_mode != "deep":
            roles = ("off",) * backbone.num_layers
        if len(roles) != backbone.num_layers:
            raise ValueError(
                f"ModelConfig.layer_roles has {len(roles)} entries; {backbone.name} has {backbone.num_layers} layers"
            )
        self.prompt = DeepPrompt(
            backbone.num_layers,
            cfg.prompt_len,
            backbone.num_kv_heads,
            backbone.head_dim,
            roles,
            cfg.init_std,
            cfg.prompt_dropout,
            cfg.reparam_hidden,
            backbone.hidden_size,
        )
        self.input_prompt = (
            InputPrompt(cfg.prompt_len, backbone.hidden_size, cfg.init_std) if cfg.prompt_mode == "shallow" else None
        )
        if cfg.prompt_mode == "lora":
            _inject_lora(self.backbone, cfg)
        if self.head_kind == "linear":
            self.head = LinearHead(backbone.hidden_size, task.num_labels, cfg.pooling)
        else:
            lm_head = [m for n, m in self.backbone.named_children() if n != self.backbone.base_model_prefix]
            if len(lm_head) != 1:
                raise ValueError(f"cannot find the LM head of {type(self.backbone).__name__}")
            self.head = VerbalizerHead(lm_head[0], label_token_ids(backbone.tokenizer, task.verbalizer))
        use_prefix_attention(self.backbone)

    # ---- roles ---------------------------------------------------------------------------------
    def role_of(self, name: str) -> str:
        if name.startswith("prompt."):
            return self.prompt.role_of(name[len("prompt.") :])
        if name.startswith("input_prompt.") or ".lora_" in name:
            return "shared"
        return self.cfg.head_role

    @contextlib.contextmanager
    def only_shared(self):
        """Within the block, personal prompt layers are masked like off layers: the global model."""
        saved = self.prompt.disabled
        self.prompt.disabled = frozenset(l for l, r in enumerate(self.prompt.roles) if r == "personal")
        try:
            yield self
        finally:
            self.prompt.disabled = saved

    def trainable(self) -> dict[str, nn.Parameter]:
        """Trainable parameters by name (prompt and head only; the backbone is frozen)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def state(self, role: str | None = None) -> dict[str, torch.Tensor]:
        """Detached copies of the trainable tensors, all or those of one role."""
        return {n: p.detach().clone() for n, p in self.trainable().items() if role is None or self.role_of(n) == role}

    def check_state(self, state: dict[str, torch.Tensor]) -> None:
        """Raise ``KeyError`` (unknown name) or ``ValueError`` (shape) unless every tensor fits this model."""
        params = self.trainable()
        for name, value in state.items():
            if name not in params:
                raise KeyError(
                    f"{name!r} is not a trainable tensor of this model (roles {list(self.prompt.roles)}); "
                    f"it has {sorted(params)}"
                )
            if params[name].shape != value.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not fit {tuple(params[name].shape)}")

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy tensors in by name, after checking all of them (:meth:`check_state`): all or nothing."""
        self.check_state(state)
        params = self.trainable()
        for name, value in state.items():
            params[name].copy_(value)

    def set_roles(self, roles: tuple[str, ...]) -> None:
        """Change layer roles (e.g. after layer selection); newly-on layers get a fresh prompt."""
        self.prompt.set_roles(roles)
        self.cfg = self.cfg.replace(layer_roles=tuple(roles))

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_pos: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        **_,
    ):
        """``input_ids``/``attention_mask`` ``[B, T]``, ``target_pos`` ``[B]`` -> logits ``[B, C]``.

        With ``output_hidden_states`` returns ``(logits, hidden_states)``, hidden_states a tuple of
        L + 1 tensors ``[B, T, d]`` (embeddings, then each layer's output; prompt positions excluded). A decoder's
        last entry is its last block's output too, not (as Hugging Face returns it) after the final norm.
        """
        with self._last_block_output(output_hidden_states) as last:
            if self.input_prompt is not None:
                logits, hidden = self._forward_shallow(
                    input_ids, attention_mask, target_pos, token_type_ids, output_hidden_states
                )
            else:
                out = self.encode(input_ids, attention_mask, token_type_ids, output_hidden_states)
                logits, hidden = self.head(out.last_hidden_state, attention_mask, target_pos), out.hidden_states
        if not output_hidden_states:
            return logits
        if "out" in last:
            hidden = (*hidden[:-1], last["out"][:, -hidden[-1].shape[1] :])  # the real tokens (after a shallow prompt)
        return logits, hidden

    @contextlib.contextmanager
    def _last_block_output(self, wanted: bool):
        """For a decoder, when ``wanted``: ``{"out": [B, T', d]}``, the last transformer block's output (a forward
        hook on the backbone's list of L blocks; Hugging Face applies the final norm before the last hidden state).
        Nothing for encoders, whose last hidden state is the last block's output."""
        got: dict = {}
        if not wanted or self.info.kind != "decoder":
            yield got
            return
        blocks = next(
            m for m in self.info.base.modules() if isinstance(m, nn.ModuleList) and len(m) == self.info.num_layers
        )
        handle = blocks[-1].register_forward_hook(
            lambda _m, _args, out: got.__setitem__("out", out[0] if isinstance(out, tuple) else out)
        )
        try:
            yield got
        finally:
            handle.remove()

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        prompt_kv: torch.Tensor | None = None,
    ):
        """The backbone's output with the deep prompts in its cache (``last_hidden_state`` ``[B, T, d]``).

        ``prompt_kv`` ``[B, L, 2, H_kv, P, hd]``: per-example prefixes (batched clients) instead of this
        model's own.
        """
        bsz, seq = input_ids.shape
        dtype = next(self.backbone.parameters()).dtype
        cache = self.prompt.cache(bsz, dtype, prompt_kv)
        mask = attention_mask
        if cache is not None:
            mask = torch.cat([attention_mask.new_ones(bsz, self.prompt.prompt_len), attention_mask], dim=1)
        positions = torch.arange(seq, device=input_ids.device) + self.info.position_offset
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions.expand(bsz, -1),
            output_hidden_states=output_hidden_states,
            **self.prompt.off_layers_kwarg(),
        )
        kwargs[self.info.cache_kwarg] = cache
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.info.base(**kwargs)

    def _forward_shallow(self, input_ids, attention_mask, target_pos, token_type_ids, output_hidden_states):
        """Shallow prompt: ``[B, P + T]`` inputs; the head reads the real tokens (prompt positions cut). Returns
        ``(logits, hidden states or None)``."""
        bsz, seq = input_ids.shape
        p = self.input_prompt.prompt_len
        embeds = self.input_prompt.prepend(self.info.base.get_input_embeddings()(input_ids))
        mask = torch.cat([attention_mask.new_ones(bsz, p), attention_mask], dim=1)
        positions = torch.arange(p + seq, device=input_ids.device) + self.info.position_offset
        kwargs = dict(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions.expand(bsz, -1),
            output_hidden_states=output_hidden_states,
        )
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.cat([token_type_ids.new_zeros(bsz, p), token_type_ids], dim=1)
        out = self.info.base(**kwargs)
        logits = self.head(out.last_hidden_state[:, p:], attention_mask, target_pos)
        return logits, (tuple(h[:, p:] for h in out.hidden_states) if output_hidden_states else None)


def _inject_lora(model: nn.Module, cfg: ModelConfig) -> None:
    """Add LoRA adapters (Hu et al. 2022) through PEFT to the attention projections PEFT targets by default."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

    targets = TARGETS.get(model.config.model_type)
    if targets is None:
        raise ValueError(f"no default LoRA target modules for model type {model.config.model_type!r}")
    inject_adapter_in_model(
        LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets), model
    )
    for name, param in model.named_parameters():  # adapters in fp32 on a bf16 backbone, as get_peft_model keeps them
        if "lora_" in name:
            param.data = param.data.float()


def build_classifier(
    task: str | TaskSpec,
    cfg: ModelConfig | None = None,
    backbone: Backbone | None = None,
    device: torch.device | None = None,
) -> PromptClassifier:
    """Load the backbone named by ``cfg`` (unless given) and build the prompted classifier for ``task``."""
    cfg = cfg or ModelConfig()
    task = task if isinstance(task, TaskSpec) else get_task(task)
    model = PromptClassifier(backbone or backbone_for(cfg), task, cfg, owned=backbone is None)
    return model.to(device) if device is not None else model


def role_report(model: PromptClassifier, roles: tuple[str, ...] | None = None) -> dict[str, dict[str, int]]:
    """Trainable parameters and bytes per role, for the model's roles or a hypothetical ``roles`` mask.

    Returns ``{"shared": {"params": n, "bytes": b}, "personal": {...}, "off": {...}}``; bytes are
    dtype-aware. ``report["shared"]["bytes"]`` is what one client uploads per round (and downloads).
    """
    roles = tuple(roles) if roles is not None else model.prompt.roles
    out = {r: {"params": 0, "bytes": 0} for r in ROLES}
    prompt = model.prompt
    elem = next(iter(model.backbone.parameters())).element_size()
    per_layer = prompt.prompt_len * prompt.in_dim
    for role in roles:
        out[role]["params"] += per_layer
        out[role]["bytes"] += per_layer * elem
    for name, p in model.trainable().items():
        if name.startswith("prompt.layer."):
            continue
        role = ("shared" if "shared" in roles else "personal") if name.startswith("prompt.") else model.role_of(name)
        out[role]["params"] += p.numel()
        out[role]["bytes"] += p.numel() * p.element_size()
    return out
