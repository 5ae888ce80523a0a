"""The official client split (`experiments/dataset.py`, AvivSham/pFedHN) and the federation built on it.

1. `gen_classes_per_node`: every class gets `slots` = classes_per_client * n // C share slots (+ 1 with
   `spare_slot`, as the code since 47c957d), each share ~ U(0.4, 0.6), normalised over the class's slots. A client
   takes `classes_per_client` classes one at a time, each drawn uniformly from the classes with the most free
   slots, and pops one share of each.
2. `gen_data_split`, applied to the train, validation and test splits alike: per class, a shuffled order; a client
   takes the next int(n_c * share) samples of each of its classes, n_c that split's count of the class. So each
   client's validation and test splits follow its training label mix.

With the spare slot a share is never taken, so part of every class is used by no client (CIFAR-10, 10 clients:
3 slots for 2 holders, about 1/3 of the data; 50 clients: about 1/11). `spare_slot: false` normalises the shares
over the holders (the code of 278aea0, February 2021, with its assert that classes_per_client * n is a multiple
of C). Both are ours to choose per setting and every table names the one used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common import data as datasets
from common.experiments import ConfigError
from common.fl.engine import Federation


def class_shares(train_labels: np.ndarray, n_clients: int, classes_per_client: int, spare_slot: bool,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`gen_classes_per_node`: ([n, k] classes, [n, k] shares) per client."""
    C, k = len(np.unique(train_labels)), classes_per_client
    if not spare_slot and (k * n_clients) % C:
        raise ConfigError(f"pfedhn_classes without the spare slot needs classes_per_client x n_clients "
                          f"({k} x {n_clients}) to be a multiple of the {C} classes (the code's assert)")
    slots = (k * n_clients) // C + int(spare_slot)
    if slots < 1 or k > C:
        raise ConfigError(f"pfedhn_classes: {n_clients} clients x {k} classes cannot cover {C} classes; "
                          "raise n_clients or lower classes_per_client")
    free = np.full(C, slots)
    shares = [list(p / p.sum()) for p in rng.uniform(0.4, 0.6, size=(C, slots))]
    classes, taken = np.zeros((n_clients, k), dtype=int), np.zeros((n_clients, k))
    for i in range(n_clients):
        for j in range(k):
            c = rng.choice(np.flatnonzero(free == free.max()))
            if free[c] == 0:
                raise ConfigError(f"pfedhn_classes: no class has a free slot for client {i}")
            free[c] -= 1
            classes[i, j] = c
        taken[i] = [shares[c].pop() for c in classes[i]]
    return classes, taken


def data_split(labels: np.ndarray, classes: np.ndarray, shares: np.ndarray,
               rng: np.random.Generator) -> list[torch.Tensor]:
    """`gen_data_split`: the clients' index sets into one split (labels [N]), from the same classes and shares."""
    order = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    counts = {c: len(v) for c, v in order.items()}
    used = {c: 0 for c in order}
    parts = []
    for row, row_shares in zip(classes, shares):
        mine = []
        for c, p in zip(row, row_shares):
            n = int(counts.get(c, 0) * p)
            mine.append(order[c][used[c]:used[c] + n])
            used[c] += n
        parts.append(torch.from_numpy(np.sort(np.concatenate(mine)).astype(np.int64)))
    return parts


@dataclass
class SplitFederation(Federation):
    """The engine's `Federation` with every client's validation and test index sets into the validation split
    (`server_val`) and the official test split (`full_test`), and the clients' classes."""

    client_val: list[torch.Tensor] | None = None
    client_test: list[torch.Tensor] | None = None
    client_classes: np.ndarray | None = None

    @classmethod
    def build(cls, cfg, seed: int, device: torch.device | str = "cpu") -> "SplitFederation":
        """The code's `get_datasets` (a seeded val_size split of the training set) and the client split, drawn on
        the CPU; the data moved to `device` once. `train_subset` / `val_subset` / `test_subset` keep a seeded
        subset of each."""
        gen = torch.Generator().manual_seed(seed)
        train, test = datasets.load(cfg.dataset, "train"), datasets.load(cfg.dataset, "test")
        if cfg.val_size >= len(train):
            raise ConfigError(f"val_size {cfg.val_size} leaves no training data of the {len(train)} samples")
        perm = torch.randperm(len(train), generator=gen)
        val, train = train.subset(perm[:cfg.val_size].sort().values), train.subset(perm[cfg.val_size:].sort().values)
        if cfg.train_subset:
            train = train.subset(torch.randperm(len(train), generator=gen)[:cfg.train_subset].sort().values)
        if cfg.val_subset:
            val = val.subset(torch.randperm(len(val), generator=gen)[:cfg.val_subset].sort().values)
        if cfg.test_subset:   # the smoke scale only: the other scales share out the whole official test split
            test = test.subset(torch.randperm(len(test), generator=gen)[:cfg.test_subset].sort().values)
        rng = np.random.default_rng(seed)
        classes, shares = class_shares(train.y.numpy(), cfg.n_clients, cfg.classes_per_client, cfg.spare_slot, rng)
        parts, client_val, client_test = (data_split(d.y.numpy(), classes, shares, rng) for d in (train, val, test))
        train, val, test = (d.to(device) for d in (train, val, test))
        return cls(cfg, seed, train, test, parts, None, val, test, client_val=client_val, client_test=client_test,
                   client_classes=classes)
