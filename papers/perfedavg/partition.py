"""Our class-skewed user split (ours, not the paper's split: see README.md), registered as `dominant_classes`.

The paper gives every user samples of a limited subset of classes with a two-parameter (a, b) scheme that we
could not verify, so we use (and say so in the README) a split of the same kind:

1. Every user gets `dominant_classes` (k = 2) distinct classes, dealt so that every class is dominant for as
   many users as possible (a user takes the k classes dealt least often so far, ties broken by a seeded
   random priority): with n = 50 users and C = 10 classes each class is dominant for exactly 10 users.
2. Every user holds `client_samples` (m) samples: round(share * m) from its dominant classes (split evenly,
   the remainder to randomly chosen ones) and the rest from the other C - k classes (split evenly likewise).
3. The samples are drawn without replacement from per-class seeded permutations, so users are disjoint.

The engine then holds out `client_test_fraction` of every label of every user (`common.partition.split_clients`),
so a user's test split has its training split's label mix.
"""
from __future__ import annotations

import numpy as np
import torch

from common.experiments import ConfigError
from common.partition import register_partition


def deal_dominant_classes(n_clients: int, num_classes: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, k] distinct classes per user, each class dealt as evenly as possible over the users."""
    dealt = np.zeros(num_classes, dtype=int)
    rows = []
    for _ in range(n_clients):
        priority = rng.permutation(num_classes)                 # random tie-break
        order = np.lexsort((priority, dealt))                   # fewest dealt first
        mine = np.sort(order[:k])
        dealt[mine] += 1
        rows.append(mine)
    return np.stack(rows)


def even_split(total: int, n_parts: int, rng: np.random.Generator) -> np.ndarray:
    """`total` as n_parts near-equal integers; the remainder goes to randomly chosen parts."""
    counts = np.full(n_parts, total // n_parts)
    counts[rng.permutation(n_parts)[:total % n_parts]] += 1
    return counts


@register_partition("dominant_classes")
def dominant_class_partition(labels: np.ndarray, n_clients: int, seed: int, dominant_classes: int = 2,
                             dominant_share: float = 0.8, client_samples: int = 750) -> list[torch.Tensor]:
    """Each user: `client_samples` samples, `dominant_share` of them from its `dominant_classes` classes, the rest
    spread evenly over the other classes (see the module docstring)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    C, k, m = len(classes), dominant_classes, client_samples
    if not 1 <= k < C:
        raise ConfigError(f"dominant_classes must be in [1, {C - 1}] for {C} classes, got {k}")
    if not 0 <= dominant_share <= 1:
        raise ConfigError(f"dominant_share must be in [0, 1], got {dominant_share}")
    if n_clients < 1 or m < 1:
        raise ConfigError(f"need n_clients >= 1 and client_samples >= 1, got {n_clients} and {m}")
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    used = {c: 0 for c in classes}
    dominant = deal_dominant_classes(n_clients, C, k, rng)
    n_dominant = int(round(dominant_share * m))
    parts = []
    for row in dominant:
        counts = np.zeros(C, dtype=int)
        others = np.setdiff1d(np.arange(C), row)
        counts[row] = even_split(n_dominant, k, rng)
        counts[others] = even_split(m - n_dominant, C - k, rng)
        mine = []
        for j, n in enumerate(counts):
            c = classes[j]
            if used[c] + n > len(pools[c]):
                raise ConfigError(f"dominant_classes split: class {c} has {len(pools[c])} samples, too few "
                                  f"for {n_clients} users of {m} samples ({dominant_share:.0%} from {k} "
                                  "classes); lower client_samples or n_clients")
            mine.append(pools[c][used[c]:used[c] + n])
            used[c] += n
        parts.append(torch.from_numpy(np.sort(np.concatenate(mine)).astype(np.int64)))
    return parts


def dominant_classes_of(counts: np.ndarray, k: int) -> np.ndarray:
    """The k classes with the most samples per user: counts [users, C] -> [users, k] (report, tests)."""
    return np.sort(np.argsort(-counts, axis=1, kind="stable")[:, :k], axis=1)
