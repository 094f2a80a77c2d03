import numpy as np
import pytest

from fedlib.partition import METHODS, Partition, PartitionError, make_partition, partition_stats
from fedlib.partition_plots import plot_partition, plot_partition_comparison

rng = np.random.default_rng(0)
TRAIN = rng.integers(0, 3, 600)
EVAL = rng.integers(0, 3, 90)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_exact_cover(method):
    a = make_partition(TRAIN, EVAL, 10, method, alpha=0.5, seed=3)
    b = make_partition(TRAIN, EVAL, 10, method, alpha=0.5, seed=3)
    assert a.train == b.train and a.eval == b.eval
    assert sorted(i for p in a.train for i in p) == list(range(len(TRAIN)))
    assert sorted(i for p in a.eval for i in p) == list(range(len(EVAL)))
    assert make_partition(TRAIN, EVAL, 10, method, alpha=0.5, seed=4).train != a.train  # the seed matters


def _mean_label_entropy(part, labels):
    ent = []
    for p in part.train:
        q = np.bincount(labels[p], minlength=3) / max(len(p), 1)
        ent.append(-(q[q > 0] * np.log(q[q > 0])).sum())
    return float(np.mean(ent))


@pytest.mark.parametrize("method", ["dirichlet", "reference"])
def test_smaller_alpha_means_more_label_skew(method):
    skewed = make_partition(TRAIN, EVAL, 10, method, alpha=0.1, seed=1)
    flat = make_partition(TRAIN, EVAL, 10, method, alpha=100.0, seed=1)
    assert _mean_label_entropy(skewed, TRAIN) < _mean_label_entropy(flat, TRAIN) - 0.3


def test_eval_shards_follow_each_clients_size_and_labels():
    part = make_partition(TRAIN, np.repeat([0, 1, 2], 200), 5, "reference", alpha=0.3, seed=2)
    sizes = part.sizes() / len(TRAIN)
    eval_sizes = np.array([len(e) for e in part.eval]) / 600
    assert np.allclose(sizes, eval_sizes, atol=0.01)
    for t, e in zip(part.train, part.eval):
        tr = np.bincount(TRAIN[t], minlength=3) / len(t)
        ev = np.bincount(np.repeat([0, 1, 2], 200)[e], minlength=3) / max(len(e), 1)
        assert np.abs(tr - ev).max() < 0.25


def test_too_little_data_is_a_clear_error():
    with pytest.raises(PartitionError, match="5 training examples cannot be split over 10 clients"):
        make_partition(TRAIN[:5], EVAL, 10, "iid")
    with pytest.raises(PartitionError, match=r"class\(es\) \[1\] have no training example"):
        make_partition(np.array([0, 2, 0, 2, 0, 2]), EVAL, 2, "dirichlet")
    with pytest.raises(PartitionError, match="use one of"):
        make_partition(TRAIN, EVAL, 2, "shards")


def test_small_eval_split_leaves_some_clients_without_eval_shard():
    part = make_partition(TRAIN, EVAL[:4], 10, "iid", seed=0)
    assert sum(len(e) == 0 for e in part.eval) == 6
    assert partition_stats(part, TRAIN)["eval_size"].sum() == 4


def test_json_round_trip_and_foreign_data(tmp_path):
    part = make_partition(TRAIN, EVAL, 4, "quantity", seed=0)
    path = part.save(tmp_path / "p.json")
    assert Partition.load(path, TRAIN, EVAL) == part
    with pytest.raises(PartitionError, match="made from other train data"):
        Partition.load(path, TRAIN[::-1], EVAL)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PartitionError, match="not a fedlib partition file"):
        Partition.load(tmp_path / "bad.json")


def test_stats_and_plot():
    part = make_partition(TRAIN, EVAL, 6, "reference", seed=0)
    stats = partition_stats(part, TRAIN, ["a", "b", "c"])
    assert list(stats.columns) == ["size", "a", "b", "c", "eval_size"]
    assert stats["size"].sum() == len(TRAIN) and (stats[["a", "b", "c"]].sum(1) == stats["size"]).all()
    ax = plot_partition(stats)
    assert ax.get_xlabel() == "client" and ax.get_legend() is not None


def test_partitions_compared_through_flower_datasets_plots():
    import datasets

    data = datasets.Dataset.from_dict({"label": TRAIN.tolist()})
    parts = {m: make_partition(TRAIN, EVAL, 6, m, seed=0) for m in ("iid", "reference")}
    fig = plot_partition_comparison(parts, data, size_unit="absolute")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["iid", "reference"]
    drawn = [sum(b.get_width() for b in ax.patches) for ax in panels]  # clients on y: bar widths are counts
    assert drawn == [len(TRAIN), len(TRAIN)]


@pytest.mark.parametrize("method", METHODS)
def test_indices_read_from_the_partitioner_match_load_partition(method):
    """The fast path (the partitioner's own index lists) gives the rows load_partition would give."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    from fedlib.partitioners import QuantitySkewPartitioner, ReferencePartitioner, partition_indices

    labels = np.random.default_rng(3).integers(0, 3, 300)
    ds = datasets.Dataset.from_dict({"label": labels})
    make = {
        "iid": lambda: IidPartitioner(7),
        "dirichlet": lambda: DirichletPartitioner(7, "label", 0.5, min_partition_size=1, seed=1),
        "quantity": lambda: QuantitySkewPartitioner(7, 1.0, 1, seed=1),
        "reference": lambda: ReferencePartitioner(7, 1.0, 5.0, seed=1),
    }[method]
    fast = partition_indices(make(), ds)
    slow_p = make()
    slow_p.dataset = ds.add_column("_idx", list(range(len(ds))))
    slow = [list(slow_p.load_partition(i)["_idx"]) for i in range(7)]
    assert fast == slow


def test_ten_thousand_clients_partition_fast_and_none_empty():
    import time

    labels = (np.random.default_rng(0).random(67_349) < 0.56).astype(int)
    t = time.perf_counter()
    part = make_partition(labels, labels[:872], 10_000, "reference", seed=0)
    assert time.perf_counter() - t < 30  # was ~60 s through 10,000 datasets selects; ~3 s now
    assert min(len(s) for s in part.train) >= 1 and sum(len(s) for s in part.train) == 67_349
    with pytest.raises(PartitionError, match="method='reference'"):  # says why, and what works instead
        make_partition(labels[:300], labels[:50], 250, "dirichlet", alpha=0.1, seed=0)


def test_reading_a_partition_does_not_import_flwr_datasets():
    """A Flower node or the CLI reads partitions without paying flwr_datasets' import (seaborn, scipy: ~3.5 s)."""
    import subprocess
    import sys

    pytest.importorskip("flwr")
    code = (
        "import sys, fedlib.config, fedlib.simulation, fedlib.flower.client_app; print('flwr_datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("method", ["quantity", "reference"])
def test_make_partition_gives_the_flower_partitioners_shards(method):
    """make_partition computes these two schemes without Flower Datasets; its shards are the partitioners'."""
    import datasets

    from fedlib.partitioners import QuantitySkewPartitioner, ReferencePartitioner, partition_indices

    labels = np.random.default_rng(4).integers(0, 3, 300)
    p = {"quantity": QuantitySkewPartitioner(7, 0.7, 1, seed=5), "reference": ReferencePartitioner(7, 0.7, seed=5)}
    shards = partition_indices(p[method], datasets.Dataset.from_dict({"label": labels}))
    part = make_partition(labels, labels[:60], 7, method=method, alpha=0.7, beta=0.7, seed=5)
    assert part.train == [sorted(s) for s in shards]
