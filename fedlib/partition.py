"""Non-IID partitions of a task over N clients, built on ``flwr_datasets.partitioner``.

Methods (``method=``):

- ``"iid"``: a seeded shuffle cut into N equal shards (``IidPartitioner``).
- ``"dirichlet"``: label skew, per class a Dir(alpha) split over clients (``DirichletPartitioner``,
  Hsu et al. 2019, arXiv 1909.06335).
- ``"quantity"``: client sizes ~ Dir(beta), labels IID (:class:`QuantitySkewPartitioner`).
- ``"reference"``: the FedPepTAO code's two-level scheme (``docs/method.md``, "Non-IID data"), the default for
  paper runs: client sizes q ~ Dir(5 * 1_N), class priors pi_k ~ Dir(alpha * 1_C), then a quota-filling draw
  (:class:`ReferencePartitioner`). Sizes are rounded by largest remainder (the reference lets the
  last client absorb the rounding, which can leave it empty on small splits).

Every client also gets an eval shard drawn from the task's eval split with the same size share and
label distribution as its training shard (the reference's personalised evaluation, ``Partition.eval``), and an
IID eval shard of the same size with the eval split's own label mix (``Partition.eval_iid``, derived: a seeded
shuffle cut into those sizes), on which a model cannot score by knowing its client's label prior. Partitions are
saved as JSON lists of indices. A client can end up with an empty eval shard when the eval split is
small; it is then left out of personalised evaluation (documented fallback, counted in the stats).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

__all__ = [
    "PartitionError",
    "Partition",
    "QuantitySkewPartitioner",
    "ReferencePartitioner",
    "make_partition",
    "partition_stats",
    "METHODS",
]

METHODS = ("iid", "dirichlet", "quantity", "reference")


class PartitionError(ValueError):
    """The data cannot be partitioned as asked (too few examples, a missing class, a bad file)."""


def _fingerprint(labels) -> str:
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def _fill_quotas(
    labels: np.ndarray, quotas: np.ndarray, priors: np.ndarray, rng: np.random.Generator
) -> list[list[int]]:
    """The reference's quota-filling draw (``docs/method.md``, "Non-IID data").

    Repeatedly: pick a client with room left uniformly, draw a class from its prior restricted to the
    classes not yet exhausted, give it the last remaining index of that class.
    """
    num_classes = priors.shape[1]
    pools = [list(np.flatnonzero(labels == c)) for c in range(num_classes)]
    left = quotas.astype(np.int64).copy()
    out: list[list[int]] = [[] for _ in quotas]
    open_clients = list(np.flatnonzero(left > 0))
    while open_clients:
        j = int(rng.integers(len(open_clients)))
        k = open_clients[j]
        avail = np.array([len(p) > 0 for p in pools])
        if not avail.any():
            break
        p = priors[k] * avail
        p = p / p.sum() if p.sum() > 0 else avail / avail.sum()
        c = int(rng.choice(num_classes, p=p))
        out[k].append(int(pools[c].pop()))
        left[k] -= 1
        if left[k] == 0:
            open_clients.pop(j)
    return out


def _split_sizes(total: int, shares: np.ndarray) -> np.ndarray:
    """Integer sizes summing to ``total`` in proportion to ``shares`` (largest-remainder rounding).

    The reference rounds each share and lets the last client absorb the difference, which can leave
    it empty (or negative) on small eval splits; largest remainders never do worse than floor.
    """
    raw = shares / shares.sum() * total
    sizes = np.floor(raw).astype(np.int64)
    short = total - sizes.sum()
    sizes[np.argsort(-(raw - sizes), kind="stable")[:short]] += 1
    return sizes


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
            rng = np.random.default_rng(self.seed)
            total = len(self.dataset)
            spare = total - self.min_size * self._n
            if spare < 0:
                raise PartitionError(f"{total} examples cannot give {self._n} clients {self.min_size} each")
            sizes = self.min_size + _split_sizes(spare, rng.dirichlet(np.full(self._n, self.beta)))
            order = rng.permutation(total)
            self._parts = np.split(order, np.cumsum(sizes)[:-1])
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
            num_classes = int(labels.max()) + 1
            rng = np.random.default_rng(self.seed)
            self.client_shares = rng.dirichlet(np.full(self._n, self.size_concentration))
            self.priors = rng.dirichlet(np.full(num_classes, self.alpha), size=self._n)
            sizes = _split_sizes(len(labels), self.client_shares)
            if (sizes <= 0).any():
                raise PartitionError(
                    f"{len(labels)} examples over {self._n} clients leave "
                    f"{int((sizes <= 0).sum())} client(s) with no data; use fewer clients"
                )
            self._parts = _fill_quotas(labels, sizes, self.priors, rng)
        return self._parts

    def load_partition(self, partition_id: int):
        return self.dataset.select(self._build()[partition_id])


@dataclass
class Partition:
    """Train and eval index lists per client, with what they were made from."""

    method: str
    num_clients: int
    seed: int
    params: dict
    train: list[list[int]]
    eval: list[list[int]]
    train_fingerprint: str
    eval_fingerprint: str

    def sizes(self) -> np.ndarray:
        return np.array([len(p) for p in self.train])

    @property
    def eval_iid(self) -> list[list[int]]:
        """Per client, an eval shard of the same size as ``eval[k]`` drawn IID from the eval split (seeded)."""
        sizes = np.array([len(e) for e in self.eval])
        order = np.random.default_rng([self.seed, 2]).permutation(int(sizes.sum()))
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [sorted(int(i) for i in order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__))
        return path

    @classmethod
    def load(cls, path: str | Path, train_labels=None, eval_labels=None) -> "Partition":
        """Read a partition file; with labels given, check it was made from that data."""
        try:
            data = json.loads(Path(path).read_text())
            part = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise PartitionError(f"{path}: not a fedlib partition file ({err})") from err
        for name, labels, fp in (
            ("train", train_labels, part.train_fingerprint),
            ("eval", eval_labels, part.eval_fingerprint),
        ):
            if labels is not None and _fingerprint(labels) != fp:
                raise PartitionError(
                    f"{path}: made from other {name} data (label fingerprint {fp}, this data "
                    f"{_fingerprint(labels)}); re-partition or point at the right data"
                )
        return part


def _indices(partitioner: Partitioner, ds) -> list[list[int]]:
    """Each partition's row indices into ``ds``. Read from the partitioner's own index lists where it keeps them
    (the same rows as ``load_partition``, a test checks): 10,000 ``load_partition`` calls take about a minute,
    each one a ``datasets`` select."""
    if isinstance(partitioner, (QuantitySkewPartitioner, ReferencePartitioner)):
        partitioner.dataset = ds
        return [[int(i) for i in part] for part in partitioner._build()]
    if isinstance(partitioner, IidPartitioner):  # Dataset.shard(contiguous=True): the first len % n get one more
        return [a.tolist() for a in np.array_split(np.arange(len(ds)), partitioner.num_partitions)]
    if isinstance(partitioner, DirichletPartitioner):
        partitioner.dataset = ds
        partitioner._determine_partition_id_to_indices_if_needed()
        ids = partitioner._partition_id_to_indices
        return [[int(i) for i in ids[k]] for k in range(partitioner.num_partitions)]
    partitioner.dataset = ds.add_column("_idx", list(range(len(ds))))
    return [list(partitioner.load_partition(i)["_idx"]) for i in range(partitioner.num_partitions)]


def make_partition(
    train_labels,
    eval_labels,
    num_clients: int,
    method: str = "reference",
    alpha: float = 1.0,
    beta: float = 1.0,
    size_concentration: float = 5.0,
    seed: int = 42,
    min_size: int = 1,
) -> Partition:
    """Partition a task's train split over ``num_clients`` and give each client an eval shard.

    ``train_labels``/``eval_labels``: class indices ``[N_train]``/``[N_eval]``. Deterministic for a seed.
    """
    import datasets

    if method not in METHODS:
        raise PartitionError(f"method={method!r}: use one of {METHODS}")
    train_labels, eval_labels = np.asarray(train_labels, dtype=np.int64), np.asarray(eval_labels, dtype=np.int64)
    if num_clients < 1:
        raise PartitionError(f"num_clients={num_clients}: need at least 1")
    if len(train_labels) < num_clients * min_size:
        raise PartitionError(
            f"{len(train_labels)} training examples cannot be split over {num_clients} clients "
            f"with at least {min_size} each; use fewer clients or more data"
        )
    num_classes = int(max(train_labels.max(), eval_labels.max(initial=0))) + 1
    missing = [c for c in range(num_classes) if not (train_labels == c).any()]
    if missing and method in ("dirichlet", "reference"):
        raise PartitionError(f"class(es) {missing} have no training example; label skew over them is undefined")
    ds = datasets.Dataset.from_dict({"label": train_labels})
    if method == "iid":
        order = np.random.default_rng(seed).permutation(len(train_labels))
        shards = _indices(IidPartitioner(num_clients), datasets.Dataset.from_dict({"label": train_labels[order]}))
        train = [[int(order[i]) for i in s] for s in shards]
    elif method == "dirichlet":
        try:
            p = DirichletPartitioner(
                num_clients, "label", alpha, min_partition_size=min_size, self_balancing=False, seed=seed
            )
            with warnings.catch_warnings():  # one warning per failed attempt, each listing all N alphas
                warnings.filterwarnings("ignore", "The specified min_partition_size", UserWarning)
                train = _indices(p, ds)
        except ValueError as err:
            raise PartitionError(
                f"Dirichlet(alpha={alpha}) label skew over {num_clients} clients left a client with fewer than "
                f"{min_size} example(s) in each of flwr-datasets' 10 attempts ({len(train_labels)} examples, "
                f"{len(train_labels) / num_clients:.1f} per client on average); use method='reference' (sizes "
                "drawn first, then labels: never empty while there are enough examples), a larger alpha or fewer "
                "clients"
            ) from err
    elif method == "quantity":
        train = _indices(QuantitySkewPartitioner(num_clients, beta, min_size, seed), ds)
    else:
        p = ReferencePartitioner(num_clients, alpha, size_concentration, seed=seed)
        train = _indices(p, ds)
    # eval shards: same size share and label distribution as each client's training shard
    sizes = np.array([len(t) for t in train], dtype=float)
    shares = sizes / sizes.sum()
    if method == "reference":
        priors = p.priors
    else:
        priors = np.stack([np.bincount(train_labels[t], minlength=num_classes) for t in train]).astype(float)
        priors /= np.maximum(priors.sum(1, keepdims=True), 1)
    rng = np.random.default_rng([seed, 1])
    evals = _fill_quotas(eval_labels, _split_sizes(len(eval_labels), shares), priors, rng)
    return Partition(
        method,
        num_clients,
        seed,
        {"alpha": alpha, "beta": beta, "size_concentration": size_concentration, "min_size": min_size},
        [sorted(map(int, t)) for t in train],
        [sorted(map(int, e)) for e in evals],
        _fingerprint(train_labels),
        _fingerprint(eval_labels),
    )


def partition_stats(part: Partition, train_labels, label_names=None):
    """Per-client sizes and label histograms as a DataFrame (index: client)."""
    import pandas as pd

    labels = np.asarray(train_labels)
    num_classes = int(labels.max()) + 1
    names = list(label_names) if label_names is not None else [str(c) for c in range(num_classes)]
    rows = [np.bincount(labels[t], minlength=num_classes) for t in part.train]
    df = pd.DataFrame(rows, columns=names)
    df.insert(0, "size", part.sizes())
    df["eval_size"] = [len(e) for e in part.eval]
    df.index.name = "client"
    return df
