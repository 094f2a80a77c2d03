"""Federated strategies as objects, registered by name, each with typed hyper-parameters.

A :class:`Strategy` holds its configuration (a :class:`StrategyConfig` subclass: every hyper-parameter a typed,
validated field with a help text) and its hooks: on the client, :meth:`~Strategy.client_setup` (FedProx's
term, SCAFFOLD's gradient correction) and :meth:`~Strategy.client_report` (SCAFFOLD's ``dc_i``); on the
server, :meth:`~Strategy.init_server`, :meth:`~Strategy.download` and :meth:`~Strategy.server_step`. The
server step receives ``delta``, the size-weighted mean client change (Reddi et al. 2021's pseudo-gradient,
``sum_i p_i y_i - x`` with ``p_i = n_i / sum_j n_j``). Equations (all elementwise, per tensor):

- ``fedavg``  (McMahan et al. 2017):       x <- x + eta * delta                         (eta = 1)
- ``scaffold`` (Karimireddy et al. 2020, option II): local SGD on gradients corrected by ``c - c_i``;
  x <- x + eta * delta;  c <- the size-weighted mean of every seen client's c_j. ``c`` goes down and ``dc_i`` up.
- ``fedprox`` (Li et al. 2020): FedAvg server; the client adds (mu/2) ||w - x||^2 over shared tensors.
- ``shallow`` (Lester et al. 2021): FedAvg of P soft input tokens only.
- ``lora`` (Hu et al. 2022, through PEFT): FedAvg of LoRA adapters, no prompt.
- ``fedavg_selected``: FedAvg on the layers FedPepTAO selects (no adaptive optimisation): the ablation.
- ``fedpeptao`` (Che et al. 2023): :mod:`fedlib.fedpeptao` (registered there).
- ``local_only``: the no-federation reference (every layer and the head personal, nothing exchanged).

The server optimisers (``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad``) live in
:mod:`fedlib.server_optimizers`.

The registry holds what has been imported: :mod:`fedlib.config` imports every built-in strategy module. A new
strategy: subclass :class:`StrategyConfig` (``name`` defaulting to the strategy's name) and :class:`Strategy`,
decorate the latter with :func:`register`, and import the module before building configs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import ClassVar

import torch

from .configbase import Config, ConfigError, check, setting
from .server import ServerState, Tensors, tensor_norm, weighted_mean

__all__ = [
    "StrategyConfig",
    "Strategy",
    "register",
    "get_strategy",
    "strategy_config",
    "strategy_names",
    "STRATEGIES",
    "FedAvgConfig",
]

STRATEGIES: dict[str, type["Strategy"]] = {}


@dataclass
class StrategyConfig(Config):
    """The strategy section: ``name`` and the hyper-parameters of that strategy (see each strategy's fields)."""

    SECTION: ClassVar[str] = "strategy"
    name: str = setting("fedavg", "the federated strategy (one of the registered names)")

    @classmethod
    def from_dict(cls, data: dict) -> "StrategyConfig":
        """``{"name": ..., <hyper-parameters>}`` -> the named strategy's own config class."""
        if not isinstance(data, dict):
            raise ConfigError(f"strategy: expected a mapping with a 'name', got {type(data).__name__}")
        data = dict(data)
        name = data.pop("name", "fedavg")
        return strategy_config(name, **data)

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: v for k, v in super().to_dict().items() if k != "name"}}

    def validate(self) -> None:
        want = STRATEGIES[self.name].Config if self.name in STRATEGIES else None
        check(want is not None, "strategy", "name", self.name, f"one of {strategy_names()}")
        check(
            type(self) is want,
            "strategy",
            "name",
            self.name,
            f"this is a {type(self).__name__}; build it with strategy_config({self.name!r}, ...)",
        )

    def hyper_parameters(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k != "name"}


