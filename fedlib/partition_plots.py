"""Pictures of a partition (``docs/method.md``, "Non-IID data"; notebook 01).

Flower Datasets draws per-client label distributions well, so :func:`plot_label_distributions` (one partition)
and :func:`plot_partition_comparison` (several side by side, same scale) hand a :class:`~fedlib.partition.Partition`
to ``flwr_datasets.visualization`` through :class:`IndexPartitioner`. :func:`plot_partition` is kept for what those
do not do: it draws from the label counts of :func:`~fedlib.partition.partition_stats` alone (no ``datasets``
table, milliseconds for 67,349 examples, so a widget can redraw at every slider move), on a caller's axes.
"""

from __future__ import annotations

import numpy as np
from flwr_datasets.partitioner import Partitioner

from .partition import Partition

__all__ = ["IndexPartitioner", "plot_label_distributions", "plot_partition_comparison", "plot_partition"]


class IndexPartitioner(Partitioner):
    """A :class:`Partition`'s training shards as a Flower Datasets partitioner over ``dataset`` (for its plots)."""

    def __init__(self, part: Partition, dataset):
        super().__init__()
        self._shards = part.train
        self.dataset = dataset

    @property
    def num_partitions(self) -> int:
        return len(self._shards)

    def load_partition(self, partition_id: int):
        return self.dataset.select(self._shards[partition_id])


def plot_label_distributions(part: Partition, dataset, label: str = "label", **kwargs):
    """Per-client label distribution drawn by ``flwr_datasets.visualization.plot_label_distributions`` (stacked
    bars, label names in the legend); ``kwargs`` go to it (e.g. ``plot_type="heatmap"``, ``size_unit="percent"``).
    Returns the figure."""
    from flwr_datasets.visualization import plot_label_distributions as flwr_plot

    kwargs = {"legend": True, "title": f"{part.method} partition, {part.num_clients} clients", **kwargs}
    fig, _, _ = flwr_plot(IndexPartitioner(part, dataset), label, **kwargs)
    return fig


def plot_partition_comparison(parts: dict[str, Partition], dataset, label: str = "label", **kwargs):
    """Several partitions side by side, one panel each titled by its key, drawn by
    ``flwr_datasets.visualization.plot_comparison_label_distribution`` (default: each client's label mix in percent,
    clients on the y axis, a shared legend); ``kwargs`` go to it (e.g. ``size_unit="absolute"`` to see size skew).
    Returns the figure."""
    from flwr_datasets.visualization import plot_comparison_label_distribution

    kwargs = {"titles": list(parts), "legend": True, "subtitle": "", **kwargs}
    fig, _, _ = plot_comparison_label_distribution(
        [IndexPartitioner(p, dataset) for p in parts.values()], label, **kwargs
    )
    return fig


def plot_partition(stats, ax=None, title: str | None = None, max_clients: int = 50):
    """Stacked bars of each client's label counts (first ``max_clients`` clients), from ``partition_stats``'s table
    (``[N, 2 + C]``: size, one column per class, eval_size), on ``ax`` if given."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(10, 3.5))[1]
    counts = stats.drop(columns=["size", "eval_size"]).iloc[:max_clients]
    bottom = np.zeros(len(counts))
    for name in counts.columns:
        ax.bar(counts.index, counts[name], bottom=bottom, label=str(name), width=0.85)
        bottom += counts[name].to_numpy()
    ax.set_xlabel("client")
    ax.set_ylabel("training examples")
    ax.set_title(title or "Label counts per client")
    ax.legend(title="label", fontsize=8, ncols=min(len(counts.columns), 6))
    return ax
