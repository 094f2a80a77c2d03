"""Every script under benchmarks/ runs, at its smallest sizes, and prints its result line: a version bump or a
refactor that breaks one fails here (the numbers themselves are measured by running the scripts at full size)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
pytestmark = pytest.mark.slow
NUM = r"[0-9.]+(?:e[-+]?[0-9]+)?"


def run(script: str, *args: str, timeout: int = 400) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout.strip().splitlines()[-1]


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert scripts == {
        "step_cost.py",
        "batched_clients.py",
        "flower_parity.py",
        "run_grid.py",
        "node_memory.py",
        "tune.py",
        "scale_clients.py",
        "grid_workers.py",
        "secagg_cost.py",
        "paper_shape_cost.py",
        "curve_cost.py",
        "autocast_cost.py",
    }
    assert {p.name for p in BENCH.glob("*.sh")} == {"gpu_check.sh"}


def test_paper_shape_cost_measures_each_part_and_projects_the_grid(tmp_path):
    out = tmp_path / "cost.json"
    args = ["--rounds", "1", "--train-limit", "12", "--eval-limit", "8", "--num-clients", "2", "--reps", "1"]
    args += ["--json", str(out)]  # ~3 min alone at --train-limit 24 --eval-limit 16 --reps 2 where bf16 is emulated
    line = run("paper_shape_cost.py", "benchmarks/protocols/paper-shape.yaml", *args)
    speedups = rf"bf16_speedup={NUM} bucket_speedup={NUM} curve_speedup={NUM}"
    assert re.fullmatch(rf"paper_shape_cost {speedups} grid_minutes={NUM}", line), line
    record = json.loads(out.read_text())
    assert set(record["parts"]) >= {"round_off", "round_bf16", "eval_bf16", "selection", "finetune"}
    assert record["run_seconds"]["majority_local"] == 0 and record["run_seconds"]["fedavg_ft"] > 0


def test_autocast_cost_times_a_step_and_an_evaluation_both_ways():
    line = run("autocast_cost.py", "benchmarks/protocols/paper-shape.yaml", "--examples", "8", "--reps", "1")
    assert re.fullmatch(rf"autocast_cost bf16=(hardware|emulated|unknown|cuda) step_ratio={NUM} eval_ratio={NUM}", line)


def test_curve_cost_compares_the_same_runs_read_on_two_curves(tmp_path):
    rows = []
    for seed in range(3):
        for name, auc in (("fedpeptao", 0.70 + 0.01 * seed), ("fedavg", 0.69), ("local_only", float("nan"))):
            whole = {"global_metric": 0.7 + seed / 100, "personal_metric": 0.9, "personal_iid_metric": 0.6}
            rows.append({"task": "sst2", "strategy": name, "seed": seed, "auc": auc, "bytes_total": 1e6, **whole})
    before = pd.DataFrame(rows)
    after = before.assign(auc=before["auc"] + 0.03)  # an easier subset: every area up by the same amount
    after.loc[(after.strategy == "fedavg") & (after.seed == 2), "personal_metric"] = 0.8  # one run that differs
    before.to_csv(tmp_path / "before.csv", index=False)
    after.to_csv(tmp_path / "after.csv", index=False)
    line = run("curve_cost.py", str(tmp_path / "before.csv"), str(tmp_path / "after.csv"))
    assert line == "curve_cost runs=9 identical=8 auc_shift=+0.0300 ci_ratio=1.000", line


def test_paper_shape_cost_profiles_a_round_by_kind_of_operator():
    args = ["--profile", "--train-limit", "24", "--eval-limit", "16", "--num-clients", "2"]
    line = run("paper_shape_cost.py", "benchmarks/protocols/paper-shape.yaml", *args)
    shares = dict(kv.split("=") for kv in line.removeprefix("paper_shape_profile ").split())
    assert list(shares) == ["matmul", "dropout", "cast", "attention", "elementwise", "other"], line
    values = {k: float(v) for k, v in shares.items()}
    assert values["matmul"] > 0.1 and values["dropout"] > 0 and abs(sum(values.values()) - 1) < 0.01, line


@pytest.mark.flower_runtime
def test_flower_parity():
    line = run(
        "flower_parity.py",
        "--rounds",
        "1",
        "--num-clients",
        "2",
        "--clients-per-round",
        "2",
        "--train-limit",
        "16",
        "--eval-limit",
        "8",
    )
    m = re.fullmatch(rf"flower_parity max_abs_diff=({NUM}) time_ratio={NUM}", line)
    assert m and float(m.group(1)) < 1e-5, line


def test_secagg_cost():
    args = ("--num-clients", "3", "--clients-per-round", "3", "--rounds", "1", "--train-limit", "24")
    line = run("secagg_cost.py", *args)
    m = re.fullmatch(rf"secagg_cost m=3 messages_ratio=({NUM}) seconds_ratio={NUM} max_abs_diff=({NUM})", line)
    assert m and float(m.group(1)) == 4 and float(m.group(2)) < 1e-4, line


def test_grid_workers():
    proto = str(BENCH / "protocols" / "cpu-medium.yaml")
    # more cores than runs: the empty share starts no worker (a worker given no seeds once ran the whole benchmark)
    args = ("--seeds", "2", "--rounds", "1", "--cores", "3", "--train-limit", "80", "--eval-limit", "16")
    line = run("grid_workers.py", proto, *args)
    assert re.fullmatch(rf"grid_workers cores=3 throughput_ratio={NUM} max_metric_diff={NUM}", line), line


def test_scale_clients():
    line = run(
        "scale_clients.py",
        *("--clients", "4", "40", "--rounds", "2", "--m", "2", "--steps", "1", "--train-limit", "400"),
        *("--memory-mb", "0.2", "--paper-store", "--paper-clients", "6", "--paper-layers", "1", "--paper-rounds", "2"),
    )
    assert re.fullmatch(rf"scale_clients n=40 rss_ratio={NUM} round_time_ratio={NUM}", line), line


def test_gpu_check_script_runs_on_cpu_and_marks_cuda_only_steps_skipped(tmp_path):
    """gpu_check.sh QUICK=1 on the CPU; also the smoke runs of step_cost.py and batched_clients.py, which it runs at
    their smallest sizes (once, not again in tests of their own)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU fallback is what this checks")
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "QUICK": "1", "OUT": str(tmp_path), "PYTHON": sys.executable},
    )
    summary = (tmp_path / "gpu_check.txt").read_text()
    assert proc.returncode == 0, summary + proc.stderr[-3000:]
    assert "device cpu" in summary and "batched_clients_bf16: skipped" in summary
    assert re.search(rf"batched_clients \(\d+ s\): batched_clients m=2 speedup={NUM}\n", summary), summary
    step_cost = rf"step_cost \(\d+ s\): step_cost floor_ratio={NUM} peft_ratio={NUM} peak_mem_ratio={NUM}\n"
    assert re.search(step_cost, summary), summary
    assert "fedavg" in summary and "gpu_check done: ok" in summary


