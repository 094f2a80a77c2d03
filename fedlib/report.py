"""Summaries, tables and plots of federated runs (used by ``make experiment``, benchmarks, notebooks).

A run's history is the DataFrame :func:`fedlib.simulation.run_simulation` returns (one row per round; a
round 0 row, phase "selection", holds layer selection's cost). Each evaluated round has three views
(:mod:`fedlib.evaluation`, :data:`VIEWS`): ``global_metric``, ``personal_metric`` (each client's model on a shard
with its own label mix) and ``personal_iid_metric`` (the same models on IID shards). No helper here picks a view
for its caller: a curve names its view, and :func:`plot_views` and :func:`views_table` show all three beside the
``majority_local`` floor (:func:`fedlib.references.majority_local`, no model), which under label skew wins the
matched personalised view by knowing each client's label prior. Targets are reached on the global metric.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .stats import at_or_below

__all__ = [
    "VIEWS",
    "view_series",
    "summarize",
    "views_table",
    "floor_views",
    "rounds_to_target",
    "round_line",
    "markdown_table",
    "plot_curves",
    "plot_views",
    "plot_method",
    "shared_layer_count",
]


def shared_layer_count(result) -> int:
    """Deep-prompt layers a run shares (0 for shallow prompts and LoRA, whose layer prompts are all off)."""
    return sum(r == "shared" for r in result.roles)


VIEWS = {
    "global_metric": "global",
    "personal_metric": "personalised, matched",
    "personal_iid_metric": "personalised, IID shards",
}


def view_series(history: pd.DataFrame, view: str) -> pd.Series:
    """Per-round ``view`` (a key of :data:`VIEWS`), NaN on rounds without evaluation (or runs without the view)."""
    if view not in VIEWS:
        raise ValueError(f"view={view!r}: one of {list(VIEWS)}")
    return history[view] if view in history else pd.Series(np.nan, index=history.index)


def rounds_to_target(history: pd.DataFrame, target: float, column: str = "global_metric") -> tuple[float, ...]:
    """(first round whose ``column`` >= target, cumulative seconds and bytes by then, selection included);
    NaNs if never reached (censored: "more than the run's rounds")."""
    if column not in history:
        return math.nan, math.nan, math.nan
    hit = history[(history["round"] >= 1) & (history[column] >= target - 1e-12)]
    if hit.empty:
        return math.nan, math.nan, math.nan
    return float(hit["round"].iloc[0]), float(hit["cum_seconds"].iloc[0]), float(hit["cum_bytes"].iloc[0])


def _last(history: pd.DataFrame, column: str) -> float:
    return float(history[column].dropna().iloc[-1]) if column in history and history[column].notna().any() else math.nan


DIAGNOSTICS = ("momentum_share", "correction_share", "correction_ratio")
"""Per-round diagnostics a results row keeps the run's mean of (:func:`summarize`)."""


def summarize(history: pd.DataFrame, target: float | None = None, target_high: float | None = None) -> dict:
    """Final metric of each view (and the best global one), ``auc``: the area under the global curve (the mean global
    metric over the evaluated rounds, a convergence-speed and stability summary in the metric's units; with
    ``fed.curve_examples``, on the curve's examples while the final global view is on the whole eval set), bytes and
    seconds per round (training rounds) and in total (layer selection included, also on its own), and
    rounds/seconds/bytes to ``target`` (and to ``target_high``: ``*_to_target_high``) on the global metric."""
    rounds = history[history["round"] >= 1]
    selection = history[history["round"] == 0]
    curve = view_series(rounds, "global_metric").dropna()
    best = view_series(history, "global_metric").max()
    final = "global_full_metric" if "global_full_metric" in history else "global_metric"  # fed.curve_examples
    out = {
        "final_global_metric": _last(history, final),
        "best_global_metric": float(best) if best == best else math.nan,
        "final_personal_metric": _last(history, "personal_metric"),
        "final_personal_iid_metric": _last(history, "personal_iid_metric"),
        "auc": float(curve.mean()) if len(curve) else math.nan,
        "bytes_up_per_round": float(rounds["bytes_up"].mean()),
        "bytes_down_per_round": float(rounds["bytes_down"].mean()),
        "bytes_per_round": float((rounds["bytes_up"] + rounds["bytes_down"]).mean()),
        "bytes_total": float(history["cum_bytes"].iloc[-1]),
        "selection_bytes": float((selection["bytes_up"] + selection["bytes_down"]).sum()),
        "seconds_per_round": float((rounds["seconds_client"] + rounds["seconds_aggregate"]).mean()),
        "seconds_total": float(history["cum_seconds"].iloc[-1]),
        "selection_seconds": float(selection["seconds_client"].sum()),
        "rounds": len(rounds),
        "failed_clients": int(rounds["failed"].sum()),
        "epsilon": _last(history, "epsilon") if "epsilon" in history else math.nan,  # DP: epsilon at the end
        # the strategy's own diagnostics, means over the rounds that record them (NaN for the others): FedPepTAO's
        # momentum and correction against FedAvg's step, SCAFFOLD's ||c - c_i|| against the gradient's norm
        **{k: float(rounds[k].mean()) if k in rounds else math.nan for k in DIAGNOSTICS},
    }
    if target is not None:
        out["rounds_to_target"], out["seconds_to_target"], out["bytes_to_target"] = rounds_to_target(history, target)
    if target_high is not None:
        high = rounds_to_target(history, target_high)
        out["rounds_to_target_high"], out["seconds_to_target_high"], out["bytes_to_target_high"] = high
    return out


