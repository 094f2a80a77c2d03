"""FedPepTAO (Che et al., EMNLP 2023): the strategy and its server's adaptive step.

Layer selection (which layers are shared) is :mod:`fedlib.selection`; this module is the server step
(``docs/method.md``, "Adaptive optimisation"). With x̄ the size-weighted mean of the clients' shared tensors,
theta the previous global, K_i local steps and eta_l the device learning rate *of each tensor* (prompts at
``train.lr``, the head at ``train.head_lr``, as each client reports it):

    Delta_t = theta - x̄                                                        (pseudo-gradient)
    c_i <- c_i - c + (theta - y_i) / (K_i eta_l);   dc_i = c_i_new - c_i_old     (per-client variates,
    c   <- c + (m/N) * sum_i K_i dc_i / sum_i K_i                                 kept on the server)
    round 1: theta <- x̄ (no step; Delta_prev <- Delta_t)
    later:   g = Delta_prev - Delta_t;  eta_s <- max(decay * eta_s, eta_min)
      parallel (default, the intended update):
             v_i = beta V + (1 - beta) g + c - c_i;   theta <- sum_i p_i (x̄ - eta_s v_i);   V <- sum_i p_i v_i
      sequential (reference-faithful; its state_dict aliasing chains the per-client steps):
             w_0 = x̄, v_0 = V;  v_k = beta v_{k-1} + (1 - beta) g + c - c_{i_k};  w_k = w_{k-1} - eta_s v_k
             theta <- sum_k p_k w_k;   V <- sum_k p_k v_k

Control variates cost no communication: the server computes them from what clients already send.
``control_variates=False`` drops the ``c - c_i`` term, for the ablation.
Unlike the reference they cover only the shared tensors.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
import torch

from .configbase import check, setting
from .server import ServerState, weighted_mean
from .strategies import FedAvgConfig, Strategy, register

__all__ = ["FedPepTAO", "FedPepTAOConfig", "fedpeptao_server_step"]


@dataclass
class FedPepTAOConfig(FedAvgConfig):
    name: str = setting("fedpeptao", "the federated strategy")
    server_lr: float = setting(0.05, "initial server learning rate eta_s (decays each step)")
    server_lr_decay: float = setting(0.99, "eta_s <- max(decay * eta_s, server_lr_min) at every server step")
    server_lr_min: float = setting(1e-4, "floor of the decaying server learning rate")
    server_momentum: float = setting(0.9, "momentum beta of the server buffer V")
    variant: typing.Literal["parallel", "sequential"] = setting(
        "parallel",
        "'parallel': each client's corrected step from the same V (the intended update); 'sequential': "
        "the reference code's chained per-client steps",
    )
    control_variates: bool = setting(True, "add the server-held correction c - c_i (False: the ablation without it)")

    def validate(self) -> None:
        super().validate()
        check(0 < self.server_lr_decay <= 1, "strategy", "server_lr_decay", self.server_lr_decay, "must be in (0, 1]")
        check(self.server_lr_min >= 0, "strategy", "server_lr_min", self.server_lr_min, "must be >= 0")
        check(0 <= self.server_momentum < 1, "strategy", "server_momentum", self.server_momentum, "must be in [0, 1)")


@register
class FedPepTAO(Strategy):
    """Selected layers shared; server momentum with server-held control variates (module docstring)."""

    name, Config, layers = "fedpeptao", FedPepTAOConfig, "selected"
    doc = "FedPepTAO: selected layers shared, server momentum with server-held control variates"

    def init_server(self, shared):
        state = super().init_server(shared)
        state.scalars["server_lr"] = self.cfg.server_lr  # the only rate that changes over rounds
        return state

    def server_step(self, state, results, avg, delta, num_clients):
        return fedpeptao_server_step(state, results, avg, delta, self.cfg, num_clients)


def fedpeptao_server_step(
    state: ServerState, results: list, avg: dict, delta: dict, cfg: FedPepTAOConfig, num_clients: int
) -> ServerState:
    """The FedPepTAO server update (module docstring); a pure function of ``state`` and ``results``.

    Each result carries ``lrs``, the local learning rate each shared tensor was trained at (eta_l, per tensor).
    """
    theta = state.shared
    beta = cfg.server_momentum
    controls = {key: dict(group) for key, group in state.controls.items()}
    c = controls.setdefault("c", {k: torch.zeros_like(v) for k, v in theta.items()})
    dcs, steps = [], []
    for r in results:
        key = f"c{r.client}"
        old = controls.get(key, {k: torch.zeros_like(v) for k, v in theta.items()})
        new = {k: old[k] - c[k] + (theta[k] - r.shared[k]) * (1.0 / (max(r.steps, 1) * r.lrs[k])) for k in theta}
        dcs.append({k: new[k] - old[k] for k in theta})
        steps.append(float(max(r.steps, 1)))
        controls[key] = new
    frac = len(results) / num_clients
    dc = weighted_mean(dcs, steps)
    controls["c"] = c = {k: c[k] + frac * dc[k] for k in theta}
    d_t = {k: -v for k, v in delta.items()}  # Delta_t = theta - x̄
    opt = dict(state.opt)
    scalars = dict(state.scalars)
    if f"prev.{next(iter(theta))}" not in opt:  # first server step: FedAvg
        opt.update({f"prev.{k}": v for k, v in d_t.items()})
        return ServerState(state.round + 1, avg, opt, controls, scalars)
    g = {k: opt[f"prev.{k}"] - d_t[k] for k in theta}
    opt.update({f"prev.{k}": v for k, v in d_t.items()})
    eta = max(cfg.server_lr_decay * scalars["server_lr"], cfg.server_lr_min)
    scalars["server_lr"] = eta
    weights = np.array([float(r.num_examples) for r in results])
    p = weights / weights.sum()
    V = {k: opt.get(f"V.{k}", torch.zeros_like(v)) for k, v in theta.items()}
    use_cv = 1.0 if cfg.control_variates else 0.0  # 0: ablation without the c - c_i correction
    new_theta, new_V = {}, {}
    for name in theta:
        if cfg.variant == "sequential":
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
