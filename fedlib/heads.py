"""Classification heads over the frozen backbone's hidden states.

- :class:`LinearHead`: a trainable linear layer on the pooled ([CLS] or mean) state, for encoders
  without an MLM head such as the bundled default. Its role (shared or personal) is configurable.
- :class:`VerbalizerHead`: the reference's head (``docs/method.md``, "Partial prompt tuning"). The frozen LM
  head (MLM head of an encoder at the mask token, or the causal LM head of a decoder at the last token) scores
  each class by the log-probability of its label word. No trainable parameters.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["LinearHead", "VerbalizerHead", "label_token_ids"]

log = logging.getLogger(__name__)


class LinearHead(nn.Module):
    """``logits = W pool(h) + b``; ``h``: ``[B, T, d]``, mask ``[B, T]`` -> logits ``[B, C]``."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "mean") -> None:
        super().__init__()
        self.pooling = pooling
        self.linear = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.linear(pooled.to(self.linear.weight.dtype))  # a bf16 backbone's states into the fp32 head


class VerbalizerHead(nn.Module):
    """Scores ``[B, C]``: log-softmax over the vocabulary of the frozen LM head at ``target_pos``,
    read at the label words' token ids (prediction = argmax, as the reference's evaluation)."""

    def __init__(self, lm_head: nn.Module, token_ids: list[int]) -> None:
        super().__init__()
        self.lm_head = lm_head
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), target_pos]  # [B, d]
        vocab_logits = self.lm_head(h)  # [B, V]
        return torch.log_softmax(vocab_logits.float(), dim=-1)[:, self.token_ids]


def label_token_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """One token id per label word: ``" word"`` (BPE/sentencepiece) or ``"word"``, whichever is one token.

    A word that is several tokens in both spellings is scored by its first token, if the first tokens
    of all words differ (a warning says so); otherwise :class:`ValueError`.
    """
    ids, multi = [], []
    for w in words:
        options = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in (" " + w, w)]
        single = [o for o in options if len(o) == 1]
        if single:
            ids.append(single[0][0])
        else:
            ids.append(options[0][0])
            multi.append((w, tokenizer.convert_ids_to_tokens(options[0])))
    if multi:
        if len(set(ids)) < len(ids):
            raise ValueError(f"label words {list(words)} are not single tokens and their first tokens collide: {multi}")
        log.warning("label words scored by their first token only: %s", multi)
    if len(set(ids)) < len(ids):
        raise ValueError(f"label words {list(words)} map to the same token ids {ids}")
    return ids
