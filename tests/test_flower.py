"""The same algorithm on Flower: parity with the in-process simulator, and failing clients."""

import pytest
import torch

pytest.importorskip("flwr")

from fedlib.config import ModelConfig, TrainConfig  # noqa: E402
from fedlib.simulation import run_simulation  # noqa: E402

from .configs import build  # noqa: E402


def cfg(**fed):
    base = dict(
        task="sst2",
        strategy="fedpeptao",
        num_clients=3,
        clients_per_round=2,
        rounds=2,
        train_limit=48,
        eval_limit=24,
        shared_layers=2,
        seed=3,
        batch_clients="off",
    )  # Flower nodes train one client each
    return build(model=ModelConfig(prompt_len=2), train=TrainConfig(batch_size=8), **{**base, **fed})


def on_grid(c, client_app=None):
    """``c`` through the ServerApp's code (``FlowerSimulation``) with every message delivered to the ClientApp on an
    in-process Grid: the messages and code of a deployment, without a SuperLink or Ray (Flower's Simulation Runtime
    runs in ``tests/test_benchmarks.py::test_flower_parity`` and ``flwr run`` in ``test_flower_deployment.py``)."""
    from fedlib.flower.apps import FlowerSimulation, make_client_app
    from fedlib.flower.local_grid import LocalGrid

    grid = LocalGrid(client_app or make_client_app(), c.fed.num_clients)
    return FlowerSimulation(c, grid, progress=False).run()


@pytest.fixture(scope="module")
def runs():
    c = cfg()
    return run_simulation(c, progress=False), on_grid(c)


def test_flower_gives_the_in_process_result(runs):
    local, flower = runs
    assert local.server.shared.keys() == flower.server.shared.keys()
    diff = max(float((local.server.shared[k] - flower.server.shared[k]).abs().max()) for k in local.server.shared)
    assert diff < 1e-5
    cols = ["round", "clients", "reported", "bytes_up", "bytes_down"]
    assert local.history[cols].to_dict("records") == flower.history[cols].to_dict("records")
    for col in ("global_metric", "personal_metric", "personal_iid_metric", "train_loss"):
        assert local.history[col].tolist() == pytest.approx(flower.history[col].tolist(), abs=1e-4, nan_ok=True)
    # FedPepTAO's per-client control variates live on the server, keyed by partition id
    assert {k for k in flower.server.controls if k != "c"} == {k for k in local.server.controls if k != "c"}


def test_a_failing_client_is_counted_and_dp_gives_the_in_process_result():
    """Central DP through Flower: each node clips its own update, the ServerApp noises the sum; a node that fails is
    counted and left out. The same seed gives the in-process run's tensors, records and epsilon."""
    from flwr.app import Message

    from fedlib.client import client_update
    from fedlib.flower.apps import make_client_app

    def fail_partition_1(msg: Message, context, call_next):
        if msg.metadata.message_type == "train" and int(context.node_config["partition-id"]) == 1:
            raise RuntimeError("node lost its disk")
        return call_next(msg, context)

    def fail_client_1(model, k, *args):
        if k == 1:
            raise RuntimeError("node lost its disk")
        return client_update(model, k, *args)

    c = cfg(strategy="fedavg", clients_per_round=3, rounds=2)
    c = c.replace(privacy=c.privacy.replace(mode="central", clip_norm=0.05, noise_multiplier=1.0))
    res = on_grid(c, make_client_app(mods=[fail_partition_1]))
    local = run_simulation(c, progress=False, client_fn=fail_client_1)
    rec = res.history.iloc[0]
    assert rec["reported"] == 2 and rec["failed"] == 1 and rec["failures"][0]["client"] == 1
    assert all(torch.isfinite(v).all() for v in res.server.shared.values())
    for k, v in local.server.shared.items():
        assert float((v - res.server.shared[k]).abs().max()) < 1e-5
    cols = ["round", "clients", "reported", "epsilon", "releases", "clipped_fraction"]
    assert local.history[cols].to_dict("records") == res.history[cols].to_dict("records")
    assert res.history["epsilon"].iloc[-1] > res.history["epsilon"].iloc[0] > 0


def test_too_few_nodes_fails_clearly_instead_of_waiting_forever():
    from fedlib.flower.apps import FlowerSimulation
    from fedlib.simulation import SimulationError

    class TwoNodes:
        def get_node_ids(self):
            return [11, 12]

    with pytest.raises(SimulationError, match="only 2 of 3 Flower nodes connected within 1 s"):
        FlowerSimulation(cfg(strategy="fedavg"), TwoNodes(), node_timeout=1.0, progress=False)


def test_nodes_that_reply_with_errors_are_named_in_the_failure():
    """Every node connected, but their ClientApps replied to the partition query with errors: the failure says which
    (before, only that no node answered)."""
    from flwr.app import Error, Message

    from fedlib.flower.apps import FlowerSimulation, make_client_app
    from fedlib.flower.local_grid import LocalGrid
    from fedlib.simulation import SimulationError

    class FailingNodes(LocalGrid):
        def send_and_receive(self, messages, *, timeout=None):
            return [Message(Error(code=3, reason="ClientApp raised: out of memory"), reply_to=m) for m in messages]

    with pytest.raises(SimulationError, match=r"partition\(s\) \[0, 1, 2\]; the nodes' errors: 3: ClientApp raised"):
        FlowerSimulation(cfg(strategy="fedavg"), FailingNodes(make_client_app(), 3), node_timeout=1.0, progress=False)


