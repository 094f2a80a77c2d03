"""Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization"): FedAvg whose server applies an
optimiser to ``delta``, the size-weighted mean client change. Per tensor, elementwise:

- ``fedavgm`` (Hsu et al. 2019):   m <- beta m + delta;  x <- x + eta * m
- ``fedadam`` (Alg. 2):            m <- b1 m + (1-b1) delta;  v <- b2 v + (1-b2) delta^2;
                                   x <- x + eta_t m / (sqrt(v) + tau),
                                   eta_t = eta sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)), t = 1, 2, ... the round
                                   (Flower's bias-corrected step size, its exponent included)
- ``fedyogi``:                     as fedadam with v <- v - (1-b2) delta^2 sign(v - delta^2)
- ``fedadagrad``:                  m <- delta (b1 = 0);  v <- v + delta^2;  x <- x + eta m / (sqrt(v) + tau)

Each matches Flower's strategy of the same name (``flwr.serverapp.strategy``) on the same inputs (tested in
``tests/test_strategies.py``). Defaults follow Flower's: FedAvgM eta 1 (beta 0.9 here, Flower's default 0);
FedAdam eta 0.1; FedYogi eta 0.01; FedAdagrad eta 0.1; tau 1e-3 and b1 0.9, b2 0.99 for all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .configbase import check, setting
from .server import ServerState, Tensors
from .strategies import FedAvg, FedAvgConfig, register

__all__ = ["ServerOptimizer", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad"]


class ServerOptimizer(FedAvg):
    """FedAvg whose server applies an optimiser to ``delta``: :meth:`direction` gives the step and the new buffers."""

    def direction(self, name: str, d: torch.Tensor, opt: Tensors) -> tuple[torch.Tensor, Tensors]:
        raise NotImplementedError

    def rate(self, state: ServerState) -> float:
        """The step size of this server step (``state.round`` steps taken before it)."""
        return self.cfg.server_lr

    def server_step(self, state, results, avg, delta, num_clients):
        x, opt, eta = {}, dict(state.opt), self.rate(state)
        for name, d in delta.items():
            step, buffers = self.direction(name, d, state.opt)
            opt.update(buffers)
            x[name] = state.shared[name] + eta * step
        return ServerState(state.round + 1, x, opt, state.controls, dict(state.scalars))


@dataclass
class FedAvgMConfig(FedAvgConfig):
    name: str = setting("fedavgm", "the federated strategy")
    server_momentum: float = setting(0.9, "server momentum beta: m <- beta m + delta")

    def validate(self) -> None:
        super().validate()
        check(0 <= self.server_momentum < 1, "strategy", "server_momentum", self.server_momentum, "must be in [0, 1)")


@register
class FedAvgM(ServerOptimizer):
    name, Config, doc = "fedavgm", FedAvgMConfig, "FedAvg with server momentum"

    def direction(self, name, d, opt):
        m = self.cfg.server_momentum * opt.get(f"m.{name}", torch.zeros_like(d)) + d
        return m, {f"m.{name}": m}


@dataclass
class FedAdamConfig(FedAvgConfig):
    name: str = setting("fedadam", "the federated strategy")
    server_lr: float = setting(0.1, "server learning rate eta")
    server_beta1: float = setting(0.9, "first-moment decay b1")
    server_beta2: float = setting(0.99, "second-moment decay b2")
    server_tau: float = setting(1e-3, "adaptivity tau: x <- x + eta m / (sqrt(v) + tau)")

    def validate(self) -> None:
        super().validate()
        for f in ("server_beta1", "server_beta2"):
            check(0 <= getattr(self, f) < 1, "strategy", f, getattr(self, f), "must be in [0, 1)")
        check(self.server_tau > 0, "strategy", "server_tau", self.server_tau, "must be > 0")


@register
class FedAdam(ServerOptimizer):
    name, Config, doc = "fedadam", FedAdamConfig, "FedAdam (Reddi et al. 2021)"
    bias_corrected = True

    def rate(self, state):
        if not self.bias_corrected:
            return self.cfg.server_lr
        t = state.round + 2  # Flower: server_round (1-based) + 1
        return self.cfg.server_lr * (1 - self.cfg.server_beta2**t) ** 0.5 / (1 - self.cfg.server_beta1**t)

    def second_moment(self, v0: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return self.cfg.server_beta2 * v0 + (1 - self.cfg.server_beta2) * d2

    def first_moment(self, m0: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.cfg.server_beta1 * m0 + (1 - self.cfg.server_beta1) * d

    def direction(self, name, d, opt):
        m = self.first_moment(opt.get(f"m.{name}", torch.zeros_like(d)), d)
        v = self.second_moment(opt.get(f"v.{name}", torch.zeros_like(d)), d * d)
        return m / (v.sqrt() + self.cfg.server_tau), {f"m.{name}": m, f"v.{name}": v}


@dataclass
class FedYogiConfig(FedAdamConfig):
    name: str = setting("fedyogi", "the federated strategy")
    server_lr: float = setting(0.01, "server learning rate eta")
    server_tau: float = setting(1e-3, "adaptivity tau")


@register
class FedYogi(FedAdam):
    name, Config, doc = "fedyogi", FedYogiConfig, "FedYogi (Reddi et al. 2021)"
    bias_corrected = False  # Flower's FedYogi takes eta as it is

    def second_moment(self, v0, d2):
        return v0 - (1 - self.cfg.server_beta2) * d2 * torch.sign(v0 - d2)


@dataclass
class FedAdagradConfig(FedAvgConfig):
    name: str = setting("fedadagrad", "the federated strategy")
    server_lr: float = setting(0.1, "server learning rate eta")
    server_tau: float = setting(1e-3, "adaptivity tau: x <- x + eta delta / (sqrt(v) + tau), v <- v + delta^2")

    def validate(self) -> None:
        super().validate()
        check(self.server_tau > 0, "strategy", "server_tau", self.server_tau, "must be > 0")


@register
class FedAdagrad(ServerOptimizer):
    name, Config, doc = "fedadagrad", FedAdagradConfig, "FedAdagrad (Reddi et al. 2021)"

    def direction(self, name, d, opt):
        v = opt.get(f"v.{name}", torch.zeros_like(d)) + d * d
        return d.clone() / (v.sqrt() + self.cfg.server_tau), {f"m.{name}": d.clone(), f"v.{name}": v}
