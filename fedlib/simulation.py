"""The in-process federated simulation: N clients, m sampled per round, one process.

Per round t (digest 1.5): sample m clients (seeded by (seed, t)); each runs :func:`fedlib.client.client_update`
from the global shared tensors and its own stored state; the server runs
:func:`fedlib.server.server_update`; every ``eval_every`` rounds the global and personalised models are
evaluated; the round's record (bytes up/down, seconds split into client compute, aggregation and
evaluation, metrics, failures) is appended to ``results.jsonl``; every ``checkpoint_every`` rounds the
whole run state is checkpointed. All randomness is derived from (seed, round, client), so a resumed
run continues exactly as an uninterrupted one.

A client that raises, returns non-finite tensors or an update whose norm exceeds ``max_update_norm``
(divergence) is left out of that round (warning, counted); a
round where every client fails is skipped; after ``max_failed_rounds`` such rounds in a row the run
stops with :class:`SimulationError`, its last checkpoint intact.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import load_run_checkpoint, save_run_checkpoint
from .classifier import PromptClassifier
from .client import ClientStore, client_seed, client_update, personal_tensors
from .config import ExperimentConfig
from .encode import encode_dataset
from .evaluation import evaluate_global, evaluate_personal, pooled_by_shard
from .models import load_backbone
from .partition import Partition, make_partition
from .runtime import resolve_device, seed_everything
from .server import ServerState, init_server, server_update, tensor_bytes
from .strategies import get_strategy
from .tasks import get_task, load_task

__all__ = ["Simulation", "SimulationError", "SimulationResult", "run_simulation", "strategy_hparams"]

log = logging.getLogger(__name__)


class SimulationError(RuntimeError):
    """The run cannot go on (e.g. every client failed for too many rounds in a row)."""


@dataclass
class SimulationResult:
    history: "object"  # pandas.DataFrame, one row per round
    server: ServerState
    partition: Partition
    roles: tuple[str, ...]
    selection: dict | None
    out_dir: Path | None


def strategy_hparams(cfg: ExperimentConfig) -> dict:
    """The strategy's defaults, overridden by the FedConfig fields that are set."""
    fed = cfg.fed
    hp = dict(get_strategy(fed.strategy).defaults)
    for name in ("server_lr", "server_momentum", "server_tau", "prox_mu"):
        if getattr(fed, name) is not None:
            hp[name] = getattr(fed, name)
    hp.update(
        local_epochs=fed.local_epochs,
        local_steps=fed.local_steps,
        variant=fed.server_variant,
        control_variates=fed.control_variates,
    )
    return hp


def _quiet() -> bool:
    """Progress bars off under CI or FEDLIB_PROGRESS=0; on in a terminal or a Jupyter kernel."""
    if os.environ.get("CI") or os.environ.get("FEDLIB_PROGRESS") == "0":
        return True
    return not (sys.stderr.isatty() or "ipykernel" in sys.modules)


