"""Federated strategies as update rules: what the client does differently, what the server does.

Each :class:`Strategy` names its client rule, its prompt mode and its server rule. Server rules are
pure functions over dicts of tensors (``name -> tensor``): ``x`` is the global shared state, ``delta``
the weighted mean of client changes (Reddi et al. 2021's pseudo-gradient, ``sum_i p_i y_i - x`` with
``p_i = n_i / sum_j n_j``), ``opt`` the server optimiser state. Equations (all elementwise):

- ``fedavg``  (McMahan et al. 2017):       x <- x + eta * delta                         (eta = 1)
- ``fedavgm`` (Hsu et al. 2019):           m <- beta m + delta;  x <- x + eta * m
- ``fedadam`` (Reddi et al. 2021, Alg. 2): m <- b1 m + (1-b1) delta;  v <- b2 v + (1-b2) delta^2;
                                           x <- x + eta * m / (sqrt(v) + tau)
- ``fedyogi``:                             as fedadam with v <- v - (1-b2) delta^2 sign(v - delta^2)
- ``fedadagrad``:                          m <- delta (b1 = 0);  v <- v + delta^2;  x <- x + eta m / (sqrt(v) + tau)
- ``scaffold`` (Karimireddy et al. 2020, option II): client gradients corrected by ``c - c_i``;
  x <- x + eta * delta;  c <- c + (|S|/N) * mean_i(dc_i). ``c`` goes down and ``dc_i`` up (counted).
- ``fedprox`` (Li et al. 2020): FedAvg server; the client adds (mu/2) ||w - x||^2 over shared tensors.
- ``shallow`` (Lester et al. 2021): FedAvg of P soft input tokens only.
- ``lora`` (Hu et al. 2022, through PEFT): FedAvg of LoRA adapters, no prompt.
- ``fedavg_selected``: FedAvg on the layers FedPepTAO selects (no adaptive optimisation): the ablation.
- ``fedpeptao`` (Che et al. 2023): see :mod:`fedlib.fedpeptao`.

Defaults for eta, beta, tau follow Flower's strategies (``flwr.serverapp.strategy``) so that Flower users
recognise them: FedAvgM eta 1, beta 0.9; FedAdam eta 0.1, tau 1e-9; FedYogi eta 0.01, tau 1e-3;
FedAdagrad eta 0.1, tau 1e-9; b1 0.9, b2 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Strategy", "STRATEGIES", "get_strategy", "weighted_mean", "server_rule"]

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Strategy:
    """A federated algorithm: ``client`` rule ("plain", "prox", "scaffold"), ``prompt_mode``, ``server`` rule,
    ``layers`` ("all" layers shared, or "selected" by FedPepTAO's scoring), default hyper-parameters."""

    name: str
    server: str
    client: str = "plain"
    prompt_mode: str = "deep"
    layers: str = "all"
    defaults: dict = field(default_factory=dict)
    doc: str = ""


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy("fedavg", "avg", doc="FedAvg with deep prompts on all layers (federated P-tuning v2)"),
        Strategy(
            "fedprox", "avg", client="prox", defaults={"prox_mu": 0.01}, doc="FedProx, proximal term mu/2 ||w - x||^2"
        ),
        Strategy(
            "scaffold", "scaffold", client="scaffold", doc="SCAFFOLD with client control variates (extra communication)"
        ),
        Strategy(
            "fedavgm", "avgm", defaults={"server_lr": 1.0, "server_momentum": 0.9}, doc="FedAvg with server momentum"
        ),
        Strategy("fedadam", "adam", defaults={"server_lr": 0.1, "server_tau": 1e-9}, doc="FedAdam (Reddi et al. 2021)"),
        Strategy(
            "fedyogi", "yogi", defaults={"server_lr": 0.01, "server_tau": 1e-3}, doc="FedYogi (Reddi et al. 2021)"
        ),
        Strategy(
            "fedadagrad",
            "adagrad",
            defaults={"server_lr": 0.1, "server_tau": 1e-9},
            doc="FedAdagrad (Reddi et al. 2021)",
        ),
        Strategy(
            "shallow", "avg", prompt_mode="shallow", doc="FedAvg of shallow (input-layer) prompts, Lester et al. 2021"
        ),
        Strategy("lora", "avg", prompt_mode="lora", defaults={"lr": 5e-3}, doc="FedAvg of LoRA adapters through PEFT"),
        Strategy(
            "fedavg_selected",
            "avg",
            layers="selected",
            doc="FedAvg on FedPepTAO's selected layers, no adaptive optimisation",
        ),
        Strategy(
            "fedpeptao",
            "fedpeptao",
            layers="selected",
            defaults={"server_lr": 0.05, "server_momentum": 0.9},
            doc="FedPepTAO: selected layers shared, server momentum with server-held control variates",
        ),
    ]
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; valid strategies are {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def weighted_mean(states: list[Tensors], weights: list[float]) -> Tensors:
    """``sum_i w_i s_i / sum_i w_i`` per tensor name (float64 accumulation, cast back)."""
    total = float(sum(weights))
    out = {}
    for name in states[0]:
        acc = sum(s[name].double() * (w / total) for s, w in zip(states, weights))
        out[name] = acc.to(states[0][name].dtype)
    return out


def server_rule(rule: str, x: Tensors, delta: Tensors, opt: Tensors, hp: dict) -> tuple[Tensors, Tensors]:
    """One server step of ``rule`` on global state ``x`` given pseudo-gradient ``delta``.

    Returns ``(new_x, new_opt)``; inputs are not modified. ``opt`` holds ``m.<name>``/``v.<name>``.
    """
    eta = hp.get("server_lr", 1.0)
    new_x, new_opt = {}, dict(opt)
    for name, d in delta.items():
        if rule in ("avg", "scaffold"):
            step = d
        elif rule == "avgm":
            m = hp.get("server_momentum", 0.9) * opt.get(f"m.{name}", torch.zeros_like(d)) + d
            new_opt[f"m.{name}"] = m
            step = m
        elif rule in ("adam", "yogi", "adagrad"):
            b1, b2, tau = hp.get("server_beta1", 0.9), hp.get("server_beta2", 0.99), hp.get("server_tau", 1e-9)
            m0 = opt.get(f"m.{name}", torch.zeros_like(d))
            v0 = opt.get(f"v.{name}", torch.zeros_like(d))
            m = d.clone() if rule == "adagrad" else b1 * m0 + (1 - b1) * d
            d2 = d * d
            if rule == "adam":
                v = b2 * v0 + (1 - b2) * d2
            elif rule == "yogi":
                v = v0 - (1 - b2) * d2 * torch.sign(v0 - d2)
            else:
                v = v0 + d2
            new_opt[f"m.{name}"], new_opt[f"v.{name}"] = m, v
            step = m / (v.sqrt() + tau)
        else:
            raise KeyError(f"unknown server rule {rule!r}")
        new_x[name] = x[name] + eta * step
    return new_x, new_opt
