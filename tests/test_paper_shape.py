"""What the paper-shaped protocol needs: every round on the curve at a bearable cost (length-bucketed centralized
minibatches, personalised views at a few rounds), the area under the curve and two targets, and FedAvg followed by
local fine-tuning as a row derived from FedAvg's own runs."""

import math

import pandas as pd
import pytest
import torch

from fedlib.benchmark import finetuned_history, grid_configs, run_grid, split_target
from fedlib.config import ModelConfig, TrainConfig
from fedlib.configbase import ConfigError
from fedlib.evaluation import global_record
from fedlib.grid_plan import longest_first, reusable_run
from fedlib.grid_tables import cost_table, grid_curves, paired_table, plot_diagnostics, plot_grid, view_table
from fedlib.protocol import results_section
from fedlib.references import REFERENCES
from fedlib.report import summarize
from fedlib.simulation import Simulation
from fedlib.strategies import STRATEGIES
from fedlib.train import bucket_by_length, step_plan

from .configs import build


def tiny(**kw):
    base = dict(task="sst2", num_clients=4, clients_per_round=2, rounds=3, train_limit=64, eval_limit=48, seed=5)
    return build(model=ModelConfig(prompt_len=2, max_length=64), train=TrainConfig(batch_size=8), **{**base, **kw})


def test_length_buckets_keep_every_example_and_the_batch_sizes():
    gen = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(3, 60, (50,), generator=gen)]
    plan = step_plan(50, TrainConfig(batch_size=8), gen, epochs=2)
    bucketed = bucket_by_length(plan, lengths, 4, torch.Generator().manual_seed(1))
    assert sorted(len(b) for b in bucketed) == sorted(len(b) for b in plan)
    for start in range(0, len(plan), 4):  # each run of 4 minibatches: the same examples, re-cut by length
        got, want = bucketed[start : start + 4], plan[start : start + 4]
        assert sorted(i for b in got for i in b) == sorted(i for b in want for i in b)
        spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in got]
        assert sum(spans) <= sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in want)
    padded = lambda steps: sum(len(b) * max(lengths[i] for i in b) for b in steps)  # noqa: E731
    assert padded(bucketed) < padded(plan)
    assert bucket_by_length(plan, lengths, 1, gen) is plan


def test_personal_views_at_fixed_rounds_and_fine_tuned_copies_at_the_end(bundled_backbone):
    cfg = tiny(eval_every=1, personal_eval_every=2, finetune_epochs=1, rounds=3)
    sim = Simulation(cfg, backbone=bundled_backbone, progress=False)
    h = sim.run().history
    assert h["global_metric"].notna().all()  # every round on the curve
    assert h["personal_metric"].notna().tolist() == [False, True, True]  # round 2 and the last
    last = h.iloc[-1]
    for view in ("personal", "personal_iid"):
        assert 0.0 <= last[f"finetuned_{view}_metric"] <= 1.0
    assert last["seconds_finetune"] > 0
    assert h["finetuned_personal_metric"].notna().sum() == 1
    s = summarize(h, 0.0, 0.99)
    assert s["auc"] == pytest.approx(h["global_metric"].mean())
    assert s["rounds_to_target"] == 1.0 and (math.isnan(s["rounds_to_target_high"]) or s["rounds_to_target_high"] >= 1)
    # fine-tuning leaves the run's own model alone: the global view again gives the same number
    assert sim.evaluate(personal=False)["global_metric"] == pytest.approx(last["global_metric"])


@pytest.mark.parametrize("strategy", ["fedavg", "fedpeptao"])
def test_a_curve_on_fewer_examples_changes_only_the_curve(bundled_backbone, strategy):
    """fed.curve_examples: the curve on the first N eval examples at every round, the whole set where the personalised
    views are due; training and every whole-set number exactly as without it (a personalised model's own views too)."""
    cfg = tiny(eval_every=1, personal_eval_every=2, rounds=3, strategy=strategy, shared_layers=3)
    runs = {
        n: Simulation(cfg.replace(fed=cfg.fed.replace(curve_examples=n)), backbone=bundled_backbone, progress=False)
        for n in (0, 20)
    }
    whole, curve = (runs[n].run().history for n in (0, 20))
    full = [c for c in curve.columns if c.startswith("global_full_")]
    assert full == ["global_full_metric", "global_full_accuracy", "global_full_loss"]
    assert curve.loc[curve["round"] >= 1, full[0]].notna().tolist() == [False, True, True]  # round 2 and the last
    rows = curve.index[curve[full[0]].notna()]
    others = [c for c in whole.columns if not c.startswith("global_") and "seconds" not in c]
    pd.testing.assert_frame_equal(curve.loc[rows, others], whole.loc[rows, others])  # bitwise, training included
    for x in ("metric", "accuracy", "loss"):
        assert (curve.loc[rows, f"global_full_{x}"] == whole.loc[rows, f"global_{x}"]).all()
    pd.testing.assert_series_equal(curve["train_loss"], whole["train_loss"])  # every round trains the same
    sim = runs[20]  # the curve: the first 20 examples, evaluated alone at the rounds without the whole set
    alone = global_record(sim.model, sim.server.shared, sim.eval.subset(range(20)), 0, True, 8, sim.device)
    assert alone["global_metric"] == pytest.approx(curve["global_metric"].iloc[-1])
    assert sim.evaluate(personal=False).keys() == {"global_metric", "global_accuracy", "global_loss"}
    s, t = summarize(curve), summarize(whole)
    assert s["final_global_metric"] == t["final_global_metric"] and s["auc"] == pytest.approx(
        curve["global_metric"].mean()
    )


