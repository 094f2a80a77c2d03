"""One server update: aggregate the clients' shared tensors and delegate the step to the strategy.

:class:`ServerState` is plain data (tensors and numbers) and :func:`server_update` a pure function of
it and the round's client results, so the in-process simulator and the Flower ServerApp run the same
code. Aggregation weights are ``p_i = n_i / sum_j n_j`` over the clients that reported
(``docs/method.md``, "The round"); what the server does with the average is the strategy's
(:meth:`fedlib.strategies.Strategy.server_step`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

__all__ = ["ServerState", "server_update", "tensor_bytes", "tensor_norm", "weighted_mean"]

log = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]


def tensor_bytes(tensors: Tensors) -> int:
    """Bytes of a dict of tensors as exchanged (dtype-aware)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def tensor_norm(tensors: Tensors) -> float:
    """The L2 norm of a dict of tensors taken as one vector (float64 accumulation)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


@dataclass
class ServerState:
    """Global shared tensors ``shared``, server optimiser buffers ``opt``, control variates ``controls``
    (``"c"``: global; ``"c<k>"``: client k's, held by the server for FedPepTAO), numbers in ``scalars``."""

    round: int
    shared: Tensors
    opt: Tensors = field(default_factory=dict)
    controls: dict[str, Tensors] = field(default_factory=dict)
    scalars: dict = field(default_factory=dict)

    def flat(self) -> Tensors:
        """All tensors under prefixed names (for safetensors)."""
        out = {f"shared/{k}": v for k, v in self.shared.items()}
        out.update({f"opt/{k}": v for k, v in self.opt.items()})
        for key, group in self.controls.items():
            out.update({f"control/{key}/{k}": v for k, v in group.items()})
        return out

    @classmethod
    def from_flat(cls, tensors: Tensors, round: int, scalars: dict) -> "ServerState":
        state = cls(round, {}, {}, {}, dict(scalars))
        for name, value in tensors.items():
            kind, rest = name.split("/", 1)
            if kind == "shared":
                state.shared[rest] = value
            elif kind == "opt":
                state.opt[rest] = value
            else:
                key, rest = rest.split("/", 1)
                state.controls.setdefault(key, {})[rest] = value
        return state


def weighted_mean(states: list[Tensors], weights: list[float]) -> Tensors:
    """``sum_i w_i s_i / sum_i w_i`` per tensor name (float64 accumulation, cast back)."""
    total = float(sum(weights))
    out = {}
    for name in states[0]:
        acc = sum(s[name].double() * (w / total) for s, w in zip(states, weights))
        out[name] = acc.to(states[0][name].dtype)
    return out


def server_update(state: ServerState, results: list, strategy, num_clients: int) -> ServerState:
    """Aggregate ``results`` (client results with ``.shared``, ``.num_examples``) and apply ``strategy``'s step.

    With no results the state is returned unchanged except for the round counter. Under client-level DP
    (``strategy.privacy``) the step sees only the aggregate :meth:`fedlib.privacy.Privacy.aggregate` (central: the
    clipped uploads' noised sum over q N, also when no client reported) and no per-client results.
    """
    dp = strategy.privacy
    if dp is not None and (results or dp.cfg.mode == "central"):
        delta, norms = dp.aggregate(state.shared, results, state.round)
        avg = {k: state.shared[k] + d for k, d in delta.items()}
        new = strategy.server_step(state, [], avg, delta, num_clients)
        new.scalars["diagnostics"] = {**new.scalars.get("diagnostics", {}), **norms}  # the round's signal and noise
        return new
    if not results:
        scalars = {k: v for k, v in state.scalars.items() if k != "diagnostics"}  # no step, nothing to diagnose
        return ServerState(state.round + 1, state.shared, state.opt, state.controls, scalars)
    avg = weighted_mean([r.shared for r in results], [float(r.num_examples) for r in results])
    delta = {k: avg[k] - state.shared[k] for k in state.shared}
    return strategy.server_step(state, results, avg, delta, num_clients)
