"""Deep (P-tuning v2) prompts with per-layer roles: shared, personal or off (``docs/method.md``, "Partial prompt
tuning").

For an L-layer model with P prompt tokens, layer ``l`` whose role is not ``"off"`` owns a parameter
``prompt.layer.<l>`` of shape ``[P, 2 * kv_dim]`` (key then value, the reference's row layout). They reach the model
through its own attention cache (``transformers.DynamicCache``) with the attention mask extended by P
columns, so any HF encoder or decoder that accepts ``past_key_values`` works unpatched.

Off layers hold no parameter. When some layers are off and others on, the cache carries zeros for the
off layers and a thin attention wrapper (registered with ``transformers.AttentionInterface``, see
:func:`use_prefix_attention`) masks those layers' P prefix columns, so their attention is exactly
the bare model's.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

__all__ = ["DeepPrompt", "InputPrompt", "use_prefix_attention", "eager_attention", "ROLES", "OFF_KWARG"]

ROLES = ("shared", "personal", "off")  # the one list of layer roles
OFF_KWARG = "fedlib_off_layers"


class DeepPrompt(nn.Module):
    """P prompt tokens per layer as key/value prefixes (P-tuning v2, Liu et al. 2022).

    ``roles``: one of :data:`ROLES` per layer. ``reparam_hidden > 0`` adds the P-tuning v2
    reparametrisation: per layer an input embedding ``[P, hidden]`` and one MLP shared by all layers,
    ``hidden -> reparam_hidden -> 2 * kv_dim`` (named ``prompt.reparam.*``). Initialisation N(0, init_std),
    as the reference's HF ``_init_weights``; dropout ``dropout`` on the key/values while training.
    """

    def __init__(
        self,
        num_layers: int,
        prompt_len: int,
        num_kv_heads: int,
        head_dim: int,
        roles: tuple[str, ...] | None = None,
        init_std: float = 0.02,
        dropout: float = 0.1,
        reparam_hidden: int = 0,
        hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        self.num_layers, self.prompt_len = num_layers, prompt_len
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.kv_dim = num_kv_heads * head_dim
        self.init_std = init_std
        self.dropout = nn.Dropout(dropout)
        self.in_dim = hidden_size if reparam_hidden > 0 else 2 * self.kv_dim
        self.reparam = None
        if reparam_hidden > 0:
            self.reparam = nn.Sequential(
                nn.Linear(hidden_size, reparam_hidden), nn.Tanh(), nn.Linear(reparam_hidden, 2 * self.kv_dim)
            )
        self.layer = nn.ParameterDict()
        self.register_buffer("anchor", torch.empty(0), persistent=False)  # the module's device, with no prompt on
        self.roles: tuple[str, ...] = ()
        self.disabled: frozenset[int] = frozenset()  # on layers masked for now (see PromptClassifier.only_shared)
        self.set_roles(roles or ("shared",) * num_layers)

    def set_roles(self, roles: tuple[str, ...] | list[str]) -> None:
        """Give each layer its role; layers turned on get a fresh prompt, layers turned off lose theirs."""
        roles = tuple(roles)
        if len(roles) != self.num_layers or any(r not in ROLES for r in roles):
            raise ValueError(f"roles must be {self.num_layers} entries from {ROLES}, got {roles}")
        for layer, role in enumerate(roles):
            key = str(layer)
            if role == "off" and key in self.layer:
                del self.layer[key]
            elif role != "off" and key not in self.layer and self.prompt_len > 0:
                shape = (self.prompt_len, self.in_dim)
                self.layer[key] = nn.Parameter(torch.randn(shape, device=self.anchor.device) * self.init_std)
        self.roles = roles

    @property
    def on_layers(self) -> list[int]:
        return [l for l, r in enumerate(self.roles) if r != "off" and l not in self.disabled]

    def role_of(self, name: str) -> str:
        """Role of a parameter named relative to this module (``layer.3`` or ``reparam.0.weight``)."""
        if name.startswith("layer."):
            return self.roles[int(name.split(".")[1])]
        used = {self.roles[l] for l in range(self.num_layers) if self.roles[l] != "off"}
        return "shared" if "shared" in used else "personal"

    def key_values(self) -> torch.Tensor | None:
        """All layers' prefixes as one tensor ``[L, 2, H_kv, P, head_dim]`` (zeros for off layers), or None."""
        if self.prompt_len == 0 or not self.on_layers:
            return None
        ref = next(iter(self.layer.values()))
        rows = []
        for l in range(self.num_layers):
            p = self.layer[str(l)] if str(l) in self.layer and l not in self.disabled else None
            if p is None:
                rows.append(ref.new_zeros(self.prompt_len, 2 * self.kv_dim))
            else:
                rows.append(self.reparam(p) if self.reparam is not None else p)
        kv = torch.stack(rows)  # [L, P, 2*kv_dim]
        kv = self.dropout(kv)
        kv = kv.view(self.num_layers, self.prompt_len, 2, self.num_kv_heads, self.head_dim)
        return kv.permute(0, 2, 3, 1, 4)  # [L, 2, H_kv, P, hd]

    def cache(self, batch_size: int, dtype: torch.dtype | None = None, kv: torch.Tensor | None = None):
        """A fresh ``DynamicCache`` holding every layer's prefix for a batch, or None when no layer is on.

        ``kv``: per-example prefixes ``[B, L, 2, H_kv, P, hd]`` instead of this module's (batched clients,
        :mod:`fedlib.batched`); by default :meth:`key_values` is shared by the whole batch.
        """
        from transformers import DynamicCache

        if kv is None:
            kv = self.key_values()
            if kv is None:
                return None
            kv = kv.to(dtype or kv.dtype).unsqueeze(0).expand(batch_size, *kv.shape)
        elif dtype is not None:
            kv = kv.to(dtype)
        cache = DynamicCache()
        for l in range(self.num_layers):
            cache.update(kv[:, l, 0], kv[:, l, 1], l)  # [B, H_kv, P, hd]
        return cache

    def off_layers_kwarg(self) -> dict:
        """Extra model kwargs telling the attention wrapper which layers' prefix columns to mask."""
        off = frozenset(l for l, r in enumerate(self.roles) if r == "off") | self.disabled
        if not off or not self.on_layers or self.prompt_len == 0:
            return {}
        return {OFF_KWARG: (self.prompt_len, off)}


