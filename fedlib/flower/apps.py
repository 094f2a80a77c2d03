"""Flower ServerApp and ClientApp over :func:`fedlib.client.client_update` and :func:`fedlib.server.server_update`.

Server (:class:`FlowerSimulation`): the in-process :class:`~fedlib.simulation.Simulation` with two steps
replaced: the sampled clients train on Flower nodes (``train`` messages through the ``Grid``), and
personalised evaluation is done by each node on its own eval shard (``evaluate`` messages), because
personal prompt layers and the AdamW state never leave the node: they live in its ``context.state``.
Sampling, the server update (momentum, control variates held by the server and keyed by partition id),
validation of replies, accounting, logging and checkpoints are the simulator's own code.

Messages (RecordDict): down ``arrays`` (global shared tensors), ``download`` (SCAFFOLD's c), ``config``
(partition id, round, seed); up ``arrays`` (y_i), ``extra`` (SCAFFOLD's dc_i), ``metrics`` (num-examples,
steps, loss, seconds). A node maps itself to a partition with ``partition-id`` in its node config
(``--node-config "partition-id=3 num-partitions=20"``; Flower's simulation sets it). Failed or missing
replies leave the client out of the round and are counted; the wait for nodes and for replies is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from ..client import ClientResult, client_update, personal_tensors
from ..client_store import ClientStore
from ..config import ExperimentConfig
from ..evaluation import personal_predictions, pool_personal, union_positions
from ..models import backbone_for
from ..privacy import strategy_for
from ..report import round_line
from ..rounds import rejection
from ..runtime import resolve_device, seed_everything
from ..simulation import (
    Simulation,
    SimulationError,
    build_model,
    load_rows,
    load_split,
    partition_for,
    set_roles,
)
from .secagg import check_secure, fit_reply, fit_request, range_error, secagg_train_mod, secure_round

__all__ = [
    "FlowerSimulation",
    "ClientWorkspace",
    "make_client_app",
    "make_server_app",
]

log = logging.getLogger(__name__)
STATE_KEY = "fedlib"


def _arrays(tensors: dict) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _tensors(record: ArrayRecord | None) -> dict:
    return dict(record.to_torch_state_dict()) if record is not None and len(record) else {}


# ---- client side ---------------------------------------------------------------------------------------
class ClientWorkspace:
    """What one node needs for partition ``k``: the model (with the run's layer roles), its own train and eval
    shards (encoded; the rest of the data is dropped once the partition is known), its initial personal
    tensors, the strategy object and the device. No server state, no other client's data."""

    def __init__(self, cfg: ExperimentConfig, selection: dict | None, k: int, backbone=None, partition=None) -> None:
        self.cfg, self.k = cfg, k
        self.strategy = strategy_for(cfg)
        self.device = resolve_device(cfg.run.device)
        seed_everything(cfg.fed.seed)  # the initial prompts, as the server's Simulation draws them
        self.model = build_model(cfg, self.strategy, backbone, self.device)
        set_roles(self.model, self.strategy, selection)
        self.init_personal = self.model.state("personal")
        part = partition if partition is not None else client_partition(cfg)
        self.train = load_split(cfg, self.model, "train", part.train[k])
        # the two personalised eval views, encoded once: self.views holds each one's positions in self.eval
        rows, self.views = union_positions({"personal": part.eval[k], "personal_iid": part.eval_iid[k]})
        self.eval = load_split(cfg, self.model, "eval", rows)


def client_partition(cfg: ExperimentConfig):
    """The run's partition, from the task's labels alone (no text is encoded)."""
    return partition_for(cfg, load_rows(cfg, "train")["label"], load_rows(cfg, "eval")["label"])


# A process may serve several partitions (Flower's simulation reuses its workers): the frozen backbone is loaded
# once per process and the partition computed once per run; each partition has its own small workspace.
_CACHE: dict = {"run": None, "cfg": None, "backbones": {}, "partition": None, "workspaces": {}}


def _workspace(cfg_json: str, selection_json: str, k: int) -> ClientWorkspace:
    """Partition ``k``'s workspace, built once per process (deterministic from the config)."""
    if _CACHE["run"] != (cfg_json, selection_json):  # a new run: drop the last run's workspaces
        cfg = ExperimentConfig.from_json(cfg_json)
        _CACHE.update(run=(cfg_json, selection_json), cfg=cfg, partition=client_partition(cfg), workspaces={})
    if k not in _CACHE["workspaces"]:
        cfg = _CACHE["cfg"]
        key = (cfg.model.name, cfg.model.head, cfg.model.attn_implementation)
        if key not in _CACHE["backbones"]:
            _CACHE["backbones"][key] = backbone_for(cfg.model)
        _CACHE["workspaces"][k] = ClientWorkspace(
            cfg, json.loads(selection_json) or None, k, _CACHE["backbones"][key], _CACHE["partition"]
        )
    return _CACHE["workspaces"][k]


def _partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise SimulationError(
            "this SuperNode has no 'partition-id' in its node config: start it with "
            '--node-config "partition-id=<k> num-partitions=<N>"'
        )
    return int(context.node_config["partition-id"])


def _node_store(context: Context, conf) -> ClientStore | None:
    """The node's client-state folder for this run (``<state-dir>/run_<key>``, node config ``state-dir``; the key is
    the server's ``run-key``: a later run on the same node starts afresh, a node restarted within the run and a run
    resumed from its checkpoints go on), or None: state then lives only in ``context.state``, which Flower keeps in
    the SuperNode's memory and a crashed node loses."""
    folder, key = str(context.node_config.get("state-dir", "") or ""), conf.get("run-key") or context.run_id
    return ClientStore("disk", os.path.join(folder, f"run_{key}"), existing=True) if folder else None


def _client_state(context: Context, k: int, conf) -> dict:
    """Client ``k``'s state: ``context.state``, else (a restarted node) its ``state-dir`` file, else empty."""
    state = _tensors(context.state.get(STATE_KEY))
    store = None if state else _node_store(context, conf)
    return store.get(k) if store is not None else state


def make_client_app(mods: list | None = None) -> ClientApp:
    """A ClientApp whose ``train`` calls :func:`fedlib.client.client_update` and whose ``evaluate`` predicts on
    the node's eval shard with its personal tensors. Client state persists in ``context.state`` and, when the
    node config names a ``state-dir``, in a safetensors file there too (a node restarted after a crash goes on
    from it). ``mods``: Flower client mods (e.g. ``flwr.clientapp.mod.message_size_mod``)."""
    app = ClientApp(mods=mods or [])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": _partition_id(context)})}), reply_to=msg)

    def local_update(conf, shared: dict, download: dict, context: Context):
        """The node's client update for the train config ``conf``, its state kept (context and state-dir)."""
        k = int(conf["partition-id"])
        if k != _partition_id(context):
            raise SimulationError(f"message for partition {k} reached the node of partition {_partition_id(context)}")
        ws = _workspace(conf["experiment"], conf["selection"], k)
        res, new_state = client_update(
            ws.model,
            k,
            shared,
            _client_state(context, k, conf),
            ws.init_personal,
            ws.train,
            ws.cfg.train,
            ws.strategy,
            download,
            int(conf["seed"]),
            ws.device,
        )
        # kept only if the server will aggregate it: within SecAgg+'s range (a secure round) and not rejected
        beyond = "clipping-range" in conf and range_error(conf, res, {n: res.shared[n] - shared[n] for n in shared})
        if not beyond and rejection(res, shared, ws.cfg.run.max_update_norm, ws.strategy.privacy) is None:
            context.state[STATE_KEY] = _arrays(new_state)
            store = _node_store(context, conf)
            if store is not None:
                store.put(k, new_state)
        return res

    @app.train(mods=[secagg_train_mod])  # a SecAgg+ round's messages go through Flower's secaggplus_mod
    def train(msg: Message, context: Context) -> Message:
        secure = fit_request(msg)
        if secure is not None:  # a secure round: a legacy FitRes, masked by secaggplus_mod on its way out
            conf, shared = secure
            return fit_reply(msg, conf, local_update(conf, shared, {}, context), shared)
        conf = msg.content["config"]
        k = int(conf["partition-id"])
        res = local_update(conf, _tensors(msg.content["arrays"]), _tensors(msg.content.get("download")), context)
        metrics = MetricRecord(
            {
                "num-examples": res.num_examples,
                "steps": res.steps,
                "loss": float(res.loss),
                "seconds": res.seconds,
                "partition-id": k,
                "update-norm": float(res.update_norm),
            }
        )
        content = RecordDict(
            {
                "arrays": _arrays(res.shared),
                "metrics": metrics,
                "lrs": ConfigRecord({name: float(v) for name, v in res.lrs.items()}),
            }
        )
        if res.extra:
            content["extra"] = _arrays(res.extra)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        conf = msg.content["config"]
        k = _partition_id(context)
        ws = _workspace(conf["experiment"], conf["selection"], k)
        personal = personal_tensors(_client_state(context, k, conf), ws.init_personal)
        preds = personal_predictions(
            ws.model,
            _tensors(msg.content["arrays"]),
            personal,
            ws.eval,
            list(range(len(ws.eval))),
            ws.cfg.train.eval_batch_size,
            ws.device,
        )
        metrics = {f"preds:{view}": [int(preds[j]) for j in pos] for view, pos in ws.views.items()}
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": k, **metrics})}), reply_to=msg)

    return app


# ---- server side ---------------------------------------------------------------------------------------
class FlowerSimulation(Simulation):
    """The simulator driving Flower nodes through a ``Grid`` (see the module docstring)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        grid: Grid,
        out_dir=None,
        node_timeout: float = 120.0,
        reply_timeout: float = 600.0,
        secure_aggregation: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(cfg, out_dir, **kwargs)
        self.grid, self.reply_timeout, self.secure = grid, reply_timeout, secure_aggregation
        if secure_aggregation:
            check_secure(self.strategy, cfg)
        self.node_of = self._connect(node_timeout)

    def _connect(self, timeout: float) -> dict[int, int]:
        """Wait (bounded) for the nodes and learn which partition each one holds."""
        need, t0 = self.fed.num_clients, time.monotonic()
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < need:
            if time.monotonic() - t0 > timeout:
                raise SimulationError(
                    f"only {len(nodes)} of {need} Flower nodes connected within {timeout:.0f} s "
                    "(FedConfig.num_clients nodes are needed, one per partition)"
                )
            time.sleep(0.5)
            nodes = list(self.grid.get_node_ids())
        node_of, errors = self._ask_partitions(nodes, timeout)
        missing = sorted(set(range(need)) - set(node_of))
        if missing:
            said = f"; the nodes' errors: {'; '.join(sorted(set(errors))[:3])}" if errors else ""
            raise SimulationError(f"no Flower node answered for partition(s) {missing[:10]}{said}")
        return node_of

    def _ask_partitions(self, nodes, timeout: float) -> tuple[dict[int, int], list[str]]:
        """``{partition: node id}`` for the nodes that answer a query within ``timeout``, and the errors of those
        that replied with one."""
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        node_of, errors = {}, []
        for reply in self.grid.send_and_receive(msgs, timeout=timeout):
            if reply.has_error():
                errors.append(f"{reply.error.code}: {reply.error.reason}"[:300])
            else:
                node_of[int(reply.content["metrics"]["partition-id"])] = reply.metadata.src_node_id
        return node_of, errors

    def report_round(self, rec: dict) -> None:
        """Each round's line through Flower's logger on the ServerApp's side (what ``flwr run --stream`` and
        ``flwr log`` show), and after the last one where the results are."""
        flwr_log(INFO, "fedlib %s on %s, %s", self.strategy.name, self.fed.task, round_line(rec, self.fed.rounds))
        if rec["round"] == self.fed.rounds:
            flwr_log(INFO, "fedlib results: %s", self.out_dir / "results.jsonl" if self.out_dir else "(no out-dir)")

    def _refresh_nodes(self) -> None:
        """Learn the partitions of nodes that joined since (a node restarted after a crash registers anew, under
        a new node id): their partition's messages go to them from now on."""
        new = sorted(set(self.grid.get_node_ids()) - set(self.node_of.values()))
        if new:
            found, _ = self._ask_partitions(new, 60.0)  # a node that errs now is asked again next round
            for k, node in found.items():
                log.info("partition %d is now served by node %d (it was %s)", k, node, self.node_of.get(k))
            self.node_of.update(found)

    def run(self, resume: bool = False):
        """:meth:`Simulation.run`, with this run's key for the nodes' state folders: new for a fresh run, the
        checkpointed run's (``<out_dir>/run_key``) when it resumes, so its nodes go on from their state."""
        path = self.out_dir / "run_key" if self.out_dir is not None else None
        resuming = resume and path is not None and (self.out_dir / "checkpoints" / "LATEST").exists()
        self.run_key = path.read_text().strip() if resuming and path.exists() else secrets.token_hex(8)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.run_key)
        return super().run(resume)

    def _config(self, k: int, round_: int) -> ConfigRecord:
        return ConfigRecord(
            {
                "run-key": getattr(self, "run_key", ""),
                "experiment": self.cfg.to_json(),
                "selection": json.dumps(self.selection or {}),
                "partition-id": k,
                "round": round_,
                "seed": self.seed_of(round_, k),
            }
        )

    def train_clients(self, round_: int, sampled: list[int], shared: dict, download: dict) -> list[tuple]:
        self._refresh_nodes()
        if self.secure:
            return secure_round(self, round_, sampled, shared)
        msgs = []
        for k in sampled:
            content = RecordDict({"arrays": _arrays(shared), "config": self._config(k, round_)})
            if download:
                content["download"] = _arrays(download)
            msgs.append(Message(content, dst_node_id=self.node_of[k], message_type=MessageType.TRAIN))
        replies = {}
        for reply in self.grid.send_and_receive(msgs, timeout=self.reply_timeout):
            replies[reply.metadata.src_node_id] = reply
        out = []
        for k in sampled:  # in sampling order, as the in-process loop (the sequential server variant cares)
            reply = replies.get(self.node_of[k])
            if reply is None:
                out.append((k, None, None, "no reply (node lost or timed out)"))
            elif reply.has_error():
                out.append((k, None, None, f"client error: {reply.error.reason}"))
            else:
                m = reply.content["metrics"]
                res = ClientResult(
                    k,
                    int(m["num-examples"]),
                    int(m["steps"]),
                    float(m["loss"]),
                    _tensors(reply.content["arrays"]),
                    _tensors(reply.content.get("extra")),
                    float(m["seconds"]),
                    {n: float(v) for n, v in reply.content["lrs"].items()},
                    float(m.get("update-norm", float("nan"))),
                )
                out.append((k, res, None, None))
        return out

    def evaluate_personal(self, views: dict[str, list[list[int]]]) -> dict[str, dict]:
        """Each node predicts on its shards of every view with its personal tensors; pooled here."""
        ks = [k for k in range(self.fed.num_clients) if any(s[k] for s in views.values())]
        msgs = [
            Message(
                RecordDict({"arrays": _arrays(self.server.shared), "config": self._config(k, self.server.round)}),
                dst_node_id=self.node_of[k],
                message_type=MessageType.EVALUATE,
            )
            for k in ks
        ]
        preds: dict[str, dict[int, np.ndarray]] = {view: {} for view in views}
        for reply in self.grid.send_and_receive(msgs, timeout=self.reply_timeout):
            if not reply.has_error():
                m = reply.content["metrics"]
                for view in views:
                    preds[view][int(m["partition-id"])] = np.asarray(m[f"preds:{view}"], dtype=np.int64)
        out = {}
        for view, shards in views.items():
            got = preds[view]
            out[view] = pool_personal(
                self.model.task, got, self.eval, [s if k in got else [] for k, s in enumerate(shards)]
            )
            out[view]["missing"] = len(ks) - len(got)
        return out


def make_server_app(cfg: ExperimentConfig, out_dir=None, result: dict | None = None, **kwargs) -> ServerApp:
    """A ServerApp running ``cfg`` with :class:`FlowerSimulation`; ``result`` (a dict) receives the
    :class:`~fedlib.simulation.SimulationResult` under ``"result"`` when the run ends."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        res = FlowerSimulation(cfg, grid, out_dir, progress=False, **kwargs).run()
        if result is not None:
            result["result"] = res

    return app
