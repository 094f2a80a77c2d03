"""FedPepTAO (Che et al., EMNLP 2023): layer selection and the server's adaptive step.

**Layer selection** (:func:`select_layers`, before round 1; digest 1.3-1.4): score every layer on one
batch per client (:mod:`fedlib.scoring`); choose how many to share, k, from the Hessian eigenvalue
density of the prompt loss (:mod:`fedlib.hessian`) measured after ``hessian_warmup_rounds`` of FedAvg on
all layers (the model then restarts from its initial prompts), or take a fixed ``shared_layers`` /
``share_ratio``; share the k best-scored layers; the others are personal (encoders) or off (decoders,
the reference's GPT-2 choice), per ``nonselected``.

**Server step** (:func:`fedpeptao_server_step`; digest 1.5 steps 3-6). With x̄ the size-weighted mean of
the clients' shared tensors, theta the previous global, K_i local steps and eta_l the device lr:

    Delta_t = theta - x̄                                                        (pseudo-gradient)
    c_i <- c_i - c + (theta - y_i) / (K_i eta_l);   dc_i = c_i_new - c_i_old     (per-client variates,
    c   <- c + (m/N) * sum_i K_i dc_i / sum_i K_i                                 kept on the server)
    round 1: theta <- x̄ (no step; Delta_prev <- Delta_t)
    later:   g = Delta_prev - Delta_t;  eta_s <- max(0.99 eta_s, 1e-4)
      parallel (default, the intended update):
             v_i = 0.9 V + 0.1 g + c - c_i;   theta <- sum_i p_i (x̄ - eta_s v_i);   V <- sum_i p_i v_i
      sequential (reference-faithful; its state_dict aliasing chains the per-client steps):
             w_0 = x̄, v_0 = V;  v_k = 0.9 v_{k-1} + 0.1 g + c - c_{i_k};  w_k = w_{k-1} - eta_s v_k
             theta <- sum_k p_k w_k;   V <- sum_k p_k v_k

Control variates cost no communication: the server computes them from what clients already send.
``control_variates=False`` (FedConfig) drops the ``c - c_i`` term, for the ablation.
Unlike the reference (digest bug 4) they cover only the shared tensors.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .client import ClientStore, client_seed, client_update
from .encode import collate
from .hessian import keep_ratio, layer_count
from .scoring import score_layers
from .server import ServerState, init_server, server_update
from .strategies import get_strategy, weighted_mean

__all__ = ["select_layers", "roles_from_ranking", "fedpeptao_server_step"]

log = logging.getLogger(__name__)


def roles_from_ranking(ranking: list[int], k: int, nonselected: str) -> tuple[str, ...]:
    """The top ``k`` layers of ``ranking`` shared, the rest ``nonselected`` (``"personal"`` or ``"off"``)."""
    top = set(ranking[:k])
    return tuple("shared" if l in top else nonselected for l in range(len(ranking)))


def _hessian_ratio(sim) -> dict:
    """Warm up with FedAvg on all layers, then average the clients' keep ratios (digest 1.4 steps 1-3)."""
    fed, model = sim.fed, sim.model
    init = model.state()
    fedavg = get_strategy("fedavg")
    hp = {"local_epochs": fed.local_epochs, "local_steps": fed.local_steps}
    server = init_server(fedavg, model.state("shared"), hp)
    store = ClientStore()
    sampled: list[int] = []
    for t in range(fed.hessian_warmup_rounds):
        sampled = sim.sample(t)
        results = []
        for k in sampled:
            res, state = client_update(
                model,
                k,
                server.shared,
                store.get(k),
                {},
                sim.train.subset(sim.partition.train[k]),
                sim.cfg.train,
                fedavg,
                hp,
                {},
                client_seed(fed.seed, t, k, stream=1),
                sim.device,
            )
            store.put(k, state)
            results.append(res)
        server = server_update(server, results, fedavg, hp, fed.num_clients)
    model.load_state(server.shared)
    sampled = sampled or sim.sample(0)
    per_client = []
    pad = model.info.tokenizer.pad_token_id
    for k in sampled:
        idx = sim.partition.train[k]
        order = np.random.default_rng([fed.seed, k, 13]).permutation(len(idx))[: sim.cfg.train.batch_size]
        out = keep_ratio(
            model,
            collate(sim.train, [idx[i] for i in order], pad),
            fed.hessian_iters,
            client_seed(fed.seed, 0, k, stream=2),
            sim.device,
            relative=fed.hessian_relative,
        )
        per_client.append(out)
    model.load_state(init)  # training proper starts from the initial prompts
    ratios = [r["ratio"] for r in per_client]
    return {
        "ratio": float(np.mean(ratios)),
        "client_ratios": ratios,
        "clients": sampled,
        "eigenvalues": per_client[0]["eigenvalues"],
        "weights": per_client[0]["weights"],
    }


