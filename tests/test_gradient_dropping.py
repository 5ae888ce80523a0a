import math

import pandas as pd
import pytest
import torch

from common.data import Dataset
from common.models import MLP
from common.results import RunRecord
from papers.gradient_dropping import method
from papers.gradient_dropping.config import GradDropConfig
from papers.gradient_dropping.figures import layer_density_reading, modelled_time, reference_reading, time_to_target
from papers.gradient_dropping.method import (GradientDropper, dense_bytes, drop, dropping_ops, sampled_threshold,
                                             sparse_bytes, step_flops, train, worker_batches)
from tests.conftest import needs_mnist
from tests.device_guard import device_guard


def test_exact_threshold_keeps_one_percent_of_distinct_values():
    absval = torch.arange(1, 1001).float()[torch.randperm(1000)].unsqueeze(0)
    t = sampled_threshold(absval, 0.99, sample_size=10_000)
    assert t.item() == 990.0  # sorted index floor(1000 * 0.99) - 1 = 989 -> value 990
    sent, kept, mask = drop(absval, t)
    assert mask.sum().item() == 10 and sorted(sent[mask].tolist()) == list(range(991, 1001))


def test_threshold_sample_is_strided_as_marians_gpu_dropper():
    # N = 10, S = 3: stride 10 // 3 = 3 samples entries 0, 3, 6 (gpu/dropper.cu `sampling`); entry 9 is never seen
    absval = torch.tensor([[5.0, 0, 0, 1.0, 0, 0, 3.0, 0, 0, 100.0]])
    # cut index max(0, int(3 * 0.7) - 1) = 1 -> sorted sample [1, 3, 5][1] = 3
    assert sampled_threshold(absval, 0.7, sample_size=3).item() == 3.0
    # int(3 * 0.2) - 1 = -1 -> clipped to index 0, the smallest sampled value
    assert sampled_threshold(absval, 0.2, sample_size=3).item() == 1.0


def test_ties_at_the_threshold_are_dropped():
    acc = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    sent, kept, _ = drop(acc, torch.tensor([1.0]))
    assert sent.tolist() == [[0.0, 0.0, 2.0, 0.0]] and kept.tolist() == [[1.0, -1.0, 0.0, 0.5]]


def test_sampled_threshold_is_close_to_the_true_quantile():
    absval = torch.rand(2, 1_000_000)
    t = sampled_threshold(absval, 0.99, 100_000)
    assert torch.allclose(t, torch.full((2,), 0.99), atol=2e-3)


def test_residual_bookkeeping_is_exact():
    torch.manual_seed(0)
    dropper = GradientDropper(3, [200, 50], 0.9)
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


def test_counted_step_flops_match_the_matmuls_by_hand():
    model = MLP(784, (512, 512), 10)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(10, (32,))
    # forward 2*B*in*out per layer; backward the same for the weight gradient and, except the first layer, the input's
    B = 32
    expected = 4 * B * 784 * 512 + 6 * B * (512 * 512 + 512 * 10)
    assert step_flops(model, x, y) == expected
    assert all(p.grad is None for p in model.parameters())


def test_dropping_ops_count_passes_and_the_sample_sort():
    assert dropping_ops([1000], 100, local=False) == 6 * 1000 + 100 + math.ceil(100 * math.log2(100))
    # local: one sample per tensor (each smaller than the sample size here, so sampled whole)
    assert dropping_ops([60, 40], 100, local=True) == 6 * 100 + sum(n + math.ceil(n * math.log2(n)) for n in (60, 40))


def _hist(setting, seed, accs, ops_per_step, bytes_per_step):
    steps = range(1, len(accs) + 1)
    return pd.DataFrame({"setting": setting, "seed": seed, "step": list(steps), "test_acc": accs,
                         "compute_ops": [ops_per_step * s for s in steps], "link_bytes": [bytes_per_step * s for s in steps]})


def test_modelled_time_is_operations_over_rate_plus_bytes_over_bandwidth():
    frame = pd.DataFrame({"compute_ops": [2e12], "link_bytes": [1.25e9]})
    assert modelled_time(frame, tflops=1.0, gbps=10).item() == pytest.approx(2.0 + 1.0)


