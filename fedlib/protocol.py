"""Run a benchmark protocol: tasks x strategies x seeds, one CSV row each (see :mod:`fedlib.benchmark`).

    fedlib grid benchmarks/protocols/cpu-medium.yaml --out runs/cpu-medium \
        --results results/cpu-medium --readme docs/results.md
    fedlib grid benchmarks/protocols/paper.yaml --out runs/paper --data-dir /data/glue

(``benchmarks/run_grid.py`` is the same command.) A protocol is a YAML file: ``tasks``, ``strategies``
(registered names, reference rows, or labels of ``variants`` and ``finetuned``), ``seeds``, ``targets`` (per task
a number or a pair ``[target, target_high]``), optional ``params``, ``variants``, ``finetuned`` (derived rows: FedAvg
then local fine-tuning from FedAvg's runs, :func:`fedlib.benchmark.grid_configs`), ``reuse`` (``{fedpeptao: runs/x}``:
the runs grid ``runs/x`` already made, :func:`fedlib.grid_plan.reusable_run`) and ``extra_seeds``, and
``experiment``, the base :class:`~fedlib.config.ExperimentConfig`.
``extra_seeds`` gives some rows of a task more seeds than the rest, e.g.
``{sst2: {strategies: [fedavg_selected, fedpeptao], seeds: [5, 6]}}``: where one paired difference needs a tighter
interval than the others, without paying for every row.

Writes ``<out>/results.csv``, ``<out>/results.md`` (mean over seeds), ``<out>/<task>.png`` (mean over seeds)
and each run's ``results.jsonl``; ``<out>/provenance.json`` records the command and, per invocation, the commit,
start time, number of workers and wall-clock seconds (rendered as the grid's wall-clock time). Runs already in the
CSV are skipped, so an interrupted grid resumes (and a finished one only re-renders);
``--tasks``, ``--strategies`` and ``--seeds`` run a part of the grid, and every run of the protocol the CSV holds is
rendered.
``--workers N`` runs the pending runs in N processes at once, each with its share of the cores as torch threads,
each taking the next (task, seed) pair no other has taken (:mod:`fedlib.workers`): on a machine whose cores one
process does not keep busy, the grid finishes sooner (``benchmarks/grid_workers.py`` measures the gain on a
stand-in: one strategy's runs dealt between one-thread processes); each run's seconds are then measured with fewer
threads, so run a whole grid one way. One invocation at a time runs a grid folder (``run.lock``); on a GPU the
workers share the device, each with its own copy of the model.
``--results P`` copies the CSV to ``P.csv`` and the figures to ``P/``; ``--readme PAGE`` rewrites the part of
the page (``docs/results.md``) between ``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->`` (NAME =
the protocol's name), figures linked relative to the page.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from .benchmark import COLUMNS, pending_runs, retarget, run_dir, run_grid
from .cli import plain
from .config import ExperimentConfig
from .configbase import yaml_load
from .grid_tables import cost_table, grid_curves, paired_table, plot_diagnostics, plot_grid, view_table
from .report import DIAGNOSTICS, markdown_table
from .runtime import platform_name
from .stats import p_text
from .verdicts import claims_markdown
from .workers import grid_lock, run_workers, write_atomic


def git_commit() -> str:
    """HEAD's short hash, with ``+dirty`` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    status = ["git", "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
    return (head or "unknown") + ("+dirty" if dirty else "")