def select_layers(sim) -> dict:
    """Scores, layer count and roles for a :class:`fedlib.simulation.Simulation` (called before round 1)."""
    fed, model = sim.fed, sim.model
    t0 = time.perf_counter()
    num_layers = model.info.num_layers
    scores = score_layers(model, sim.train, sim.partition.train, fed.score_batch, fed.seed, sim.device)
    hessian = None
    if fed.shared_layers:
        k, how = min(fed.shared_layers, num_layers), "fixed count (FedConfig.shared_layers)"
    elif fed.share_ratio:
        k, how = layer_count(fed.share_ratio, num_layers), "fixed ratio (FedConfig.share_ratio)"
    else:
        hessian = _hessian_ratio(sim)
        k, how = layer_count(hessian["ratio"], num_layers), "Hessian eigen-density"
    nonselected = fed.nonselected
    if nonselected == "auto":
        nonselected = "off" if model.info.kind == "decoder" else "personal"
    roles = roles_from_ranking(scores["ranking"], k, nonselected)
    log.info(
        "FedPepTAO: sharing %d of %d layers %s (%s); others %s",
        k,
        num_layers,
        sorted(scores["ranking"][:k]),
        how,
        nonselected,
    )
    return {
        "ranking": scores["ranking"],
        "scores": scores["scores"].tolist(),
        "per_client": np.nan_to_num(scores["per_client"]).tolist(),
        "weights": scores["weights"].tolist(),
        "k": k,
        "how": how,
        "roles": list(roles),
        "hessian": hessian,
        "seconds": time.perf_counter() - t0,
    }


def fedpeptao_server_step(
    state: ServerState, results: list, avg: dict, delta: dict, hp: dict, num_clients: int
) -> ServerState:
    """The FedPepTAO server update (module docstring); a pure function of ``state`` and ``results``."""
    theta = state.shared
    lr_l = hp.get("lr", 4e-2)
    beta = hp.get("server_momentum", 0.9)
    controls = {key: dict(group) for key, group in state.controls.items()}
    c = controls.setdefault("c", {k: torch.zeros_like(v) for k, v in theta.items()})
    dcs, steps = [], []
    for r in results:
        key = f"c{r.client}"
        old = controls.get(key, {k: torch.zeros_like(v) for k, v in theta.items()})
        scale = 1.0 / (max(r.steps, 1) * lr_l)
        new = {k: old[k] - c[k] + (theta[k] - r.shared[k]) * scale for k in theta}
        dcs.append({k: new[k] - old[k] for k in theta})
        steps.append(float(max(r.steps, 1)))
        controls[key] = new
    frac = len(results) / num_clients
    dc = weighted_mean(dcs, steps)
    controls["c"] = c = {k: c[k] + frac * dc[k] for k in theta}
    d_t = {k: -v for k, v in delta.items()}  # Delta_t = theta - x̄
    opt = dict(state.opt)
    scalars = dict(state.scalars)
    if "prev.%s" % next(iter(theta)) not in opt:  # first server step: FedAvg
        opt.update({f"prev.{k}": v for k, v in d_t.items()})
        return ServerState(state.round + 1, avg, opt, controls, scalars)
    g = {k: opt[f"prev.{k}"] - d_t[k] for k in theta}
    opt.update({f"prev.{k}": v for k, v in d_t.items()})
    eta = max(0.99 * scalars.get("server_lr", 0.05), 1e-4)
    scalars["server_lr"] = eta
    weights = np.array([float(r.num_examples) for r in results])
    p = weights / weights.sum()
    V = {k: opt.get(f"V.{k}", torch.zeros_like(v)) for k, v in theta.items()}
    use_cv = 1.0 if hp.get("control_variates", True) else 0.0  # 0: ablation without the c - c_i correction
    new_theta, new_V = {}, {}
    for name in theta:
        if hp.get("variant", "parallel") == "sequential":
            w, v, ws, vs = avg[name], V[name], [], []
            for r in results:
                v = beta * v + (1 - beta) * g[name] + use_cv * (c[name] - controls[f"c{r.client}"][name])
                w = w - eta * v
                ws.append(w)
                vs.append(v)
        else:
            vs = [
                beta * V[name] + (1 - beta) * g[name] + use_cv * (c[name] - controls[f"c{r.client}"][name])
                for r in results
            ]
            ws = [avg[name] - eta * v for v in vs]
        new_theta[name] = sum(float(pk) * w for pk, w in zip(p, ws))
        new_V[name] = sum(float(pk) * v for pk, v in zip(p, vs))
    opt.update({f"V.{k}": v for k, v in new_V.items()})
    return ServerState(state.round + 1, new_theta, opt, controls, scalars)
