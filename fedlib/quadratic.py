"""A federated problem whose answer is known: heterogeneous quadratics trained with local AdamW or SGD.

Client i holds f_i(x) = 1/2 sum_k a_ik (x_k - b_ik)^2 (curvatures ``a`` log-uniform in [0.2, 5], optima ``b``
shifted per client by N(0, ``spread``^2): label skew's analogue, a larger spread for a smaller Dirichlet alpha) and
n_i examples; the global objective is F = sum_i w_i f_i with w_i = n_i / sum_j n_j, minimised at
x*_k = sum_i w_i a_ik b_ik / sum_i w_i a_ik. Each round m of N clients are sampled, each takes K AdamW steps (state
kept across rounds, as on the device) on noisy gradients, and the server step is the real one:
:func:`fedlib.server.server_update` with any registered strategy. It is how the FedPepTAO server step was checked
before it met a language model (``tests/test_fedpeptao.py``, notebook 04).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from .client import ClientResult
from .server import server_update

__all__ = ["Quadratic", "run_quadratic", "gap_curves", "plot_gap_curves"]


@dataclass
class Quadratic:
    """N heterogeneous quadratic clients in d dimensions, drawn from ``seed``."""

    seed: int
    num_clients: int = 10
    dim: int = 10
    spread: float = 2.0  # standard deviation of the per-client shift of the optima (heterogeneity)

    def __post_init__(self):
        g = np.random.default_rng(self.seed)
        n, d = self.num_clients, self.dim
        self.a = np.exp(g.uniform(np.log(0.2), np.log(5.0), (n, d)))  # [N, d]
        self.b = g.normal(0.0, 1.0, (n, d)) + g.normal(0.0, self.spread, (n, 1))  # [N, d]
        self.n = g.integers(20, 200, n).astype(float)  # [N]
        w = (self.n / self.n.sum())[:, None]
        self.optimum = (w * self.a * self.b).sum(0) / (w * self.a).sum(0)  # [d]
        self.w = w

    def loss(self, x: np.ndarray) -> float:
        """F(x) - F(x*): the global objective's gap to its optimum."""
        f = lambda z: float((self.w * 0.5 * self.a * (z - self.b) ** 2).sum())  # noqa: E731
        return f(x) - f(self.optimum)


