"""Flower's Deployment Runtime on loopback: a real SuperLink and three SuperNodes over TLS, one killed and restarted
mid-run, and ``flwr run`` of the project's app in simulation. Every process started is gone afterwards."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytestmark = [pytest.mark.slow, pytest.mark.flower_runtime]  # real SuperLink and SuperNode processes

from fedlib.flower.deploy import LocalDeployment  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "flower_app"
RUN = {"num-clients": 2, "clients-per-round": 2, "train-limit": 32, "eval-limit": 16}


def _run(tmp_path, run_config: dict, **kwargs) -> list[dict]:
    import psutil

    out = tmp_path / "out"
    fed = LocalDeployment(2, tmp_path / "federation", **kwargs)
    with fed:
        streamed = fed.run(APP, {**RUN, **run_config, "out-dir": str(out)}, timeout=500)
    assert len(fed.stopped) >= (1 if kwargs.get("simulation") else 3)
    alive = [p for p in fed.stopped if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes survived stop(): {alive}"
    link = tmp_path / "federation" / "superlink.log"
    said = f"{streamed[-3000:]}\n--- superlink.log:\n{link.read_text()[-3000:] if link.exists() else ''}"
    assert (out / "results.jsonl").exists(), f"the run wrote no results:\n{said}"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    _check_stream(streamed, rows, out)
    return rows


def _check_stream(streamed: str, rows: list[dict], out: Path) -> None:
    """``flwr run --stream`` shows what the ServerApp did: a line per round with its clients, views and bytes,
    then where the results are."""
    for r in rows:
        if r["round"] >= 1:
            line = re.search(
                rf"fedlib \w+ on \w+, round {r['round']}/\d+: (\d+) clients reported, \d+ failed; .* bytes;", streamed
            )
            assert line and int(line.group(1)) == r["reported"], streamed[-3000:]
    assert f"global {rows[-1]['global_metric']:.4f}" in streamed, streamed[-3000:]
    assert f"fedlib results: {out / 'results.jsonl'}" in streamed, streamed[-3000:]


def _check(rows: list[dict], rounds: int) -> None:
    if rows[0]["round"] == 0:  # layer selection's cost (FedPepTAO), logged before round 1
        assert rows[0]["phase"] == "selection" and rows[0]["bytes_up"] > 0
        rows = rows[1:]
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert all(r["reported"] == 2 and r["failed"] == 0 for r in rows)
    assert all(r["bytes_up"] > 0 and math.isfinite(r["train_loss"]) for r in rows)
    assert 0.0 <= rows[-1]["personal_metric"] <= 1.0 and 0.0 <= rows[-1]["global_metric"] <= 1.0


def test_flwr_run_in_simulation_under_secure_aggregation(tmp_path):
    """``flwr run`` of the project's app, FedAvg with every round through Flower's SecAgg+ (``secure-aggregation``);
    FedPepTAO's app run is the TLS deployment's above."""
    rows = _run(tmp_path, {"strategy": "fedavg", "secure-aggregation": True, "num-server-rounds": 1}, simulation=True)
    _check(rows, 1)


def test_fedpeptao_over_tls_survives_a_supernode_killed_mid_round(tmp_path):
    """FedPepTAO (layer selection, then 3 rounds) through a real SuperLink and three SuperNodes over TLS with a
    throw-away CA. SIGKILL one SuperNode while round 2 trains: round 2 completes with the other two (the node counted
    failed once the SuperLink marks it offline: two missed heartbeats, here 2 x 10 s, the shortest Flower allows),
    the node restarted rejoins under a new node id, and trains round 3 from the state it had saved after round 1
    (its AdamW step count: 2 rounds of local steps, not 1). The stream shows every round; no process survives."""
    import time

    import psutil
    from safetensors.torch import load_file

    out, rounds = tmp_path / "out", 3
    run = {**RUN, "num-clients": 3, "clients-per-round": 3, "num-server-rounds": rounds, "strategy": "fedpeptao"}
    run.update({"shared-layers": 3, "out-dir": str(out), "eval-every": 0})  # evaluated after the last round
    tls = shutil.which("openssl") is not None  # without openssl (to make certificates): the plain deployment
    fed = LocalDeployment(3, tmp_path / "federation", state_dirs=True, heartbeat=10, tls=tls)  # Flower's shortest
    with fed:
        proc, log = fed.start_run(APP, run), out / "results.jsonl"
        deadline = time.monotonic() + 300
        while not (log.exists() and any(json.loads(x)["round"] == 1 for x in log.read_text().splitlines())):
            assert proc.poll() is None and time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.2)
        killed = fed.kill_node(1)  # round 2's messages are out: node 1 dies while training (or about to)
        fed.start_node(1)
        streamed = fed.wait_run(proc, timeout=400)
    assert (tmp_path / "federation" / "certs" / "ca.crt").exists() == tls
    alive = [p for p in fed.stopped if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert len(fed.stopped) >= 4 and not alive, f"processes survived stop(): {alive}"
    every = [json.loads(x) for x in log.read_text().splitlines()]
    _check_stream(streamed, every, out)
    assert every[0]["phase"] == "selection" and every[0]["bytes_up"] > 0
    rows = [r for r in every if r["round"] >= 1]
    assert killed and [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert rows[1]["reported"] == 2 and [f["client"] for f in rows[1]["failures"]] == [1]
    assert all(r["reported"] == 3 for r in (rows[0], *rows[2:])), [r["failures"] for r in rows]
    part = json.loads((out / "partition.json").read_text())
    steps_per_round = math.ceil(len(part["train"][1]) / 8)  # the default batch size, one local epoch
    state = load_file(str(next((tmp_path / "federation" / "state_1").glob("run_*/client_00001.safetensors"))))
    step = max(float(v.max()) for k, v in state.items() if k.endswith("/step"))
    assert step == 2 * steps_per_round, (step, steps_per_round)  # rounds 1 and 3: nothing lost in the crash