def test_node_memory():
    line = run("node_memory.py", "--task", "rte", "--train-limit", "64", "--num-clients", "4")
    assert re.fullmatch(rf"node_memory simulation_mb={NUM} workspace_mb={NUM} ratio={NUM}", line), line


def test_run_grid_renders_results_and_readme(tmp_path):
    proto = tmp_path / "tiny.yaml"
    proto.write_text(
        "tasks: [rte]\nstrategies: [majority_local, local_only, centralized, fedavg, fedprox, fedpeptao, "
        "fedavg_selected, pep_last]\n"
        "seeds: [0, 1]\nparams: {fedprox: {mu: 0.05}}\ntargets: {rte: 0.5}\n"
        "variants: {pep_last: {strategy: {name: fedpeptao, server_variant: parallel}, selection: {choose: last}}}\n"
        "experiment:\n  model: {prompt_len: 2, max_length: 64}\n  train: {batch_size: 8}\n"
        "  fed: {num_clients: 2, clients_per_round: 2, rounds: 1}\n"
        "  data: {train_limit: 16, eval_limit: 8}\n  selection: {shared_layers: 2}\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:tiny:begin -->\n<!-- results:tiny:end -->\ny\n")
    run(
        "run_grid.py",
        str(proto),
        "--out",
        str(tmp_path / "out"),
        "--results",
        str(tmp_path / "res"),
        "--readme",
        str(readme),
    )
    import pandas as pd

    table = pd.read_csv(tmp_path / "res.csv")
    assert len(table) == 16 and list(table.columns[:6]) == [
        "task",
        "strategy",
        "seed",
        "global_metric",
        "personal_metric",
        "personal_iid_metric",
    ]
    assert table.groupby("strategy")["seed"].nunique().eq(2).all() and (table["target"] == 0.5).all()
    pep = table[table["strategy"] == "fedpeptao"]
    sel = table[table["strategy"] == "fedavg_selected"]
    assert pep["selection_bytes"].tolist() == sel["selection_bytes"].tolist()  # one selection per seed, both charged
    seed1 = tmp_path / "out" / "rte" / "seed1"
    assert (seed1 / "fedpeptao" / "selection.json").read_text() == (
        seed1 / "fedavg_selected" / "selection.json"
    ).read_text()
    last = json.loads((seed1 / "pep_last" / "selection.json").read_text())
    assert last["choose"] == "last" and sorted(last["ranking"][:2]) == [4, 5]  # the variant's own selection
    assert json.loads((seed1 / "pep_last" / "config.json").read_text())["strategy"]["server_variant"] == "parallel"
    assert (pep["selection_bytes"] > 0).all() and (
        table.loc[table["strategy"] == "majority_local", "bytes_total"] == 0
    ).all()
    text = readme.read_text()
    assert text.startswith("x\n") and text.endswith("y\n") and "| fedprox |" in text and "rte.png" in text
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["workers"] == [1] and prov["wall_seconds"][0] > 0
    assert "Wall-clock time of the grid:" in text and "(1 of 1 invocation(s) measured" in text
    (tmp_path / "out" / "rte" / "seed1" / "fedavg" / "results.jsonl").unlink()  # a run to do: --render-only skips it
    run("run_grid.py", str(proto), "--out", str(tmp_path / "out"), "--readme", str(readme), "--render-only")
    assert not (tmp_path / "out" / "rte" / "seed1" / "fedavg" / "results.jsonl").exists()
    assert "FedPepTAO minus each other row, paired by seed" in text and "| rte | majority_local |" in text
    assert "Cost to the fixed per-task target" in text
    assert json.loads((tmp_path / "out" / "grid.json").read_text())["params"] == {"fedprox": {"mu": 0.05}}
    assert json.loads((tmp_path / "out" / "rte" / "seed0" / "fedprox" / "config.json").read_text())["strategy"] == {
        "name": "fedprox",
        "server_lr": 1.0,
        "mu": 0.05,
    }

    # a protocol edited after the grid ran (a tuned mu): resuming re-runs exactly the rows whose config changed
    fedavg_log = tmp_path / "out" / "rte" / "seed0" / "fedavg" / "results.jsonl"
    before = fedavg_log.stat().st_mtime_ns
    proto.write_text(proto.read_text().replace("mu: 0.05", "mu: 0.5"))
    run("run_grid.py", str(proto), "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res"))
    for seed in (0, 1):
        stored = json.loads((tmp_path / "out" / "rte" / f"seed{seed}" / "fedprox" / "config.json").read_text())
        assert stored["strategy"]["mu"] == 0.5
    assert fedavg_log.stat().st_mtime_ns == before and len(pd.read_csv(tmp_path / "res.csv")) == 16


