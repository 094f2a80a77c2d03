"""One federated round in this process: sample, train the sampled clients, check their results, update the server.

:class:`Federation` is the round machinery over one model workspace, the training data and its client
shards: :meth:`Federation.round` samples m clients (seeded by (seed, round)), trains them (as joint batches,
:mod:`fedlib.batched`, when the strategy allows it, else one by one; a joint step that fails falls back to
one by one so that a failing client is isolated), leaves out clients that raised, returned non-finite tensors
or diverged, and runs :func:`fedlib.server.server_update`. It returns the new server state and the round's
record (clients, failures, bytes up and down, loss, local steps, seconds). The simulator
(:class:`fedlib.simulation.Simulation`) runs it every round; layer selection's FedAvg warm-up
(:mod:`fedlib.selection`) runs the very same function on its own store, with its own seed stream.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .client import ClientStore, client_seed, client_update, personal_tensors
from .encode import Encoded
from .progress import bar
from .server import ServerState, server_update, tensor_bytes, tensor_norm

__all__ = ["Federation", "rejection", "sample_clients", "cyclic_clients"]

log = logging.getLogger(__name__)


def sample_clients(seed: int, round_: int, num_clients: int, m: int) -> list[int]:
    """The m clients of round ``round_`` (0-based), drawn without replacement from (seed, round)."""
    rng = np.random.default_rng([seed, round_])
    return [int(k) for k in rng.choice(num_clients, m, replace=False)]


def cyclic_clients(seed: int, round_: int, num_clients: int, m: int) -> list[int]:
    """The m clients of round ``round_`` taken in turn from one permutation of the clients drawn from ``seed``:
    over R rounds every client takes part floor(R m / N) or ceil(R m / N) times (random sampling's mean, without
    the clients it never draws)."""
    order = np.random.default_rng([seed, 7]).permutation(num_clients)
    return [int(order[(round_ * m + j) % num_clients]) for j in range(m)]


def rejection(res, shared: dict, max_update_norm: float, privacy=None) -> str | None:
    """Why a client's result must be left out (non-finite, diverged: its update's norm beyond ``max_update_norm``),
    or None; the server asks, and a Flower node before it keeps the client's new state. Under local DP an upload is
    noised (norm about z C sqrt(d), however well the client trained) and was clipped to C before: only finiteness
    is checked."""
    if not res.finite():
        return "non-finite update"
    if privacy is not None and privacy.cfg.mode == "local":
        return None
    norm = tensor_norm({n: res.shared[n].double() - shared[n].double() for n in shared})
    return f"update norm {norm:.3g} exceeds max_update_norm" if norm > max_update_norm else None


class Federation:
    """The round machinery: ``cfg`` (an ExperimentConfig), the model workspace, the encoded training data and
    its per-client index lists ``shards``, the strategy object, the client store and the device. ``stream``
    separates the clients' random draws of different uses of the same rounds (0: the run itself)."""

    def __init__(
        self,
        cfg,
        model,
        train: Encoded,
        shards: list[list[int]],
        strategy,
        store: ClientStore,
        device,
        progress: bool | None = False,
        client_fn=client_update,
        stream: int = 0,
    ) -> None:
        self.cfg, self.model, self.train, self.shards = cfg, model, train, shards
        self.strategy, self.store, self.device = strategy, store, device
        self.progress, self.client_fn, self.stream = progress, client_fn, stream
        self.init_personal = model.state("personal")
        self._workspaces: list = []  # batched clients' extra models (fedlib.batched.workspaces)

    def sample(self, round_: int) -> list[int]:
        """Round ``round_``'s clients: m drawn without replacement, in turn for a strategy whose ``sampling`` is
        "cyclic" (:func:`cyclic_clients`), or under DP a Poisson sample of rate m / N."""
        if self.strategy.privacy is not None:
            return self.strategy.privacy.sample(round_)
        draw = cyclic_clients if self.strategy.sampling == "cyclic" else sample_clients
        return draw(self.cfg.fed.seed, round_, self.cfg.fed.num_clients, self.cfg.fed.clients_per_round)

    def personal_of(self, client: int) -> dict:
        return personal_tensors(self.store.get(client), self.init_personal)

    def batching(self) -> bool:
        """Whether the sampled clients train as joint batches (RunConfig.batch_clients)."""
        from .batched import supports_batching

        return self.cfg.run.batch_clients != "off" and self.client_fn is client_update and supports_batching(self.model)

    def seed_of(self, round_: int, client: int) -> int:
        return client_seed(self.cfg.fed.seed, round_, client, stream=self.stream)

    def train_clients(self, round_: int, sampled: list[int], shared: dict, download: dict) -> list[tuple]:
        """Run the sampled clients' updates: ``[(client, result, new state or None, failure reason or None)]``."""
        cfg = self.cfg
        if self.batching() and len(sampled) > 1:
            from .batched import client_updates_batched, workspaces

            try:
                models = workspaces(self.model, len(sampled), self._workspaces)
                pairs = client_updates_batched(
                    models,
                    sampled,
                    shared,
                    [self.store.get(k) for k in sampled],
                    self.init_personal,
                    [self.train.subset(self.shards[k]) for k in sampled],
                    cfg.train,
                    self.strategy,
                    download,
                    [self.seed_of(round_, k) for k in sampled],
                    self.device,
                    cfg.run.batch_chunk,
                )
                return [(k, res, state, None) for k, (res, state) in zip(sampled, pairs)]
            except Exception as err:
                log.warning(
                    "round %d: batched clients failed (%s: %s); training them one by one",
                    round_ + 1,
                    type(err).__name__,
                    err,
                )
        out = []
        for k in bar(sampled, self.progress, desc=f"round {round_ + 1} clients", leave=False):
            try:
                res, state = self.client_fn(
                    self.model,
                    k,
                    shared,
                    self.store.get(k),
                    self.init_personal,
                    self.train.subset(self.shards[k]),
                    cfg.train,
                    self.strategy,
                    download,
                    self.seed_of(round_, k),
                    self.device,
                )
            except Exception as err:  # a failing client must not take the round down
                out.append((k, None, None, f"{type(err).__name__}: {err}"))
                continue
            out.append((k, res, state, None))
        return out

    def check_result(self, res, shared: dict) -> str | None:
        """:func:`rejection` of a client's result in this run."""
        return rejection(res, shared, self.cfg.run.max_update_norm, self.strategy.privacy)

    def round(self, server: ServerState, round_: int) -> tuple[ServerState, dict]:
        """Round ``round_`` (0-based) from ``server``: ``(new server state, record)``. A ``client_fn`` that watches
        rounds (:class:`fedlib.drift.DriftRecorder`) may define ``start_round(round)`` and ``left_out(client)``."""
        t0 = time.perf_counter()
        sampled = self.sample(round_)
        getattr(self.client_fn, "start_round", lambda t: None)(round_ + 1)
        download = self.strategy.download(server)
        results, failures, uploaded = [], [], []
        for k, res, state, reason in self.train_clients(round_, sampled, server.shared, download):
            uploaded += [k] if res is not None else []  # sent, kept or not: released under local DP
            reason = reason or self.check_result(res, server.shared)
            if reason:
                log.warning("round %d: client %d left out: %s", round_ + 1, k, reason)
                failures.append({"client": k, "reason": reason})
                getattr(self.client_fn, "left_out", lambda k: None)(k)
                continue
            if state is not None:
                self.store.put(k, state)
            results.append(res)
        t1 = time.perf_counter()
        new = server_update(server, results, self.strategy, self.cfg.fed.num_clients)
        rec = {
            "round": round_ + 1,
            "clients": sampled,
            "reported": len(results),
            "failed": len(failures),
            "failures": failures,
            "bytes_down": len(sampled) * (tensor_bytes(server.shared) + tensor_bytes(download)),
            "bytes_up": sum(tensor_bytes(r.shared) + tensor_bytes(r.extra) for r in results),
            "train_loss": float(np.mean([r.loss for r in results])) if results else float("nan"),
            "local_steps": int(sum(r.steps for r in results)),
            "seconds_client": t1 - t0,
            "seconds_client_max": max((r.seconds for r in results), default=0.0),
            "seconds_aggregate": time.perf_counter() - t1,
            **new.scalars.get("diagnostics", {}),  # the strategy's own (FedPepTAO: norms of c, c_i; eta_s)
        }
        if self.strategy.privacy is not None:  # epsilon so far (the count lives in the server's scalars)
            rec.update(self.strategy.privacy.account(new.scalars, results, uploaded))
        return new, rec
