"""FedPepTAO (Che et al., EMNLP 2023): the strategy and its server's adaptive step.

Layer selection (which layers are shared) is :mod:`fedlib.selection`; this module is the server step
(``docs/method.md``, "Adaptive optimisation"). Notation, per shared tensor: theta the previous global, y_i client
i's upload, x̄ = sum_i p_i y_i (p_i = n_i / sum_S n_j over the round's clients S), K_i its local steps, eta_i the
device learning rate *of that tensor* (prompts ``train.lr``, head ``train.head_lr``, as each client reports it),
Delta_t = theta - x̄ the pseudo-gradient, d_i = (theta - y_i) / (K_i eta_i) the client's mean local direction.

``server_variant="corrected"`` (default; this project's repair, tested on a heterogeneous quadratic with local
AdamW in :mod:`fedlib.quadratic`):

    c_i <- d_i                                  (client i's latest direction; kept on the server)
    c   <- sum_{j seen} n_j c_j / sum_{j seen} n_j     (size-weighted mean over every client seen so far)
    round 1: theta <- x̄
    later:   g = Delta_{t-1} - Delta_t;  eta_s <- max(decay * eta_s, eta_min)
             V <- beta V + (1 - beta) g                              (momentum on g alone)
             kappa = correction_scale * sum_i p_i K_i eta_i          (a step in model units, per tensor)
             theta <- x̄ - eta_s V - kappa (c - sum_i p_i c_i)

With ``correction_scale=1`` the correction replaces the sampled clients' mean step by the mean of every client's
latest step (MIFA, Gu et al. 2021; FedVARP, Jhunjhunwala et al. 2022): it is unbiased for full participation
and costs no communication. Differences from the reference (``server_variant="parallel"`` or ``"sequential"``):

    c_i <- c_i - c + d_i;   dc_i = c_i_new - c_i_old;   c <- c + (m/N) sum_i K_i dc_i / sum_i K_i
    round 1: theta <- x̄
    later:   v_i = beta V + (1 - beta) g + c - c_i
      parallel:   theta <- sum_i p_i (x̄ - eta_s v_i);   V <- sum_i p_i v_i
      sequential: w_0 = x̄, v_0 = V; v_k = beta v_{k-1} + (1 - beta) g + c - c_{i_k}; w_k = w_{k-1} - eta_s v_k;
                  theta <- sum_k p_k w_k;   V <- sum_k p_k v_k   (its state_dict aliasing chains the steps)

1. The reference's ``c_i`` update is SCAFFOLD's option II, which assumes local steps corrected by ``c - c_i``; the
   local AdamW is not corrected, so ``c_i`` sums (direction - c) over every participation and grows without
   bound under label skew. Here ``c_i`` is the latest direction, bounded by the client's own steps.
2. ``c - c_i`` enters the reference's buffer with weight 1 and stays there (V integrates it); here it is applied
   once, outside V, at a scale set in model units, so it does not depend on the learning rate's size.
3. Per-client server steps from one V (the reference's per-client "momentum reset") average to one step here.

``control_variates=False`` drops the correction (the ablation); ``server_momentum=0`` drops the momentum;
``adaptive_head=False`` averages the head plainly (the reference has a frozen verbalizer, no trained head).
Unlike the reference, variates cover only the shared tensors. Each step records diagnostics in
``state.scalars["diagnostics"]``: ||theta - x̄|| / ||Delta_t||, ||c||, mean ||c_i|| over S, eta_s, and ('corrected')
the momentum's and the correction's shares of the step, ||eta_s V|| / ||Delta_t|| and ||kappa (c - sum p_i c_i)|| /
||Delta_t||.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
import torch

from .configbase import check, setting
from .server import ServerState, tensor_norm, weighted_mean
from .strategies import FedAvgConfig, Strategy, register

__all__ = ["FedPepTAO", "FedPepTAOConfig", "fedpeptao_server_step"]


@dataclass
class FedPepTAOConfig(FedAvgConfig):
    name: str = setting("fedpeptao", "the federated strategy")
    server_lr: float = setting(0.05, "initial server learning rate eta_s (decays each step)")
    server_lr_decay: float = setting(0.99, "eta_s <- max(decay * eta_s, server_lr_min) at every server step")
    server_lr_min: float = setting(1e-4, "floor of the decaying server learning rate")
    server_momentum: float = setting(0.9, "momentum beta of the server buffer V")
    server_variant: typing.Literal["corrected", "parallel", "sequential"] = setting(
        "corrected",
        "'corrected': latest-direction control variates applied outside the momentum (this project's repair); "
        "'parallel': the reference's update, each client's step from the same V; 'sequential': the reference "
        "code's chained per-client steps",
    )
    correction_scale: float = setting(
        1.0, "'corrected' only: the correction's step is this times sum_i p_i K_i eta_i (1: MIFA/FedVARP)"
    )
    control_variates: bool = setting(True, "apply the server-held correction (False: the ablation without it)")
    adaptive_head: bool = setting(
        True, "the head goes through the adaptive step as the prompts do (False: the head is plainly averaged)"
    )

    def validate(self) -> None:
        super().validate()
        check(0 < self.server_lr_decay <= 1, "strategy", "server_lr_decay", self.server_lr_decay, "must be in (0, 1]")
        check(self.server_lr_min >= 0, "strategy", "server_lr_min", self.server_lr_min, "must be >= 0")
        check(0 <= self.server_momentum < 1, "strategy", "server_momentum", self.server_momentum, "must be in [0, 1)")
        check(self.correction_scale >= 0, "strategy", "correction_scale", self.correction_scale, "must be >= 0")


@register
class FedPepTAO(Strategy):
    """Selected layers shared; server momentum with server-held control variates (module docstring)."""

    name, Config, layers = "fedpeptao", FedPepTAOConfig, "selected"
    doc = "FedPepTAO: selected layers shared, server momentum with server-held control variates"

    def init_server(self, shared):
        state = super().init_server(shared)
        state.scalars["server_lr"] = self.cfg.server_lr  # the only rate that changes over rounds
        return state

    def privacy_refusal(self) -> str | None:
        if self.cfg.control_variates or self.cfg.server_variant != "corrected":
            return (
                f"strategy.control_variates={self.cfg.control_variates}, strategy.server_variant="
                f"{self.cfg.server_variant!r}: the server keeps each client's own direction (its control variate) and "
                "mixes it into later steps, which the noise on the round's mean does not cover; FedPepTAO-DP is "
                "strategy.control_variates=False with server_variant 'corrected' (momentum on the noised mean)"
            )
        return None

    def server_step(self, state, results, avg, delta, num_clients):
        return fedpeptao_server_step(state, results, avg, delta, self.cfg, num_clients)


def fedpeptao_server_step(
    state: ServerState, results: list, avg: dict, delta: dict, cfg: FedPepTAOConfig, num_clients: int
) -> ServerState:
    """The FedPepTAO server update (module docstring); a pure function of ``state`` and ``results``.

    Each result carries ``lrs``, the local learning rate each shared tensor was trained at (eta_i, per tensor).
    """
    theta = state.shared
    controls = {key: dict(group) for key, group in state.controls.items()}
    scalars = dict(state.scalars)
    directions = {
        r.client: {k: (theta[k] - r.shared[k]) * (1.0 / (max(r.steps, 1) * r.lrs[k])) for k in theta} for r in results
    }
    if cfg.server_variant == "corrected":
        c = _latest_directions(controls, scalars, results, directions, theta)
    else:
        c = _reference_variates(controls, results, directions, theta, num_clients)
    d_t = {k: -v for k, v in delta.items()}  # Delta_t = theta - x̄
    opt = dict(state.opt)
    weights = np.array([float(r.num_examples) for r in results])
    p = weights / weights.sum()
    first = f"prev.{next(iter(theta))}" not in opt
    g = {k: (d_t[k] if first else opt[f"prev.{k}"] - d_t[k]) for k in theta}
    opt.update({f"prev.{k}": v for k, v in d_t.items()})
    shares = {}
    if first:  # first server step: FedAvg
        new_theta, eta = avg, scalars["server_lr"]
    else:
        eta = scalars["server_lr"] = max(cfg.server_lr_decay * scalars["server_lr"], cfg.server_lr_min)
        V = {k: opt.get(f"V.{k}", torch.zeros_like(v)) for k, v in theta.items()}
        step = _corrected if cfg.server_variant == "corrected" else _reference
        new_theta, new_V, shares = step(cfg, results, p, avg, g, V, c, controls, eta)
        if not cfg.adaptive_head:
            new_theta = {k: (avg[k] if k.startswith("head.") else v) for k, v in new_theta.items()}
        opt.update({f"V.{k}": v for k, v in new_V.items()})
    scalars["diagnostics"] = {
        "server_ratio": tensor_norm({k: new_theta[k] - avg[k] for k in theta}) / max(tensor_norm(d_t), 1e-30),
        "c_norm": tensor_norm(c),
        "c_i_norm": float(np.mean([tensor_norm(controls[f"c{r.client}"]) for r in results])) if results else 0.0,
        "server_lr": float(eta),
        **{k: v / max(tensor_norm(d_t), 1e-30) for k, v in shares.items()},
    }
    return ServerState(state.round + 1, new_theta, opt, controls, scalars)


def _latest_directions(controls, scalars, results, directions, theta) -> dict:
    """'corrected': c_i <- d_i; c <- size-weighted mean of the latest c_j of every client seen (incremental)."""
    c = controls.get("c", {k: torch.zeros_like(v) for k, v in theta.items()})
    seen = float(scalars.get("seen_examples", 0.0))
    for r in results:
        key, n = f"c{r.client}", float(r.num_examples)
        old = controls.get(key)
        total = seen + (0.0 if old is not None else n)
        base = {k: c[k] * (seen / total) for k in theta} if old is None else c
        change = {k: directions[r.client][k] - (0 if old is None else old[k]) for k in theta}
        c = {k: base[k] + change[k] * (n / total) for k in theta}
        controls[key], seen = directions[r.client], total
    scalars["seen_examples"] = seen
    controls["c"] = c
    return c


def _reference_variates(controls, results, directions, theta, num_clients) -> dict:
    """The reference: c_i <- c_i - c + d_i; c <- c + (m/N) sum_i K_i dc_i / sum_i K_i."""
    c = controls.setdefault("c", {k: torch.zeros_like(v) for k, v in theta.items()})
    dcs, steps = [], []
    for r in results:
        key = f"c{r.client}"
        old = controls.get(key, {k: torch.zeros_like(v) for k, v in theta.items()})
        new = {k: old[k] - c[k] + directions[r.client][k] for k in theta}
        dcs.append({k: new[k] - old[k] for k in theta})
        steps.append(float(max(r.steps, 1)))
        controls[key] = new
    dc = weighted_mean(dcs, steps)
    controls["c"] = c = {k: c[k] + (len(results) / num_clients) * dc[k] for k in theta}
    return c


def _corrected(cfg, results, p, avg, g, V, c, controls, eta):
    """The repaired step; also the norms of its two parts, eta_s V and kappa (c - sum_i p_i c_i) (``*_share`` in the
    diagnostics, divided there by ||Delta_t||: each part's size against FedAvg's step)."""
    beta, on = cfg.server_momentum, float(cfg.control_variates)
    new_theta, new_V, momentum, correction = {}, {}, {}, {}
    for k in avg:
        new_V[k] = beta * V[k] + (1 - beta) * g[k]
        kappa = cfg.correction_scale * sum(float(pi) * max(r.steps, 1) * r.lrs[k] for pi, r in zip(p, results))
        c_s = sum(float(pi) * controls[f"c{r.client}"][k] for pi, r in zip(p, results))
        momentum[k], correction[k] = eta * new_V[k], on * kappa * (c[k] - c_s)
        new_theta[k] = avg[k] - momentum[k] - correction[k]
    return new_theta, new_V, {"momentum_share": tensor_norm(momentum), "correction_share": tensor_norm(correction)}


def _reference(cfg, results, p, avg, g, V, c, controls, eta):
    beta, on = cfg.server_momentum, float(cfg.control_variates)
    new_theta, new_V = {}, {}
    for k in avg:
        if cfg.server_variant == "sequential":
            w, v, ws, vs = avg[k], V[k], [], []
            for r in results:
                v = beta * v + (1 - beta) * g[k] + on * (c[k] - controls[f"c{r.client}"][k])
                w = w - eta * v
                ws.append(w)
                vs.append(v)
        else:
            vs = [beta * V[k] + (1 - beta) * g[k] + on * (c[k] - controls[f"c{r.client}"][k]) for r in results]
            ws = [avg[k] - eta * v for v in vs]
        new_theta[k] = sum(float(pk) * w for pk, w in zip(p, ws))
        new_V[k] = sum(float(pk) * v for pk, v in zip(p, vs))
    return new_theta, new_V, {}
