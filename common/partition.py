"""Client partitions of a labelled data set: index sets into one in-memory tensor.

Every partition is a list of int64 index tensors, one per client, disjoint. All are seeded; `partition`
also saves each one under .cache/partitions/ keyed by its parameters, so a rerun or another method
reads the identical split (and a person can inspect it).

- iid:        a seeded permutation cut into near-equal parts.
- dirichlet:  per class, proportions over clients ~ Dir(alpha * 1) (Hsu et al. 2019), resampled until every
              client holds at least `min_size` samples (FedNTD's `lda_partition` uses 10). With `cap=True`, a
              client already holding N/n samples gets no more (p_j * (n_j < N/n), renormalised: FedNTD's
              `partition_class_samples_with_dirichlet_distribution`, FL-bench, PFLlib).
- shards:     McMahan et al. (2017) as FedNTD's `sharding_partition`: each class is cut into n * k / C shards
              (its leftover samples spread over the first shards), the multiset of shard labels is shuffled and
              dealt k to a client, so a client holds at most k classes even on an unbalanced label set.
- by_domain:  one domain per client (`domains[i]` is sample i's domain).
Other papers register their own variants with `@register_partition` (FedDF's block-of-10 Dirichlet).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np
import torch

from common.data import cache_dir
from common.experiments import ConfigError

PARTITIONS: dict[str, Callable[..., list[torch.Tensor]]] = {}


def register_partition(name: str):
    def wrap(fn):
        PARTITIONS[name] = fn
        return fn
    return wrap


def _check_clients(n_samples: int, n_clients: int) -> None:
    if n_clients < 1:
        raise ConfigError(f"n_clients must be >= 1, got {n_clients}")
    if n_clients > n_samples:
        raise ConfigError(f"more clients ({n_clients}) than samples ({n_samples}): lower n_clients or use more data")


@register_partition("iid")
def iid_partition(labels: np.ndarray, n_clients: int, seed: int) -> list[torch.Tensor]:
    _check_clients(len(labels), n_clients)
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(np.sort(p)) for p in np.array_split(rng.permutation(len(labels)), n_clients)]


@register_partition("dirichlet")
def dirichlet_partition(labels: np.ndarray, n_clients: int, seed: int, alpha: float,
                        min_size: int = 10, cap: bool = False, max_tries: int = 1000) -> list[torch.Tensor]:
    """Label-skewed split: for each class c, q_c ~ Dir(alpha * 1_n) gives the share of c's samples per client;
    with `cap`, clients already at N/n samples are left out of the later classes' shares."""
    _check_clients(len(labels), n_clients)
    if not alpha > 0:
        raise ConfigError(f"Dirichlet alpha must be > 0, got {alpha}")
    if min_size * n_clients > len(labels):
        raise ConfigError(f"min_size {min_size} x {n_clients} clients exceeds the {len(labels)} samples")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        sizes = np.zeros(n_clients, dtype=int)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            q = rng.dirichlet(np.full(n_clients, alpha))
            if cap:
                q = q * (sizes < len(labels) / n_clients)
                q = q / q.sum()
            cuts = (np.cumsum(q) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        if sizes.min() >= min_size:
            return [torch.from_numpy(np.sort(np.concatenate(p))) for p in parts]
    raise ConfigError(f"no Dirichlet(alpha={alpha}) split gave every one of {n_clients} clients >= {min_size} "
                      f"samples in {max_tries} tries: raise alpha, lower n_clients or min_size")


@register_partition("shards")
def shard_partition(labels: np.ndarray, n_clients: int, seed: int, shards_per_client: int) -> list[torch.Tensor]:
    """Pathological non-IID split (McMahan et al. 2017) per class, as FedNTD's `sharding_partition`: class c's
    samples are cut into n * k / C shards, the n * k shard labels are shuffled and dealt k per client, and each
    client gets one random remaining shard of each label dealt to it: at most k classes per client."""
    if shards_per_client < 1:
        raise ConfigError(f"shards_per_client must be >= 1, got {shards_per_client}")
    classes = np.unique(labels)
    n_shards = n_clients * shards_per_client
    _check_clients(len(labels), n_shards)
    if n_shards % len(classes):
        raise ConfigError(f"shards: n_clients x shards_per_client ({n_shards}) must be a multiple of the "
                          f"{len(classes)} classes, so that every class is cut into the same number of shards")
    per_class = n_shards // len(classes)
    rng = np.random.default_rng(seed)
    shards = {}
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < per_class:
            raise ConfigError(f"shards: class {c} has {len(idx)} samples, fewer than its {per_class} shards; "
                              "lower n_clients or shards_per_client")
        shards[c] = [list(s) for s in np.array_split(idx, per_class)]
    dealt = rng.permutation(np.repeat(classes, per_class)).reshape(n_clients, shards_per_client)
    out = []
    for row in dealt:
        mine = [shards[c].pop(rng.integers(len(shards[c]))) for c in row]
        out.append(torch.from_numpy(np.sort(np.concatenate(mine)).astype(np.int64)))
    return out


@register_partition("by_domain")
def domain_partition(labels: np.ndarray, n_clients: int, seed: int, domains: np.ndarray) -> list[torch.Tensor]:
    """One client per domain; `domains[i]` is sample i's domain id."""
    ids = np.unique(domains)
    if len(ids) != n_clients:
        raise ConfigError(f"by_domain needs n_clients == number of domains ({len(ids)}), got {n_clients}")
    return [torch.from_numpy(np.flatnonzero(domains == d)) for d in ids]


def partition(name: str, labels, n_clients: int, seed: int, *, dataset: str = "", **params) -> list[torch.Tensor]:
    """The registered partition `name`, read from its cache file when it exists, else computed and saved."""
    if name not in PARTITIONS:
        raise ConfigError(f"unknown partition {name!r}; known: {', '.join(sorted(PARTITIONS))}")
    labels = np.asarray(labels)
    key = json.dumps({"n": len(labels), "labels": hashlib.sha1(labels.tobytes()).hexdigest()[:12],
                      **{k: v for k, v in params.items() if not isinstance(v, np.ndarray)}}, sort_keys=True)
    tag = "_".join(f"{k}{v}" for k, v in sorted(params.items()) if not isinstance(v, np.ndarray))
    path = cache_dir().parent / "partitions" / (dataset or "data") / \
        f"{name}_{tag}_k{n_clients}_seed{seed}_{hashlib.sha1(key.encode()).hexdigest()[:8]}.npz"
    if path.exists():
        with np.load(path) as z:
            return [torch.from_numpy(z[f"c{i}"]) for i in range(n_clients)]
    parts = PARTITIONS[name](labels, n_clients, seed, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **{f"c{i}": p.numpy() for i, p in enumerate(parts)})
    os.replace(tmp, path)
    return parts


def split_clients(parts: list[torch.Tensor], labels, test_fraction: float, seed: int):
    """Per client, hold out `test_fraction` of each label's samples as that client's test split, so the test
    split follows the client's label mix (for personalised accuracy). Returns (train_parts, test_parts)."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for p in parts:
        p = p.numpy()
        tr, te = [], []
        for c in np.unique(labels[p]):
            idx = rng.permutation(p[labels[p] == c])
            n_test = int(round(len(idx) * test_fraction))
            te.append(idx[:n_test])
            tr.append(idx[n_test:])
        train_parts.append(torch.from_numpy(np.sort(np.concatenate(tr))))
        test_parts.append(torch.from_numpy(np.sort(np.concatenate(te))))
    return train_parts, test_parts


def class_counts(parts: list[torch.Tensor], labels, num_classes: int) -> np.ndarray:
    """Samples per client and class, [clients, classes]."""
    labels = torch.as_tensor(np.asarray(labels))
    return np.stack([torch.bincount(labels[p], minlength=num_classes).numpy() for p in parts])
