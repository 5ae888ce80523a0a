import numpy as np
import pytest
import torch

from common.experiments import ConfigError
from common.partition import (class_counts, dirichlet_partition, iid_partition, partition, shard_partition,
                              split_clients)

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 100 per class


def _check_disjoint_cover(parts, n):
    flat = torch.cat(parts)
    assert len(flat) == n and len(torch.unique(flat)) == n  # sizes sum, no overlap


@pytest.mark.parametrize("make", [
    lambda s: iid_partition(LABELS, 7, s),
    lambda s: dirichlet_partition(LABELS, 10, s, alpha=0.3),
    lambda s: shard_partition(LABELS, 10, s, shards_per_client=2),
])
def test_partitions_cover_once_and_are_deterministic(make):
    a, b, c = make(0), make(0), make(1)
    _check_disjoint_cover(a, len(LABELS))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_are_balanced():
    sizes = [len(p) for p in iid_partition(LABELS, 7, 0)]
    assert max(sizes) - min(sizes) <= 1


def test_shards_give_each_client_at_most_k_classes():
    parts = shard_partition(LABELS, 10, 0, shards_per_client=2)
    counts = class_counts(parts, LABELS, 10)
    assert ((counts > 0).sum(1) <= 2).all() and (counts.sum(1) == 100).all()


def test_dirichlet_label_skew_follows_alpha():
    # mean over many seeds of a client's share of a class is 1/n_clients; small alpha -> concentrated
    def concentration(alpha):
        shares = []
        for s in range(20):
            counts = class_counts(dirichlet_partition(LABELS, 5, s, alpha=alpha, min_size=1), LABELS, 10)
            shares.append(counts / counts.sum(0, keepdims=True))
        shares = np.stack(shares)
        return shares.mean(), (shares ** 2).sum(1).mean()  # mean share, Herfindahl index per class
    mean_small, herf_small = concentration(0.1)
    mean_big, herf_big = concentration(100.0)
    assert mean_small == pytest.approx(0.2) and mean_big == pytest.approx(0.2)
    # E[sum_k q_k^2] = (alpha + 1) / (n alpha + 1) for q ~ Dir(alpha 1_n)
    assert herf_small == pytest.approx((0.1 + 1) / (5 * 0.1 + 1), abs=0.08)
    assert herf_big == pytest.approx((100 + 1) / (500 + 1), abs=0.02)


def test_dirichlet_respects_min_size():
    parts = dirichlet_partition(LABELS, 20, 0, alpha=0.5, min_size=10)
    assert min(len(p) for p in parts) >= 10


@pytest.mark.parametrize("call, message", [
    (lambda: dirichlet_partition(LABELS, 10, 0, alpha=0.0), "alpha must be > 0"),
    (lambda: dirichlet_partition(LABELS, 10, 0, alpha=-1), "alpha must be > 0"),
    (lambda: iid_partition(LABELS, 2000, 0), "more clients"),
    (lambda: shard_partition(LABELS, 600, 0, shards_per_client=2), "more clients"),
    (lambda: partition("nope", LABELS, 2, 0), "unknown partition"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_partition_is_cached_by_its_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATIONS_CACHE", str(tmp_path / "data"))
    a = partition("dirichlet", LABELS, 5, 3, dataset="toy", alpha=0.5)
    files = list((tmp_path / "partitions" / "toy").glob("*.npz"))
    assert len(files) == 1 and "alpha0.5" in files[0].name and "seed3" in files[0].name
    b = partition("dirichlet", LABELS, 5, 3, dataset="toy", alpha=0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    partition("dirichlet", LABELS, 5, 3, dataset="toy", alpha=0.1)
    assert len(list((tmp_path / "partitions" / "toy").glob("*.npz"))) == 2


def test_client_test_split_follows_the_label_mix():
    parts = shard_partition(LABELS, 10, 0, shards_per_client=2)
    train, test = split_clients(parts, LABELS, 0.2, seed=0)
    for p, tr, te in zip(parts, train, test):
        assert set(LABELS[te.numpy()]) <= set(LABELS[p.numpy()])
        assert len(te) == pytest.approx(0.2 * len(p), abs=2)
        assert not set(tr.tolist()) & set(te.tolist()) and len(tr) + len(te) == len(p)


def test_shards_on_an_unbalanced_label_set_give_each_client_at_most_s_classes():
    """Issue #10: cutting sorted labels into equal shards gave clients 3-4 classes at s = 2 on an unbalanced
    subset; shards cut per class (FedNTD's sharding_partition) keep every client at <= s classes."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), rng.integers(40, 160, size=10))  # 40..159 samples per class
    for seed in range(5):
        parts = shard_partition(labels, 20, seed, shards_per_client=2)
        _check_disjoint_cover(parts, len(labels))
        assert ((class_counts(parts, labels, 10) > 0).sum(1) <= 2).all()


def test_shards_need_a_whole_number_of_shards_per_class():
    with pytest.raises(ConfigError, match="multiple of the 10 classes"):
        shard_partition(LABELS, 7, 0, shards_per_client=2)


def test_capped_dirichlet_keeps_clients_near_n_over_k():
    """With the cap, a client stops receiving samples once it holds N/n: sizes stay under N/n plus the last
    class it was given, where the uncapped split lets a few clients take most of the data."""
    labels = np.repeat(np.arange(10), 500)
    n = 10
    capped = [len(p) for p in dirichlet_partition(labels, n, 0, alpha=0.1, cap=True)]
    uncapped = [len(p) for p in dirichlet_partition(labels, n, 0, alpha=0.1)]
    assert max(capped) <= len(labels) / n + 500  # at most one class beyond the cap
    assert max(capped) < max(uncapped)
    counts = class_counts(dirichlet_partition(labels, n, 1, alpha=0.1, cap=True), labels, 10)
    over = counts.cumsum(1)[:, :-1] >= len(labels) / n   # a client at the cap after class c ...
    # ... gets nothing of the later classes, but for the one sample that the reference's truncation of the
    # cumulative shares (astype(int)) can hand the last client
    assert (counts[:, 1:][over] <= 1).all() and (counts[:-1, 1:][over[:-1]] == 0).all()