def test_the_references_read_the_same_curve(bundled_backbone):
    cfg = tiny(eval_every=1, personal_eval_every=2, rounds=3)
    with_curve = cfg.replace(fed=cfg.fed.replace(curve_examples=20))
    for ref in (REFERENCES["majority_local"], REFERENCES["centralized"]):  # centralized last: checked on below
        whole, curve = ref(cfg, bundled_backbone), ref(with_curve, bundled_backbone)
        pd.testing.assert_series_equal(
            curve["global_full_metric"].dropna(),
            whole["global_metric"][curve["global_full_metric"].notna()],
            check_names=False,
        )
        assert summarize(curve)["final_global_metric"] == summarize(whole)["final_global_metric"]
    assert curve["personal_metric"].notna().tolist() == [False, True, True]  # centralized: where the whole set is
    pd.testing.assert_series_equal(curve["train_loss"], whole["train_loss"])


def test_a_fine_tuned_row_is_derived_from_its_source_runs_and_targets_come_in_pairs(tmp_path):
    base = tiny(rounds=2, eval_every=1, personal_eval_every=2)
    strategies = ["majority_local", "fedavg", "fedavg_ft", "fedpeptao"]
    targets = {"sst2": [0.3, 0.9]}
    (tmp_path / "claims").mkdir()  # as one of --workers' processes: every run claimed before it runs
    table = run_grid(
        base,
        ["sst2"],
        strategies,
        [0, 1],
        tmp_path,
        targets=targets,
        finetuned={"fedavg_ft": "fedavg"},
        progress=False,
        claims=tmp_path / "claims",
    )
    claimed = sorted(p.name for p in (tmp_path / "claims").iterdir())
    assert claimed == [f"sst2-seed{s}{k}" for s in (0, 1) for k in ("", "-fedavg", "-majority_local")]
    assert sorted(set(table.strategy)) == sorted(strategies) and len(table) == 8
    rows = table.set_index(["strategy", "seed"])
    for seed in (0, 1):
        ft, src = rows.loc[("fedavg_ft", seed)], rows.loc[("fedavg", seed)]
        assert ft["global_metric"] == src["global_metric"] and ft["auc"] == src["auc"]  # the same global curve
        assert ft["bytes_total"] == src["bytes_total"]
        assert ft["seconds_total"] > src["seconds_total"]  # plus the fine-tuning
        assert 0 < ft["wall_seconds"] < src["wall_seconds"]  # charged the fine-tuning alone, not a second FedAvg
        history = pd.read_json(tmp_path / "sst2" / f"seed{seed}" / "fedavg" / "results.jsonl", lines=True)
        assert ft["personal_metric"] == pytest.approx(history["finetuned_personal_metric"].iloc[-1])
        assert src["personal_metric"] == pytest.approx(history["personal_metric"].iloc[-1])
    assert (table["target"].dropna() == 0.3).all() and (table["target_high"].dropna() == 0.9).all()
    assert {"rounds_to_target_high", "MB_to_target_high"} <= set(cost_table(table).columns)
    assert "auc" in view_table(table).columns and "auc" in set(paired_table(table)["view"])
    # resumable: nothing left to do, and a derived row needs its source to have fine-tuned
    again = run_grid(
        base, ["sst2"], strategies, [0, 1], tmp_path, targets=targets, finetuned={"fedavg_ft": "fedavg"}, progress=False
    )
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(ValueError, match="finetune_epochs"):
        finetuned_history(pd.DataFrame({"round": [1], "personal_metric": [0.5]}))
    with pytest.raises(Exception, match="finetuned.fedavg_ft"):
        run_grid(base, ["sst2"], ["fedavg_ft", "fedavg"], [0], tmp_path, finetuned={"fedavg_ft": "fedavg"})
    fig = plot_diagnostics(tmp_path, "sst2", [0, 1])
    assert fig is not None and len(fig.axes) >= 2  # FedPepTAO's momentum share and norms, per round
    assert plot_diagnostics(tmp_path, "sst2", [0, 1], strategy="fedavg") is None
    # the curves table (committed beside a protocol's CSV) draws the same figures without the run folders
    curves = grid_curves(tmp_path, table)
    assert len(curves) == 2 * (3 * 2 + 1) and set(curves["strategy"]) == set(strategies)  # the floor: one row
    assert {"global_metric", "cum_bytes", "c_norm"} <= set(curves.columns) and curves["round"].min() == 1
    assert len(plot_diagnostics(curves, "sst2", [0, 1]).axes) == len(fig.axes)
    assert plot_grid(curves, "sst2", [0, 1]).axes[0].get_lines()
    labels = lambda fig: {line.get_label() for line in fig.axes[0].get_lines()}  # noqa: E731
    assert "fedavg_ft" in labels(plot_grid(curves, "sst2", [0, 1]))
    assert "fedavg_ft" not in labels(plot_grid(curves, "sst2", [0, 1], skip=("fedavg_ft",)))  # FedAvg's curve again
    # the results header's sum of run times leaves the derived row out: its seconds are in FedAvg's runs
    proto = {"tasks": ["sst2"], "seeds": [0, 1], "strategies": strategies, "finetuned": {"fedavg_ft": "fedavg"}}
    proto["experiment"] = {"fed": {"rounds": 2}}
    prov = {"command": "run_grid p.yaml", "commits": ["abc1234"]}
    ran = table.loc[table.strategy != "fedavg_ft", "wall_seconds"].sum()
    assert f"Sum of the runs' wall times: {ran / 60:.1f} min" in results_section("p", proto, table, prov, [])


