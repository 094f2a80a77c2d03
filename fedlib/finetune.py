"""Federated training followed by local fine-tuning: the personalisation baseline practitioners use.

After a run's last round each client takes a copy of the final model (the global shared tensors and its own personal
ones), fine-tunes every trainable tensor on its own training shard for ``fed.finetune_epochs`` local epochs (a fresh
optimiser of the ``train`` section: the same local budget as a round when it equals ``train.epochs``), and predicts
on its eval shards. The personalised views of these copies are reported beside the run's own
(``finetuned_personal_metric``, ``finetuned_personal_iid_metric``); the run's global model and its other numbers are
untouched. A grid derives a row from them, e.g. ``fedavg_ft``: FedAvg, then local fine-tuning, at the cost of the
fine-tuning alone (:func:`fedlib.benchmark.finetuned_row`), where running FedAvg again would double it.

Every client is fine-tuned (N of them, not m): what a deployment would do before serving its users. Each client's
minibatch order is derived from (seed, rounds, client) on a stream of its own; the prompts' dropout draws from torch's
global generator, as the run left it, so a run is reproducible as a whole (same seed, same result), not client by
client. The fine-tuned copies are scored as :func:`fedlib.evaluation.evaluate_personal` scores a run's clients.
"""

from __future__ import annotations

import time

import torch

from .client import LocalRun, client_seed
from .evaluation import evaluate_personal, view_record
from .train import local_train, make_optimizer

__all__ = ["FINETUNE_STREAM", "finetune_views"]

FINETUNE_STREAM = 7
"""The random stream of fine-tuning's minibatch order (:func:`fedlib.client.client_seed`): apart from training's."""


def finetune_views(sim) -> dict:
    """Fine-tune each client's copy of ``sim``'s final model and evaluate it on its shards (module docstring).

    ``sim``: a :class:`fedlib.simulation.Simulation` after its last round. Clients are fine-tuned ``m`` at a time as
    joint batches where the model allows it (:mod:`fedlib.batched`: the rounds' speed; one by one, padded, it took
    twice as long), else one by one. Returns the log fields ``finetuned_<view>_metric`` (and the views' client means
    and spreads) and ``seconds_finetune``.
    """
    from .batched import batched_local_train, supports_batching, workspaces

    cfg, model, device = sim.cfg, sim.model, sim.device
    t0 = time.perf_counter()
    train_cfg = cfg.train.replace(epochs=cfg.fed.finetune_epochs)
    shared = {k: v.to(device) for k, v in sim.server.shared.items()}
    tuned: dict[int, dict[str, torch.Tensor]] = {}  # client -> every trainable tensor of its fine-tuned copy
    clients = list(range(cfg.fed.num_clients))
    group = cfg.fed.clients_per_round if cfg.run.batch_clients != "off" and supports_batching(model) else 1
    for start in range(0, len(clients), group):
        ks = clients[start : start + group]
        models = workspaces(model, len(ks), sim._workspaces) if group > 1 else [model]
        runs, datas, gens = [], [], []
        for m, k in zip(models, ks):
            m.load_state(shared)
            m.load_state({n: v.to(device) for n, v in sim.personal_of(k).items()})
            runs.append(LocalRun(m, make_optimizer(m, train_cfg), train_cfg, {}))
            datas.append(sim.train.subset(sim.shards[k]))
            seed = client_seed(cfg.fed.seed, cfg.fed.rounds, k, stream=FINETUNE_STREAM)
            gens.append(torch.Generator().manual_seed(seed))
        if group > 1:
            batched_local_train(runs, datas, device, gens, cfg.run.batch_chunk)
        else:
            local_train(model, runs[0].opt, datas[0], train_cfg, device, gens[0])
        tuned.update({k: m.state() for m, k in zip(models, ks)})
    views = {"personal": sim.partition.eval, "personal_iid": sim.partition.eval_iid}
    pooled = evaluate_personal(model, shared, tuned.__getitem__, sim.eval, views, cfg.train.eval_batch_size, device)
    model.load_state(shared)
    model.load_state({n: v.to(device) for n, v in sim.init_personal.items()})
    out = {"seconds_finetune": time.perf_counter() - t0}
    for name, result in pooled.items():
        out.update(view_record(f"finetuned_{name}", result))
    return out
