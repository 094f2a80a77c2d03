"""What privacy costs, measured (notebook 06): epsilon over rounds, update norms and clipping, utility against
epsilon over seeds with the floor and references, the signal-to-noise of a round, and epsilon at larger N.

The mechanism and the accountant are :mod:`fedlib.privacy`; here are the grids and figures over them. Notation as
there: N clients, m per round (q = m / N), clip norm C, noise multiplier z, d shared floats, delta.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .privacy import epsilon
from .progress import bar
from .references import majority_local
from .report import VIEWS, summarize
from .simulation import run_simulation
from .stats import at_or_below, mean_ci

__all__ = [
    "epsilon_curves",
    "epsilon_at_scale",
    "utility_runs",
    "utility_table",
    "noise_to_signal",
    "plot_epsilon",
    "plot_utility",
]

REFERENCE_ROWS = ("local_only", "majority_local")  # drawn as lines, not as strategies under DP


def epsilon_curves(q: float, noise_multipliers, rounds: int, delta: float) -> pd.DataFrame:
    """Epsilon after each round t = 1..rounds per z: the sampled Gaussian (Opacus RDP; PRV at the last round) and the
    same releases counted without amplification by sampling (how Flower's DP wrappers account)."""
    rows = []
    for z in noise_multipliers:
        for t in range(1, rounds + 1):
            rows.append(
                {
                    "z": z,
                    "round": t,
                    "rdp": epsilon(q, z, t, delta),
                    "prv": epsilon(q, z, t, delta, "prv") if t == rounds else math.nan,
                    "no_amplification": epsilon(q, z, t, delta, sampling="none"),
                }
            )
    return pd.DataFrame(rows)


def epsilon_at_scale(noise_multipliers, m: int, rounds: int, delta: float, populations) -> pd.DataFrame:
    """Epsilon after ``rounds`` rounds with the same noise on the round's mean (same z, C and m, so the same
    z C / m per coordinate) in populations of N clients: q = m / N shrinks, and so does epsilon."""
    rows = [
        {"N": n, "z": z, "q": m / n, "epsilon": epsilon(m / n, z, rounds, delta)}
        for z in noise_multipliers
        for n in populations
    ]
    return pd.DataFrame(rows)


def utility_runs(base, strategies: dict, noise_multipliers, seeds, backbone=None, progress=None) -> pd.DataFrame:
    """Every ``strategies`` entry (label -> strategy config dict) non-private and under central DP at each z
    (``base.privacy`` gives C and delta), with ``local_only`` and the ``majority_local`` floor, over ``seeds``:
    one row per run with its final three views, epsilon (inf: non-private) and its update norms' median."""
    runs = [(label, spec, z) for label, spec in strategies.items() for z in (None, *noise_multipliers)]
    runs += [("local_only", {"name": "local_only"}, None), ("majority_local", None, None)]
    rows = []
    for label, spec, z in bar(runs, progress, desc="utility runs"):
        for seed in seeds:
            cfg = base.replace(fed=base.fed.replace(seed=seed))
            if spec is None:
                history = majority_local(cfg)
            else:
                # each row's own z (a target epsilon in base would make every z one run) or no privacy at all
                private = dict(mode="central", noise_multiplier=z, target_epsilon=0.0) if z is not None else {}
                cfg = cfg.with_overrides({"strategy": spec})
                cfg = cfg.replace(privacy=base.privacy.replace(**(private or {"mode": "off"})))
                history = run_simulation(cfg, backbone=backbone, progress=progress).history
            s = summarize(history)
            rows.append(
                {
                    "strategy": label,
                    "z": math.nan if z is None else z,
                    "seed": seed,
                    "epsilon": s["epsilon"] if z is not None else math.inf,
                    **{v: s[f"final_{v}"] for v in VIEWS},
                    "update_norm_median": float(history["update_norm_median"].median())
                    if "update_norm_median" in history
                    else math.nan,
                }
            )
    return pd.DataFrame(rows)


def utility_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (strategy, z): mean epsilon and each view's mean with its 95% half-width over seeds, and the views on
    which the mean is at or below the ``majority_local`` floor's."""
    floor = rows[rows["strategy"] == "majority_local"]
    floor_mean = {v: float(floor[v].mean()) for v in VIEWS} if len(floor) else {}
    out = []
    for (label, z), g in rows.groupby(["strategy", "z"], dropna=False, sort=False):
        rec = {"strategy": label, "z": z, "epsilon": float(g["epsilon"].mean()), "seeds": len(g)}
        for v in VIEWS:
            m, h, _ = mean_ci(g[v].dropna())
            rec[v], rec[f"{v}_ci"] = m, h
        if label != "majority_local":
            rec["at_or_below_floor"] = ", ".join(VIEWS[v] for v in at_or_below(rec, floor_mean, VIEWS))
        out.append(rec)
    return pd.DataFrame(out)


def noise_to_signal(history: pd.DataFrame) -> pd.DataFrame:
    """Per round of a central-DP run: the noise's norm on the mean, ||N(0, (zC)^2 I_d)|| / (qN) (about
    z C sqrt(d) / (qN)), against the clipped updates' mean norm, and their ratio."""
    h = history[history["round"] >= 1][["round", "signal_norm", "noise_norm", "clipped_fraction"]].copy()
    h["noise_over_signal"] = h["noise_norm"] / h["signal_norm"]
    return h.reset_index(drop=True)


def plot_epsilon(curves: pd.DataFrame, scale: pd.DataFrame | None = None):
    """Left: epsilon against rounds per z, sampled Gaussian (solid) and without amplification (dashed); right:
    epsilon at the last round against the population N (log-log), the same noise on each round's mean."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if scale is not None else 1, figsize=(11 if scale is not None else 6, 3.6))
    axes = np.atleast_1d(axes)
    for i, (z, g) in enumerate(curves.groupby("z")):
        color = f"C{i}"
        axes[0].plot(g["round"], g["rdp"], color=color, label=f"z = {z:g}, Poisson sampling (RDP)")
        axes[0].plot(g["round"], g["no_amplification"], color=color, ls="--", label=f"z = {z:g}, no amplification")
    axes[0].set(xlabel="round", ylabel="epsilon", yscale="log", title="epsilon over rounds")
    axes[0].legend(fontsize=7)
    if scale is not None:
        for i, (z, g) in enumerate(scale.groupby("z")):
            axes[1].plot(g["N"], g["epsilon"], "o-", color=f"C{i}", label=f"z = {z:g}")
        axes[1].set(xscale="log", yscale="log", xlabel="clients N (m fixed)", ylabel="epsilon", title="the same noise")
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_utility(rows: pd.DataFrame, views=("global_metric", "personal_iid_metric")):
    """Each view's mean (95% bars over seeds) against epsilon (log) per strategy; its non-private run a dashed line
    of the same colour, ``local_only`` dash-dotted and the ``majority_local`` floor dotted (black)."""
    import matplotlib.pyplot as plt

    table = utility_table(rows)
    fig, axes = plt.subplots(1, len(views), figsize=(5.5 * len(views), 3.8), squeeze=False)
    private = table[np.isfinite(table["epsilon"]) & table["z"].notna()]
    labels = [s for s in table["strategy"].unique() if s not in REFERENCE_ROWS]
    for ax, view in zip(axes[0], views):
        for i, label in enumerate(labels):
            g = private[private["strategy"] == label].sort_values("epsilon")
            ax.errorbar(g["epsilon"], g[view], yerr=g[f"{view}_ci"], fmt="o-", color=f"C{i}", capsize=3, label=label)
            plain = table[(table["strategy"] == label) & table["z"].isna()][view]
            if len(plain):
                ax.axhline(float(plain.iloc[0]), color=f"C{i}", ls="--", lw=1)
        for name, style in (("local_only", "-."), ("majority_local", ":")):
            ref = table[table["strategy"] == name][view]
            if len(ref) and ref.notna().all():
                ax.axhline(float(ref.iloc[0]), color="k", ls=style, lw=1.2, label=name)
        ax.set(xscale="log", xlabel="epsilon (delta fixed)", ylabel=VIEWS[view], title=VIEWS[view])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
