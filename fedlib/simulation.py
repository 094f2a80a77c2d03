"""The in-process federated simulation: N clients, m sampled per round, one process.

Per round t: :meth:`fedlib.rounds.Federation.round` (sample m clients seeded by (seed, t); each runs
:func:`fedlib.client.client_update` from the global shared tensors and its own stored state; the server runs
:func:`fedlib.server.server_update`); every ``fed.eval_every`` rounds the global model is evaluated, and the
personalised ones every ``fed.personal_eval_every`` rounds (and after the last; after it, with ``fed.finetune_epochs``,
also each client's fine-tuned copy, :mod:`fedlib.finetune`); the round's record (bytes up/down, seconds split into
client compute, aggregation and evaluation, metrics, failures) is appended to ``results.jsonl``; every
``run.checkpoint_every`` rounds the whole run state is checkpointed. All randomness is derived from (seed, round,
client), so a resumed run continues exactly as an uninterrupted one. Strategies that share selected layers select them
(:func:`fedlib.selection.select_layers`) when the run starts, and a resumed run reads its ``selection.json``.

A client that raises, returns non-finite tensors or an update whose norm exceeds ``run.max_update_norm``
(divergence) is left out of that round (warning, counted); a round where every client fails is skipped;
after ``run.max_failed_rounds`` such rounds in a row the run stops with :class:`SimulationError`, its last
checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import load_run_checkpoint, read_log, save_run_checkpoint
from .classifier import PromptClassifier
from .client import ClientStore, client_update
from .config import ConfigError, ExperimentConfig
from .encode import encode_dataset
from .evaluation import evaluate_personal, global_record, pooled_by_shard, view_record
from .models import backbone_for
from .partition import Partition, make_partition
from .privacy import strategy_for
from .progress import bar
from .report import round_line
from .rounds import Federation
from .runtime import resolve_device, seed_everything, warn_emulated_bf16
from .server import ServerState
from .tasks import get_task, load_task
from .tracking import make_tracker

__all__ = [
    "Simulation",
    "SimulationError",
    "SimulationResult",
    "run_simulation",
    "build_model",
    "load_rows",
    "load_split",
    "partition_for",
    "set_roles",
]

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


def build_model(cfg: ExperimentConfig, strategy, backbone=None, device=None) -> PromptClassifier:
    """The run's model workspace: ``backbone`` (loaded from ``cfg.model`` when None) with the prompts of the
    strategy's ``prompt_mode`` and the task's head, evaluated under bf16 autocast when ``train.autocast`` says so.
    LoRA adds modules, so it gets its own copy of the backbone (:class:`~fedlib.classifier.PromptClassifier`)."""
    mcfg = cfg.model.replace(prompt_mode=strategy.prompt_mode, head_role=strategy.head_role or cfg.model.head_role)
    owned = backbone is None  # loaded here: nobody else holds it, so LoRA needs no copy of it
    model = PromptClassifier(backbone or backbone_for(mcfg), get_task(cfg.fed.task), mcfg, owned).to(device or "cpu")
    model.bf16 = cfg.train.autocast == "bf16"  # evaluation's precision follows local training's (fedlib.train.predict)
    if model.bf16:
        warn_emulated_bf16(resolve_device(device or "cpu").type)
    return model


def selection_record(selection: dict) -> dict:
    """Layer selection's cost as the log's round 0 (phase "selection"): bytes up and down, seconds, local steps
    of its warm-up; counted in the run's cumulative bytes and seconds."""
    warmup = (selection.get("hessian") or {}).get("warmup", [])
    b = selection["bytes_up"] + selection["bytes_down"]
    return {
        "round": 0,
        "phase": "selection",
        "clients": [],
        "reported": 0,
        "failed": 0,
        "failures": [],
        "bytes_down": selection["bytes_down"],
        "bytes_up": selection["bytes_up"],
        "train_loss": float("nan"),
        "local_steps": int(sum(r["local_steps"] for r in warmup)),
        "seconds_client": selection["seconds"],
        "seconds_client_max": 0.0,
        "seconds_aggregate": 0.0,
        "seconds_eval": 0.0,
        "cum_bytes": b,
        "cum_seconds": selection["seconds"],
    }


def set_roles(model, strategy, selection: dict | None) -> None:
    """The run's layer roles: the selection's (``layers == "selected"``), all personal (``"none"``), else as built."""
    if strategy.layers == "selected" and selection:
        model.set_roles(tuple(selection["roles"]))
    elif strategy.layers == "none":
        model.set_roles(("personal",) * model.info.num_layers)


def load_rows(cfg: ExperimentConfig, split: str):
    """``split`` ("train" or "eval") of the task as the config limits it (``data.train_limit``/``eval_limit``).

    With ``data.validation`` N, the "eval" rows are N training examples held out (the same for every seed and
    strategy) and the "train" rows the rest: the task's eval split is not read."""
    d = cfg.data
    if d.validation:
        limit = d.train_limit + d.validation if d.train_limit else None  # 0: all of them
        rows = load_task(cfg.fed.task, "train", d.data_dir, limit=limit)
        if d.validation >= len(rows):
            raise ConfigError(
                f"data.validation={d.validation} is invalid: only {len(rows)} training examples to hold out from"
            )
        order = np.random.default_rng(20231206).permutation(len(rows))  # fixed: one validation set per task
        keep = order[: d.validation] if split == "eval" else order[d.validation :]
        return rows.select(sorted(int(i) for i in keep))
    limit = d.train_limit if split == "train" else d.eval_limit
    return load_task(cfg.fed.task, split, d.data_dir, limit=limit or None)


