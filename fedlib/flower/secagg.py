"""Secure aggregation (SecAgg+, Bell et al. 2020) of a round's uploads on Flower, through Flower 1.42's own protocol.

Flower 1.42 offers SecAgg+ only on its legacy workflow: the server side, ``flwr.server.workflow.SecAggPlusWorkflow``,
runs the protocol's four stages (set-up, key sharing, masked vectors, unmasking) inside a ``LegacyContext`` that
holds a legacy ``Strategy`` and asks it for the round's ``FitIns``; the client side, ``secaggplus_mod``, answers the
stages and masks what the ClientApp returns as a legacy ``FitRes``. This module is the adapter between that and
``fedlib``'s own round: :func:`secure_mean` runs one round of the workflow with :class:`_RoundStrategy` (which hands
it this round's sampled nodes and keeps what it aggregates) and returns the size-weighted mean of the clients' shared
tensors, ``sum_i n_i y_i / sum_i n_i``; the server never sees a single ``y_i``. :func:`secagg_train_mod` routes a
ClientApp's SecAgg+ messages through ``secaggplus_mod`` and lets every other message pass, so the same ClientApp
serves plain and secure rounds.

What a client sends is its update ``u_i = y_i - theta`` (the server adds ``theta`` back to the mean): updates are
far smaller than the tensors themselves, so they sit well inside SecAgg+'s range. Each ``u_i`` is scaled by
``n_i / max_weight`` (``max_weight``: the largest size among the round's sampled clients, so the scales are at most
1 and their sum at least 1), checked against ``[-clipping_range, clipping_range]`` (a client whose scaled update
leaves it raises, naming the value, instead of being clipped silently by the quantiser) and quantised to
``quantization_range`` levels (stochastic rounding) before masking; the mean is exact up to that quantisation: at
most ``m * step / sum_i (n_i / max_weight)`` per coordinate for m clients, ``step = 2 clipping_range /
quantization_range`` (3.8e-6 with Flower's defaults; 4e-6 measured at m = 5, ``benchmarks/secagg_cost.py``). Only
strategies whose server step needs nothing but the mean run under it
(:meth:`fedlib.strategies.Strategy.privacy_refusal` is None): FedAvg, FedProx, the server optimisers,
``fedavg_selected``, FedPepTAO without control variates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server.strategy import Strategy as LegacyStrategy

__all__ = ["secure_mean", "secure_round", "check_secure", "secagg_train_mod", "SecureRound", "fit_request", "fit_reply"]

FITINS_CONFIG = "fitins.config"  # where a legacy train message carries its config (flwr.compat)


def secagg_train_mod(msg: Message, context: Context, call_next):
    """Client mod for the train handler: SecAgg+ stages go through Flower's ``secaggplus_mod``; other messages pass."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def fit_request(msg: Message) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """A secure round's train message as ``(config, global shared tensors)``, or None for a plain one."""
    if FITINS_CONFIG not in msg.content.config_records:
        return None
    conf = dict(msg.content.config_records[FITINS_CONFIG])
    names = json.loads(conf["names"])
    arrays = parameters_to_ndarrays(compat.recorddict_to_fitins(msg.content, keep_input=True).parameters)
    return conf, {n: torch.from_numpy(np.array(a)) for n, a in zip(names, arrays, strict=True)}


def fit_reply(msg: Message, conf: dict, result, shared: dict[str, torch.Tensor]) -> Message:
    """The legacy ``FitRes`` reply (``secaggplus_mod`` masks its parameters): the update ``y_i - theta``
    (``shared`` is ``theta``) in the order of ``conf["names"]``, ``n_i`` as the weight, and the client's numbers as
    metrics. Raises ValueError when the update scaled by ``n_i / max_weight`` leaves the clipping range."""
    names = json.loads(conf["names"])
    update = {n: (result.shared[n].detach().cpu().double() - shared[n].double()).numpy() for n in names}
    why = range_error(conf, result, update)
    if why:
        raise ValueError(why)
    fitres = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters([update[n] for n in names]),
        num_examples=int(result.num_examples),
        metrics={
            "partition-id": int(conf["partition-id"]),
            "steps": int(result.steps),
            "loss": float(result.loss),
            "seconds": float(result.seconds),
            "lrs": json.dumps(result.lrs),
        },
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def range_error(conf: dict, result, update: dict) -> str | None:
    """Why ``update`` (name -> ``y_i - theta``, arrays or tensors) cannot go through SecAgg+ unclipped: scaled by
    ``n_i / max_weight`` it leaves ``+-clipping_range`` (or is not finite); None when it fits. The node checks it
    before keeping the client's new state, and :func:`fit_reply` before replying."""
    scale = int(result.num_examples) / float(conf["max-weight"])
    peak = max((float(np.abs(np.asarray(u)).max()) for u in update.values() if np.size(u)), default=0.0) * scale
    if peak <= float(conf["clipping-range"]):
        return None
    return (
        f"secure aggregation: client {conf['partition-id']}'s update reaches {peak:.4g} after scaling by "
        f"n_i / max_weight = {scale:.3g}, outside SecAgg+'s clipping range +-{conf['clipping-range']} "
        "(it would be clipped silently): the client diverged, or the range is too small"
    )


