"""Flower's Deployment Runtime on loopback: a real SuperLink and two SuperNodes (plain and TLS), and
``flwr run`` of the project's app in simulation. Every process started is gone afterwards."""

import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow  # real SuperLink and SuperNode processes

from fedlib.flower.deploy import LocalDeployment  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "flower_app"
RUN = {"num-clients": 2, "clients-per-round": 2, "train-limit": 32, "eval-limit": 16}


def _run(tmp_path, run_config: dict, **kwargs) -> list[dict]:
    import psutil

    out = tmp_path / "out"
    fed = LocalDeployment(2, tmp_path / "federation", **kwargs)
    with fed:
        fed.run(APP, {**RUN, **run_config, "out-dir": str(out)}, timeout=500)
    assert len(fed.stopped) >= (1 if kwargs.get("simulation") else 3)
    alive = [p for p in fed.stopped if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes survived stop(): {alive}"
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _check(rows: list[dict], rounds: int) -> None:
    if rows[0]["round"] == 0:  # layer selection's cost (FedPepTAO), logged before round 1
        assert rows[0]["phase"] == "selection" and rows[0]["bytes_up"] > 0
        rows = rows[1:]
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert all(r["reported"] == 2 and r["failed"] == 0 for r in rows)
    assert all(r["bytes_up"] > 0 and math.isfinite(r["train_loss"]) for r in rows)
    assert 0.0 <= rows[-1]["personal_metric"] <= 1.0 and 0.0 <= rows[-1]["global_metric"] <= 1.0


def test_fedpeptao_on_a_loopback_superlink_and_two_supernodes(tmp_path):
    rows = _run(tmp_path, {"strategy": "fedpeptao", "shared-layers": 3, "num-server-rounds": 2})
    _check(rows, 2)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make test certificates")
def test_tls_deployment_on_loopback(tmp_path):
    rows = _run(tmp_path, {"strategy": "fedavg", "num-server-rounds": 1}, tls=True)
    _check(rows, 1)
    assert (tmp_path / "federation" / "certs" / "ca.crt").exists()


def test_flwr_run_in_simulation(tmp_path):
    rows = _run(tmp_path, {"strategy": "fedpeptao", "shared-layers": 3, "num-server-rounds": 1}, simulation=True)
    _check(rows, 1)
