"""Federated evaluation: the global model on the task's eval split, and personalised evaluation.

- global: the server's shared tensors with personal prompt layers masked (the model every client
  shares). Not defined when the head is personal (returns None).
- personalised (digest 1.5 step 7): for each client, its own personal tensors plus the global shared
  ones, on its eval shard; the task metric on all clients' predictions pooled, and the mean and
  spread of per-client accuracy. Clients with an empty eval shard are skipped (counted).
"""
from __future__ import annotations

import numpy as np
import torch

from .encode import Encoded
from .tasks import compute_metric
from .train import evaluate, predict

__all__ = ["evaluate_global", "evaluate_personal", "pooled_by_shard"]


def evaluate_global(model, shared: dict, data: Encoded, batch_size: int, device: torch.device) -> dict | None:
    if model.head_kind == "linear" and model.cfg.head_role == "personal":
        return None
    model.load_state({k: v.to(device) for k, v in shared.items()})
    with model.only_shared():
        return evaluate(model, data, model.task, batch_size, device, return_preds=True)


def pooled_by_shard(task, preds: torch.Tensor, data: Encoded, shards: list[list[int]]) -> dict:
    """Personalised-evaluation numbers from one set of predictions ``[N]`` (when no client has
    anything personal, every client's model is the global one)."""
    labels = np.asarray(data.labels)
    idx = [i for s in shards for i in s]
    out = compute_metric(task, preds.numpy()[idx], labels[idx])
    per_client = [float((preds.numpy()[s] == labels[s]).mean()) for s in shards if s]
    out.update({"client_mean": float(np.mean(per_client)), "client_std": float(np.std(per_client)),
                "clients": len(per_client), "skipped": sum(1 for s in shards if not s)})
    return out


def evaluate_personal(model, shared: dict, personal_of, data: Encoded, shards: list[list[int]], batch_size: int,
                      device: torch.device) -> dict:
    """``personal_of(k) -> dict`` gives client k's personal tensors (initial values if never trained)."""
    model.load_state({k: v.to(device) for k, v in shared.items()})
    preds, labels, per_client, skipped = [], [], [], 0
    for k, idx in enumerate(shards):
        if not idx:
            skipped += 1
            continue
        model.load_state({n: v.to(device) for n, v in personal_of(k).items()})
        part = data.subset(idx)
        p, _ = predict(model, part, batch_size, device)
        preds.append(p.numpy())
        labels.extend(part.labels)
        per_client.append(float((p.numpy() == np.asarray(part.labels)).mean()))
    out = compute_metric(model.task, np.concatenate(preds), labels)
    out.update({"client_mean": float(np.mean(per_client)), "client_std": float(np.std(per_client)),
                "clients": len(per_client), "skipped": skipped})
    return out