def test_run_grid_workers_share_the_grid_without_doing_a_run_twice(tmp_path):
    proto = tmp_path / "tiny.yaml"
    proto.write_text(
        "tasks: [rte]\nstrategies: [fedavg, fedavg_selected, fedpeptao]\nseeds: [0, 1, 2]\n"
        "experiment:\n  model: {prompt_len: 2, max_length: 48}\n  train: {batch_size: 8}\n"
        "  fed: {num_clients: 2, clients_per_round: 2, rounds: 1}\n"
        "  data: {train_limit: 16, eval_limit: 8}\n"
        "  selection: {share_ratio: 0.0, hessian_warmup_rounds: 1, hessian_iters: 2}\n"
    )
    out = tmp_path / "out"
    run("run_grid.py", str(proto), "--out", str(out), "--workers", "2")
    import pandas as pd

    table = pd.read_csv(out / "results.csv")
    assert len(table) == 9 and not table.duplicated(["task", "strategy", "seed"]).any()
    assert not (out / "claims").exists()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["workers"] == [2] and prov["wall_seconds"][0] > 0  # the whole invocation, both workers
    for seed in (0, 1, 2):  # a pair's rows ran in one worker: one selection, made by fedavg_selected, reused
        pair = out / "rte" / f"seed{seed}"
        assert (pair / "fedpeptao" / "selection.json").read_text() == (
            pair / "fedavg_selected" / "selection.json"
        ).read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("rte/seed*/*/results.jsonl")}
    run("run_grid.py", str(proto), "--out", str(out), "--workers", "2")  # nothing left: only re-renders
    assert {p: p.stat().st_mtime_ns for p in out.glob("rte/seed*/*/results.jsonl")} == mtimes