def test_target_pairs_are_ordered():
    assert split_target(0.7) == (0.7, None) and split_target([0.7, 0.8]) == (0.7, 0.8) and split_target(None)[0] is None
    with pytest.raises(ValueError, match="low <= high"):
        split_target([0.8, 0.7])


def test_centralized_runs_are_the_same_at_every_alpha_and_a_grid_takes_them_from_another(tmp_path):
    at = lambda alpha, **kw: tiny(rounds=2, eval_every=1, alpha=alpha, **kw)  # noqa: E731
    rows = ["majority_local", "centralized"]
    first = run_grid(at(0.1), ["sst2"], rows, [0], tmp_path / "a01", progress=False)
    fresh = run_grid(at(1.0), ["sst2"], rows, [0], tmp_path / "a1", progress=False, reuse={"centralized": tmp_path})
    taken = run_grid(
        at(1.0), ["sst2"], rows, [0], tmp_path / "a1-reused", progress=False, reuse={"centralized": tmp_path / "a01"}
    )
    history = lambda out: pd.read_json(out / "sst2" / "seed0" / "centralized" / "results.jsonl", lines=True)  # noqa: E731
    timeless = lambda h: h.drop(columns=[c for c in h.columns if "seconds" in c])  # noqa: E731
    # run again at alpha 1.0 (the folder named holds no such run): the same history as at alpha 0.1
    pd.testing.assert_frame_equal(timeless(history(tmp_path / "a01")), timeless(history(tmp_path / "a1")))
    pd.testing.assert_frame_equal(history(tmp_path / "a01"), history(tmp_path / "a1-reused"))  # taken, seconds too
    central = lambda t: t.set_index("strategy").loc["centralized"]  # noqa: E731
    assert central(taken)["auc"] == pytest.approx(central(fresh)["auc"], abs=1e-12)
    assert (
        central(fresh)["auc"] == central(first)["auc"]
        and central(fresh)["global_metric"] == central(first)["global_metric"]
    )
    assert central(taken)["wall_seconds"] < 0.2 * central(fresh)["wall_seconds"]  # a copy, not a run
    theirs = tmp_path / "a01" / "sst2" / "seed0"
    assert reusable_run(theirs / "centralized", at(1.0, seed=0), "centralized")
    assert not reusable_run(theirs / "centralized", at(1.0, seed=0, lr=0.5), "centralized")  # not the same run
    assert not reusable_run(theirs / "majority_local", at(1.0, seed=0), "majority_local")  # its views read alpha
    assert reusable_run(theirs / "majority_local", at(0.1, seed=0), "majority_local")  # the same run
    with pytest.raises(ConfigError, match="reuse.fedavg"):
        run_grid(at(1.0), ["sst2"], rows, [0], tmp_path / "x", reuse={"fedavg": tmp_path / "a01"})


def test_a_grid_takes_its_longest_runs_first():
    rows = ["majority_local", "local_only", "centralized", "fedavg", "fedavg_ft", "fedprox", "fedavg_selected"]
    rows += ["fedpeptao"]
    configs = {("sst2", name): tiny(strategy=name if name in STRATEGIES else "fedavg") for name in rows}
    order = longest_first(configs, "sst2", rows, {"fedavg_ft": "fedavg"}, {"centralized": "runs/x"})
    assert order == ["fedavg_selected", "fedpeptao", "fedavg", "local_only", "fedprox"] + [
        "majority_local",
        "centralized",
        "fedavg_ft",
    ]


def test_a_variant_takes_its_own_params_per_task():
    variants = {"fedpeptao_first_k": {"strategy": {"name": "fedpeptao"}, "selection": {"choose": "first"}}}
    params = {"fedpeptao_first_k": {"server_lr": {"sst2": 0.1, "mr": 1.0}, "correction_scale": 0.5}}
    configs = grid_configs(tiny(), ["sst2", "mr"], ["fedpeptao_first_k"], params, variants)
    for task, lr in (("sst2", 0.1), ("mr", 1.0)):
        cfg = configs[task, "fedpeptao_first_k"]
        assert (cfg.strategy.server_lr, cfg.strategy.correction_scale, cfg.selection.choose) == (lr, 0.5, "first")
