import pytest
import torch

from common.results import RunRecord
from papers.gradient_dropping.config import GradDropConfig
from papers.gradient_dropping.method import (GradientDropper, dense_bytes, drop, sampled_threshold, sparse_bytes,
                                             train, worker_batches)
from tests.conftest import needs_mnist


def test_exact_threshold_keeps_one_percent_of_distinct_values():
    g = torch.randperm(1000).float().unsqueeze(0) - 500  # distinct |g| apart from +-k pairs
    absval = torch.arange(1, 1001).float().unsqueeze(0)
    t = sampled_threshold(absval, 0.99, sample_size=10_000, generator=torch.Generator())
    assert t.item() == 990.0  # sorted index floor(1000 * 0.99) - 1 = 989 -> value 990
    sent, kept, mask = drop(absval, t)
    assert mask.sum().item() == 10 and sent[0, -10:].tolist() == list(range(991, 1001))
    assert g.numel() == 1000


def test_ties_at_the_threshold_are_dropped():
    acc = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    sent, kept, _ = drop(acc, torch.tensor([1.0]))
    assert sent.tolist() == [[0.0, 0.0, 2.0, 0.0]] and kept.tolist() == [[1.0, -1.0, 0.0, 0.5]]


def test_sampled_threshold_is_close_to_the_true_quantile():
    absval = torch.rand(2, 1_000_000)
    t = sampled_threshold(absval, 0.99, 100_000, torch.Generator().manual_seed(0))
    assert torch.allclose(t, torch.full((2,), 0.99), atol=2e-3)


def test_residual_bookkeeping_is_exact():
    torch.manual_seed(0)
    dropper = GradientDropper(3, [200, 50], 0.9, generator=torch.Generator().manual_seed(1))
    total_grad, total_sent = torch.zeros(3, 250), torch.zeros(3, 250)
    for _ in range(5):
        g = torch.randn(3, 250)
        acc = g + dropper.residual
        sent, mask = dropper(g)
        assert torch.equal(sent + dropper.residual, acc)          # sent + residual == accumulated
        assert torch.equal(mask, sent != 0)
        total_grad += g
        total_sent += sent
    assert torch.allclose(total_sent + dropper.residual, total_grad, atol=1e-5)  # nothing is ever lost


def test_without_residual_the_dropped_part_is_forgotten():
    dropper = GradientDropper(1, [100], 0.9, residual=False)
    dropper(torch.randn(1, 100))
    assert torch.count_nonzero(dropper.residual) == 0


def test_local_threshold_keeps_the_ratio_in_every_tensor():
    # tensor 1 has gradients 100x larger: a global threshold starves tensor 2, local ones do not
    g = torch.cat([100 * torch.rand(1, 1000) + 1, torch.rand(1, 1000)], 1)
    _, mask_global = GradientDropper(1, [1000, 1000], 0.99)(g)
    _, mask_local = GradientDropper(1, [1000, 1000], 0.99, threshold="local")(g)
    assert mask_global[:, 1000:].sum() == 0 and mask_global.sum() == 20
    assert mask_local[:, :1000].sum() == 10 and mask_local[:, 1000:].sum() == 10


def test_dense_mode_sends_everything_and_clears_the_residual():
    dropper = GradientDropper(2, [10], 0.99)
    dropper(torch.randn(2, 10))
    g = torch.randn(2, 10)
    acc = g + dropper.residual
    sent, mask = dropper(g, dense=True)
    assert torch.equal(sent, acc) and mask.all() and torch.count_nonzero(dropper.residual) == 0


def test_byte_counts():
    assert sparse_bytes(10) == 80 and dense_bytes(10) == 40
    # 1 % kept as index+value pairs: 1/(0.01 * 2) = 50x fewer bytes than dense float32
    assert dense_bytes(1_000_000) / sparse_bytes(10_000) == 50


def test_worker_batches_are_disjoint_shards():
    idx = worker_batches(100, 4, 10, 5, torch.Generator().manual_seed(0))
    assert idx.shape == (10, 4, 5)
    shards = [set(idx[:, w].flatten().tolist()) for w in range(4)]
    assert all(not (a & b) for i, a in enumerate(shards) for b in shards[i + 1:])


@needs_mnist
def test_training_is_deterministic_and_counts_bytes():
    cfg = GradDropConfig(steps=6, eval_every=3, train_subset=512, test_subset=200, hidden=(32,), sample_size=500)
    a, b = (RunRecord("gd", "x", 0, "smoke", {}) for _ in range(2))
    train(cfg, 0, a)
    train(cfg, 0, b)
    assert [h["test_acc"] for h in a.history] == [h["test_acc"] for h in b.history]
    assert a.summary["bytes_up"] == b.summary["bytes_up"]
    assert 35 < a.summary["upload_reduction"] < 60
    assert a.summary["mean_density"] == pytest.approx(0.01, abs=0.004)
