"""Results a reader can trust: three evaluation views, reference rows, selection costs, paired statistics."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from fedlib.config import ModelConfig, TrainConfig
from fedlib.partition import make_partition
from fedlib.references import centralized, centralized_steps_per_round, majority_local
from fedlib.report import rounds_to_target, summarize
from fedlib.simulation import run_simulation
from fedlib.stats import censored_median, mean_ci, paired_differences
from fedlib.tasks import load_task

from .configs import build


def tiny(**kw):
    base = dict(
        task="sst2",
        num_clients=4,
        clients_per_round=2,
        rounds=2,
        train_limit=64,
        eval_limit=48,
        seed=5,
        share_ratio=0.0,  # the Hessian criterion
        hessian_warmup_rounds=1,
        hessian_iters=3,
    )
    return build(model=ModelConfig(prompt_len=2, max_length=64), train=TrainConfig(batch_size=8), **{**base, **kw})


def test_iid_eval_shards_have_the_matched_sizes_and_the_eval_label_mix():
    rng = np.random.default_rng(0)
    train, evl = rng.integers(0, 2, 2000), np.repeat([0, 1], 500)
    part = make_partition(train, evl, 5, "reference", alpha=0.1, seed=1)
    assert [len(s) for s in part.eval_iid] == [len(s) for s in part.eval]
    assert sorted(i for s in part.eval_iid for i in s) == list(range(1000))  # an exact cover, like eval
    assert part.eval_iid == make_partition(train, evl, 5, "reference", alpha=0.1, seed=1).eval_iid
    matched = [abs(evl[s].mean() - 0.5) for s in part.eval if len(s) > 50]
    iid = [abs(evl[s].mean() - 0.5) for s in part.eval_iid if len(s) > 50]
    assert max(iid) < 0.1 < 0.25 < min(matched)  # matched shards are skewed, IID ones are not


def test_three_views_logged_and_equal_for_a_model_with_nothing_personal(bundled_backbone):
    h = run_simulation(tiny(), backbone=bundled_backbone, progress=False).history
    last = h.iloc[-1]
    # FedAvg: every client's model is the global one; matched and IID shards each cover the eval set exactly
    assert last["personal_iid_metric"] == pytest.approx(last["global_metric"])
    assert last["personal_metric"] == pytest.approx(last["global_metric"])


def test_personal_views_differ_with_personal_layers(bundled_backbone):
    h = run_simulation(
        tiny(layer_roles=("personal",) * 3 + ("shared",) * 3, rounds=3), backbone=bundled_backbone, progress=False
    ).history
    assert {"global_metric", "personal_metric", "personal_iid_metric"} <= set(h.columns)
    assert h[["personal_metric", "personal_iid_metric"]].notna().all().all()


def test_majority_local_is_the_per_client_majority_label():
    cfg = tiny()
    row = majority_local(cfg).iloc[0]
    train = np.asarray(load_task("sst2", "train", limit=64)["label"])
    evl = np.asarray(load_task("sst2", "eval", limit=48)["label"])
    part = make_partition(train, evl, 4, "reference", seed=5)
    hits = sum(int((evl[s] == np.bincount(train[part.train[k]]).argmax()).sum()) for k, s in enumerate(part.eval))
    assert row["personal_metric"] == pytest.approx(hits / len(evl))
    assert row["global_metric"] == pytest.approx(float((evl == np.bincount(train).argmax()).mean()))
    assert row["bytes_up"] == 0 and row["round"] == cfg.fed.rounds


def test_local_only_exchanges_nothing_and_has_no_global_model(bundled_backbone):
    res = run_simulation(tiny(strategy="local_only"), backbone=bundled_backbone, progress=False)
    h = res.history
    assert res.server.shared == {} and set(res.roles) == {"personal"}
    assert (h["bytes_up"] == 0).all() and (h["bytes_down"] == 0).all()
    assert "global_metric" not in h or h["global_metric"].isna().all()
    assert h["personal_metric"].notna().all() and h["local_steps"].gt(0).all()
    assert sorted(c for clients in h["clients"] for c in clients) == [0, 1, 2, 3]  # in turn: every client trained


def test_cyclic_sampling_gives_every_client_the_mean_budget():
    from fedlib.rounds import cyclic_clients, sample_clients

    counts = np.bincount([c for r in range(8) for c in cyclic_clients(0, r, 10, 4)], minlength=10)
    assert sorted(counts) == [3] * 8 + [4] * 2  # 32 turns over 10 clients: 3.2 each, as random sampling's mean
    drawn = np.bincount([c for r in range(8) for c in sample_clients(0, r, 10, 4)], minlength=10)
    assert drawn.sum() == 32 and drawn.min() < 3  # random sampling leaves some clients with less (here seed 0)


def test_centralized_uses_the_federated_step_budget(bundled_backbone):
    cfg = tiny()
    assert centralized_steps_per_round(cfg, 64) == 2 * 1 * math.ceil(64 / 4 / 8)
    import torch

    from fedlib.train import step_plan

    for epochs, max_steps in ((2, 0), (2, 4), (2, 5), (3, 1), (3, 7)):  # 10 clients of 64 examples, B 8, m 2
        c = tiny(num_clients=10, clients_per_round=2).replace(
            train=TrainConfig(batch_size=8, epochs=epochs, max_steps=max_steps)
        )
        client = len(step_plan(64, c.train, torch.Generator().manual_seed(0)))  # what each client takes
        assert centralized_steps_per_round(c, 640) == 2 * client, (epochs, max_steps)
    h = centralized(cfg, bundled_backbone)
    assert h["round"].tolist() == [1, 2] and (h["bytes_up"] == 0).all()
    assert h[["global_metric", "personal_metric", "personal_iid_metric"]].notna().all().all()
    assert h["personal_iid_metric"].iloc[-1] == pytest.approx(h["global_metric"].iloc[-1])  # one model


def test_selection_costs_are_round_zero_and_in_the_totals(bundled_backbone):
    res = run_simulation(tiny(strategy="fedpeptao"), backbone=bundled_backbone, progress=False)
    h, sel = res.history, res.selection
    first = h.iloc[0]
    assert first["round"] == 0 and first["phase"] == "selection"
    warm = sel["hessian"]["warmup"][0]
    everything = 6 * 2 * 2 * 384 * 4 + (384 * 2 + 2) * 4  # all six layers' [2, 768] prompts and the head, float32
    # scoring: 4 clients get the initial prompts, send 6 scores and a count; warm-up: a FedAvg round; Hessian:
    # the 2 probed clients get the warmed-up prompts and send their keep ratio (the density rule's one number) each
    assert first["bytes_down"] == 4 * everything + warm["bytes_down"] + 2 * everything
    assert first["bytes_up"] == 4 * 8 * 7 + warm["bytes_up"] + 2 * 8 * 1
    s = summarize(h)
    assert s["selection_bytes"] == first["bytes_up"] + first["bytes_down"] and s["rounds"] == 2
    assert s["bytes_total"] == h["cum_bytes"].iloc[-1] == s["selection_bytes"] + 2 * s["bytes_per_round"]
    assert s["selection_seconds"] > 0 and s["seconds_total"] > s["selection_seconds"]


def test_rounds_to_target_is_on_the_global_metric_and_censored():
    h = pd.DataFrame(
        {
            "round": [0, 1, 2, 3],
            "global_metric": [math.nan, 0.5, 0.7, 0.6],
            "personal_metric": [math.nan, 0.9, 0.9, 0.9],
            "cum_seconds": [5.0, 6, 7, 8],
            "cum_bytes": [100, 110, 120, 130],
        }
    )
    assert rounds_to_target(h, 0.7) == (2, 7, 120)
    assert all(math.isnan(v) for v in rounds_to_target(h, 0.8))
    assert censored_median([2, 3, math.nan], 10) == "3"
    assert censored_median([2, math.nan, math.nan], 10) == ">10"


def test_mean_ci_and_paired_differences():
    mean, half, n = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4) and half == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-5)
    assert math.isnan(mean_ci([1.0])[1])
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.1, 8)  # large, shared by both strategies
    rows = [
        {
            "task": "t",
            "strategy": s,
            "seed": i,
            "m": seed_effect[i] + (0.02 if s == "a" else 0.0) + rng.normal(0, 0.001),
        }
        for i in range(8)
        for s in ("a", "b")
    ]
    d = paired_differences(pd.DataFrame(rows), "m", "a").iloc[0]
    assert d["vs"] == "b" and d["diff"] == pytest.approx(0.02, abs=0.002) and d["ci"] < 0.003 and d["wins"] == 8
    unpaired_half = mean_ci([r["m"] for r in rows if r["strategy"] == "a"])[1]
    assert unpaired_half > 10 * d["ci"]  # pairing removes the seed's effect


def test_method_figure_draws_every_role(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from fedlib.report import ROLE_COLOURS, plot_method

    ax = plot_method(("shared", "personal", "off"), clients=2)
    colours = {matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches}
    assert {matplotlib.colors.to_hex(c) for c in ROLE_COLOURS.values()} <= colours
    ax.figure.savefig(tmp_path / "method.png")
    assert (tmp_path / "method.png").stat().st_size > 5_000


def test_extra_seeds_make_their_own_part_and_stale_rows_are_left_out():
    from fedlib.protocol import grid_slices, protocol_rows

    proto = {
        "tasks": ["sst2", "mr"],
        "strategies": ["fedavg", "fedavg_selected", "fedpeptao"],
        "seeds": [0, 1],
        "extra_seeds": {"sst2": {"strategies": ["fedavg_selected", "fedpeptao"], "seeds": [2]}},
    }
    slices = grid_slices(proto)
    assert slices[1] == {"tasks": ["sst2"], "strategies": ["fedavg_selected", "fedpeptao"], "seeds": [2]}
    rows = [
        (t, s, seed)
        for t in ("mr", "sst2")
        for s in ("fedpeptao", "fedavg", "fedavg_selected", "old")
        for seed in (2, 1, 0)
    ]
    table = pd.DataFrame(rows, columns=["task", "strategy", "seed"])
    kept = protocol_rows(table, slices)
    assert list(kept.itertuples(index=False, name=None))[:7] == [
        ("sst2", "fedavg", 0),
        ("sst2", "fedavg", 1),
        ("sst2", "fedavg_selected", 0),
        ("sst2", "fedavg_selected", 1),
        ("sst2", "fedavg_selected", 2),
        ("sst2", "fedpeptao", 0),
        ("sst2", "fedpeptao", 1),
    ]
    assert len(kept) == 8 + 6 and "old" not in set(kept.strategy)  # sst2: 2x3 + 2 extra; mr: 2x3
    paired = paired_differences(
        table.assign(global_metric=1.0).pipe(protocol_rows, slices), "global_metric", "fedpeptao"
    )
    assert paired.set_index(["task", "vs"])["seeds"].to_dict() == {
        ("sst2", "fedavg"): 2,
        ("sst2", "fedavg_selected"): 3,
        ("mr", "fedavg"): 2,
        ("mr", "fedavg_selected"): 2,
    }
    for bad, says in (
        ({"cola": {"strategies": ["fedavg"], "seeds": [3]}}, "extra_seeds.cola"),
        ({"sst2": {"strategies": ["scaffold"], "seeds": [3]}}, "extra_seeds.sst2.strategies"),
        ({"sst2": [3]}, "'strategies' and 'seeds'"),
    ):
        with pytest.raises(SystemExit, match=says):
            grid_slices({**proto, "extra_seeds": bad})


def test_a_selection_is_reused_by_runs_differing_only_in_their_strategy(tmp_path):
    from fedlib.benchmark import sibling_selection
    from fedlib.config import ExperimentConfig

    base = ExperimentConfig().replace(fed=ExperimentConfig().fed.replace(task="sst2", seed=3))
    done = tmp_path / "sst2" / "seed3" / "fedavg_selected"
    done.mkdir(parents=True)
    (done / "config.json").write_text(base.with_strategy("fedavg_selected").to_json())
    (done / "selection.json").write_text(json.dumps({"version": 2, "k": 2, "seconds": 7.0}))
    fedpeptao = base.with_strategy("fedpeptao", server_lr=0.01)
    assert sibling_selection(tmp_path, "sst2", 3, fedpeptao) == {"version": 2, "k": 2, "seconds": 7.0}
    other = fedpeptao.replace(selection=fedpeptao.selection.replace(choose="first"))
    assert sibling_selection(tmp_path, "sst2", 3, other) is None  # another selection configuration
    assert sibling_selection(tmp_path, "sst2", 4, fedpeptao) is None  # another seed
    other = fedpeptao.replace(train=fedpeptao.train.replace(lr=0.01))
    assert sibling_selection(tmp_path, "sst2", 3, other) is None  # another training config: another warm-up
    (done / "selection.json").write_text(json.dumps({"k": 2}))  # made by older code (no version)
    assert sibling_selection(tmp_path, "sst2", 3, fedpeptao) is None
    (done / "selection.json").write_text('{"version": 2, "k"')  # a run killed while writing it
    assert sibling_selection(tmp_path, "sst2", 3, fedpeptao) is None


def test_grid_rows_written_by_two_processes_at_once_are_all_kept(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from fedlib.benchmark import record_row\n"
        "for seed in range(25): record_row(Path(sys.argv[1]), {'task': 'rte', 'strategy': sys.argv[2], 'seed': seed})"
    )
    csv = tmp_path / "results.csv"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(csv), name]) for name in ("fedavg", "fedprox")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    table = pd.read_csv(csv)
    assert len(table) == 50 and set(table.groupby("strategy")["seed"].nunique()) == {25}


def test_one_invocation_at_a_time_runs_a_grid_folder(tmp_path):
    from fedlib.protocol import grid_lock

    with grid_lock(tmp_path):
        with pytest.raises(SystemExit, match="another run_grid is running this grid"):
            with grid_lock(tmp_path):
                pass
    with grid_lock(tmp_path):  # released
        pass


def test_provenance_records_each_invocations_wall_time_and_workers(tmp_path, monkeypatch):
    from fedlib import protocol

    monkeypatch.setattr(protocol, "git_commit", lambda: "abc1234")
    older = {"command": "python benchmarks/run_grid.py p.yaml --out x", "commits": ["0000000"], "started": ["then"]}
    (tmp_path / "provenance.json").write_text(json.dumps(older))  # written before wall times were recorded
    prov = protocol.record_provenance(tmp_path, "python benchmarks/run_grid.py p.yaml --out x --tasks b", workers=2)
    assert prov["workers"] == [None, 2] and prov["wall_seconds"] == [None, None]
    assert prov["commands"] == [None, "python benchmarks/run_grid.py p.yaml --out x --tasks b"]
    assert protocol.commands_sentence(prov) == (
        "Commands: `python benchmarks/run_grid.py p.yaml --out x`; then `python benchmarks/run_grid.py p.yaml --out x "
        "--tasks b`"
    )
    assert protocol.wall_time_sentence(prov) == ""  # nothing measured yet: no claim
    protocol.record_wall_time(tmp_path, prov, 6065.04)
    stored = json.loads((tmp_path / "provenance.json").read_text())
    assert stored["wall_seconds"] == [None, 6065.0] and stored["command"] == older["command"]
    sentence = protocol.wall_time_sentence(stored)
    assert "101.1 min (1 of 2 invocation(s) measured" in sentence and "2 worker(s)" in sentence
    # the machine each invocation ran on is recorded then, so a page rendered elsewhere still names it
    assert stored["platforms"] == [None, protocol.platform_name()] and "torch" in stored["platforms"][1]