def test_tune_chooses_per_task_on_the_validation_split_and_writes_the_protocol(tmp_path):
    proto = tmp_path / "tiny.yaml"
    proto.write_text(
        "# a comment that stays\ntasks: [rte, mrpc]\nstrategies: [fedavg, fedprox, fedavgm]\nseeds: [0]\n"
        "tuning: {validation: 8, seeds: [0], grid: {fedprox: {mu: [0.01, 1.0]}, fedavgm: {server_lr: [1.0]}}}\n"
        "params: {fedavgm: {server_momentum: {rte: 0.5, mrpc: 0.9}}}\n"
        "experiment:\n  model: {prompt_len: 2, max_length: 48}\n  train: {batch_size: 8}\n"
        "  fed: {num_clients: 2, clients_per_round: 2, rounds: 1}\n  data: {train_limit: 16, eval_limit: 8}\n"
    )
    line = run("tune.py", str(proto), "--out", str(tmp_path / "out"), "--write")
    assert line.startswith("wrote params into")
    text = proto.read_text()
    assert text.startswith("# a comment that stays\n") and re.search(
        r"^params: \{fedavgm: .+, fedprox: \{mu: .+\}\}$", text, re.M
    )
    choices = pd.read_csv(tmp_path / "out" / "choices.csv")
    choices = choices[choices.strategy == "fedprox"]
    assert list(choices.task) == ["rte", "mrpc"] and set(choices.edge.fillna("")) <= {"", "mu"}  # 2 values: edges
    mu = {t: json.loads(c)["mu"] for t, c in zip(choices.task, choices.chosen)}
    from fedlib.configbase import yaml_load

    written = yaml_load(text)["params"]["fedprox"]["mu"]
    assert written == (mu["rte"] if mu["rte"] == mu["mrpc"] else mu)  # one value, or one per task
    run_cfg = json.loads((tmp_path / "out" / "rte" / "seed0" / "fedprox_mu=0.01" / "config.json").read_text())
    assert run_cfg["data"]["validation"] == 8 and run_cfg["strategy"]["mu"] == 0.01
    assert run_cfg["fed"]["eval_every"] == 0 and not run_cfg["fed"]["personal_eval"]  # one number: final global
    for task, momentum in (("rte", 0.5), ("mrpc", 0.9)):  # a known per-task value of a parameter not tuned
        ran = json.loads((tmp_path / "out" / task / "seed0" / "fedavgm_server_lr=1.0" / "config.json").read_text())
        assert ran["strategy"]["server_momentum"] == momentum, task
    assert yaml_load(text)["params"]["fedavgm"] == {"server_momentum": {"rte": 0.5, "mrpc": 0.9}, "server_lr": 1.0}


def test_tuning_some_tasks_keeps_the_other_tasks_values():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tune", BENCH / "tune.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    known = {"fedpeptao": {"server_lr": {"sst2": 0.1, "mr": 1.0}, "correction_scale": 1.0}}
    rows = [{"task": "sst2", "strategy": "fedpeptao", "chosen": json.dumps({"server_lr": 0.3})}]
    merged = tune.merged_params(known, rows, ["sst2"], ["sst2", "mr"])
    assert merged == {"fedpeptao": {"server_lr": {"sst2": 0.3, "mr": 1.0}, "correction_scale": 1.0}}
    rows[0]["chosen"] = json.dumps({"server_lr": 1.0})  # now both tasks hold 1.0: one value
    assert tune.merged_params(known, rows, ["sst2"], ["sst2", "mr"])["fedpeptao"]["server_lr"] == 1.0
    both = rows + [{"task": "mr", "strategy": "fedpeptao", "chosen": json.dumps({"server_lr": 0.3})}]
    assert tune.merged_params(known, both, ["sst2", "mr"])["fedpeptao"]["server_lr"] == {"sst2": 1.0, "mr": 0.3}
    # no known value for the task not tuned: the one value written serves it too (a task-less dict could not run)
    assert tune.merged_params({}, rows, ["sst2"], ["sst2", "mr"]) == {"fedpeptao": {"server_lr": 1.0}}


def test_hyper_parameters_per_task_name_a_missing_task():
    from fedlib.benchmark import task_params
    from fedlib.configbase import ConfigError

    assert task_params({"lr": {"sst2": 0.3, "mr": 1.0}, "server_lr": 1.0}, "mr") == {"lr": 1.0, "server_lr": 1.0}
    with pytest.raises(ConfigError, match=r"params.scaffold.lr: a value per task, \['sst2'\], without 'cola'"):
        task_params({"lr": {"sst2": 0.3}}, "cola", "params.scaffold")


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "protocols").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_protocol_builds_its_configs(path):
    """Every row of every shipped protocol is a valid config (strategies, params and variants), before any run."""
    from fedlib.benchmark import task_params
    from fedlib.config import ExperimentConfig
    from fedlib.configbase import yaml_load
    from fedlib.references import REFERENCES
    from fedlib.strategies import STRATEGIES

    proto = yaml_load(path.read_text())
    base = ExperimentConfig.from_dict(proto["experiment"])
    variants, params, derived = proto.get("variants", {}), proto.get("params", {}), proto.get("finetuned", {})
    for name in proto["strategies"]:
        assert name in variants or name in STRATEGIES or name in REFERENCES or derived.get(name) in STRATEGIES, name
        cfg = base.with_overrides(variants[name]) if name in variants else base
        if name in STRATEGIES:
            for task in proto["tasks"]:  # a hyper-parameter may be tuned per task: {task: value}
                cfg = cfg.with_strategy(name, **task_params(params.get(name, {}), task))
    assert set(params) <= set(proto["strategies"]) and set(variants) <= set(proto["strategies"])
    assert set(proto.get("targets", {})) <= set(proto["tasks"])
