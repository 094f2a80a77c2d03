import json

import pytest
import torch

from fedlib.client import client_update
from fedlib.client_store import ClientStore, state_bytes
from fedlib.config import ConfigError, ModelConfig, TrainConfig
from fedlib.simulation import Simulation, SimulationError, run_simulation

from .configs import build


def tiny_cfg(**fed):
    base = dict(task="sst2", num_clients=4, clients_per_round=2, rounds=3, train_limit=48, eval_limit=24, seed=5)
    return build(
        model=ModelConfig(prompt_len=2), train=TrainConfig(batch_size=8, eval_batch_size=32), **{**base, **fed}
    )


def _same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_run(bundled_backbone):
    a = run_simulation(tiny_cfg(), backbone=bundled_backbone, progress=False)
    b = run_simulation(tiny_cfg(), backbone=bundled_backbone, progress=False)
    _same(a.server.shared, b.server.shared)
    assert a.history["global_metric"].tolist() == b.history["global_metric"].tolist()
    assert a.history["clients"].tolist() == b.history["clients"].tolist()


def test_accounting_counts_the_tensors_exchanged(bundled_backbone):
    res = run_simulation(tiny_cfg(rounds=1, strategy="scaffold"), backbone=bundled_backbone, progress=False)
    rec = res.history.iloc[0]
    shared = sum(v.numel() * 4 for v in res.server.shared.values())
    assert rec["bytes_up"] == 2 * 2 * shared + 2 * 2 * 8  # y_i and dc_i from 2 clients, and their 2 float64 norms
    assert rec["bytes_down"] == 2 * 2 * shared  # x and c to 2 clients
    assert (
        rec["seconds_client"] > 0
        and rec["seconds_eval"] > 0
        and rec["cum_bytes"] == rec["bytes_up"] + rec["bytes_down"]
    )


class Stop(BaseException):
    """Simulates the process dying (not an ordinary client error, which the round would absorb)."""


def test_stop_and_resume_equals_uninterrupted(bundled_backbone, tmp_path):
    cfg = tiny_cfg(rounds=4, checkpoint_every=1, batch_clients="off")  # the kill is injected per client
    cfg = cfg.replace(model=cfg.model.replace(layer_roles=("shared", "personal") * 3))
    full = run_simulation(cfg, tmp_path / "full", backbone=bundled_backbone, progress=False)

    calls = {"n": 0}

    def dies_in_round_3(model, k, *args):
        calls["n"] += 1
        if calls["n"] == 6:  # the 2nd client of round 3
            raise Stop()
        return client_update(model, k, *args)

    with pytest.raises(Stop):
        Simulation(cfg, tmp_path / "cut", backbone=bundled_backbone, progress=False, client_fn=dies_in_round_3).run()
    assert (tmp_path / "cut" / "checkpoints" / "LATEST").read_text() == "round_000002"
    resumed = Simulation(cfg, tmp_path / "cut", backbone=bundled_backbone, progress=False).run(resume=True)
    _same(full.server.shared, resumed.server.shared)
    keep = ["round", "clients", "global_metric", "personal_metric", "train_loss", "bytes_up", "bytes_down"]
    assert full.history[keep].to_dict("records") == resumed.history[keep].to_dict("records")
    lines = (tmp_path / "cut" / "results.jsonl").read_text().splitlines()
    assert [json.loads(l)["round"] for l in lines] == [1, 2, 3, 4]