class Simulation:
    """Holds one run's model workspace, data, partition, client store and server state."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: str | Path | None = None,
        backbone=None,
        progress: bool | None = None,
        client_fn=client_update,
        selection: dict | None = None,
    ) -> None:
        self.cfg, self.fed = cfg, cfg.fed
        self.strategy = get_strategy(cfg.fed.strategy)
        self.hp = strategy_hparams(cfg)
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress = (not _quiet()) if progress is None else progress
        self.client_fn = client_fn
        self.device = resolve_device(cfg.train.device)
        seed_everything(self.fed.seed)
        task = get_task(self.fed.task)
        mcfg = cfg.model.replace(prompt_mode=self.strategy.prompt_mode)
        if backbone is None:
            backbone = load_backbone(
                mcfg.name,
                head="linear" if mcfg.head == "linear" else mcfg.head,
                attn_implementation=mcfg.attn_implementation,
            )
        elif self.strategy.prompt_mode == "lora":  # LoRA adds modules: keep the caller's backbone clean
            backbone = copy.copy(backbone)
            backbone.model = copy.deepcopy(backbone.model)
        self.model = PromptClassifier(backbone, task, mcfg).to(self.device)
        tok = backbone.tokenizer
        train = load_task(task.name, "train", self.fed.data_dir, limit=self.fed.train_limit or None)
        evalset = load_task(task.name, "eval", self.fed.data_dir, limit=self.fed.eval_limit or None)
        self.train = encode_dataset(train, tok, task, self.model.head_kind, mcfg.max_length)
        self.eval = encode_dataset(evalset, tok, task, self.model.head_kind, mcfg.max_length)
        self.partition = self._partition()
        self.selection = None
        if self.strategy.layers == "selected":
            from .fedpeptao import select_layers

            self.selection = selection if selection is not None else select_layers(self)
            self.model.set_roles(tuple(self.selection["roles"]))
        self.init_state = self.model.state()
        self.init_personal = self.model.state("personal")
        where = self.fed.client_state
        self.store = ClientStore(where, (self.out_dir / "clients") if where == "disk" and self.out_dir else None)
        self.server = init_server(self.strategy, self.model.state("shared"), self.hp)
        self.history: list[dict] = []
        self.failed_in_a_row = 0
        self._workspaces: list = []  # batched clients' extra models (fedlib.batched.workspaces)

    # ---- set-up -----------------------------------------------------------------------------------
    def _partition(self) -> Partition:
        fed = self.fed
        path = self.out_dir / "partition.json" if self.out_dir else None
        if path is not None and path.exists():
            return Partition.load(path, self.train.labels, self.eval.labels)
        part = make_partition(
            self.train.labels,
            self.eval.labels,
            fed.num_clients,
            fed.partition,
            fed.alpha,
            fed.beta,
            fed.size_concentration,
            seed=fed.seed,
        )
        if path is not None:
            part.save(path)
        return part

    def personal_of(self, client: int) -> dict:
        return personal_tensors(self.store.get(client), self.init_personal)

    # ---- one round --------------------------------------------------------------------------------
    def sample(self, round_: int) -> list[int]:
        rng = np.random.default_rng([self.fed.seed, round_])
        return [int(k) for k in rng.choice(self.fed.num_clients, self.fed.clients_per_round, replace=False)]

    def batching(self) -> bool:
        """Whether this run trains its sampled clients as joint batches (FedConfig.batch_clients)."""
        from .batched import supports_batching

        return self.fed.batch_clients != "off" and self.client_fn is client_update and supports_batching(self.model)

    def train_clients(self, round_: int, sampled: list[int], download: dict) -> list[tuple]:
        """Run the sampled clients' updates in this process: ``[(client, result, state, failure reason)]``.

        Joint batches when :meth:`batching`; if a joint step fails, the round's clients train one by one so
        that a failing client is isolated.
        """
        if self.batching() and len(sampled) > 1:
            from .batched import client_updates_batched, workspaces

            try:
                models = workspaces(self.model, len(sampled), self._workspaces)
                pairs = client_updates_batched(
                    models,
                    sampled,
                    self.server.shared,
                    [self.store.get(k) for k in sampled],
                    self.init_personal,
                    [self.train.subset(self.partition.train[k]) for k in sampled],
                    self.cfg.train,
                    self.strategy,
                    self.hp,
                    download,
                    [client_seed(self.fed.seed, round_, k) for k in sampled],
                    self.device,
                    self.fed.batch_chunk,
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
        for k in tqdm(sampled, desc=f"round {round_ + 1} clients", leave=False, disable=not self.progress):
            data = self.train.subset(self.partition.train[k])
            try:
                res, state = self.client_fn(
                    self.model,
                    k,
                    self.server.shared,
                    self.store.get(k),
                    self.init_personal,
                    data,
                    self.cfg.train,
                    self.strategy,
                    self.hp,
                    download,
                    client_seed(self.fed.seed, round_, k),
                    self.device,
                )
            except Exception as err:  # a failing client must not take the round down
                out.append((k, None, None, f"{type(err).__name__}: {err}"))
                continue
            out.append((k, res, state, None))
        return out

    def check_result(self, res) -> str | None:
        """Why a client's result must be left out (non-finite, diverged), or None."""
        if not res.finite():
            return "non-finite update"
        norm = float(
            sum(((res.shared[n].double() - self.server.shared[n].double()) ** 2).sum() for n in self.server.shared)
            ** 0.5
        )
        if norm > self.fed.max_update_norm:
            return f"update norm {norm:.3g} exceeds max_update_norm"
        return None

    def run_round(self, round_: int) -> dict:
        fed, t0 = self.fed, time.perf_counter()
        sampled = self.sample(round_)
        download = self.server.controls.get("c", {}) if self.strategy.client == "scaffold" else {}
        results, failures = [], []
        for k, res, state, reason in self.train_clients(round_, sampled, download):
            reason = reason or self.check_result(res)
            if reason:
                log.warning("round %d: client %d left out: %s", round_ + 1, k, reason)
                failures.append({"client": k, "reason": reason})
                continue
            if state is not None:
                self.store.put(k, state)
            results.append(res)
        t1 = time.perf_counter()
        self.server = server_update(self.server, results, self.strategy, self.hp, fed.num_clients)
        t2 = time.perf_counter()
        self.failed_in_a_row = 0 if results else self.failed_in_a_row + 1
        rec = {
            "round": round_ + 1,
            "clients": sampled,
            "reported": len(results),
            "failed": len(failures),
            "failures": failures,
            "bytes_down": len(sampled) * (tensor_bytes(self.server.shared) + tensor_bytes(download)),
            "bytes_up": sum(tensor_bytes(r.shared) + tensor_bytes(r.extra) for r in results),
            "train_loss": float(np.mean([r.loss for r in results])) if results else float("nan"),
            "local_steps": int(sum(r.steps for r in results)),
            "seconds_client": t1 - t0,
            "seconds_client_max": max((r.seconds for r in results), default=0.0),
            "seconds_aggregate": t2 - t1,
        }
        last = round_ + 1 == fed.rounds
        if last or (fed.eval_every and (round_ + 1) % fed.eval_every == 0):
            rec.update(self.evaluate())
        rec["seconds_eval"] = time.perf_counter() - t2
        return rec

    def evaluate(self) -> dict:
        bs, out = self.cfg.train.eval_batch_size, {}
        g = evaluate_global(self.model, self.server.shared, self.eval, bs, self.device)
        if g is not None:
            out.update(global_metric=g["metric"], global_accuracy=g["accuracy"], global_loss=g["loss"])
        if self.fed.personal_eval:
            if not self.init_personal and g is not None:  # nothing personal: each client's model is the global one
                p = pooled_by_shard(self.model.task, g["preds"], self.eval, self.partition.eval)
            else:
                p = self.evaluate_personal()
            out.update(
                personal_metric=p["metric"],
                personal_client_mean=p["client_mean"],
                personal_client_std=p["client_std"],
                personal_skipped=p["skipped"],
            )
        return out

    def evaluate_personal(self) -> dict:
        """Personalised evaluation with the client states held here (the Flower runner asks the clients)."""
        return evaluate_personal(
            self.model,
            self.server.shared,
            self.personal_of,
            self.eval,
            self.partition.eval,
            self.cfg.train.eval_batch_size,
            self.device,
        )

    # ---- the run ----------------------------------------------------------------------------------
    def _checkpoint(self, round_: int) -> None:
        clients = {k: self.store.get(k) for k in self.store.clients()}
        info = {
            "scalars": self.server.scalars,
            "failed_in_a_row": self.failed_in_a_row,
            "roles": list(self.model.prompt.roles),
            "config": self.cfg.to_dict(),
        }
        save_run_checkpoint(self.out_dir / "checkpoints", round_, self.server.flat(), clients, info)

    def _resume(self) -> int:
        round_, server, clients, info = load_run_checkpoint(self.out_dir / "checkpoints")
        if info["config"] != self.cfg.to_dict():
            raise SimulationError(f"{self.out_dir}/checkpoints: made with another configuration; use a new out_dir")
        self.server = ServerState.from_flat(server, round_, info["scalars"])
        for k, state in clients.items():
            self.store.put(k, state)
        self.failed_in_a_row = info["failed_in_a_row"]
        log_path = self.out_dir / "results.jsonl"
        if log_path.exists():
            rows = []
            for line in log_path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a kill mid-write: it is past the checkpoint anyway
                    log.warning("%s: skipping a torn line", log_path)
            self.history = [r for r in rows if r["round"] <= round_]
        self._rewrite_log()
        return round_

    def _rewrite_log(self) -> None:
        tmp = self.out_dir / "results.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        os.replace(tmp, self.out_dir / "results.jsonl")

    def _append_log(self, rec: dict) -> None:
        with open(self.out_dir / "results.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def run(self, resume: bool = False) -> SimulationResult:
        import pandas as pd

        fed, start = self.fed, 0
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(self.cfg.to_json())
            if self.selection is not None:
                (self.out_dir / "selection.json").write_text(json.dumps(self.selection, indent=2))
            if resume and (self.out_dir / "checkpoints" / "LATEST").exists():
                start = self._resume()
                log.info("resumed from round %d", start)
            else:  # a fresh start (also when nothing was checkpointed yet)
                self._rewrite_log()
        cum_bytes = self.history[-1]["cum_bytes"] if self.history else 0
        cum_seconds = self.history[-1]["cum_seconds"] if self.history else 0.0
        for t in tqdm(
            range(start, fed.rounds),
            desc=f"{fed.strategy} on {fed.task}",
            initial=start,
            total=fed.rounds,
            disable=not self.progress,
        ):
            rec = self.run_round(t)
            cum_bytes += rec["bytes_up"] + rec["bytes_down"]
            cum_seconds += rec["seconds_client"] + rec["seconds_aggregate"]
            rec.update(cum_bytes=cum_bytes, cum_seconds=cum_seconds)
            self.history.append(rec)
            if self.out_dir is not None:
                self._append_log(rec)
                if fed.checkpoint_every and (t + 1) % fed.checkpoint_every == 0:
                    self._checkpoint(t + 1)
            if self.failed_in_a_row >= fed.max_failed_rounds:
                where = (
                    f"; last checkpoint in {self.out_dir / 'checkpoints'}"
                    if self.out_dir and fed.checkpoint_every
                    else ""
                )
                raise SimulationError(
                    f"every client failed in {self.failed_in_a_row} rounds in a row (up to round {t + 1})"
                    f"{where}. Failures: {rec['failures']}"
                )
        return SimulationResult(
            pd.DataFrame(self.history),
            self.server,
            self.partition,
            self.model.prompt.roles,
            self.selection,
            self.out_dir,
        )


def run_simulation(
    cfg: ExperimentConfig, out_dir: str | Path | None = None, resume: bool = False, **kwargs
) -> SimulationResult:
    """Build a :class:`Simulation` and run it (``resume``: continue from ``out_dir``'s last checkpoint)."""
    return Simulation(cfg, out_dir, **kwargs).run(resume=resume)
