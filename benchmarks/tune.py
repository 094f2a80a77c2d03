"""Choose strategies' hyper-parameters on a validation split carved from the training data, never the eval set.

    python benchmarks/tune.py benchmarks/protocols/cpu-medium.yaml --out runs/tune-cpu-medium --write

Reads the protocol's ``tuning`` section:

    tuning:
      validation: 300                 # training examples held out as the evaluation set (data.validation)
      seeds: [0, 1]
      tasks: [sst2]                   # default: the protocol's tasks
      grid: {fedprox: {mu: [0.001, 0.01, 0.1]}, fedpeptao: {server_lr: [0.01, 0.05, 0.2]}}

Every combination of a strategy's values is a labelled variant of one grid (:func:`fedlib.benchmark.run_grid`, same
seeds, partitions and sampling as the protocol, so resumable); per strategy, the combination with the best mean
global metric over tasks and seeds wins. Means within one validation example (1 / validation) of the best are
ties, and among ties the protocol's current value stays (else the best of them, then the first listed): a
hyper-parameter whose effect is below what the validation set can resolve does not move the protocol, nor force
its rows to be run again. Prints every candidate's mean and the choice;
``--write`` sets the protocol's ``params`` line to the chosen values (merged with the ones already there, every
other line kept). Writes ``<out>/tuning.csv``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
from pathlib import Path

from fedlib.benchmark import run_grid
from fedlib.config import ExperimentConfig
from fedlib.configbase import yaml_load


def candidates(grid: dict[str, dict[str, list]]) -> dict[str, tuple[str, dict]]:
    """label -> (strategy, hyper-parameters), one per combination of each strategy's listed values."""
    out = {}
    for name, space in grid.items():
        keys = list(space)
        for values in itertools.product(*(space[k] for k in keys)):
            params = dict(zip(keys, values))
            out[name + "".join(f"_{k}={v}" for k, v in params.items())] = (name, params)
    return out


def write_params(protocol: Path, params: dict) -> None:
    """Set the protocol's one-line ``params:`` mapping (or add one before ``experiment:``), keeping other lines."""
    text = protocol.read_text()
    line = "params: " + json.dumps(params, separators=(", ", ": ")).replace('"', "")
    if re.search(r"^params:.*$", text, flags=re.M):
        text = re.sub(r"^params:.*$", line, text, count=1, flags=re.M)
    else:
        text = re.sub(r"^experiment:", line + "\nexperiment:", text, count=1, flags=re.M)
    protocol.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", help="a protocol YAML with a 'tuning' section")
    p.add_argument("--out", required=True)
    p.add_argument("--write", action="store_true", help="write the chosen values into the protocol's params")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(args.protocol)
    proto = yaml_load(path.read_text())
    tuning = proto.get("tuning")
    if not tuning or not tuning.get("grid"):
        raise SystemExit(f"{path}: no 'tuning' section with a 'grid' (see {__file__})")
    base = ExperimentConfig.from_dict(proto["experiment"])
    base = base.replace(data=base.data.replace(validation=int(tuning.get("validation", 300)), eval_limit=0))
    known = dict(proto.get("params") or {})
    labels = candidates(tuning["grid"])
    variants = {
        label: {"strategy": {"name": name, **known.get(name, {}), **params}} for label, (name, params) in labels.items()
    }
    table = run_grid(  # majority_local: the floor on the same validation split (no model)
        base,
        tuning.get("tasks") or proto["tasks"],
        ["majority_local", *labels],
        tuning.get("seeds", [0, 1]),
        args.out,
        variants=variants,
    )
    table.to_csv(Path(args.out) / "tuning.csv", index=False)
    means = table.groupby("strategy", sort=False)["global_metric"].mean()
    tol = 1.0 / base.data.validation  # one validation example: below what the validation set resolves
    chosen = dict(known)
    for name in tuning["grid"]:
        mine = [label for label, (n, _) in labels.items() if n == name]
        current = base.with_strategy(name, **known.get(name, {})).strategy  # the protocol's value, or the default
        top = max(means[label] for label in mine)
        tied = [label for label in mine if means[label] >= top - tol]
        kept = [label for label in tied if all(getattr(current, k) == v for k, v in labels[label][1].items())]
        best = kept[0] if kept else max(tied, key=lambda label: (means[label], -mine.index(label)))
        for label in mine:
            mark = "  <- chosen" if label == best else ("  (tie)" if label in tied else "")
            print(f"{label}: validation global metric {means[label]:.4f}{mark}")
        chosen[name] = {**known.get(name, {}), **labels[best][1]}
    print("params:", json.dumps(chosen))
    if args.write:
        write_params(path, chosen)
        print(f"wrote params into {path}")


if __name__ == "__main__":
    main()