def record_provenance(out: Path, command: str, workers: int = 1) -> dict:
    """Append this invocation (command line, commit, start time, workers, machine) to ``<out>/provenance.json``; its
    ``wall_seconds`` stays ``null`` until :func:`record_wall_time` fills it (``command``: the first invocation's)."""
    path = out / "provenance.json"
    prov = json.loads(path.read_text()) if path.exists() else {"command": command, "commits": [], "started": []}
    for key in ("workers", "wall_seconds", "commands", "platforms"):  # files from before these were recorded
        prov[key] = prov.get(key, []) + [None] * (len(prov["started"]) - len(prov.get(key, [])))
    prov["commits"].append(git_commit())
    prov["started"].append(time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    prov["workers"].append(workers)
    prov["wall_seconds"].append(None)
    prov["commands"].append(command)
    prov["platforms"].append(platform_name())
    write_atomic(path, json.dumps(prov, indent=2))
    return prov


def record_wall_time(out: Path, prov: dict, seconds: float) -> None:
    """Fill this invocation's ``wall_seconds`` (start to finish of its runs, all workers together)."""
    prov["wall_seconds"][-1] = round(seconds, 1)
    write_atomic(out / "provenance.json", json.dumps(prov, indent=2))


def commands_sentence(prov: dict) -> str:
    """The grid's invocations' command lines, each once, in the order first used (older files: the first one's)."""
    commands = list(dict.fromkeys([prov["command"], *(c for c in prov.get("commands") or [] if c)]))
    return ("Command: " if len(commands) == 1 else "Commands: ") + "; then ".join(f"`{c}`" for c in commands)


def wall_time_sentence(prov: dict) -> str:
    """How long the grid took on the clock, from the invocations that finished (sum over them), with their workers."""
    walls = prov.get("wall_seconds") or []  # record_provenance keeps it aligned with "workers"
    done = [(w, k) for w, k in zip(walls, prov.get("workers", [])) if w is not None]
    if not done:
        return ""
    workers = "/".join(map(str, sorted({k for _, k in done})))
    return (
        f" Wall-clock time of the grid: {sum(w for w, _ in done) / 60:.1f} min ({len(done)} of {len(walls)} "
        f"invocation(s) measured, start to finish; {workers} worker(s))."
    )


def holding_sentence(paired) -> str:
    """Which of a paired table's comparisons hold after Holm's adjustment, and which only nominally (interval alone)."""
    held = paired[paired["holds"] == "yes"]
    nominal = paired[(paired["holds"] == "no") & (paired["p"] < 0.05)]
    what = lambda t: "; ".join(  # noqa: E731
        f"{r.task} {r.view.removesuffix('_metric')} vs {r.vs} ({'+' if r.diff > 0 else ''}{r.diff:.4f})"
        for r in t.itertuples()
    )
    return (
        f"Holding after the adjustment ({len(held)} of {int(paired['p'].notna().sum())}): {what(held) or 'none'}. "
        f"Intervals excluding zero that do not hold (exploratory, {len(nominal)}): {what(nominal) or 'none'}."
    )


def results_section(name: str, proto: dict, table, prov: dict, figures: list[str], uncurved: list[str] = ()) -> str:
    """The results page's section for one protocol, rendered from the grid's CSV. ``uncurved``: rows of the CSV whose
    runs' per-round histories are not in the grid's folder (kept from an earlier invocation): tables only."""
    commits = ", ".join(dict.fromkeys(prov["commits"]))
    ran = table[~table["strategy"].isin(list(proto.get("finetuned") or {}))]  # a derived row's seconds: in its source's
    wall_s = ran["wall_seconds"].sum()
    typical = ran.groupby(["task", "strategy"])["wall_seconds"].transform("median").sum()
    seeds = proto["seeds"]
    machines = " / ".join(dict.fromkeys(m for m in prov.get("platforms") or [] if m)) or "an unrecorded machine"
    lines = [
        f"Protocol `{name}`: tasks {', '.join(proto['tasks'])}; {len(seeds)} seeds {seeds}"
        + "".join(
            f" ({task}: also seeds {x['seeds']} for {', '.join(x['strategies'])})"
            for task, x in (proto.get("extra_seeds") or {}).items()
        )
        + "; configuration "
        f"`{json.dumps(proto['experiment'], separators=(',', ':'))}`"
        + (f"; hyper-parameters `{json.dumps(proto['params'], separators=(',', ':'))}`" if proto.get("params") else "")
        + (f"; variants `{json.dumps(proto['variants'], separators=(',', ':'))}`" if proto.get("variants") else "")
        + ".",
        f"{commands_sentence(prov)} at commit(s) {commits}."
        + (
            f" Sum of the runs' wall times: {wall_s / 60:.1f} min on {machines}; {typical / 60:.1f} min with "
            "every run at its row's median (robust to runs slowed by other work on the machine)."
            if wall_s
            else ""
        )
        + wall_time_sentence(prov),
        "",
        "Final dev metric (accuracy; MCC for CoLA; (acc+F1)/2 for MRPC), mean ± half-width of the 95% CI over seeds, "
        "in three views: `global` (the shared model on the whole eval set), `personal` (each client's model on an "
        "eval shard with its own training label mix: the reference's protocol, where knowing the label prior "
        "scores) and `personal_iid` (each client's model on an eval shard with the eval set's label mix). "
        "`majority_local` (no model: each client's majority label) is the floor, `local_only` the no-federation "
        "and `centralized` (pooled data, same steps) the upper reference. Last columns: bytes exchanged per run "
        "(layer selection included; mean) and seconds per run (median over seeds: robust to a run slowed by other "
        "work on the machine).",
        "",
        markdown_table(view_table(table)),
        "",
    ]
    paired = paired_table(table)
    if len(paired):
        shown = paired.assign(p=paired["p"].map(p_text), p_holm=paired["p_holm"].map(p_text))
        lines += [
            "FedPepTAO minus each other row, paired by seed (mean difference ± 95% CI; `wins`: seeds where it is "
            f"ahead; `p`: the paired t-test's; `p_holm`: Holm-adjusted over the {int(paired['p'].notna().sum())} "
            "comparisons of this table, one family; `holds`: `p_holm` < 0.05, the family's error rate controlled at "
            "5%. A difference that does not hold is exploratory, whatever its interval):",
            "",
            markdown_table(shown[["task", "view", "vs", "diff ± CI", "wins", "seeds", "p", "p_holm", "holds"]]),
            "",
            holding_sentence(paired),
            "",
        ]
    if proto.get("claims"):
        lines += [
            "The claims this protocol holds FedPepTAO to (`claims` in its YAML; `fedlib.verdicts`), from the paired "
            "table above: per task the difference ± 95% CI, seeds ahead and the Holm-adjusted p-value; **ahead** or "
            "**behind** only where that p-value is below 0.05; a byte claim against its bound:",
            "",
            claims_markdown(table, proto["claims"]),
        ]
    diagnostics = [c for c in DIAGNOSTICS if c in table and table[c].notna().any()]
    if diagnostics:
        means = table.dropna(subset=diagnostics, how="all").groupby(["task", "strategy"], sort=False)[diagnostics]
        lines += [
            "The strategies' own diagnostics, means over seeds of each run's mean over its server steps: FedPepTAO's "
            "`momentum_share` ||eta_s V|| / ||Delta_t|| and `correction_share` ||kappa (c - sum_i p_i c_i)|| / "
            "||Delta_t|| (each part of its step against FedAvg's step), SCAFFOLD's `correction_ratio` ||c - c_i|| / "
            "||g|| (its correction against the local gradient):",
            "",
            markdown_table(means.mean().reset_index()),
            "",
        ]
    if table["target"].notna().any():
        lines += [
            "Cost to the fixed per-task target on the global metric (medians over seeds; `>R`: the median seed did "
            "not reach it within R rounds; bytes and seconds include layer selection, whose MB are also shown):",
            "",
            markdown_table(cost_table(table)),
            "",
        ]
    if uncurved and figures:
        lines += [
            f"The figures draw the rows whose per-round histories this grid's folder holds; {', '.join(uncurved)} "
            "(kept in the CSV from an earlier invocation, whose run folders were not kept) are in the tables only.",
            "",
        ]
    lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def replace_marked(readme: Path, name: str, body: str, kind: str = "results") -> None:
    """Rewrite what lies between ``<!-- KIND:NAME:begin -->`` and ``<!-- KIND:NAME:end -->`` in ``readme``."""
    begin, end = f"<!-- {kind}:{name}:begin -->", f"<!-- {kind}:{name}:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme}: add the markers {begin} and {end} where the results should go")
    head, rest = text.split(begin, 1)
    readme.write_text(head + begin + "\n" + body + end + rest.split(end, 1)[1])


