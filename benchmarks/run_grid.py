"""Run a benchmark protocol: tasks x strategies x seeds, one CSV row each (see fedlib.benchmark).

    python benchmarks/run_grid.py benchmarks/protocols/cpu-small.yaml --out results/cpu-small
    python benchmarks/run_grid.py benchmarks/protocols/paper.yaml --out runs/paper --data-dir /data/glue

Writes ``<out>/results.csv``, ``<out>/results.md`` (mean over seeds), ``<out>/<task>_seed<s>.png`` and each
run's ``results.jsonl``. Runs already in the CSV are skipped, so an interrupted grid resumes.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from fedlib.benchmark import plot_grid, run_grid
from fedlib.config import ExperimentConfig
from fedlib.report import markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", help="YAML with tasks, strategies, seeds and an 'experiment' ExperimentConfig")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", help="folder holding <task>/ TSV folders (default: $FEDLIB_DATA or data/)")
    p.add_argument("--device")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    proto = yaml.safe_load(Path(args.protocol).read_text())
    base = ExperimentConfig.from_dict(proto["experiment"])
    if args.data_dir:
        base = base.replace(fed=base.fed.replace(data_dir=args.data_dir))
    if args.device:
        base = base.replace(train=base.train.replace(device=args.device))
    table = run_grid(base, proto["tasks"], proto["strategies"], proto["seeds"], args.out)
    out = Path(args.out)
    for task in proto["tasks"]:
        for seed in proto["seeds"]:
            plot_grid(out, task, seed).savefig(out / f"{task}_seed{seed}.png", dpi=100)
    mean = table.groupby(["task", "strategy"], as_index=False)[
        ["final_metric", "best_metric", "bytes_per_round", "seconds_per_round", "rounds_to_target"]].mean()
    (out / "results.md").write_text(markdown_table(mean) + "\n")
    print(markdown_table(mean))


if __name__ == "__main__":
    main()