def test_time_to_target_interpolates_and_marks_runs_that_never_get_there():
    hist = pd.concat([_hist("dense", 0, [0.5, 0.8, 0.9], 1e12, 0), _hist("drop99", 0, [0.5, 0.6, 0.7], 1e12, 0)])
    reach = time_to_target(hist, {0: 0.85}, tflops=1.0, gbps=1)
    assert reach[("dense", 0)] == pytest.approx(2.5)      # halfway between step 2 (0.8) and step 3 (0.9), 1 s a step
    assert reach[("drop99", 0)] == math.inf
    assert math.isnan(time_to_target(hist, {1: 0.5}, 1.0, 1)[("dense", 0)])  # no target for seed 0


def test_layer_density_reading_names_what_the_figure_shows():
    tensors = ["fc1.weight", "fc2.weight", "fc3.weight"]
    dens = pd.concat([pd.DataFrame({"setting": "drop99", "seed": 0, "tensor": tensors, "kept": [0.011, 0.004, 0.09]}),
                      pd.DataFrame({"setting": "drop99_local", "seed": 0, "tensor": tensors, "kept": [0.01, 0.01, 0.1]})])
    claims = [{"id": "local_needed_without_ln", "mean": 0.001, "std": 0.002, "verdict": "inconclusive", "n_seeds": 3}]
    text = layer_density_reading(dens, claims)
    assert "9.00 % of fc3.weight (9.0x" in text and "0.40 % of fc2.weight" in text
    assert "under half the quota: fc2.weight" in text and "+0.10 ± 0.20 pt (inconclusive)" in text
    assert "between 1.00 % (fc1.weight) and 10.00 % (fc3.weight" in text
    assert "With LayerNorm" not in text  # no LayerNorm runs, no sentence about them


def test_reference_reading_reports_the_last_quarter():
    hist = pd.DataFrame({"setting": "central_ref", "seed": 0, "step": [1000, 2000, 3000, 4000],
                         "test_acc": [0.95, 0.97, 0.981, 0.982]})
    text = reference_reading(hist)
    assert "ends at 98.20 %" in text and "98.20–98.20 %" in text


@needs_mnist
def test_final_evaluation_uses_the_whole_test_set(monkeypatch):
    sizes = []
    real = method.evaluate
    monkeypatch.setattr(method, "evaluate", lambda model, data: sizes.append(len(data)) or real(model, data))
    cfg = GradDropConfig(steps=4, eval_every=2, train_subset=256, test_subset=100, hidden=(16,), sample_size=500)
    train(cfg, 0, RunRecord("gd", "x", 0, "smoke", {}))
    assert sizes == [100, 10_000]


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


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _toy_run(threshold: str, device: str = "cpu", guard: bool = False):
    """4 steps of 2 workers on 1x2x2 'images' of 3 classes, the first step dense (warm-up), evaluated twice;
    returns the trained model's parameters and the guard's counts."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 3
    x = (torch.rand(64, 1, 2, 2, generator=gen) * 80 + 60 * y.view(64, 1, 1, 1)).to(torch.uint8)
    data = Dataset("toy", "train", x, y, (0.5,), (0.25,), 3).to(device)
    torch.manual_seed(0)
    model = MLP(4, (8,), 3).to(device)
    cfg = GradDropConfig(steps=4, eval_every=2, workers=2, batch_size=4, hidden=(8,), sample_size=20,
                         drop_ratio=0.9, threshold=threshold, warmup_steps=1)
    record = RunRecord("gd", "x", 0, "smoke", {})
    counts = {}
    if guard:
        with device_guard() as counts:
            method.simulate(cfg, model, data, data, data, gen, record)
    else:
        method.simulate(cfg, model, data, data, data, gen, record)
    return {n: p.detach().cpu() for n, p in model.named_parameters()}, record, counts


@pytest.mark.parametrize("threshold", ["global", "local"])
def test_training_steps_read_nothing_back_from_the_device(threshold):
    """Under the guard no tensor is made without the run's device; the host reads are evaluate's accuracy and
    loss, 2 per evaluation (the ledger's one read per window is a copy, not counted on the CPU), none per step."""
    _, record, counts = _toy_run(threshold, guard=True)
    assert len(record.history) == 2 and counts["host_reads"] <= 2 * len(record.history)
    assert counts["cross_device_copies"] == 0


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_a_device_gives_the_cpus_model(device):
    cpu, cpu_record, _ = _toy_run("global")
    other, record, _ = _toy_run("global", device)
    assert all(torch.allclose(cpu[n], other[n], atol=1e-5) for n in cpu)
    assert record.summary["bytes_up"] == cpu_record.summary["bytes_up"]