def test_a_fresh_run_drops_an_earlier_runs_checkpoints(bundled_backbone, tmp_path):
    """A fresh run in a used folder, killed before its first checkpoint, then resumed: the earlier run's checkpoint
    must not be resumed against the new log (it kept only the new log's round 1 of 4)."""
    cfg = tiny_cfg(rounds=4, checkpoint_every=2, batch_clients="off")
    run_simulation(cfg, tmp_path, backbone=bundled_backbone, progress=False)
    assert (tmp_path / "checkpoints" / "LATEST").exists()
    calls = {"n": 0}

    def dies_in_round_2(model, k, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Stop()
        return client_update(model, k, *args)

    with pytest.raises(Stop):
        Simulation(cfg, tmp_path, backbone=bundled_backbone, progress=False, client_fn=dies_in_round_2).run()
    assert not (tmp_path / "checkpoints").exists()
    resumed = Simulation(cfg, tmp_path, backbone=bundled_backbone, progress=False).run(resume=True)
    assert resumed.history.query("round > 0")["round"].tolist() == [1, 2, 3, 4]
    # a checkpoint whose rounds are missing from the log is refused, not resumed with a hole
    (tmp_path / "results.jsonl").write_text((tmp_path / "results.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(SimulationError, match=r"rounds \[2, 3, 4\] of the checkpoint's 4 are not in the log"):
        Simulation(cfg, tmp_path, backbone=bundled_backbone, progress=False).run(resume=True)


def test_non_finite_or_raising_client_is_left_out(bundled_backbone, caplog):
    def faulty(model, k, *args):
        if k == 0:
            raise RuntimeError("disk full")
        res, state = client_update(model, k, *args)
        if k == 1:
            res.shared = {n: torch.full_like(v, float("nan")) for n, v in res.shared.items()}
        return res, state

    # every client takes part in every round, so both faults are met each round
    res = run_simulation(
        tiny_cfg(rounds=2, num_clients=3, clients_per_round=3),
        backbone=bundled_backbone,
        progress=False,
        client_fn=faulty,
    )
    h = res.history
    for fs in h["failures"]:
        assert sorted((f["client"], f["reason"]) for f in fs) == [
            (0, "RuntimeError: disk full"),
            (1, "non-finite update"),
        ]
    assert h["failed"].tolist() == [2, 2] and h["reported"].tolist() == [1, 1]
    assert all(torch.isfinite(v).all() for v in res.server.shared.values())
    assert "left out" in caplog.text


def test_every_client_failing_stops_the_run_clearly(bundled_backbone, tmp_path):
    def broken(*a):
        raise ValueError("boom")

    with pytest.raises(SimulationError, match="every client failed in 2 rounds in a row"):
        run_simulation(
            tiny_cfg(rounds=5, max_failed_rounds=2, checkpoint_every=1),
            tmp_path,
            backbone=bundled_backbone,
            progress=False,
            client_fn=broken,
        )


def test_personal_state_persists_across_rounds(bundled_backbone):
    cfg = tiny_cfg(num_clients=2, clients_per_round=2, rounds=2)
    cfg = cfg.replace(model=cfg.model.replace(layer_roles=("personal",) * 2 + ("shared",) * 4))
    seen = {}

    def spy(model, k, shared, state, *args):
        seen.setdefault(k, []).append({n: v.clone() for n, v in state.items()})
        res, new = client_update(model, k, shared, state, *args)
        seen[k].append(new)
        return res, new

    sim = Simulation(cfg, backbone=bundled_backbone, progress=False, client_fn=spy)
    sim.run()
    for k in (0, 1):
        first_in, first_out, second_in, _ = seen[k]
        assert first_in == {}  # first round: initial values
        _same(first_out, second_in)  # round 2 starts from round 1's state
        assert {n.split("/")[0] for n in first_out} == {"personal", "opt"}  # personal layers + AdamW state
        assert "personal/prompt.layer.0" in first_out and "personal/prompt.layer.2" not in first_out
    assert not torch.equal(seen[0][1]["personal/prompt.layer.0"], seen[1][1]["personal/prompt.layer.0"])


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("fed.clients_per_round", 9, "must be in [1, num_clients=4]"),
        ("fed.rounds", 0, "must be >= 1"),
        ("strategy.name", "fedsgd", "one of"),
        ("train.lr", -1.0, "must be > 0"),
        ("partition.alpha", 0.0, "must be > 0"),
    ],
)
def test_invalid_config_fails_before_training(field, value, needle):
    with pytest.raises(ConfigError) as err:
        tiny_cfg(**{field.split(".")[1] if field != "strategy.name" else "strategy": value})
    assert f"{field}={value!r}" in str(err.value) and needle in str(err.value)


@pytest.mark.parametrize("run", [{"client_state": "disk"}, {"client_memory_mb": 1e-3}], ids=["disk", "budget"])
def test_client_state_on_disk_gives_the_same_run(bundled_backbone, tmp_path, run):
    """All states on disk, or spilled beyond a (tiny) memory budget: the same run as all in memory."""
    cfg = tiny_cfg(rounds=2)
    cfg = cfg.replace(model=cfg.model.replace(layer_roles=("personal",) + ("shared",) * 5))
    sim = Simulation(cfg.replace(run=cfg.run.replace(**run)), tmp_path, backbone=bundled_backbone, progress=False)
    mem = Simulation(cfg, backbone=bundled_backbone, progress=False)
    spilled_result, mem_result = sim.run(), mem.run()
    assert list((tmp_path / "clients").glob("client_*.safetensors")) and sim.store.stats["stored"] > 0
    assert sim.store.nbytes <= max(state_bytes(sim.store.get(k)) for k in sim.store.clients())  # one state at most
    _same(mem_result.server.shared, spilled_result.server.shared)
    assert sim.store.clients() == mem.store.clients()
    for k in mem.store.clients():
        _same(mem.store.get(k), sim.store.get(k))


def test_validation_holds_out_training_examples_instead_of_the_eval_split():
    from fedlib.simulation import load_rows
    from fedlib.tasks import load_task

    cfg = build(task="rte", train_limit=40, validation=10)
    train, val = load_rows(cfg, "train"), load_rows(cfg, "eval")
    pool = load_task("rte", "train", limit=50)
    assert (len(train), len(val)) == (40, 10)
    assert sorted(list(train["text"]) + list(val["text"])) == sorted(
        pool["text"]
    )  # a split of the training rows, no overlap
    assert load_rows(build(task="rte", train_limit=40, validation=10, seed=7), "eval")["text"] == list(val["text"])
    with pytest.raises(ConfigError, match="data.validation=5000 is invalid"):
        load_rows(build(task="rte", validation=5000), "eval")
    everything = len(load_task("rte", "train"))  # train_limit 0 (all) holds out from all of them, not from N
    assert len(load_rows(build(task="rte", train_limit=0, validation=100), "train")) == everything - 100


def test_client_store_spills_least_recently_used_beyond_its_budget(tmp_path):
    def state(v):
        return {"personal/p": torch.full((256,), float(v)), "opt/p/exp_avg": torch.full((256,), -float(v))}

    store = ClientStore("memory", tmp_path, memory_mb=3 * state_bytes(state(0)) / 2**20)  # room for three
    for k in range(10):
        store.put(k, state(k))
        assert store.nbytes <= store.budget
    assert store.stats["stored"] == 7 and len(list(tmp_path.glob("*.safetensors"))) == 7
    store.get(0)  # read back from disk; 7, 8, 9 stay in memory
    store.put(0, state(100))  # the new state wins over its stale file
    assert store.get(0)["personal/p"][0] == 100 and store.get(3)["opt/p/exp_avg"][0] == -3
    assert store.clients() == list(range(10)) and store.get(42) == {}
    assert store.peak_bytes <= store.budget and store.stats["loaded"] >= 2
    with pytest.raises(ValueError, match="memory_mb"):
        ClientStore("memory", memory_mb=-1)


def test_tensorboard_tracking_writes_every_round_and_the_config(bundled_backbone, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg(rounds=2)
    cfg = cfg.replace(run=cfg.run.replace(tracking="tensorboard"))
    run_simulation(cfg, tmp_path, backbone=bundled_backbone, progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"metrics/global_metric", "metrics/personal_metric", "train/train_loss", "cost/cum_bytes"} <= set(tags)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    logged = {e.step: e.value for e in events.Scalars("cost/cum_bytes")}
    assert logged == {r["round"]: r["cum_bytes"] for r in rows}
    assert "fed" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def test_tracking_off_by_default_writes_nothing(bundled_backbone, tmp_path):
    run_simulation(tiny_cfg(rounds=1), tmp_path, backbone=bundled_backbone, progress=False)
    assert not (tmp_path / "tensorboard").exists()


def test_the_drift_recorder_follows_the_rounds_and_what_the_server_kept(bundled_backbone):
    """Rounds are numbered as the run numbers them (a round whose clients were all left out is not merged into the
    next), and a client left out of the aggregate is left out of the drift too."""
    from fedlib.drift import DriftRecorder

    calls = {"n": 0}

    def faulty(model, k, *args):
        calls["n"] += 1
        res, state = client_update(model, k, *args)
        if k == 1 or calls["n"] in (3, 4):  # client 1 always, and both clients of round 2
            res.shared = {n: torch.full_like(v, float("nan")) for n, v in res.shared.items()}
        return res, state

    rec = DriftRecorder(faulty)
    res = Simulation(
        tiny_cfg(rounds=3, batch_clients="off"), backbone=bundled_backbone, progress=False, client_fn=rec
    ).run()
    frame = rec.frame()
    kept = {r: [k for k in ks if k != 1] for r, ks in zip(res.history["round"], res.history["clients"]) if r > 0}
    kept[2] = []
    assert sorted(set(frame["round"])) == [r for r, ks in kept.items() if ks]
    assert all(sorted(frame[frame["round"] == r]["client"]) == sorted(ks) for r, ks in kept.items())
    assert frame["drift"].notna().all()