class _RoundStrategy(LegacyStrategy):
    """The legacy strategy the SecAgg+ workflow consults for one round: it samples nothing itself (``fedlib`` did),
    hands over each sampled node's ``FitIns`` and keeps the aggregate and the clients' metrics."""

    def __init__(self, fitins: dict[int, FitIns], grid) -> None:
        self.fitins, self.grid = fitins, grid
        self.results: list = []

    def configure_fit(self, server_round, parameters, client_manager):
        from flwr.server.compat.grid_client_proxy import GridClientProxy

        return [(GridClientProxy(nid, self.grid, 1), ins) for nid, ins in self.fitins.items()]

    def aggregate_fit(self, server_round, results, failures):
        self.results = results  # the failures: the sampled nodes missing from them (secure_round)
        return (results[0][1].parameters if results else None), {}

    def initialize_parameters(self, client_manager):  # pragma: no cover - unused by the workflow
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):  # pragma: no cover
        return []

    def aggregate_evaluate(self, server_round, results, failures):  # pragma: no cover
        return None, {}

    def evaluate(self, server_round, parameters):  # pragma: no cover
        return None


@dataclass
class SecureRound:
    """One secure round's outcome: the weighted mean of the shared tensors (None if the protocol halted), and per
    reporting client its example count and metrics."""

    mean: dict[str, torch.Tensor] | None
    clients: list[tuple[int, dict]] = field(default_factory=list)


def secure_mean(
    grid,
    round_: int,
    shared: dict[str, torch.Tensor],
    configs: dict[int, dict],
    max_weight: float,
    timeout: float | None = None,
    clipping_range: float = 8.0,
    quantization_range: int = 2**22,
) -> SecureRound:
    """Run Flower's SecAgg+ workflow for round ``round_`` (0-based) on the nodes of ``configs`` (node id -> the
    train config fields, all scalars): each trains from ``shared`` and the workflow returns only the mean of the
    updates, to which ``shared`` is added here (float64, then each tensor's dtype)."""
    from flwr.server import ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    names = list(shared)
    params = ndarrays_to_parameters([shared[n].detach().cpu().numpy() for n in names])
    extra = {"names": json.dumps(names), "max-weight": float(max_weight), "clipping-range": float(clipping_range)}
    fitins = {nid: FitIns(params, {**conf, **extra}) for nid, conf in configs.items()}
    strategy = _RoundStrategy(fitins, grid)
    context = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=round_ + 1),
        strategy=strategy,
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: round_ + 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(params, keep_input=True)
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every sampled client holds a share of every other's keys
        reconstruction_threshold=0.5,
        max_weight=float(max_weight),
        clipping_range=clipping_range,
        quantization_range=quantization_range,
        timeout=timeout,
    )
    workflow(grid, context)
    if not strategy.results:
        return SecureRound(None)
    arrays = parameters_to_ndarrays(strategy.results[0][1].parameters)
    mean = {
        n: (shared[n].detach().cpu().double() + torch.from_numpy(np.array(a, dtype=np.float64))).to(shared[n].dtype)
        for n, a in zip(names, arrays, strict=True)
    }
    clients = [(int(res.num_examples), dict(res.metrics)) for _, res in strategy.results]
    return SecureRound(mean, clients)


def check_secure(strategy, cfg) -> None:
    """Refuse secure aggregation for a strategy whose server step needs more than the mean, or under DP."""
    from ..simulation import SimulationError

    why = strategy.privacy_refusal() or (
        "DP-FedAvg needs the uniform sum of clipped updates; SecAgg+ here gives the size-weighted mean"
        if strategy.privacy is not None
        else None
    )
    if why:
        raise SimulationError(f"secure aggregation with strategy.name={cfg.strategy.name!r}: {why}")


def secure_round(sim, round_: int, sampled: list[int], shared: dict) -> list[tuple]:
    """``FlowerSimulation.train_clients`` through SecAgg+: ``[(client, result, None, failure reason)]`` where every
    reporting client's result carries the securely aggregated mean as its ``y_i`` (their size-weighted mean is that
    mean, so the server update is unchanged) and its own example count, steps, loss, seconds and rates."""
    from ..client import ClientResult

    configs = {sim.node_of[k]: dict(sim._config(k, round_)) for k in sampled}
    biggest = max(len(sim.partition.train[k]) for k in sampled)  # scales n_i / max_weight <= 1, their sum >= 1
    outcome = secure_mean(sim.grid, round_, shared, configs, biggest, timeout=sim.reply_timeout)
    got = {int(m["partition-id"]): (n, m) for n, m in outcome.clients}
    out = []
    for k in sampled:
        if k not in got or outcome.mean is None:
            out.append((k, None, None, "no secure-aggregation result (node lost, or the protocol halted)"))
            continue
        n, m = got[k]
        steps, loss, seconds, lrs = int(m["steps"]), float(m["loss"]), float(m["seconds"]), json.loads(m["lrs"])
        out.append((k, ClientResult(k, n, steps, loss, dict(outcome.mean), {}, seconds, lrs), None, None))
    return out
