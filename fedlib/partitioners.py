"""The Flower Datasets partitioners behind :func:`fedlib.partition.make_partition`'s ``"quantity"`` and
``"reference"`` methods (``flwr_datasets.partitioner.Partitioner`` subclasses, usable with ``FederatedDataset``),
and :func:`partition_indices`, the row indices of any partitioner's shards. Kept apart from
:mod:`fedlib.partition` so that reading or using a :class:`~fedlib.partition.Partition` does not import
``flwr_datasets`` (about 3.5 s)."""

from __future__ import annotations

import numpy as np
from flwr_datasets.partitioner import Partitioner

from .partition import flwr_indices, quantity_shards, reference_shards

__all__ = ["QuantitySkewPartitioner", "ReferencePartitioner", "partition_indices"]


class QuantitySkewPartitioner(Partitioner):
    """Client sizes ~ Dir(beta * 1_N) (at least ``min_size`` each), labels IID within each client."""

    def __init__(self, num_partitions: int, beta: float = 1.0, min_size: int = 1, seed: int = 42) -> None:
        super().__init__()
        self._n, self.beta, self.min_size, self.seed = num_partitions, beta, min_size, seed
        self._parts: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        return self._n

    def _build(self) -> list[np.ndarray]:
        if self._parts is None:
            self._parts = quantity_shards(len(self.dataset), self._n, self.beta, self.min_size, self.seed)
        return self._parts

    def load_partition(self, partition_id: int):
        return self.dataset.select(self._build()[partition_id])


class ReferencePartitioner(Partitioner):
    """The reference two-level label skew (``docs/method.md``, "Non-IID data"): q ~ Dir(size_concentration),
    pi_k ~ Dir(alpha).

    ``client_shares`` (q, ``[N]``) and ``priors`` (pi, ``[N, C]``) are kept so that the eval split can be
    partitioned with the same distributions.
    """

    def __init__(
        self,
        num_partitions: int,
        alpha: float = 1.0,
        size_concentration: float = 5.0,
        partition_by: str = "label",
        seed: int = 42,
    ) -> None:
        super().__init__()
        self._n, self.alpha, self.size_concentration = num_partitions, alpha, size_concentration
        self.partition_by, self.seed = partition_by, seed
        self._parts: list[list[int]] | None = None
        self.client_shares: np.ndarray | None = None
        self.priors: np.ndarray | None = None

    @property
    def num_partitions(self) -> int:
        return self._n

    def _build(self) -> list[list[int]]:
        if self._parts is None:
            labels = np.asarray(self.dataset[self.partition_by])
            self._parts, self.client_shares, self.priors = reference_shards(
                labels, self._n, self.alpha, self.size_concentration, self.seed
            )
        return self._parts

    def load_partition(self, partition_id: int):
        return self.dataset.select(self._build()[partition_id])


def partition_indices(partitioner: Partitioner, ds) -> list[list[int]]:
    """Each partition's row indices into ``ds``. Read from the partitioner's own index lists where it keeps them
    (the same rows as ``load_partition``, a test checks): 10,000 ``load_partition`` calls take about a minute,
    each one a ``datasets`` select."""
    if isinstance(partitioner, (QuantitySkewPartitioner, ReferencePartitioner)):
        partitioner.dataset = ds
        return [[int(i) for i in part] for part in partitioner._build()]
    return flwr_indices(partitioner, ds)