def grid_slices(proto: dict) -> list[dict]:
    """The protocol's parts, each a full grid: ``tasks`` x ``strategies`` x ``seeds``, then one part per task of
    ``extra_seeds`` (its rows, its seeds). Raises SystemExit naming a wrong ``extra_seeds`` entry."""
    slices = [{"tasks": list(proto["tasks"]), "strategies": list(proto["strategies"]), "seeds": list(proto["seeds"])}]
    for task, extra in (proto.get("extra_seeds") or {}).items():
        where = f"extra_seeds.{task}"
        if task not in proto["tasks"]:
            raise SystemExit(f"{where}: {task!r} is not one of the protocol's tasks {proto['tasks']}")
        if not isinstance(extra, dict) or set(extra) != {"strategies", "seeds"}:
            raise SystemExit(f"{where}: must be a mapping with 'strategies' and 'seeds', got {extra!r}")
        unknown = sorted(set(extra["strategies"]) - set(proto["strategies"]))
        if unknown:
            raise SystemExit(f"{where}.strategies: {unknown} not among the protocol's strategies")
        slices.append({"tasks": [task], "strategies": list(extra["strategies"]), "seeds": list(extra["seeds"])})
    return slices


def _in_slice(table: pd.DataFrame, sl: dict) -> pd.Series:  # the rows of the part ``sl``
    return table.task.isin(sl["tasks"]) & table.strategy.isin(sl["strategies"]) & table.seed.isin(sl["seeds"])


