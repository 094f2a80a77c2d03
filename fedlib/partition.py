"""Non-IID partitions of a task over N clients (each scheme also a ``flwr_datasets`` partitioner).

Methods (``method=``):

- ``"iid"``: a seeded shuffle cut into N equal shards (``IidPartitioner``).
- ``"dirichlet"``: label skew, per class a Dir(alpha) split over clients (``DirichletPartitioner``,
  Hsu et al. 2019, arXiv 1909.06335).
- ``"quantity"``: client sizes ~ Dir(beta), labels IID (:func:`quantity_shards`;
  :class:`~fedlib.partitioners.QuantitySkewPartitioner` for Flower Datasets).
- ``"reference"``: the FedPepTAO code's two-level scheme (``docs/method.md``, "Non-IID data"), the default for
  paper runs: client sizes q ~ Dir(5 * 1_N), class priors pi_k ~ Dir(alpha * 1_C), then a quota-filling draw
  (:func:`reference_shards`; :class:`~fedlib.partitioners.ReferencePartitioner`). Sizes are rounded by largest
  remainder (the reference lets the last client absorb the rounding, which can leave it empty on small splits).

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

__all__ = [
    "PartitionError",
    "quantity_shards",
    "reference_shards",
    "flwr_indices",
    "Partition",
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


def quantity_shards(total: int, num_clients: int, beta: float, min_size: int, seed: int) -> list[np.ndarray]:
    """Quantity skew: client sizes ``min_size`` + Dir(beta * 1_N) shares of the rest (largest remainder), labels
    IID (a seeded permutation cut into those sizes). Returns each client's row indices."""
    rng = np.random.default_rng(seed)
    spare = total - min_size * num_clients
    if spare < 0:
        raise PartitionError(f"{total} examples cannot give {num_clients} clients {min_size} each")
    sizes = min_size + _split_sizes(spare, rng.dirichlet(np.full(num_clients, beta)))
    order = rng.permutation(total)
    return np.split(order, np.cumsum(sizes)[:-1])


def reference_shards(labels: np.ndarray, num_clients: int, alpha: float, size_concentration: float, seed: int):
    """The reference two-level label skew (``docs/method.md``, "Non-IID data") over ``labels`` ``[N]``: client
    shares q ~ Dir(size_concentration * 1_N), class priors pi_k ~ Dir(alpha * 1_C), then :func:`_fill_quotas`.
    Returns ``(shards, q [N_clients], pi [N_clients, C])``; q and pi also partition the eval split."""
    num_classes = int(labels.max()) + 1
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(num_clients, size_concentration))
    priors = rng.dirichlet(np.full(num_classes, alpha), size=num_clients)
    sizes = _split_sizes(len(labels), shares)
    if (sizes <= 0).any():
        raise PartitionError(
            f"{len(labels)} examples over {num_clients} clients leave "
            f"{int((sizes <= 0).sum())} client(s) with no data; use fewer clients"
        )
    return _fill_quotas(labels, sizes, priors, rng), shares, priors


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

    def made_as(self, method: str, num_clients: int, seed: int, **params) -> bool:
        """Whether :func:`make_partition` made this with these arguments (``params``: alpha, beta, ...)."""
        same = (self.method, self.num_clients, self.seed) == (method, num_clients, seed)
        return same and all(self.params.get(k) == v for k, v in params.items())

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
    priors = None
    if method in ("iid", "dirichlet"):  # Flower Datasets' partitioners (imported here: ~3.5 s)
        train = _flwr_shards(method, train_labels, num_clients, alpha, seed, min_size)
    elif method == "quantity":  # = QuantitySkewPartitioner / ReferencePartitioner, without wrapping the labels
        train = quantity_shards(len(train_labels), num_clients, beta, min_size, seed)
    else:
        train, _, priors = reference_shards(train_labels, num_clients, alpha, size_concentration, seed)
    # eval shards: same size share and label distribution as each client's training shard
    sizes = np.array([len(t) for t in train], dtype=float)
    shares = sizes / sizes.sum()
    if priors is None:
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


def _flwr_shards(method: str, train_labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int):
    """Training shards from ``flwr_datasets``' ``IidPartitioner`` (after a seeded shuffle) or
    ``DirichletPartitioner`` (label skew per class, Hsu et al. 2019)."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if method == "iid":
        order = np.random.default_rng(seed).permutation(len(train_labels))
        shards = flwr_indices(IidPartitioner(num_clients), datasets.Dataset.from_dict({"label": train_labels[order]}))
        return [[int(order[i]) for i in s] for s in shards]
    p = DirichletPartitioner(num_clients, "label", alpha, min_partition_size=min_size, self_balancing=False, seed=seed)
    try:
        with warnings.catch_warnings():  # one warning per failed attempt, each listing all N alphas
            warnings.filterwarnings("ignore", "The specified min_partition_size", UserWarning)
            return flwr_indices(p, datasets.Dataset.from_dict({"label": train_labels}))
    except ValueError as err:
        raise PartitionError(
            f"Dirichlet(alpha={alpha}) label skew over {num_clients} clients left a client with fewer than "
            f"{min_size} example(s) in each of flwr-datasets' 10 attempts ({len(train_labels)} examples, "
            f"{len(train_labels) / num_clients:.1f} per client on average); use method='reference' (sizes "
            "drawn first, then labels: never empty while there are enough examples), a larger alpha or fewer "
            "clients"
        ) from err


def flwr_indices(partitioner, ds) -> list[list[int]]:
    """Each partition's row indices into ``ds`` for a ``flwr_datasets`` partitioner: computed (IID: contiguous
    shards, the first ``len % n`` one longer, as ``Dataset.shard``) or read from its index lists (Dirichlet), else
    through ``load_partition`` (:func:`fedlib.partitioners.partition_indices` adds this project's two)."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if isinstance(partitioner, IidPartitioner):
        return [a.tolist() for a in np.array_split(np.arange(len(ds)), partitioner.num_partitions)]
    if isinstance(partitioner, DirichletPartitioner):
        partitioner.dataset = ds
        partitioner._determine_partition_id_to_indices_if_needed()
        ids = partitioner._partition_id_to_indices
        return [[int(i) for i in ids[k]] for k in range(partitioner.num_partitions)]
    partitioner.dataset = ds.add_column("_idx", list(range(len(ds))))
    return [list(partitioner.load_partition(i)["_idx"]) for i in range(partitioner.num_partitions)]


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