class _Point:
    """A client's "model" on the quadratic: one trainable tensor ``x`` [d], its values and gradient numpy arrays shared
    with torch (what the strategies' hooks see and edit), and ``opt`` with the optimiser's ``param_groups`` (what
    :meth:`fedlib.client.LocalRun.lrs` reads). The update itself is numpy: a torch optimiser's per-step overhead
    would be most of the cost on tensors of 10 numbers."""

    def __init__(self, dim: int, lr: float):
        self.values, self.grad = np.zeros(dim), np.zeros(dim)
        self.x = torch.nn.Parameter(torch.from_numpy(self.values))
        self.x.grad = torch.from_numpy(self.grad)
        self.opt = SimpleNamespace(param_groups=[{"params": [self.x], "lr": lr}])
        self.moments, self.count = np.zeros((2, dim)), 0  # AdamW's state, kept across the client's rounds

    def trainable(self) -> dict:
        return {"x": self.x}

    def step(self, optimizer: str, lr: float) -> None:
        """One local step on ``self.grad``: SGD, or AdamW (betas 0.9/0.999, eps 1e-8, no weight decay)."""
        if optimizer == "sgd":
            self.values -= lr * self.grad
            return
        self.count += 1
        self.moments[0] = 0.9 * self.moments[0] + 0.1 * self.grad
        self.moments[1] = 0.999 * self.moments[1] + 0.001 * self.grad**2
        m_hat, v_hat = self.moments[0] / (1 - 0.9**self.count), self.moments[1] / (1 - 0.999**self.count)
        self.values -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def run_quadratic(
    problem: Quadratic,
    strategy,
    rounds: int = 40,
    clients_per_round: int = 3,
    steps: int = 7,
    lr: float = 0.05,
    noise: float = 0.3,
    client_weights: list | None = None,
    optimizer: str = "adamw",
) -> dict:
    """Federated training on ``problem`` with ``strategy``'s client hooks and server step. Local steps: AdamW
    (Loshchilov & Hutter, betas 0.9/0.999, eps 1e-8, no weight decay, its state kept per client across rounds) or
    plain SGD (``optimizer="sgd"``, SCAFFOLD's and FedAvg's local rule), on noisy gradients, at ``lr``; the strategy's
    :meth:`~fedlib.strategies.Strategy.client_setup` / ``client_report`` run around them as on the device (FedProx's
    term, SCAFFOLD's correction and control variates). ``client_weights`` biases the sampling (e.g. one client taking
    part again and again). Sampling and noise depend on ``problem.seed`` only, so strategies are compared on the same
    draws. Returns ``gap`` (F - F* per round), ``c_i_norm`` (largest server-held ||c_i|| per round)."""
    from .client import LocalRun

    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer={optimizer!r}: 'adamw' or 'sgd'")
    g = np.random.default_rng(problem.seed + 10_000)
    n, d = problem.num_clients, problem.dim
    probs = None if client_weights is None else np.asarray(client_weights, float) / np.sum(client_weights)
    points = [_Point(d, lr) for _ in range(n)]
    states: list[dict] = [{} for _ in range(n)]
    state = strategy.init_server({"x": torch.zeros(d, dtype=torch.float64)})
    gaps, c_norms = [], []
    for _ in range(rounds):
        sampled = g.choice(n, clients_per_round, replace=False, p=probs)
        download = strategy.download(state)
        results = []
        for i in sampled:
            point = points[i]
            point.values[:] = state.shared["x"].numpy()
            run = LocalRun(point, point.opt, None, {"x": state.shared["x"].clone()})
            strategy.client_setup(run, states[i], download)
            for _ in range(steps):
                point.grad[:] = problem.a[i] * (point.values - problem.b[i]) + noise * g.normal(0.0, 1.0, d)
                if run.extra_loss is not None:  # a strategy's term (FedProx's) through autograd
                    point.grad += torch.autograd.grad(run.extra_loss(point), point.x)[0].numpy()
                if run.after_backward is not None:  # edits point.x.grad, i.e. point.grad, in place
                    run.after_backward(point)
                point.step(optimizer, lr)
            extra = strategy.client_report(run, steps, states[i])
            y = {"x": torch.from_numpy(point.values.copy())}
            results.append(ClientResult(int(i), int(problem.n[i]), steps, 0.0, y, extra, lrs={"x": lr}))
        state = server_update(state, results, strategy, num_clients=n)
        gaps.append(problem.loss(state.shared["x"].numpy()))
        norms = [float(v["x"].norm()) for key, v in state.controls.items() if key != "c"]
        c_norms.append(max(norms, default=0.0))
    return {"gap": np.array(gaps), "c_i_norm": np.array(c_norms)}


def gap_curves(strategies: dict, seeds: int = 20, spread: float = 2.0, **kwargs) -> dict[str, np.ndarray]:
    """``{label: gaps [seeds, rounds]}``: each strategy object of ``strategies`` on the same ``seeds`` problems
    (``Quadratic(seed, spread=spread)``); ``kwargs`` go to :func:`run_quadratic` (rounds, steps, lr ...)."""
    return {
        name: np.stack([run_quadratic(Quadratic(s, spread=spread), st, **kwargs)["gap"] for s in range(seeds)])
        for name, st in strategies.items()
    }


def plot_gap_curves(curves: dict[str, np.ndarray], ax=None, title: str | None = None):
    """Median gap per round with the interquartile band over seeds, log scale."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.5))
    for name, gaps in curves.items():
        r = np.arange(1, gaps.shape[1] + 1)
        line = ax.plot(r, np.median(gaps, 0), label=name)[0]
        ax.fill_between(r, *np.percentile(gaps, [25, 75], axis=0), color=line.get_color(), alpha=0.2)
    ax.set(yscale="log", xlabel="round", ylabel="F(theta) - F(x*): median, IQR band", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