def _pending(base: ExperimentConfig, proto: dict, out: Path, sl: dict, quiet: bool = True) -> bool:
    """Whether some run of the part ``sl`` is still to do: not in the grid's CSV yet, or run with another
    configuration than the protocol's now (e.g. tuned ``params`` written after it ran; logged unless ``quiet``)."""
    args = (base, sl["tasks"], sl["strategies"], sl["seeds"], out, proto.get("params"), proto.get("variants"))
    return bool(pending_runs(*args, quiet=quiet, finetuned=proto.get("finetuned")))  # run_grid logs them as it runs


def protocol_rows(table: pd.DataFrame, slices: list[dict]) -> pd.DataFrame:
    """The rows of ``table`` that belong to one of the protocol's parts (stale rows of other runs left out), in the
    protocol's order of tasks, then strategies, then seeds."""
    keep = pd.Series(False, index=table.index)
    for sl in slices:
        keep |= _in_slice(table, sl)
    order = {key: {v: i for i, v in enumerate(slices[0][key])} for key in ("tasks", "strategies")}
    rows = table[keep].assign(_t=lambda t: t.task.map(order["tasks"]), _s=lambda t: t.strategy.map(order["strategies"]))
    return rows.sort_values(["_t", "_s", "seed"], kind="stable").drop(columns=["_t", "_s"]).reset_index(drop=True)


