"""FedDF's own Dirichlet split, as the official `pcode/datasets/partition_data.py::build_non_iid_by_dirichlet`
followed by `DataPartitioner.partition_indices` (re-implemented, not copied).

1. Shuffle the (index, label) pairs.
2. Cut them into ceil(n_clients / 10) contiguous chunks, one per block of (at most) 10 clients.
3. Inside a chunk, for every class draw q ~ Dir(alpha * 1_m) over the block's m clients; a client that
   already holds more than the average share (chunk size / m) gets q = 0 for the remaining classes; split
   the class's samples by the cumulative q. Redraw the whole chunk until every client holds at least
   half the average share.
4. Concatenate the blocks' client lists in order and cut the concatenation into n_clients equal,
   contiguous parts (the official partition sizes are all 1 / n_clients). So every client has the same
   number of samples, and a client can straddle two Dirichlet clients of the split above.

The official code asserts n_clients >= 10; here a block holds min(10, n_clients) clients so that tiny
smoke settings run too (with n_clients >= 10 the split is the official one).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common.experiments import ConfigError
from common.partition import register_partition

BLOCK_CLIENTS = 10   # n_auxi_workers in the official code


def _dirichlet_block(pairs: np.ndarray, n_block: int, alpha: float, num_classes: int, rng: np.random.RandomState,
                     max_tries: int) -> list[list[int]]:
    """Split one chunk of (index, label) pairs [M, 2] over n_block clients (step 3)."""
    size = len(pairs)
    average = size / n_block
    for _ in range(max_tries):
        clients: list[list[int]] = [[] for _ in range(n_block)]
        for c in range(num_classes):
            idx = pairs[pairs[:, 1] == c, 0]
            q = rng.dirichlet(np.full(n_block, alpha))
            q = q * np.array([len(k) < average for k in clients])
            if q.sum() == 0:   # every client is full (the official code retries the draw)
                break
            cuts = (np.cumsum(q / q.sum()) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                clients[k].extend(chunk.tolist())
        else:
            if min(len(k) for k in clients) >= int(0.5 * average):
                return clients
    raise ConfigError(f"FedDF Dirichlet split (alpha={alpha}): no draw in {max_tries} tries gave each of {n_block} "
                      f"clients half of the average {average:.0f} samples; raise alpha or use more data")


@register_partition("dirichlet_feddf")
def feddf_dirichlet_partition(labels: np.ndarray, n_clients: int, seed: int, alpha: float,
                              block_clients: int = BLOCK_CLIENTS, max_tries: int = 10_000) -> list[torch.Tensor]:
    """The official split (see the module docstring): equal-size clients whose label mix follows
    Dir(alpha) drawn within blocks of `block_clients` clients."""
    labels = np.asarray(labels)
    if n_clients < 1 or n_clients > len(labels):
        raise ConfigError(f"n_clients must be in [1, {len(labels)}], got {n_clients}")
    if not alpha > 0:
        raise ConfigError(f"Dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.RandomState(seed)
    pairs = np.stack([np.arange(len(labels)), labels], 1)
    rng.shuffle(pairs)
    block = min(block_clients, n_clients)
    n_blocks = math.ceil(n_clients / block)
    per_block = [block] * (n_blocks - 1) + [n_clients - block * (n_blocks - 1)]
    num_classes = int(labels.max()) + 1
    chunk = int(block / n_clients * len(labels))
    clients: list[int] = []
    for b, m in enumerate(per_block):
        part = pairs[b * chunk:(len(pairs) if b == n_blocks - 1 else (b + 1) * chunk)]
        for k in _dirichlet_block(part, m, alpha, num_classes, rng, max_tries):
            clients.extend(k)
    share = len(labels) // n_clients   # int(1 / n_clients * N): a remainder is left out, as officially
    order = np.asarray(clients, dtype=np.int64)
    return [torch.from_numpy(np.sort(order[k * share:(k + 1) * share])) for k in range(n_clients)]