def round_line(rec: dict, rounds: int) -> str:
    """A round's record in one line: clients, loss, the evaluated views, bytes and seconds (round 0: layer
    selection's cost)."""
    if rec.get("phase") == "selection":
        return f"layer selection: {rec['bytes_up'] + rec['bytes_down']:,} bytes; {rec['seconds_client']:.1f} s"
    views = ", ".join(
        f"{name} {rec[f'{name}_metric']:.4f}"
        for name in ("global", "personal", "personal_iid")
        if rec.get(f"{name}_metric") is not None and rec[f"{name}_metric"] == rec[f"{name}_metric"]
    )
    return (
        f"round {rec['round']}/{rounds}: {rec['reported']} clients reported, {rec['failed']} failed; "
        f"train loss {rec['train_loss']:.4f}; {views or 'not evaluated'}; "
        f"{rec['bytes_up'] + rec['bytes_down']:,} bytes; {rec['seconds_client'] + rec['seconds_aggregate']:.1f} s"
        + (f"; epsilon {rec['epsilon']:.3g}" if "epsilon" in rec else "")
    )


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured markdown table of ``df`` (no extra dependency)."""

    def cell(v):
        if isinstance(v, float):
            return "—" if math.isnan(v) else (f"{v:,.0f}" if abs(v) >= 1000 else format(v, floatfmt))
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def floor_views(floor) -> dict[str, float]:
    """The floor's value per view, from a ``majority_local`` history (or a ``{view: value}`` dict)."""
    if floor is None:
        return {}
    if isinstance(floor, pd.DataFrame):
        return {v: _last(floor, v) for v in VIEWS}
    return {v: float(floor[v]) for v in VIEWS if v in floor}


def views_table(histories: dict[str, pd.DataFrame], floor=None) -> pd.DataFrame:
    """Each run's final value of every view, the floor's row (``majority_local``) last, and which runs are at or
    below the floor on each view (``at_or_below_floor``: the views' short names)."""
    floors = floor_views(floor)
    rows = []
    for name, h in histories.items():
        row = {"run": name, **{v: _last(h, v) for v in VIEWS}}
        below = [VIEWS[v] for v in at_or_below(row, floors, VIEWS)]
        rows.append({**row, "at_or_below_floor": ", ".join(below) or "none"})
    if floors:
        rows.append({"run": "majority_local (floor, no model)", **{v: floors.get(v, math.nan) for v in VIEWS}})
        rows[-1]["at_or_below_floor"] = ""
    return pd.DataFrame(rows)


