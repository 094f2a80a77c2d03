"""Reference rows for results tables: a floor with no model and an upper reference with no federation.

- ``majority_local``: no model at all. Globally, every eval example gets the pooled training set's majority
  label; personalised, each client predicts its own majority training label (on its matched and its IID eval
  shard). Under label skew this floor is high on the matched view: a personalised score is only worth its
  distance above it.
- ``centralized``: the same model trained on the pooled training data for the same number of local steps a
  federated run's sampled clients take, ``rounds x clients_per_round x epochs x ceil(n / (N B))``, evaluated
  on the same schedule; its personalised views are its one model on each client's shards. Its minibatches are
  bucketed by length in runs of ``clients_per_round`` (:func:`fedlib.train.bucket_by_length`), as a federated
  round's joint step sorts its clients' examples: padded to their longest example, random minibatches made it
  2.7x slower per step than the clients (``docs/deviations.md``).
- ``local_only`` (each client alone, nothing exchanged) is a strategy: :class:`fedlib.strategies.LocalOnly`.

``centralized`` pools the data, so the label skew does not reach its training; its personalised views pool its
predictions over eval shards that together hold every eval example, i.e. equal its global view. Its runs are the
same at every ``partition.alpha`` (:data:`POOLED`; on SST-2's paper-shaped protocol, all 30 rounds of 5 seeds were
identical at alpha 0.1 and 1.0): a grid at another alpha may take them instead of running them again
(:func:`fedlib.grid_plan.reusable_run`, a protocol's ``reuse``).

Each returns a history in the simulator's format (:mod:`fedlib.report` summarises it), with no bytes.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from .config import ExperimentConfig
from .evaluation import curve_size, global_record, pooled_by_shard
from .runtime import resolve_device, seed_everything
from .simulation import build_model, load_rows, load_split, partition_for
from .strategies import get_strategy
from .tasks import compute_metric, get_task
from .train import local_train, make_optimizer

__all__ = ["REFERENCES", "POOLED", "majority_local", "centralized", "centralized_steps_per_round"]


def _row(round_: int, seconds: float, cum_seconds: float, metrics: dict) -> dict:
    return {
        "round": round_,
        "clients": [],
        "reported": 0,
        "failed": 0,
        "failures": [],
        "bytes_up": 0,
        "bytes_down": 0,
        "cum_bytes": 0,
        "train_loss": metrics.pop("train_loss", math.nan),
        "local_steps": 0,
        "seconds_client": seconds,
        "seconds_aggregate": 0.0,
        "seconds_eval": 0.0,
        "cum_seconds": cum_seconds,
        **metrics,
    }


def majority_local(cfg: ExperimentConfig, backbone=None) -> pd.DataFrame:
    """The floor: each client's majority training label (module docstring); one row at the last round."""
    task = get_task(cfg.fed.task)
    train, evl = (np.asarray(load_rows(cfg, split)["label"]) for split in ("train", "eval"))
    part = partition_for(cfg, train, evl)
    pooled = int(np.bincount(train).argmax())
    major = [int(np.bincount(train[idx]).argmax()) if idx else pooled for idx in part.train]
    n = curve_size(cfg.fed.curve_examples, len(evl))  # fewer than all: the whole set's number beside the curve's
    out = {"global_metric": compute_metric(task, np.full(n, pooled), evl[:n])["metric"]}
    if n < len(evl):
        out["global_full_metric"] = compute_metric(task, np.full(len(evl), pooled), evl)["metric"]
    for view, shards in (("personal", part.eval), ("personal_iid", part.eval_iid)):
        idx = [i for k in range(len(shards)) for i in shards[k]]
        preds = [major[k] for k in range(len(shards)) for _ in shards[k]]
        out[f"{view}_metric"] = compute_metric(task, np.asarray(preds), evl[idx])["metric"]
    return pd.DataFrame([_row(cfg.fed.rounds, 0.0, 0.0, out)])


def centralized_steps_per_round(cfg: ExperimentConfig, n_train: int) -> int:
    """Local steps a federated round's sampled clients take together, on average: m x min(E x ceil(n / (N B)), K)
    with K = ``train.max_steps`` when set (a client's cut, :func:`fedlib.train.step_plan`)."""
    per_client = cfg.train.epochs * math.ceil(n_train / cfg.fed.num_clients / cfg.train.batch_size)
    if cfg.train.max_steps:
        per_client = min(per_client, cfg.train.max_steps)
    return cfg.fed.clients_per_round * per_client


def centralized(cfg: ExperimentConfig, backbone=None) -> pd.DataFrame:
    """The upper reference: pooled training, the federated run's step budget and evaluation schedule."""
    strategy = get_strategy("fedavg")
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.fed.seed)
    model = build_model(cfg, strategy, backbone, device)
    train, evalset = load_split(cfg, model, "train"), load_split(cfg, model, "eval")
    part = partition_for(cfg, train.labels, evalset.labels)
    steps = centralized_steps_per_round(cfg, len(train))
    passes = math.ceil(steps * cfg.train.batch_size / len(train)) + 1
    opt = make_optimizer(model, cfg.train)
    gen = torch.Generator().manual_seed(cfg.fed.seed)
    rows, cum = [], 0.0
    for t in range(cfg.fed.rounds):
        t0 = time.perf_counter()
        stats = local_train(
            model, opt, train, cfg.train, device, gen, epochs=passes, max_steps=steps, bucket=cfg.fed.clients_per_round
        )
        cum += time.perf_counter() - t0
        metrics = {"train_loss": stats["loss"]}
        evaluated, whole = cfg.fed.evaluates(t)  # the simulator's schedule: the whole set where it pools views
        if evaluated:
            curve = cfg.fed.curve_examples
            g = global_record(model, model.state("shared"), evalset, curve, whole, cfg.train.eval_batch_size, device)
            preds = g.pop("preds", None)
            metrics["global_metric"] = g["global_metric"]
            if "global_full_metric" in g:
                metrics["global_full_metric"] = g["global_full_metric"]
            if preds is not None:  # the whole set was predicted: the pooled personalised views too
                for view, shards in (("personal", part.eval), ("personal_iid", part.eval_iid)):
                    metrics[f"{view}_metric"] = pooled_by_shard(model.task, preds, evalset, shards)["metric"]
        rows.append(_row(t + 1, time.perf_counter() - t0, cum, metrics))
    return pd.DataFrame(rows)


REFERENCES = {"majority_local": majority_local, "centralized": centralized}
POOLED = frozenset({"centralized"})  # reference rows whose runs do not depend on partition.alpha (module docstring)