def load_split(cfg: ExperimentConfig, model, split: str, rows: list[int] | None = None):
    """``split`` ("train" or "eval") of the task, encoded for ``model`` (only ``rows`` of it when given)."""
    ds = load_rows(cfg, split)
    if rows is not None:
        ds = ds.select(rows)
    return encode_dataset(ds, model.info.tokenizer, model.task, model.head_kind, model.cfg.max_length)


def partition_for(cfg: ExperimentConfig, train_labels, eval_labels) -> Partition:
    """The partition ``cfg`` describes, over these labels (deterministic for ``fed.seed``)."""
    p = cfg.partition
    return make_partition(
        train_labels,
        eval_labels,
        cfg.fed.num_clients,
        p.method,
        p.alpha,
        p.beta,
        p.size_concentration,
        seed=cfg.fed.seed,
    )


class Simulation(Federation):
    """One run: its model workspace, data, partition, client store and server state, and the round loop.

    Built, it holds the model (layers all shared), the encoded data and the partition; :meth:`run` selects the
    shared layers if the strategy asks for it (or takes ``selection``), then runs the rounds.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: str | Path | None = None,
        backbone=None,
        progress: bool | None = None,
        client_fn=client_update,
        selection: dict | None = None,
    ) -> None:
        strategy = strategy_for(cfg)  # with its privacy mechanism (None when privacy.mode is off)
        device = resolve_device(cfg.run.device)
        seed_everything(cfg.fed.seed)
        model = build_model(cfg, strategy, backbone, device)
        train = load_split(cfg, model, "train")
        self.eval = load_split(cfg, model, "eval")
        self.out_dir = Path(out_dir) if out_dir else None
        self.partition = self._partition(cfg, train)
        folder = (self.out_dir / "clients") if self.out_dir else None
        store = ClientStore(cfg.run.client_state, folder, cfg.run.client_memory_mb)
        super().__init__(
            cfg,
            model,
            train,
            self.partition.train,
            strategy,
            store,
            device,
            progress,  # None: fedlib.progress decides (terminal, JupyterLab, papermill, CI)
            client_fn,
        )
        self.fed = cfg.fed
        self.selection = selection
        self.server: ServerState | None = None
        self.history: list[dict] = []
        self.failed_in_a_row = 0

    # ---- set-up -----------------------------------------------------------------------------------
    def _partition(self, cfg: ExperimentConfig, train) -> Partition:
        """The out folder's ``partition.json`` when it was made for this configuration (method, clients, seed and
        parameters; from other data it is an error), else a new one, written there (a fresh run into a folder that
        held another configuration's run must not train on that run's shards)."""
        path = self.out_dir / "partition.json" if self.out_dir else None
        if path is not None and path.exists():
            stored, p = Partition.load(path, train.labels, self.eval.labels), cfg.partition
            args = dict(alpha=p.alpha, beta=p.beta, size_concentration=p.size_concentration)
            if stored.made_as(p.method, cfg.fed.num_clients, cfg.fed.seed, **args):
                return stored
            log.info("%s was made for another partition configuration: partitioning again", path)
        part = partition_for(cfg, train.labels, self.eval.labels)
        if path is not None:
            part.save(path)
        return part

    def start(self) -> None:
        """Select the shared layers (strategies with ``layers == "selected"``), fix the roles, build the server.

        Called by :meth:`run`; a resumed run reads ``selection.json`` instead of selecting again."""
        if self.server is not None:
            return
        if self.strategy.layers == "selected":
            saved = self.out_dir / "selection.json" if self.out_dir else None
            if self.selection is None and saved is not None and saved.exists():
                self.selection = json.loads(saved.read_text())
            if self.selection is None:
                from .selection import select_layers

                self.selection = select_layers(self.model, self.train, self.partition, self.cfg, self.device)
        set_roles(self.model, self.strategy, self.selection)
        self.init_personal = self.model.state("personal")
        self.server = self.strategy.init_server(self.model.state("shared"))

    # ---- one round --------------------------------------------------------------------------------
    def run_round(self, round_: int) -> dict:
        self.server, rec = self.round(self.server, round_)
        t2 = time.perf_counter()
        self.failed_in_a_row = 0 if rec["reported"] else self.failed_in_a_row + 1
        evaluated, personal = self.fed.evaluates(round_)
        if evaluated:
            rec.update(self.evaluate(personal=personal))
        rec["seconds_eval"] = time.perf_counter() - t2
        if round_ + 1 == self.fed.rounds and self.fed.finetune_epochs:
            from .finetune import finetune_views

            rec.update(finetune_views(self))
        return rec

    def evaluate(self, personal: bool = True) -> dict:
        bs, fed = self.cfg.train.eval_batch_size, self.fed
        out = global_record(self.model, self.server.shared, self.eval, fed.curve_examples, personal, bs, self.device)
        preds = out.pop("preds", None)
        if self.fed.personal_eval and personal:
            views = {"personal": self.partition.eval, "personal_iid": self.partition.eval_iid}
            if not self.init_personal and preds is not None:  # nothing personal: each client's model is the global one
                pooled = {v: pooled_by_shard(self.model.task, preds, self.eval, s) for v, s in views.items()}
            else:
                pooled = self.evaluate_personal(views)
            for view, p in pooled.items():
                out.update(view_record(view, p))
        return out

    def evaluate_personal(self, views: dict[str, list[list[int]]]) -> dict[str, dict]:
        """Personalised evaluation with the client states held here (the Flower runner asks the clients)."""
        return evaluate_personal(
            self.model,
            self.server.shared,
            self.personal_of,
            self.eval,
            views,
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
        self.history = [r for r in read_log(log_path) if r["round"] <= round_]
        missing = sorted(set(range(1, round_ + 1)) - {r["round"] for r in self.history})
        if missing:
            raise SimulationError(f"{log_path}: rounds {missing[:5]} of the checkpoint's {round_} are not in the log")
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

        start = 0
        resuming = resume and self.out_dir is not None and (self.out_dir / "checkpoints" / "LATEST").exists()
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(self.cfg.to_json())
            if not resuming:  # a fresh run: an earlier run's selection and checkpoints are not this one's
                (self.out_dir / "selection.json").unlink(missing_ok=True)
                shutil.rmtree(self.out_dir / "checkpoints", ignore_errors=True)
        self.start()
        if self.out_dir is not None:
            if self.selection is not None:
                tmp = self.out_dir / "selection.json.tmp"  # written whole, then renamed: never half a record
                tmp.write_text(json.dumps(self.selection, indent=2))
                tmp.replace(self.out_dir / "selection.json")
            if resuming:
                start = self._resume()
                log.info("resumed from round %d", start)
            else:  # a fresh start (also when nothing was checkpointed yet)
                self._rewrite_log()
        if not resuming and self.selection is not None and "bytes_up" in self.selection:
            self.history.append(selection_record(self.selection))
            self.report_round(self.history[-1])
            if self.out_dir is not None:
                self._append_log(self.history[-1])
        tracker = make_tracker(self.cfg.run, self.cfg.to_dict(), self.out_dir)
        if tracker is not None and not resuming:  # a resumed run's earlier rounds are in its earlier event file
            for rec in self.history:
                tracker.log_round(rec)
        try:
            self._rounds(start, tracker)
        finally:
            if tracker is not None:
                tracker.close()
        return SimulationResult(
            pd.DataFrame(self.history),
            self.server,
            self.partition,
            self.model.prompt.roles,
            self.selection,
            self.out_dir,
        )

    def report_round(self, rec: dict) -> None:
        """One line per round for the log (debug level here, where the progress bar shows the rounds; the Flower
        ServerApp reports at info level through Flower's logger, which ``flwr run --stream`` and ``flwr log`` show)."""
        log.debug("%s on %s, %s", self.strategy.name, self.fed.task, round_line(rec, self.fed.rounds))

    def _rounds(self, start: int, tracker) -> None:
        fed = self.fed
        cum_bytes = self.history[-1]["cum_bytes"] if self.history else 0
        cum_seconds = self.history[-1]["cum_seconds"] if self.history else 0.0
        for t in bar(
            range(start, fed.rounds),
            self.progress,
            desc=f"{self.strategy.name} on {fed.task}",
            initial=start,
            total=fed.rounds,
        ):
            rec = self.run_round(t)
            cum_bytes += rec["bytes_up"] + rec["bytes_down"]
            cum_seconds += rec["seconds_client"] + rec["seconds_aggregate"]
            rec.update(cum_bytes=cum_bytes, cum_seconds=cum_seconds)
            self.history.append(rec)
            self.report_round(rec)
            if tracker is not None:
                tracker.log_round(rec)
            if self.out_dir is not None:
                self._append_log(rec)
                if self.cfg.run.checkpoint_every and (t + 1) % self.cfg.run.checkpoint_every == 0:
                    self._checkpoint(t + 1)
            if self.failed_in_a_row >= self.cfg.run.max_failed_rounds:
                where = (
                    f"; last checkpoint in {self.out_dir / 'checkpoints'}"
                    if self.out_dir and self.cfg.run.checkpoint_every
                    else ""
                )
                raise SimulationError(
                    f"every client failed in {self.failed_in_a_row} rounds in a row (up to round {t + 1})"
                    f"{where}. Failures: {rec['failures']}"
                )


def run_simulation(
    cfg: ExperimentConfig, out_dir: str | Path | None = None, resume: bool = False, **kwargs
) -> SimulationResult:
    """Build a :class:`Simulation` and run it (``resume``: continue from ``out_dir``'s last checkpoint)."""
    return Simulation(cfg, out_dir, **kwargs).run(resume=resume)
