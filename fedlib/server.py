"""One server update: aggregate the clients' shared tensors and apply the strategy's server rule.

:class:`ServerState` is plain data (tensors and numbers) and :func:`server_update` a pure function of
it and the round's client results, so the in-process simulator and the Flower ServerApp run the same
code. Aggregation weights are ``p_i = n_i / sum_j n_j`` over the clients that reported (digest 1.5 step 3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .strategies import Strategy, server_rule, weighted_mean

__all__ = ["ServerState", "init_server", "server_update", "tensor_bytes"]

log = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]


def tensor_bytes(tensors: Tensors) -> int:
    """Bytes of a dict of tensors as exchanged (dtype-aware)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


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


def init_server(strategy: Strategy, shared: Tensors, hp: dict) -> ServerState:
    """Round-0 server state: global = the initial shared tensors; zero control variates where used."""
    # only FedPepTAO's rate changes over rounds (x0.99 per step), so only it lives in the state
    scalars = {"server_lr": hp.get("server_lr", 0.05)} if strategy.server == "fedpeptao" else {}
    state = ServerState(0, {k: v.detach().clone() for k, v in shared.items()}, scalars=scalars)
    if strategy.server == "scaffold":
        state.controls["c"] = {k: torch.zeros_like(v) for k, v in shared.items()}
    return state


def server_update(state: ServerState, results: list, strategy: Strategy, hp: dict, num_clients: int) -> ServerState:
    """Aggregate ``results`` (client results with ``.shared``, ``.num_examples``, ``.extra``) into a new state.

    With no results the state is returned unchanged except for the round counter.
    """
    if not results:
        return ServerState(state.round + 1, state.shared, state.opt, state.controls, dict(state.scalars))
    weights = [float(r.num_examples) for r in results]
    avg = weighted_mean([r.shared for r in results], weights)
    delta = {k: avg[k] - state.shared[k] for k in state.shared}
    if strategy.server == "fedpeptao":
        from .fedpeptao import fedpeptao_server_step

        return fedpeptao_server_step(state, results, avg, delta, hp, num_clients)
    new_x, new_opt = server_rule(strategy.server, state.shared, delta, state.opt, {**hp, **state.scalars})
    controls = state.controls
    if strategy.server == "scaffold":
        dc = weighted_mean([r.extra for r in results], [1.0] * len(results))  # mean over sampled clients
        frac = len(results) / num_clients
        controls = {"c": {k: v + frac * dc[k] for k, v in state.controls["c"].items()}}
    return ServerState(state.round + 1, new_x, new_opt, controls, dict(state.scalars))
