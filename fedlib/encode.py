"""From task rows to padded token tensors: templates, truncation, the position the head reads.

- linear head: ``tokenizer(text, text_pair)``; the head pools all tokens.
- MLM verbalizer: the task's ``mlm_template`` with the tokenizer's mask token; ``target_pos`` is the mask.
  If truncation removed the mask it is put back at position -2, as the reference does (``docs/data.md``).
- decoder: the task's ``lm_template`` (truncated from the left, so the template's end survives);
  ``target_pos`` is the last token, whose next-token distribution scores the label words.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Encoded", "encode_dataset", "collate", "batch_indices"]


@dataclass
class Encoded:
    """Token ids per example (unpadded), the position the head reads, and class labels."""

    input_ids: list[list[int]]
    target_pos: list[int]
    labels: list[int]
    token_type_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(parts: list["Encoded"]) -> "Encoded":
        """One dataset holding ``parts``' examples in order."""
        tt = None if any(p.token_type_ids is None for p in parts) else [r for p in parts for r in p.token_type_ids]
        return Encoded(
            [r for p in parts for r in p.input_ids],
            [t for p in parts for t in p.target_pos],
            [y for p in parts for y in p.labels],
            tt,
        )

    def subset(self, idx) -> "Encoded":
        idx = list(idx)
        tt = [self.token_type_ids[i] for i in idx] if self.token_type_ids is not None else None
        return Encoded(
            [self.input_ids[i] for i in idx], [self.target_pos[i] for i in idx], [self.labels[i] for i in idx], tt
        )


def encode_dataset(ds, tokenizer, task, head: str, max_length: int) -> Encoded:
    """Tokenize a task ``datasets.Dataset`` (columns text, [text_pair], label) for ``head``."""
    texts = list(ds["text"])
    pairs = list(ds["text_pair"]) if "text_pair" in ds.column_names else None
    labels = list(ds["label"])
    if head == "linear":
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        return Encoded(enc["input_ids"], [0] * len(labels), labels, enc.get("token_type_ids"))
    template = task.mlm_template if head == "mlm" else task.lm_template
    fill = {"mask": tokenizer.mask_token if head == "mlm" else ""}
    strings = [template.format(text=t, text_pair=(pairs[i] if pairs else ""), **fill) for i, t in enumerate(texts)]
    if head == "mlm":
        if tokenizer.mask_token_id is None:
            raise ValueError("head='mlm' needs a tokenizer with a mask token")
        ids = tokenizer(strings, truncation=True, max_length=max_length)["input_ids"]
        target = []
        for row in ids:
            if tokenizer.mask_token_id not in row:
                row[-2] = tokenizer.mask_token_id
            target.append(row.index(tokenizer.mask_token_id))
        return Encoded(ids, target, labels)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        ids = tokenizer(strings, truncation=True, max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side
    return Encoded(ids, [len(r) - 1 for r in ids], labels)


def collate(data: Encoded, idx, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of examples ``idx``: input_ids/attention_mask ``[B, T]``, target_pos/labels ``[B]``."""
    rows = [data.input_ids[i] for i in idx]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r)
        mask[j, : len(r)] = 1
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "target_pos": torch.tensor([data.target_pos[i] for i in idx]),
        "labels": torch.tensor([data.labels[i] for i in idx]),
    }
    if data.token_type_ids is not None:
        tt = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(idx):
            tt[j, : len(data.token_type_ids[i])] = torch.tensor(data.token_type_ids[i])
        batch["token_type_ids"] = tt
    return batch


def batch_indices(n: int, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
    """Yield the example indices of each batch of one pass (shuffled with the caller's ``generator``)."""
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
