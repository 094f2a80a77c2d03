"""Grid tables on a hand-made results table: views with CIs, paired differences, censored costs; bands."""

import json
import math

import pandas as pd
import pytest

from fedlib.grid_tables import cost_table, paired_table, plot_grid, view_table


def _table():
    rows = []
    for seed, (fa, fp, lo) in enumerate([(0.70, 0.80, 0.75), (0.60, 0.70, 0.85), (0.65, 0.74, 0.80)]):
        for name, metric, rtt in [("fedavg", fa, 4.0), ("fedpeptao", fp, 2.0 if seed else math.nan), ("lora", lo, 6)]:
            rows.append(
                {
                    "task": "sst2",
                    "strategy": name,
                    "seed": seed,
                    "global_metric": metric,
                    "personal_metric": metric + 0.1,
                    "personal_iid_metric": metric,
                    "bytes_total": 1e6,
                    "selection_bytes": 2e5 if name == "fedpeptao" else 0.0,
                    "seconds_total": 10.0,
                    "rounds": 8,
                    "target": 0.7,
                    "rounds_to_target": rtt,
                    "seconds_to_target": rtt * 2,
                    "bytes_to_target": rtt * 1e5,
                }
            )
    return pd.DataFrame(rows)


def test_view_table_gives_mean_and_ci_over_seeds():
    t = view_table(_table()).set_index("strategy")
    assert t.loc["fedavg", "global_metric"] == f"0.6500 ± {4.302653 * 0.05 / 3**0.5:.4f}"
    assert list(t.index) == ["fedavg", "fedpeptao", "lora"] and (t["seeds"] == 3).all()
    assert list(t.columns[-2:]) == ["bytes_total", "median_seconds"]


def test_paired_table_is_paired_by_seed():
    p = paired_table(_table())
    row = p[(p["vs"] == "fedavg") & (p["view"] == "global_metric")].iloc[0]
    assert row["diff"] == pytest.approx((0.10 + 0.10 + 0.09) / 3) and row["wins"] == 3 and row["seeds"] == 3
    assert row["ci"] < 0.02  # the seeds' large common effect cancels


def test_cost_table_uses_censored_medians():
    c = cost_table(_table()).set_index("strategy")
    assert c.loc["fedpeptao", "rounds_to_target"] == "2" and c.loc["fedpeptao", "reached"] == "2/3"
    assert c.loc["fedavg", "rounds_to_target"] == "4" and c.loc["fedpeptao", "selection_MB"] == pytest.approx(0.2)
    t = _table()
    t.loc[t["strategy"] == "lora", "rounds_to_target"] = [math.nan, math.nan, 3]
    assert cost_table(t).set_index("strategy").loc["lora", "rounds_to_target"] == ">8"


def test_plot_grid_draws_bands_over_seeds(tmp_path):
    for seed, metrics in enumerate([[0.5, 0.6], [0.7, 0.8]]):
        run = tmp_path / "sst2" / f"seed{seed}" / "fedavg"
        run.mkdir(parents=True)
        run.joinpath("results.jsonl").write_text(
            "".join(
                json.dumps({"round": r + 1, "global_metric": m, "cum_bytes": 1e6 * (r + 1)}) + "\n"
                for r, m in enumerate(metrics)
            )
        )
    fig = plot_grid(tmp_path, "sst2", [0, 1])
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx([0.6, 0.7]) and len(fig.axes[0].collections) == 1  # the band


def test_a_run_is_done_or_reusable_only_when_its_log_reaches_the_last_round(tmp_path):
    """A run writes config.json and its log from the start: one killed part-way (a re-run after an edit, or another
    grid's run still going) is pending, not done, and not reusable."""
    from fedlib.benchmark import pending_runs, run_dir
    from fedlib.config import DataConfig, ExperimentConfig, FedConfig
    from fedlib.grid_plan import finished, reusable_run

    base = ExperimentConfig(fed=FedConfig(task="rte", num_clients=2, clients_per_round=2, rounds=3, seed=0))
    base = base.replace(data=DataConfig(train_limit=16, eval_limit=8))
    out = tmp_path / "grid"
    folder = run_dir(out, "rte", 0, "fedavg")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(base.with_strategy("fedavg").to_json())
    pd.DataFrame([{"task": "rte", "strategy": "fedavg", "seed": 0}]).to_csv(out / "results.csv", index=False)
    for rounds, done in ((1, False), (3, True)):
        (folder / "results.jsonl").write_text("".join(json.dumps({"round": r}) + "\n" for r in range(rounds + 1)))
        assert finished(folder, 3) is done and reusable_run(folder, base.with_strategy("fedavg"), "fedavg") is done
        assert pending_runs(base, ["rte"], ["fedavg"], [0], out, quiet=True) == ([] if done else [("rte", "fedavg", 0)])


def test_an_edited_target_is_read_again_from_the_logs_of_done_rows(tmp_path):
    """Targets are not part of a run's configuration: after an edit, done rows get the new target's columns from
    their logs (they kept the old target beside new rows with the new one), nothing trained again."""
    from fedlib.benchmark import _row, record_row, retarget, run_dir

    history = pd.DataFrame(
        {
            "round": [0, 1, 2, 3],
            "global_metric": [0.5, 0.72, 0.78, 0.85],
            "personal_metric": [0.5, 0.7, 0.7, 0.8],
            "personal_iid_metric": [0.5, 0.7, 0.7, 0.8],
            **{k: [0.0, 1.0, 1.0, 1.0] for k in ("bytes_up", "bytes_down", "seconds_client", "seconds_aggregate")},
            "cum_bytes": [0.0, 2.0, 4.0, 6.0],
            "cum_seconds": [0.0, 2.0, 4.0, 6.0],
            "failed": [0, 0, 0, 0],
        }
    )
    out, csv = tmp_path / "grid", tmp_path / "grid" / "results.csv"
    folder = run_dir(out, "sst2", 0, "fedavg")
    folder.mkdir(parents=True)
    history.to_json(folder / "results.jsonl", orient="records", lines=True)
    record_row(csv, _row("sst2", "fedavg", 0, history, 0.7, 6, 12.5))
    assert pd.read_csv(csv)["rounds_to_target"].tolist() == [1]
    retarget(csv, out, {"sst2": [0.8, 0.84]}, [{"tasks": ["sst2"], "strategies": ["fedavg"], "seeds": [0]}])
    row = pd.read_csv(csv).iloc[0]
    assert (row["target"], row["target_high"], row["rounds_to_target"], row["rounds_to_target_high"]) == (
        0.8,
        0.84,
        3,
        3,
    )
    assert (row["shared_layers"], row["wall_seconds"]) == (6, 12.5)  # what the run measured, kept
