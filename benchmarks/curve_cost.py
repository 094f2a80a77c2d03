"""What reading a protocol's curve on fewer eval examples costs: the same runs measured twice, side by side.

``fed.curve_examples`` leaves training and every whole-set number as they were (a test checks it); only the area
under the global curve (``auc``) and the rounds to target move, read on N examples instead of all. Given a grid's
results table measured both ways (``BEFORE``: every round on the whole eval set; ``AFTER``: the curve on its first N),
this prints, per task:

- how many runs match and how many have every whole-set number identical (the final global view, both personalised
  views, the bytes): the evidence that they are the same runs;
- per row, the mean area before and after (the subset's shift, the same for every row when the subset is merely
  easier or harder) and its 95% CI half-width over seeds;
- per comparison of ``--method`` with another row, the paired difference on the area before and after, with its CI
  half-width: what the subset changed in the comparisons the claims are made of.

The last line is ``curve_cost runs=<n> identical=<k> auc_shift=<mean after - before> ci_ratio=<mean CI half-width
after / before>`` over the paired area comparisons.

    git show 838c8c8:results/paper-shape.csv > /tmp/before.csv
    python benchmarks/curve_cost.py /tmp/before.csv runs/paper-shape/results.csv
"""

from __future__ import annotations

import argparse

import pandas as pd

WHOLE_SET = ["global_metric", "personal_metric", "personal_iid_metric", "bytes_total"]
"""A results row's numbers that the curve's examples do not touch."""


def compare(before: pd.DataFrame, after: pd.DataFrame, method: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(rows, paired, totals)``: per (task, strategy) the area before and after; per (task, other row) the paired
    difference of ``method`` on the area both ways; the counts and means of the last line."""
    from fedlib.stats import mean_ci, paired_differences

    keys = ["task", "strategy", "seed"]
    both = before.merge(after, on=keys, suffixes=("_before", "_after"))
    same = pd.Series(True, index=both.index)
    for col in WHOLE_SET:
        a, b = both[f"{col}_before"], both[f"{col}_after"]
        same &= (a == b) | (a.isna() & b.isna())
    rows = []
    for (task, name), g in both.groupby(["task", "strategy"], sort=False):
        if g["auc_after"].notna().any():
            (mb, cb, _), (ma, ca, _) = mean_ci(g["auc_before"].tolist()), mean_ci(g["auc_after"].tolist())
            rows.append({"task": task, "strategy": name, "auc before": mb, "± before": cb})
            rows[-1].update({"auc after": ma, "± after": ca})
    rows = pd.DataFrame(rows)
    tables = [t[t.set_index(keys).index.isin(both.set_index(keys).index)] for t in (before, after)]
    pb, pa = (paired_differences(t, "auc", method) for t in tables)
    paired = pb.merge(pa, on=["task", "vs"], suffixes=(" before", " after"))
    paired = paired[["task", "vs", "diff before", "ci before", "diff after", "ci after"]]
    totals = {
        "runs": len(both),
        "identical": int(same.sum()),
        "auc_shift": float((rows["auc after"] - rows["auc before"]).mean()),
        "ci_ratio": float((paired["ci after"] / paired["ci before"]).mean()),
    }
    return rows, paired, totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", help="results table with every round on the whole eval set")
    p.add_argument("after", help="the same runs' table with the curve on fewer examples")
    p.add_argument("--method", default="fedpeptao", help="the row the paired comparisons are of")
    args = p.parse_args()
    from fedlib.report import markdown_table

    rows, paired, t = compare(pd.read_csv(args.before), pd.read_csv(args.after), args.method)
    print(f"{t['identical']} of {t['runs']} runs with every whole-set number identical ({', '.join(WHOLE_SET)})")
    print(markdown_table(rows))
    print(markdown_table(paired))
    print(
        f"curve_cost runs={t['runs']} identical={t['identical']} auc_shift={t['auc_shift']:+.4f} "
        f"ci_ratio={t['ci_ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
