"""Federated evaluation in three views (``docs/method.md``, "Reading the results").

- ``global``: the server's shared tensors with personal prompt layers masked (the model every client
  shares) on the whole eval split. Not defined when the head is personal (no fields). With
  ``fed.curve_examples`` N, the curve is on the split's first N examples: only those are evaluated at the rounds
  without personalised views, and at the others the whole split's number is ``global_full_metric``
  (:func:`global_record`).
- ``personal`` (the reference's protocol): for each client, its own personal tensors plus the global shared
  ones, on its eval shard whose label mix matches its training shard; the task metric on all clients'
  predictions pooled, and the mean and spread of per-client accuracy. A model that only learned its client's
  label prior scores well here: the ``majority_local`` floor (:mod:`fedlib.references`) shows how well.
- ``personal_iid``: the same personalised models, each on an eval shard of the same size drawn IID from the eval
  split (``Partition.eval_iid``): what personalisation buys beyond the label prior.

Clients with an empty eval shard are skipped (counted).
"""

from __future__ import annotations

import numpy as np
import torch

from .encode import Encoded
from .tasks import compute_metric
from .train import predict

__all__ = [
    "union_positions",
    "global_record",
    "curve_size",
    "evaluate_personal",
    "personal_predictions",
    "pool_personal",
    "pooled_by_shard",
    "view_record",
]


def union_positions(shards: dict[str, list[int]]) -> tuple[list[int], dict[str, list[int]]]:
    """One client's shards of several views as ``(rows, positions)``: the sorted union of their example indices,
    and each view's positions in it (predict once on ``rows``, then take each view's positions)."""
    rows = sorted(set().union(*shards.values()))
    where = {i: j for j, i in enumerate(rows)}
    return rows, {name: [where[i] for i in idx] for name, idx in shards.items()}


def view_record(view: str, result: dict) -> dict:
    """The per-round log fields of one personalised view's pooled result (``<view>_metric``, ...)."""
    return {
        f"{view}_metric": result["metric"],
        f"{view}_client_mean": result["client_mean"],
        f"{view}_client_std": result["client_std"],
        f"{view}_skipped": result["skipped"],
    }


def _fields(prefix: str, task, preds: torch.Tensor, losses: torch.Tensor, labels: list[int]) -> dict:
    m, loss = compute_metric(task, preds.numpy(), labels), float(losses.mean())
    return {f"{prefix}_metric": m["metric"], f"{prefix}_accuracy": m["accuracy"], f"{prefix}_loss": loss}


def curve_size(curve: int, n: int) -> int:
    """How many of ``n`` eval examples the global curve reads: ``curve`` (``fed.curve_examples``), or all ``n`` when
    it is 0 or not fewer."""
    return curve if 0 < curve < n else n


def global_record(
    model, shared: dict, data: Encoded, curve: int, full: bool, batch_size: int, device: torch.device
) -> dict:
    """One round's global-view fields. ``global_metric`` (``_accuracy``, ``_loss``): on the curve's examples, the
    first ``curve`` of ``data`` (all when ``curve`` is 0 or not smaller). With a smaller curve, only those are
    predicted unless ``full``; when ``full``, all of ``data`` is, the curve is read from its first ``curve``
    predictions and ``global_full_metric`` (``_accuracy``, ``_loss``) is on all of it. ``preds`` ``[len(data)]``
    when all were predicted (the pooled personalised views read them). ``{}`` when the head is personal."""
    if model.head_kind == "linear" and model.cfg.head_role == "personal":
        return {}
    n = curve_size(curve, len(data))
    part = data if full or n == len(data) else data.subset(range(n))
    model.load_state({k: v.to(device) for k, v in shared.items()})
    with model.only_shared():
        preds, losses = predict(model, part, batch_size, device)
    out = _fields("global", model.task, preds[:n], losses[:n], data.labels[:n])
    if len(part) == len(data):
        out["preds"] = preds
        if n < len(data):
            out.update(_fields("global_full", model.task, preds, losses, data.labels))
    return out


def personal_predictions(
    model, shared: dict, personal: dict, data: Encoded, idx: list[int], batch_size: int, device: torch.device
) -> np.ndarray:
    """One client's predictions ``[len(idx)]`` on its eval shard, with its personal + the global shared tensors."""
    model.load_state({k: v.to(device) for k, v in shared.items()})
    model.load_state({n: v.to(device) for n, v in personal.items()})
    preds, _ = predict(model, data.subset(idx), batch_size, device)
    return preds.numpy()


def pool_personal(task, preds: dict[int, np.ndarray], data: Encoded, shards: list[list[int]]) -> dict:
    """The task metric over all clients' pooled predictions, plus per-client accuracy mean and spread."""
    labels = np.asarray(data.labels)
    ks = [k for k in sorted(preds) if shards[k]]
    pooled = np.concatenate([preds[k] for k in ks])
    truth = np.concatenate([labels[shards[k]] for k in ks])
    per_client = [float((preds[k] == labels[shards[k]]).mean()) for k in ks]
    out = compute_metric(task, pooled, truth)
    out.update(
        {
            "client_mean": float(np.mean(per_client)),
            "client_std": float(np.std(per_client)),
            "clients": len(ks),
            "skipped": sum(1 for s in shards if not s),
        }
    )
    return out


def evaluate_personal(
    model,
    shared: dict,
    personal_of,
    data: Encoded,
    views: dict[str, list[list[int]]],
    batch_size: int,
    device: torch.device,
) -> dict[str, dict]:
    """Each view's pooled result (``views``: name -> per-client eval shards); ``personal_of(k) -> dict`` gives
    client k's personal tensors (initial values if never trained). A client predicts once, on the union of its
    shards."""
    preds = {name: {} for name in views}
    for k in range(len(next(iter(views.values())))):
        idx, positions = union_positions({name: shards[k] for name, shards in views.items()})
        if not idx:
            continue
        p = personal_predictions(model, shared, personal_of(k), data, idx, batch_size, device)
        for name, pos in positions.items():
            if pos:
                preds[name][k] = p[pos]
    return {name: pool_personal(model.task, preds[name], data, shards) for name, shards in views.items()}


def pooled_by_shard(task, preds: torch.Tensor, data: Encoded, shards: list[list[int]]) -> dict:
    """Personalised-evaluation numbers from one set of predictions ``[N]`` (when no client has
    anything personal, every client's model is the global one)."""
    return pool_personal(task, {k: preds.numpy()[s] for k, s in enumerate(shards) if s}, data, shards)