def test_gpu_share_per_virtual_node(monkeypatch):
    from fedlib.flower.ray_simulation import gpu_share

    c = cfg(clients_per_round=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_share(c, None) == 0.0 and gpu_share(c, 0.5) == 0.5
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_share(c, None) == 0.5 and gpu_share(c, 2) == 2.0  # the sampled clients share one GPU by default
    with pytest.raises(ValueError, match="num_gpus=1.5"):
        gpu_share(c, 1.5)


def test_a_shorter_node_heartbeat_leaves_clientapp_task_lifetimes_alone():
    """``fedlib.flower.supernode --heartbeat 10`` changes the node's heartbeat (the sender and the interval it declares)
    and not the node's task store, which gives ClientApp tasks Flower's 30 s (until the process starts) and 2 x 30 s
    past each of their heartbeats: at 10 s a ClientApp training longer than one of its ~20 s heartbeat gaps was
    reported "ClientApp stopped responding". In a fresh process, as the launcher runs it."""
    import subprocess
    import sys

    code = (
        "from fedlib.flower.supernode import set_heartbeat; set_heartbeat(10.0)\n"
        "import flwr.supernode.cli  # what the launcher then runs: imports the node's task stores\n"
        "import flwr.supercore.corestate.in_memory_corestate as mem, flwr.supercore.corestate.sql_corestate as sql\n"
        "import flwr.supercore.heartbeat as sender, flwr.supernode.fleet_http_connection as conn\n"
        "print(sender.HEARTBEAT_DEFAULT_INTERVAL, conn.HEARTBEAT_DEFAULT_INTERVAL,"
        " mem.HEARTBEAT_DEFAULT_INTERVAL, sql.HEARTBEAT_DEFAULT_INTERVAL)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["10.0", "10.0", "30", "30"]


def test_ray_workers_run_at_nice_0_unless_the_user_says(monkeypatch, tmp_path):
    """Ray starts its workers (Flower's virtual nodes: the ClientApps) at nice 15, where anything else running starves
    them: with two busy processes beside it, the Ray parity smoke run failed at nice 15 (no node answered in 120 s)
    and took 107 s at nice 0. Both places that start Ray (``start_ray``, and ``flwr run`` in simulation through
    ``LocalDeployment``'s environment) ask for nice 0, and keep what the user set."""
    import os

    import ray

    from fedlib.flower.deploy import LocalDeployment
    from fedlib.flower.ray_simulation import start_ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    for key in ("RAY_worker_niceness", "PYTHONPATH"):  # start_ray sets both: restored after the test
        monkeypatch.setenv(key, os.environ.get(key, ""))
    monkeypatch.delenv("RAY_worker_niceness")
    assert LocalDeployment(1, tmp_path, simulation=True).env["RAY_worker_niceness"] == "0"
    start_ray({})
    assert os.environ["RAY_worker_niceness"] == "0"
    monkeypatch.setenv("RAY_worker_niceness", "5")
    start_ray({})
    assert LocalDeployment(1, tmp_path, simulation=True).env["RAY_worker_niceness"] == "5"
    assert os.environ["RAY_worker_niceness"] == "5"


def test_a_nodes_state_dir_keeps_each_runs_client_state_apart(tmp_path):
    """A node restarted within a run (or a run resumed from its checkpoints: the server sends the checkpointed
    run's key) reads its client's state back; a later run on the same node starts afresh instead of from the last
    run's personal prompts and AdamW moments."""
    from flwr.app import Context, RecordDict

    from fedlib.flower.apps import FlowerSimulation, _node_store

    config = {"partition-id": 0, "num-partitions": 1, "state-dir": str(tmp_path)}
    context = Context(run_id=11, node_id=1, node_config=config, state=RecordDict(), run_config={})
    _node_store(context, {"run-key": "a"}).put(0, {"personal/x": torch.ones(2)})
    assert _node_store(context, {"run-key": "a"}).get(0)["personal/x"].tolist() == [1.0, 1.0]
    assert _node_store(context, {"run-key": "b"}).get(0) == {}

    class Keyed(FlowerSimulation):  # the key's life, without nodes: run() keys the run, then stops
        def __init__(self, out):
            self.out_dir = out

    def key(resume: bool) -> str:
        sim = Keyed(tmp_path / "run")
        try:
            sim.run(resume=resume)
        except Exception:  # the bare object cannot run: only its key matters here
            pass
        return sim.run_key

    first = key(False)
    assert key(True) != first  # nothing to resume from: a fresh run, a new key
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("round_000001")
    second = key(False)
    assert key(True) == second != first  # resumed: the checkpointed run's key


def test_a_node_keeps_no_state_the_server_left_out():
    """The server leaves out an update beyond run.max_update_norm (or non-finite) and the in-process run keeps the
    client's previous state; a node must not keep the new one either (it did, and trained on from it)."""
    from fedlib.flower.apps import STATE_KEY, FlowerSimulation, make_client_app
    from fedlib.flower.local_grid import LocalGrid

    c = cfg(strategy="fedavg", shared_layers=0, max_update_norm=1e-12)  # every update left out
    grid = LocalGrid(make_client_app(), c.fed.num_clients)
    res = FlowerSimulation(c, grid, progress=False).run()
    assert (res.history.query("round > 0")["reported"] == 0).all()
    assert all(STATE_KEY not in node.state for node in grid.nodes.values())


def test_the_server_app_resumes_from_checkpoints_when_the_run_config_says(monkeypatch):
    from flwr.app import Context, RecordDict

    import fedlib.flower.server_app as server_app

    calls = []

    class Recorder:
        def __init__(self, cfg, grid, out, **kwargs):
            self.out = out

        def run(self, resume=False):
            calls.append((self.out, resume))

    monkeypatch.setattr(server_app, "FlowerSimulation", Recorder)
    for run_config in ({"out-dir": "runs/x"}, {"out-dir": "runs/x", "resume": True}):
        ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
        server_app.main(None, ctx)
    assert calls == [("runs/x", False), ("runs/x", True)]