class InputPrompt(nn.Module):
    """Shallow prompt tuning (Lester et al. 2021): P trainable vectors ``[P, d]`` prepended to the input
    embeddings; named ``prompt.input`` (role: shared). Used by the ``shallow`` baseline."""

    def __init__(self, prompt_len: int, hidden_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.prompt_len = prompt_len
        self.input = nn.Parameter(torch.randn(prompt_len, hidden_size) * init_std)

    def prepend(self, embeds: torch.Tensor) -> torch.Tensor:
        """``[B, T, d]`` -> ``[B, P + T, d]``."""
        return torch.cat([self.input.to(embeds.dtype).expand(embeds.shape[0], -1, -1), embeds], dim=1)


# ---- attention wrapper for off layers ---------------------------------------------------------------
def _mask_prefix(mask, prefix: int, query: torch.Tensor, key: torch.Tensor, causal: bool, additive: bool = False):
    """Mask the first ``prefix`` key columns of a bool (True = attend) or additive float mask. No mask (transformers
    passes none to an encoder's unpadded batch) becomes a bool one, or with ``additive`` (eager attention, which adds
    its mask to the scores: a bool one there adds 1 and 0 and masks nothing) a float one in ``query``'s dtype."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
        if causal:
            mask = torch.tril(mask, diagonal=k_len - q_len)
        mask = mask[None, None]
        if additive:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min
            )
    mask = mask.clone()
    if mask.dtype == torch.bool:
        mask[..., :prefix] = False
    else:
        mask[..., :prefix] = torch.finfo(mask.dtype).min
    return mask


def _make_wrapper(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        off = kwargs.pop(OFF_KWARG, None)
        if off is not None and getattr(module, "layer_idx", None) in off[1]:
            causal = getattr(module, "is_causal", False)
            attention_mask = _mask_prefix(attention_mask, off[0], query, key, causal, additive=base == "eager")
        if base == "eager":  # each modeling file has its own eager function (GQA repeat, scaling)
            impl = sys.modules[type(module).__module__].eager_attention_forward
        else:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            impl = ALL_ATTENTION_FUNCTIONS[base]
        return impl(module, query, key, value, attention_mask, **kwargs)

    return attention


def use_prefix_attention(model: nn.Module) -> None:
    """Switch ``model`` to ``fedlib_<impl>``: its own attention (sdpa or eager) plus off-layer masking.

    Registers the wrapper and its mask function with transformers' ``AttentionInterface`` and
    ``AttentionMaskInterface`` on first use (not at import).
    """
    base = model.config._attn_implementation
    if base.startswith("fedlib_"):
        return
    if base not in ("sdpa", "eager"):
        raise ValueError(f"deep prompts with off layers need 'sdpa' or 'eager' attention, the model uses {base!r}")
    model.set_attn_implementation(_register(base))


def _register(base: str) -> str:
    """Register ``fedlib_<base>`` (the wrapper and ``base``'s mask function) with transformers; its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = f"fedlib_{base}"
    AttentionInterface.register(name, _make_wrapper(base))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Within the block the model uses its eager attention (with off-layer masking), e.g. for the
    double backward of Hessian-vector products, which fused CPU attention does not implement."""
    saved = model.config._attn_implementation
    model.set_attn_implementation(_register("eager"))
    try:
        yield model
    finally:
        model.set_attn_implementation(saved)