def run_slices(
    base: ExperimentConfig,
    proto: dict,
    slices: list[dict],
    out: Path,
    claims: Path | None = None,
    progress: bool | None = None,
) -> None:
    """Run the protocol's parts ``slices`` into ``out`` (:func:`fedlib.benchmark.run_grid`); ``claims``: as one of
    ``--workers``' processes (:func:`fedlib.workers.run_workers`)."""
    for sl in slices:
        run_grid(
            base,
            sl["tasks"],
            sl["strategies"],
            sl["seeds"],
            out,
            targets=proto.get("targets"),
            params=proto.get("params"),
            variants=proto.get("variants"),
            finetuned=proto.get("finetuned"),
            reuse=proto.get("reuse"),
            claims=claims,
            progress=progress,
        )


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=plain(__doc__.splitlines()[0]))
    p.add_argument(
        "protocol",
        help="YAML with tasks, strategies, seeds, an 'experiment' ExperimentConfig and optional "
        "'params' (per strategy, hyper-parameters overriding its defaults)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", help="folder holding <task>/ TSV folders (default: $FEDLIB_DATA or data/)")
    p.add_argument("--device")
    p.add_argument("--results", help="write the CSV to RESULTS.csv and figures to RESULTS/ (e.g. results/cpu-medium)")
    p.add_argument("--readme", help="rewrite this page's marked results section (e.g. docs/results.md)")
    p.add_argument("--claims-page", help="also rewrite this page's marked claims table (<!-- claims:NAME:... -->)")
    p.add_argument("--tasks", help="comma-separated subset of the protocol's tasks: run or render a grid in parts")
    p.add_argument("--strategies", help="comma-separated subset of the protocol's strategies (rows)")
    p.add_argument("--seeds", help="comma-separated subset of the protocol's seeds")
    p.add_argument("--render-only", action="store_true", help="render the runs the CSV holds; run nothing")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running the grid at once, cores split between them as torch threads (default 1)",
    )
    args = p.parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"--workers: {args.workers}, must be >= 1")
    if args.workers > 1 and importlib.util.find_spec("fcntl") is None:  # Windows: without locks rows would be lost
        raise SystemExit("--workers > 1 needs POSIX file locks (Linux, macOS); run with one worker here")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    proto = yaml_load(Path(args.protocol).read_text())
    slices = grid_slices(proto)
    for key in ("tasks", "strategies", "seeds"):  # a part of the grid
        if getattr(args, key):
            known = list(dict.fromkeys(v for sl in slices for v in sl[key]))
            subset = [type(known[0])(v) for v in getattr(args, key).split(",")]
            unknown = sorted(set(subset) - set(known))
            if unknown:
                raise SystemExit(f"--{key}: {unknown} not in the protocol's {key} {known}")
            slices = [{**sl, key: [v for v in sl[key] if v in subset]} for sl in slices]
    slices = [sl for sl in slices if all(sl.values())]
    name = Path(args.protocol).stem
    base = ExperimentConfig.from_dict(proto["experiment"])
    if args.data_dir:
        base = base.replace(data=base.data.replace(data_dir=args.data_dir))
    if args.device:
        base = base.replace(run=base.run.replace(device=args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    with contextlib.ExitStack() as running:
        if not args.render_only:  # one invocation at a time runs this grid
            running.enter_context(grid_lock(out))
        # which finished runs are to run again: logged here for workers (they do not), else by run_grid as it runs
        todo = [sl for sl in slices if not args.render_only and _pending(base, proto, out, sl, args.workers == 1)]
        prov_path = out / "provenance.json"
        if todo or not prov_path.exists():  # runs to do: record their commit
            command = ("python " if sys.argv[0].endswith(".py") else "") + shlex.join(sys.argv)
            prov = record_provenance(out, command, args.workers)
        else:  # a finished grid is only re-rendered
            prov = json.loads(prov_path.read_text())
        start = time.monotonic()
        if todo and args.workers > 1:
            claims = out / "claims"
            run_workers(run_slices, (base, proto, todo, out, claims, False), args.workers, claims)
        elif todo:
            run_slices(base, proto, todo, out)
        if todo:
            record_wall_time(out, prov, time.monotonic() - start)
        if not args.render_only:  # rows done before an edit of targets: the new target's columns, from their logs
            retarget(csv, out, proto.get("targets") or {}, grid_slices(proto))
    table = protocol_rows(pd.read_csv(csv).reindex(columns=COLUMNS), grid_slices(proto)) if csv.exists() else None
    if table is None or table.empty:
        raise SystemExit(f"{csv}: no run of this protocol yet")
    proto = {**proto, "tasks": [t for t in proto["tasks"] if t in set(table["task"])]}  # rendered: those with runs
    curved = {
        (r.task, r.strategy, int(r.seed))
        for r in table.itertuples()
        if (run_dir(out, r.task, r.seed, r.strategy) / "results.jsonl").exists()
    }
    uncurved = list(
        dict.fromkeys(r.strategy for r in table.itertuples() if (r.task, r.strategy, int(r.seed)) not in curved)
    )
    figures = []
    for task in proto["tasks"]:
        kept = Path(args.results or out) / f"{task}.png"
        if not any(key[0] == task for key in curved) and kept.exists():  # no run folder here: the figure it drew
            figures.append(kept)
            continue
        seeds = sorted(set(table.loc[table["task"] == task, "seed"]))
        fig = plot_grid(out, task, seeds, skip=tuple(proto.get("finetuned") or {}))
        fig.savefig(out / f"{task}.png", dpi=90)
        figures.append(out / f"{task}.png")
        curves = table.loc[table["task"] == task, "auc"].notna().any()  # grids recording the area under the curve
        per_round = plot_diagnostics(out, task, seeds) if curves else None  # FedPepTAO's server step, per round
        if per_round is not None:
            per_round.savefig(out / f"{task}-fedpeptao.png", dpi=90)
            figures.append(out / f"{task}-fedpeptao.png")
    if not curved:  # every figure kept from the invocations that ran the rows: nothing missing from them
        uncurved = []
    section = results_section(name, proto, table, prov, [str(f) for f in figures], uncurved)
    (out / "results.md").write_text(section)
    print(section)
    if args.results:
        res = Path(args.results)
        res.mkdir(parents=True, exist_ok=True)
        table.to_csv(res.with_suffix(".csv"), index=False)
        if table["auc"].notna().any() and curved:  # a curve per round: committed beside the CSV (notebook 05)
            grid_curves(out, table).to_csv(res.parent / f"{res.name}-curves.csv", index=False)
        figures = [
            f if Path(f).resolve() == (res / f.name).resolve() else shutil.copy(f, res / f.name) for f in figures
        ]
        if args.readme:
            readme = Path(args.readme)
            rel = [os.path.relpath(Path(f).resolve(), readme.parent.resolve()) for f in figures]  # as the page links
            replace_marked(readme, name, results_section(name, proto, table, prov, rel, uncurved))
        if args.claims_page and proto.get("claims"):
            replace_marked(Path(args.claims_page), name, claims_markdown(table, proto["claims"]), "claims")


if __name__ == "__main__":
    main()