def register(cls: type["Strategy"]) -> type["Strategy"]:
    """Class decorator: make ``cls`` available by ``cls.name`` (its ``Config`` must default ``name`` to it)."""
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"a strategy named {cls.name!r} is already registered ({STRATEGIES[cls.name].__name__})")
    default = next(f.default for f in dataclasses.fields(cls.Config) if f.name == "name")
    if default != cls.name:
        raise ValueError(f"{cls.Config.__name__}.name must default to {cls.name!r}")
    STRATEGIES[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    return list(STRATEGIES)


def strategy_config(name: str, **params) -> StrategyConfig:
    """The typed config of strategy ``name`` with ``params`` set; a :class:`ConfigError` names an unknown one."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ConfigError(f"strategy.name={name!r} is invalid: one of {strategy_names()}")
    cls = STRATEGIES[name].Config
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(
            f"strategy {name!r} has no hyper-parameter(s) {unknown}; its hyper-parameters are "
            f"{sorted(fields) or 'none'}"
        )
    hints = typing.get_type_hints(cls)
    params = {
        k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple else v for k, v in params.items()
    }
    return cls(**params)


def get_strategy(cfg: StrategyConfig | str) -> "Strategy":
    """The strategy object for a config (or a name, with default hyper-parameters)."""
    if isinstance(cfg, str):
        cfg = strategy_config(cfg)
    return STRATEGIES[cfg.name](cfg)


class Strategy:
    """One federated algorithm. Class attributes: ``name``; ``Config`` (its typed hyper-parameters);
    ``prompt_mode`` ("deep", "shallow", "lora"); ``layers`` ("all" layers shared, "selected" by FedPepTAO's
    scoring, or "none": every layer personal); ``head_role`` (None: the model config's); ``doc``.
    The default hooks are FedAvg's."""

    name: ClassVar[str]
    Config: ClassVar[type[StrategyConfig]]
    prompt_mode: ClassVar[str] = "deep"
    layers: ClassVar[str] = "all"  # "all" shared, "selected" (FedPepTAO's scoring), "none" (all personal)
    head_role: ClassVar[str | None] = None  # None: model.head_role decides
    sampling: ClassVar[str] = "random"  # "random": m of N each round; "cyclic": in turn (fedlib.rounds.cyclic_clients)
    doc: ClassVar[str] = ""

    def __init__(self, cfg: StrategyConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()
        if type(self.cfg) is not self.Config:
            raise ConfigError(f"strategy {self.name!r} needs a {self.Config.__name__}, got {type(self.cfg).__name__}")
        self.privacy = None  # a fedlib.privacy.Privacy when the run is differentially private (privacy.strategy_for)

    def privacy_refusal(self) -> str | None:
        """Why this strategy (as configured) cannot run under client-level DP, or None: under DP the server step
        sees only the noised aggregate ``delta`` (``results`` is empty) and a client uploads only its clipped
        shared tensors (:mod:`fedlib.privacy`)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg!r})"

    # ---- client side ---------------------------------------------------------------------------------
    def client_train(self, cfg):
        """The :class:`fedlib.config.TrainConfig` a client trains with: the run's ``train`` section unless the strategy
        sets its own local rule (LoRA's learning rate, SCAFFOLD's local SGD)."""
        return cfg

    def client_setup(self, run, state: Tensors, download: Tensors) -> None:
        """Edit a :class:`fedlib.client.LocalRun` before local training (set ``extra_loss``/``after_backward``)."""

    def client_report(self, run, steps: int, new_state: Tensors) -> Tensors:
        """Extra tensors the client uploads beside its shared tensors (may also add to ``new_state``)."""
        return {}

    # ---- server side ---------------------------------------------------------------------------------
    def init_server(self, shared: Tensors) -> ServerState:
        """Round-0 server state: the global shared tensors are the initial ones, on the CPU (where the clients'
        results arrive and the server state is checkpointed) whatever device the model is on."""
        return ServerState(0, {k: v.detach().cpu().clone() for k, v in shared.items()})

    def download(self, state: ServerState) -> Tensors:
        """Tensors sent to the clients beside the global shared tensors (SCAFFOLD's ``c``)."""
        return {}

    def server_step(
        self, state: ServerState, results: list, avg: Tensors, delta: Tensors, num_clients: int
    ) -> ServerState:
        """The new state from the round's results; ``avg`` = sum_i p_i y_i, ``delta`` = avg - x."""
        x = {k: state.shared[k] + self.cfg.server_lr * d for k, d in delta.items()}
        return ServerState(state.round + 1, x, state.opt, state.controls, dict(state.scalars))


# ---- FedAvg and the strategies that only change the client or the prompt ----------------------------------
@dataclass
class FedAvgConfig(StrategyConfig):
    name: str = setting("fedavg", "the federated strategy")
    server_lr: float = setting(1.0, "server learning rate eta: x <- x + eta * delta (1: plain averaging)")

    def validate(self) -> None:
        super().validate()
        check(self.server_lr > 0, "strategy", "server_lr", self.server_lr, "must be > 0")


@register
class FedAvg(Strategy):
    name, Config, doc = "fedavg", FedAvgConfig, "FedAvg with deep prompts on all layers (federated P-tuning v2)"


@dataclass
class FedAvgSelectedConfig(FedAvgConfig):
    name: str = setting("fedavg_selected", "the federated strategy")


@register
class FedAvgSelected(FedAvg):
    name, Config, layers = "fedavg_selected", FedAvgSelectedConfig, "selected"
    doc = "FedAvg on FedPepTAO's selected layers, no adaptive optimisation (the ablation)"


@dataclass
class ShallowConfig(FedAvgConfig):
    name: str = setting("shallow", "the federated strategy")


@register
class Shallow(FedAvg):
    name, Config, prompt_mode = "shallow", ShallowConfig, "shallow"
    doc = "FedAvg of shallow (input-layer) prompts, Lester et al. 2021"


@dataclass
class LoRAConfig(FedAvgConfig):
    name: str = setting("lora", "the federated strategy")
    lr: float | None = setting(5e-3, "local learning rate of the LoRA adapters (None: train.lr, which suits prompts)")

    def validate(self) -> None:
        super().validate()
        check(self.lr is None or self.lr > 0, "strategy", "lr", self.lr, "must be > 0 or None")


@register
class LoRA(FedAvg):
    name, Config, prompt_mode = "lora", LoRAConfig, "lora"
    doc = "FedAvg of LoRA adapters through PEFT"

    def client_train(self, cfg):
        return cfg if self.cfg.lr is None else cfg.replace(lr=self.cfg.lr)


@dataclass
class FedProxConfig(FedAvgConfig):
    name: str = setting("fedprox", "the federated strategy")
    mu: float = setting(0.01, "weight mu of the proximal term (mu/2) ||w - x||^2 over the shared tensors")

    def validate(self) -> None:
        super().validate()
        check(self.mu >= 0, "strategy", "mu", self.mu, "must be >= 0")


@register
class FedProx(FedAvg):
    name, Config, doc = "fedprox", FedProxConfig, "FedProx, proximal term mu/2 ||w - x||^2"

    def client_setup(self, run, state: Tensors, download: Tensors) -> None:
        mu, x, params = self.cfg.mu, run.x, run.model.trainable()
        run.extra_loss = lambda m: 0.5 * mu * sum(((params[k] - x[k]) ** 2).sum() for k in x)


@dataclass
class ScaffoldConfig(FedAvgConfig):
    name: str = setting("scaffold", "the federated strategy")
    local_optimizer: typing.Literal["sgd", "adamw"] = setting(
        "sgd",
        "'sgd': SCAFFOLD as published, plain local SGD on the corrected gradient g + c - c_i, no clipping, no weight "
        "decay; 'adamw': the run's train section (AdamW, clipping) with the correction added to the gradient before "
        "them (this project's former pairing, kept to measure it)",
    )
    lr: float = setting(0.3, "'sgd': the local learning rate eta_l of the prompts and the head (tuned per task)")

    def validate(self) -> None:
        super().validate()
        check(self.lr > 0, "strategy", "lr", self.lr, "must be > 0")


@register
class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II): local SGD on ``g(y) + c - c_i``;
    ``c_i+ = c_i - c + (x - y_i) / (K * eta_l)``; the server ``x <- x + eta_g * delta`` and ``c`` the size-weighted
    mean of the clients' ``c_j`` (:meth:`server_step`).

    Each client also reports, per round, the mean over its local steps of the raw gradient norm ||g|| and of the
    correction's norm ||c - c_i|| (two scalars, ``diag/``): the server records their means and their ratio."""

    name, Config = "scaffold", ScaffoldConfig
    doc = "SCAFFOLD with client control variates and local SGD (extra communication)"

    def client_train(self, cfg):
        if self.cfg.local_optimizer == "adamw":
            return cfg
        return cfg.replace(optimizer="sgd", lr=self.cfg.lr, head_lr=self.cfg.lr, weight_decay=0.0, max_grad_norm=0.0)

    def init_server(self, shared: Tensors) -> ServerState:
        state = super().init_server(shared)
        state.controls["c"] = {k: torch.zeros_like(v) for k, v in state.shared.items()}
        return state

    def download(self, state: ServerState) -> Tensors:
        return state.controls["c"]

    def privacy_refusal(self) -> str | None:
        return "each client uploads dc_i beside its update and the server keeps c; the noise on the mean covers neither"

    def client_setup(self, run, state: Tensors, download: Tensors) -> None:
        device = next(iter(run.x.values())).device
        c = {k: v.to(device) for k, v in download.items()}
        c_i = {k: state.get(f"control/{k}", torch.zeros_like(v)).to(device) for k, v in c.items()}
        correction = {k: c[k] - c_i[k] for k in c}  # fixed for the round
        params, norms = run.model.trainable(), {"grad": 0.0, "steps": 0, "correction": tensor_norm(correction)}

        def after_backward(m):
            grads = {k: params[k].grad for k in c if params[k].grad is not None}
            norms["grad"] += tensor_norm(grads)
            norms["steps"] += 1
            for k, g in grads.items():
                g.add_(correction[k])

        run.after_backward, run.controls, run.diagnostics = after_backward, (c, c_i), norms

    def client_report(self, run, steps: int, new_state: Tensors) -> Tensors:
        if steps == 0:
            return {}
        (c, c_i), params, lrs = run.controls, run.model.trainable(), run.lrs()
        extra = {}
        for k in c:
            new_c = c_i[k] - c[k] + (run.x[k] - params[k].detach()) * (1.0 / (steps * lrs[k]))
            extra[k] = (new_c - c_i[k]).cpu()
            new_state[f"control/{k}"] = new_c.cpu()
        norms = run.diagnostics
        grad_norm = norms["grad"] / max(norms["steps"], 1)  # the mean over the local steps
        for what, value in (("grad", grad_norm), ("correction", norms["correction"])):
            extra[f"diag/{what}_norm"] = torch.tensor([value], dtype=torch.float64)
        return extra

    def server_step(self, state, results, avg, delta, num_clients):
        """x <- x + eta_g delta; c <- sum_j n_j c_j / sum_j n_j over every client seen so far, kept incrementally from
        the uploaded dc_i (``scalars["seen"]``: each seen client's n_j). The published rule, c += (|S|/N) mean_S dc_i,
        is the same mean with uniform weights; here the server's average weights clients by size (p_i = n_i / sum n),
        and c must weigh them alike or the corrected steps stop at another point than the weighted optimum (on the
        quadratic of ``tests/test_strategies.py``: a gap of 1.3 instead of 0)."""
        new = super().server_step(state, results, avg, delta, num_clients)
        c, seen = state.controls["c"], dict(state.scalars.get("seen", {}))
        old_total = sum(seen.values())
        total = old_total + sum(float(r.num_examples) for r in results if str(r.client) not in seen)
        seen.update({str(r.client): float(r.num_examples) for r in results})
        if results:
            moved = weighted_mean(
                [{k: r.extra[k] for k in c} for r in results], [float(r.num_examples) for r in results]
            )
            share = sum(float(r.num_examples) for r in results) / total
            c = {k: v * (old_total / total) + share * moved[k] for k, v in c.items()}
        new.controls, new.scalars["seen"] = {"c": c}, seen
        grad = [float(r.extra["diag/grad_norm"]) for r in results if "diag/grad_norm" in r.extra]
        corr = [float(r.extra["diag/correction_norm"]) for r in results if "diag/correction_norm" in r.extra]
        if grad:
            g, k = sum(grad) / len(grad), sum(corr) / len(corr)
            new.scalars["diagnostics"] = {"grad_norm": g, "correction_norm": k, "correction_ratio": k / max(g, 1e-30)}
        return new


@dataclass
class LocalOnlyConfig(StrategyConfig):
    name: str = setting("local_only", "the federated strategy")


@register
class LocalOnly(Strategy):
    """The no-federation reference: every prompt layer and the head personal, nothing exchanged, no server step.
    Each client trains alone with a federated client's mean local budget: the clients take part in turn
    (``sampling = "cyclic"``), so over R rounds each trains floor(R m / N) or ceil(R m / N) times, where random sampling
    would leave some untrained (their random initial prompts and head then scored as if they were the method's)."""

    name, Config, layers, head_role, sampling = "local_only", LocalOnlyConfig, "none", "personal", "cyclic"
    doc = "reference: each client tunes its own prompts and head alone; nothing is exchanged"

    def privacy_refusal(self) -> str | None:
        return "nothing is exchanged, so there is nothing to noise (run it with privacy.mode 'off' as the reference)"

    def server_step(self, state, results, avg, delta, num_clients):
        return ServerState(state.round + 1, state.shared, state.opt, state.controls, dict(state.scalars))