def plot_curves(
    histories: dict[str, pd.DataFrame],
    view: str,
    x: str = "round",
    ax=None,
    title: str | None = None,
    ylabel: str | None = None,
    floor=None,
    highlight: tuple[str, ...] = ("fedpeptao",),
):
    """One view (a key of :data:`VIEWS`, no default: the caller says which) per round (``x="round"``) or per
    cumulative byte (``x="cum_bytes"``), one line per run; the runs named in ``highlight`` drawn thicker;
    ``floor`` (a ``majority_local`` history or ``{view: value}``) as a dashed line."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 4))[1]
    ylabel = ylabel or VIEWS[view]
    for i, (name, h) in enumerate(histories.items()):
        m = view_series(h, view)
        keep = m.notna()
        xs = h.loc[keep, x] / (1e6 if x == "cum_bytes" else 1)
        ax.plot(
            xs,
            m[keep],
            marker="o",
            ms=3,
            label=name,
            color=f"C{i % 10}",
            ls="-" if i < 10 else "--",
            lw=2.5 if name in highlight else 1.5,
        )
    ax.set_xlabel(
        {"round": "round", "cum_bytes": "cumulative MB exchanged", "cum_seconds": "cumulative seconds"}.get(x, x)
    )
    level = floor_views(floor).get(view)
    if level is not None and level == level:
        ax.axhline(level, color="black", ls=":", lw=1.2, label=f"majority_local floor ({level:.3f})")
    ax.set_ylabel(ylabel)
    if x == "round":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if x == "cum_bytes":
        ax.set_xscale("log")
    ax.set_title(title or f"{ylabel} per {x.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_views(histories: dict[str, pd.DataFrame], floor=None, x: str = "round", title: str | None = None):
    """The three views side by side (:data:`VIEWS`), each with its ``majority_local`` floor: a run's place on one
    view is read against the others and against what a guess with no model scores. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, view in zip(axes, VIEWS):
        plot_curves(histories, view, x=x, ax=ax, title=VIEWS[view], ylabel=" ", floor=floor)
    axes[0].set_ylabel("metric")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


ROLE_COLOURS = {"shared": "#1f77b4", "personal": "#ff7f0e", "off": "#d9d9d9"}


def plot_method(roles=("personal", "shared", "shared", "personal", "shared", "off"), clients: int = 3, ax=None):
    """The method in one picture: a frozen L-layer model per client with a deep prompt per layer coloured by its
    role (``docs/method.md``, "Partial prompt tuning"); only the shared layers' prompts (and the head) travel to the
    server, which keeps the momentum V and one control variate c_i per client ("Adaptive optimisation")."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.6))
    L, width, gap = len(roles), 2.2, 0.9
    x0 = [k * (width + gap) for k in range(clients)]
    top = L * 0.55 + 0.2
    server_x = (x0[-1] + width) / 2 - 2.2
    ax.add_patch(Rectangle((server_x, top + 1.3), 4.4, 1.0, fc="#f2f2f2", ec="black"))
    ax.text(
        server_x + 2.2,
        top + 1.8,
        "server: shared prompts + head $\\theta$,\nmomentum $V$, control variates $c_i$",
        ha="center",
        va="center",
        fontsize=9,
    )
    for k, x in enumerate(x0):
        for layer, role in enumerate(roles):
            y = layer * 0.55
            ax.add_patch(Rectangle((x + 0.5, y), width - 0.5, 0.45, fc="white", ec="grey"))  # frozen layer
            ax.text(
                x + 0.5 + (width - 0.5) / 2,
                y + 0.22,
                f"layer {layer + 1} (frozen)",
                ha="center",
                va="center",
                fontsize=7,
                color="grey",
            )
            ax.add_patch(Rectangle((x, y), 0.42, 0.45, fc=ROLE_COLOURS[role], ec="black", lw=0.5))  # its prompt
        ax.text(
            x + width / 2, -0.1, f"client {k + 1}: local AdamW,\nK steps, own data", ha="center", va="top", fontsize=8
        )
        arrow = FancyArrowPatch(
            (x + width / 2, top),
            (server_x + 2.2, top + 1.3),
            arrowstyle="<->",
            mutation_scale=12,
            color=ROLE_COLOURS["shared"],
        )
        ax.add_patch(arrow)
    ax.text(
        x0[-1] + width + 0.1,
        top + 0.6,
        "only the shared layers'\nprompts and the head travel",
        fontsize=8,
        color=ROLE_COLOURS["shared"],
    )
    ax.legend(
        handles=[Patch(color=c, label=f"{r} prompt") for r, c in ROLE_COLOURS.items()],
        loc="lower left",
        bbox_to_anchor=(1.0, 0.0),
        fontsize=8,
        frameon=False,
    )
    ax.set_xlim(-0.3, x0[-1] + width + 2.6)
    ax.set_ylim(-1.1, top + 2.5)
    ax.set_axis_off()
    return ax
