"""Hostile inputs, killed runs and corrupted files: a valid result or the library's own clear error."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlib.checkpoint import CheckpointError, load_run_checkpoint
from fedlib.client import client_update
from fedlib.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from fedlib.partition import PartitionError
from fedlib.simulation import Simulation, SimulationError, run_simulation
from fedlib.tasks import TaskDataError, load_task

from .configs import build

ROOT = Path(__file__).resolve().parent.parent

# ---- property-based: loaders and config parsing -----------------------------------------------------
FIELDS = st.one_of(st.text(max_size=30), st.sampled_from(["0", "1", "entailment", "", "\t", "\r", "Ā", "x" * 5000]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.one_of(
        st.binary(max_size=2000),
        st.lists(st.lists(FIELDS, min_size=0, max_size=5), max_size=8).map(
            lambda rows: "\n".join("\t".join(r) for r in [["sentence", "label"], *rows]).encode()
        ),
        st.text(max_size=500).map(lambda t: t.encode("utf-16")),
    )
)
def test_tsv_loader_gives_a_dataset_or_task_data_error(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp("data")
    (folder / "sst-2").mkdir()
    (folder / "sst-2" / "train.tsv").write_bytes(raw)
    try:
        ds = load_task("sst2", "train", data_dir=folder)
    except TaskDataError as err:
        assert "train.tsv" in str(err)
    else:
        assert set(ds["label"]) <= {0, 1} and len(ds) > 0


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    [
        "lr",
        "batch_size",
        "rounds",
        "strategy",
        "num_clients",
        "clients_per_round",
        "prompt_len",
        "layer_roles",
        "head",
        "alpha",
        "seed",
        "task",
        "name",
        "max_length",
        "server_lr",
        "method",
        "shared_layers",
        "device",
        "mu",
        "train_limit",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        JSONISH,
        st.dictionaries(
            st.sampled_from(["model", "train", "fed", "data", "partition", "strategy", "selection", "run"]),
            st.one_of(
                JSONISH,
                st.dictionaries(
                    FIELD_NAMES, JSONISH | st.integers(-(10**30), 10**30) | st.floats(-1e308, 1e308), max_size=4
                ),
            ),
            max_size=3,
        ),
    )
)
def test_config_parsing_gives_a_config_or_config_error(data):
    try:
        cfg = ExperimentConfig.from_dict(data)
    except ConfigError:
        return
    assert ExperimentConfig.from_json(cfg.to_json()) == cfg


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_config_text_parsing_never_crashes(text):
    for parse in (ExperimentConfig.from_json, ExperimentConfig.from_yaml):
        try:
            parse(text)
        except ConfigError:
            pass


# ---- numerical faults ------------------------------------------------------------------------------
def tiny(**fed):
    base = dict(task="sst2", num_clients=4, clients_per_round=4, rounds=2, train_limit=48, eval_limit=24, seed=7)
    return build(model=ModelConfig(prompt_len=2), train=TrainConfig(batch_size=8), **{**base, **fed})


def test_diverging_single_example_and_one_label_clients(bundled_backbone):
    def diverging(model, k, shared, state, init, data, cfg, *rest):
        if k == 0:
            cfg = cfg.replace(lr=1e6)
        return client_update(model, k, shared, state, init, data, cfg, *rest)

    sim = Simulation(tiny(), backbone=bundled_backbone, progress=False, client_fn=diverging)
    labels = sim.train.labels
    sim.partition.train[1] = sim.partition.train[1][:1]  # a single example
    sim.partition.train[2] = [i for i in range(len(labels)) if labels[i] == 1][:10]  # one label only
    res = sim.run()
    reasons = [f["reason"] for fs in res.history["failures"] for f in fs]
    assert [f["client"] for fs in res.history["failures"] for f in fs] == [0, 0]  # only the diverging one
    assert all("exceeds max_update_norm" in r or r == "non-finite update" for r in reasons)
    assert all(torch.isfinite(v).all() and v.abs().max() < 10 for v in res.server.shared.values())
    assert res.history["reported"].tolist() == [3, 3]


# ---- corrupted and foreign files ---------------------------------------------------------------------
def test_corrupted_checkpoint_is_detected_and_names_the_file(bundled_backbone, tmp_path):
    run_simulation(tiny(checkpoint_every=1), tmp_path, backbone=bundled_backbone, progress=False)
    target = tmp_path / "checkpoints" / (tmp_path / "checkpoints" / "LATEST").read_text()
    for name, damage in [
        ("clients.safetensors", lambda b: b[:-1] + bytes([b[-1] ^ 1])),
        ("server.safetensors", lambda b: b[: len(b) // 2]),
    ]:
        path = target / name
        good = path.read_bytes()
        path.write_bytes(damage(good))
        with pytest.raises(CheckpointError, match=rf"{name}: checksum mismatch"):
            load_run_checkpoint(tmp_path / "checkpoints")
        with pytest.raises(CheckpointError):
            Simulation(tiny(checkpoint_every=1), tmp_path, backbone=bundled_backbone, progress=False).run(resume=True)
        path.write_bytes(good)
    (target / "state.json").write_text("{ torn")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_run_checkpoint(tmp_path / "checkpoints")


def test_checkpoint_of_another_config_and_partition_of_other_data(bundled_backbone, tmp_path):
    run_simulation(tiny(checkpoint_every=1), tmp_path, backbone=bundled_backbone, progress=False)
    with pytest.raises(SimulationError, match="another configuration"):
        Simulation(tiny(checkpoint_every=1, rounds=3), tmp_path, backbone=bundled_backbone, progress=False).run(
            resume=True
        )
    with pytest.raises(PartitionError, match="partition.json: made from other train data"):
        Simulation(tiny(checkpoint_every=1, train_limit=40), tmp_path, backbone=bundled_backbone, progress=False)


def test_a_fresh_run_in_a_used_folder_partitions_for_its_own_configuration(bundled_backbone, tmp_path):
    """partition.json is reused only when it was made for the run's method, clients, seed and parameters: a new
    seed or alpha in the same folder gets its own shards (it silently trained on the old run's)."""
    from fedlib.partition import Partition
    from fedlib.simulation import partition_for

    first = Simulation(tiny(), tmp_path, backbone=bundled_backbone, progress=False)
    for changed in (tiny(seed=8), tiny(alpha=0.1), tiny(num_clients=3, clients_per_round=3)):
        sim = Simulation(changed, tmp_path, backbone=bundled_backbone, progress=False)
        fresh = partition_for(changed, sim.train.labels, sim.eval.labels)
        assert sim.partition.train == fresh.train != first.partition.train
        assert Partition.load(tmp_path / "partition.json").train == fresh.train  # written for a resume
    again = Simulation(tiny(num_clients=3, clients_per_round=3), tmp_path, backbone=bundled_backbone, progress=False)
    assert again.partition.train == sim.partition.train


# ---- kill -9 and resume ----------------------------------------------------------------------------
DRIVER = r"""
import os, sys, time, json, torch
os.environ["FEDLIB_PROGRESS"] = "0"
torch.set_num_threads(1)
out, mode = sys.argv[1], sys.argv[2]
from safetensors.torch import save_file
import fedlib.checkpoint as ck
from fedlib.client import client_update
from fedlib.config import DataConfig, ExperimentConfig, FedConfig, ModelConfig, RunConfig, TrainConfig
from fedlib.simulation import Simulation
cfg = ExperimentConfig(model=ModelConfig(prompt_len=2, layer_roles=("shared", "personal") * 3),
                       train=TrainConfig(batch_size=8),
                       fed=FedConfig(task="sst2", num_clients=4, clients_per_round=2, rounds=4, seed=9),
                       data=DataConfig(train_limit=48, eval_limit=24), run=RunConfig(checkpoint_every=1))
calls = {"n": 0}
def client_fn(*a):
    calls["n"] += 1
    if mode == "round" and calls["n"] == 6:          # 2nd client of round 3
        open(os.path.join(out, "MARK"), "w").close(); time.sleep(60)
    return client_update(*a)
if mode == "checkpoint":
    real = ck.save_file
    def slow(tensors, path, **kw):
        real(tensors, path, **kw)
        if "round_000003" in path and path.endswith("clients.safetensors"):
            open(os.path.join(out, "MARK"), "w").close(); time.sleep(60)
    ck.save_file = slow
res = Simulation(cfg, out, progress=False, client_fn=client_fn).run(resume=(mode == "resume"))
save_file({k: v.contiguous() for k, v in res.server.shared.items()}, os.path.join(out, "final.safetensors"))
"""


def _drive(out: Path, mode: str, kill: bool):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), mode], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if kill:
        deadline = time.time() + 240
        while not (out / "MARK").exists():
            assert proc.poll() is None and time.time() < deadline, "driver ended before reaching the kill point"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        (out / "MARK").unlink()
        return
    assert proc.wait(timeout=300) == 0


@pytest.mark.slow
@pytest.mark.parametrize("where", ["round", "checkpoint"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, where):
    from safetensors.torch import load_file

    _drive(tmp_path / "full", "none", kill=False)
    cut = tmp_path / "cut"
    cut.mkdir()
    _drive(cut, where, kill=True)
    if (
        where == "checkpoint"
    ):  # killed while writing round 3: LATEST still names round 2, the half-written folder is a temp
        assert (cut / "checkpoints" / "LATEST").read_text() == "round_000002"
    _drive(cut, "resume", kill=False)
    assert not list((cut / "checkpoints").glob(".tmp_round_*"))  # the torn temporary folder was swept
    a, b = load_file(str(tmp_path / "full" / "final.safetensors")), load_file(str(cut / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def rows(p):
        keep = ("round", "clients", "global_metric", "personal_metric", "train_loss", "bytes_up")
        return [{k: r[k] for k in keep} for r in map(json.loads, (p / "results.jsonl").read_text().splitlines())]

    assert rows(tmp_path / "full") == rows(cut)
