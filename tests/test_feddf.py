"""FedDF (papers/feddf): the distillation step, averaging, the official Dirichlet split, heterogeneous
grouping, bad inputs, and a smoke run of the workflow."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from common.data import Dataset
from common.experiments import ConfigError, build_config
from common.fl import Federation, run_federated
from common.fl.aggregation import stack_states, weighted_average
from common.models import build_model
from common.partition import PARTITIONS, class_counts
from common.results import RunRecord
from papers.feddf.config import FedDFConfig
from papers.feddf import method as feddf_method
from papers.feddf.method import (NOISE_BATCH_SIZE, DistillationData, FedDF, HeteroFedAvg, HeteroFedDF, distill,
                                 distillation_loss, ensemble_logits, fit_images, noise_to_unit_range)
from papers.feddf.partition import feddf_dirichlet_partition
from papers.feddf.run import capped_rounds_to_target
from tests.conftest import has_data
from tests.device_guard import device_guard
from tests.test_workflow import check_report, run_workflow


def linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    return layer


# ------------------------------------------------------------------------------------------ the loss

def test_distillation_loss_is_the_official_kl_without_t_squared():
    s, t = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    p_t = torch.softmax(t / 2, 1)
    by_hand = (p_t * (p_t.log() - torch.log_softmax(s / 2, 1))).sum()
    assert distillation_loss(s, t, 2.0).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert distillation_loss(t, t, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_ensemble_averages_the_logits_uniformly():
    x = torch.randn(5, 3)
    a, b = linear(torch.randn(4, 3)), linear(torch.randn(4, 3))
    assert torch.allclose(ensemble_logits([a, b], x), (a(x) + b(x)) / 2, atol=1e-6)


def test_distillation_moves_the_student_toward_the_averaged_teacher():
    torch.manual_seed(0)
    teachers = [linear(torch.randn(4, 6)) for _ in range(3)]
    target_w = sum(t.weight.data for t in teachers) / 3   # a linear ensemble's averaged logits = averaged weights
    student = linear(torch.zeros(4, 6))
    gen = torch.Generator().manual_seed(1)
    batches = iter(lambda: torch.randn(32, 6, generator=gen), None)
    probe = torch.randn(256, 6, generator=torch.Generator().manual_seed(2))
    before = distillation_loss(student(probe), ensemble_logits(teachers, probe)).item()
    dist_before = (student.weight - target_w).norm().item()
    logs = distill({"s": student}, teachers, batches, steps=150, lr=0.1)
    after = distillation_loss(student(probe), ensemble_logits(teachers, probe)).item()
    assert after < 0.1 * before
    assert (student.weight - target_w).norm().item() < 0.5 * dist_before
    assert logs["s"].steps == 150 and logs["s"].last_loss < logs["s"].first_loss


def test_keep_start_returns_the_undistilled_student_only_when_it_scores_strictly_higher():
    teachers = [linear(torch.eye(3))]
    student = linear(torch.zeros(3, 3))
    scores = iter([0.9, 0.5, 0.4, 0.3])   # the start, then steps 2, 4, 6: the start scores best
    logs = distill({"s": student}, teachers, iter(lambda: torch.randn(8, 3), None), steps=100, lr=0.01,
                   val_every=2, patience=4, validate=lambda model: next(scores), keep_start=True)
    assert torch.equal(student.weight, torch.zeros(3, 3))
    # the start is not in the early-stopping tracker: patience counts from the best distilled student (step 2)
    assert logs["s"].best_step == 0 and logs["s"].best_val_acc == 0.9 and logs["s"].steps == 6
    student = linear(torch.zeros(3, 3))
    scores = iter([0.5, 0.5, 0.4, 0.3])   # a tie: the distilled student of step 2 is kept (official `>`)
    logs = distill({"s": student}, teachers, iter(lambda: torch.randn(8, 3), None), steps=100, lr=0.01,
                   val_every=2, patience=4, validate=lambda model: next(scores), keep_start=True)
    assert logs["s"].best_step == 2 and not torch.equal(student.weight, torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="feddf_keep_start"):
        FedDFConfig(feddf_keep_start=True, feddf_select_on_val=False)


def test_validation_keeps_the_best_student_and_stops_early():
    teachers = [linear(torch.eye(3))]
    student = linear(torch.zeros(3, 3))
    scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])   # best at the 2nd validation (step 4)
    kept = {}

    def validate(model):
        score = next(scores)
        if score == 0.9:
            kept["w"] = model.weight.detach().clone()
        return score

    logs = distill({"s": student}, teachers, iter(lambda: torch.randn(8, 3), None), steps=100, lr=0.01,
                   val_every=2, patience=4, validate=validate)
    assert logs["s"].best_step == 4 and logs["s"].best_val_acc == 0.9
    assert logs["s"].steps == 8                      # steps 6 and 8 did not improve: 8 - 4 >= patience
    assert torch.equal(student.weight, kept["w"])    # the best student is returned, not the last


def test_students_are_trained_in_train_mode_and_bn_statistics_move():
    student = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    teacher = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    teacher.eval()
    before = student[1].running_mean.clone()
    distill({"s": student}, [teacher], iter(lambda: torch.randn(16, 3) + 5, None), steps=5)
    assert not torch.equal(student[1].running_mean, before)   # re-estimated on the distillation data
    assert torch.equal(teacher[1].running_mean, torch.zeros(3)) and not teacher.training


# ----------------------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_clear_errors():
    s, t = linear(torch.zeros(2, 2)), linear(torch.eye(2))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill({"s": s}, [t], iter([torch.zeros(1, 2)]), steps=1, temperature=-1.0)
    with pytest.raises(ValueError, match="no distillation data"):
        distill({"s": s}, [t], iter([]), steps=1)
    with pytest.raises(ValueError, match="at least one teacher"):
        distill({"s": s}, [], iter([torch.zeros(1, 2)]), steps=1)
    with pytest.raises(ValueError, match="no distillation data"):
        DistillationData(torch.zeros(0, 1, 2, 2, dtype=torch.uint8), lambda x: x.float(), (1, 2, 2))
    with pytest.raises(ConfigError, match="feddf_temperature must be > 0"):
        FedDFConfig(feddf_temperature=0.0)
    with pytest.raises(ConfigError, match="feddf_source must be one of"):
        FedDFConfig(feddf_source="imagenet")
    with pytest.raises(ConfigError, match="needs a labelled server split"):
        FedDFConfig(server_val_fraction=0.0)
    with pytest.raises(ConfigError, match="needs feddf_archs"):
        FedDFConfig(method="feddf_hetero")
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config(FedDFConfig, {"temperature": 2.0})
    FedDFConfig(server_val_fraction=0.0, feddf_select_on_val=False)   # fixed steps need no labelled data


def test_distillation_images_are_fitted_and_noise_is_fresh():
    grey = torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8)
    fitted = fit_images(grey, (3, 32, 32))
    assert fitted.shape == (2, 3, 32, 32) and torch.equal(fitted[:, 0, 2:30, 2:30], grey[:, 0])
    noise = DistillationData(None, noise_to_unit_range, (3, 4, 4), noise=True)
    it = noise.batches(8, 2, torch.Generator().manual_seed(0))
    a, b = next(it), next(it)   # official random_data: batch 128, min-max scaled, mapped to [-1, 1]
    assert a.shape == (NOISE_BATCH_SIZE, 3, 4, 4) and a.min() == -1 and a.max() == 1 and not torch.equal(a, b)


def test_noise_drawn_in_chunks_is_the_noise_drawn_batch_by_batch(monkeypatch):
    shape = (1, 4, 4)
    monkeypatch.setattr(feddf_method, "NOISE_CHUNK_BYTES", 2 * 4 * NOISE_BATCH_SIZE * 16)   # 2 batches
    noise = DistillationData(None, noise_to_unit_range, shape, noise=True)
    chunked = noise.batches(8, 5, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    one_by_one = [noise_to_unit_range(torch.randn(NOISE_BATCH_SIZE, *shape, generator=gen)) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(chunked, one_by_one, strict=True))


def test_an_epoch_over_the_pool_keeps_its_short_last_batch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    pool = DistillationData(images, lambda x: x.float(), (1, 1, 1), "none")
    it = pool.batches(4, 3, torch.Generator().manual_seed(0))
    epoch = [next(it) for _ in range(3)]
    assert [len(b) for b in epoch] == [4, 4, 2]   # never padded: BatchNorm sees genuine images only
    assert sorted(torch.cat(epoch).view(-1).tolist()) == list(range(10))


@pytest.mark.skipif(not has_data("mnist", "fashion_mnist"), reason="MNIST / Fashion-MNIST not under the data root")
def test_the_pool_is_normalised_with_its_own_mean_and_std():
    from common import data as datasets
    task = datasets.load("mnist", "test")
    pool = DistillationData.for_config(FedDFConfig(feddf_source="fashion_mnist", feddf_source_size=8), task, 0)
    zero = pool.normalize(torch.zeros(1, 1, 1, 1, dtype=torch.uint8)).item()
    assert zero == pytest.approx(-0.2860 / 0.3530, abs=1e-4) and len(pool) == 8


# ---------------------------------------------------------------------------------------- averaging

def test_uniform_and_size_weighted_averages_differ_as_they_should():
    stacked = stack_states([{"w": torch.tensor([0.0])}, {"w": torch.tensor([4.0])}])
    assert weighted_average(stacked, torch.tensor([0.5, 0.5]))["w"].item() == 2.0      # official: 1/K
    assert weighted_average(stacked, torch.tensor([0.25, 0.75]))["w"].item() == 3.0    # n_k / n with sizes 1:3
    cfg = FedDFConfig()
    assert cfg.weighting == "uniform" and cfg.aggregate_buffers   # FedDF averages the whole state dict, uniformly


# ------------------------------------------------------------------------------ the official partition

@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_feddf_dirichlet_split_properties(alpha):
    labels = np.repeat(np.arange(10), 300)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    parts = feddf_dirichlet_partition(labels, 20, seed=3, alpha=alpha)
    assert "dirichlet_feddf" in PARTITIONS
    assert [len(p) for p in parts] == [150] * 20                        # equal sizes, as the official cut
    allidx = torch.cat(parts)
    assert len(set(allidx.tolist())) == len(allidx) == 3000             # disjoint, nothing left out (3000 / 20)
    again = feddf_dirichlet_partition(labels, 20, seed=3, alpha=alpha)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))         # seeded
    counts = class_counts(parts, labels, 10)
    top_share = (counts.max(1) / counts.sum(1)).mean()
    if alpha == 0.1:
        assert top_share > 0.5                                          # strongly skewed label mixes
    else:
        assert top_share < 0.5


def test_feddf_split_draws_within_blocks_of_ten_clients():
    """With 20 clients the shuffled data are halved and each half goes to its own 10 clients: the first
    ten clients only hold samples from the first half of the shuffled order."""
    labels = np.repeat(np.arange(10), 200)
    parts = feddf_dirichlet_partition(labels, 20, seed=0, alpha=0.1)
    pairs = np.stack([np.arange(len(labels)), labels], 1)
    np.random.RandomState(0).shuffle(pairs)
    first_half = set(pairs[:1000, 0].tolist())
    assert set(torch.cat(parts[:10]).tolist()) == first_half


def test_feddf_split_rejects_bad_alpha():
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        feddf_dirichlet_partition(np.arange(100) % 10, 10, 0, alpha=0.0)


# ------------------------------------------------------------------------ heterogeneous architectures

def toy_federation(cfg, n=240, device="cpu"):
    """3-class 3x8x8 'images' whose label is readable from the pixels; a labelled server split; on device."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = (torch.rand(n, 3, 8, 8, generator=gen) * 80 + 60 * y.view(n, 1, 1, 1)).to(torch.uint8)
    train = Dataset("toy", "train", x, y, (0.5,) * 3, (0.25,) * 3, 3)
    val = train.subset(torch.arange(200, 240))
    test = train.subset(torch.arange(0, 60))
    parts = [torch.arange(k, 200, cfg.n_clients) for k in range(cfg.n_clients)]
    return Federation(cfg, 0, train.to(device), test.to(device), parts, None, val.to(device))


def toy_cfg(**kw):
    base = dict(dataset="toy", model="linear", augment="none", n_clients=4, participation=1.0, rounds=2,
                local_epochs=1, batch_size=10, lr=0.05, feddf_steps=3, feddf_batch_size=16, feddf_val_every=1,
                feddf_patience=2, eval_batch_size=100, partition="iid")
    return FedDFConfig(**{**base, **kw})


def pool_from_task(monkeypatch, augmentation="none"):
    """The toy images (on their device) as the distillation pool, instead of CIFAR-100."""
    monkeypatch.setattr(DistillationData, "for_config",
                        classmethod(lambda cls, c, task, seed: cls(task.x, task.normalize, task.shape,
                                                                   augmentation)))


def run_toy(method_cls, cfg, monkeypatch):
    """Run a toy federation with the toy images as the distillation pool."""
    pool_from_task(monkeypatch)
    record = RunRecord("feddf", "t", 0, "smoke", {})
    return run_federated(cfg, 0, record, method_cls, toy_federation(cfg)), record


def test_clients_are_grouped_by_architecture_and_averaged_within_it(monkeypatch):
    cfg = toy_cfg(method="fedavg_hetero", model="linear", feddf_archs=("linear", "mlp"))
    method, _ = run_toy(HeteroFedAvg, cfg, monkeypatch)
    assert method.arch_of == ["linear", "linear", "mlp", "mlp"]   # contiguous blocks (num_clients_per_model)
    assert set(method.states) == {"linear", "mlp"}
    assert set(method.states["linear"]) != set(method.states["mlp"])   # two architectures, each its own server model
    # the linear server model is exactly the uniform average of its own clients (0 and 1) in the last round
    update = method.members["linear"].client_update(method.states["linear"], [0, 1], 99)
    avg = method.members["linear"].aggregate(method.states["linear"], update)
    for n, v in avg.items():
        assert torch.allclose(v, (update.params[n][0] + update.params[n][1]) / 2)


def test_hetero_feddf_distils_every_architecture_from_all_clients(monkeypatch):
    cfg = toy_cfg(method="feddf_hetero", model="linear", feddf_archs=("linear", "mlp"))
    method, record = run_toy(HeteroFedDF, cfg, monkeypatch)
    assert set(method.distill_logs) == {"linear", "mlp"} and all(l.steps >= 1 for l in method.distill_logs.values())
    last = record.history[-1]
    assert {"test_acc_linear", "test_acc_mlp", "distill_steps"} <= set(last)
    assert last["test_acc"] == pytest.approx((last["test_acc_linear"] + last["test_acc_mlp"]) / 2)


def test_hetero_feddf_distils_only_the_architectures_received_this_round(monkeypatch):
    cfg = toy_cfg(method="feddf_hetero", model="linear", feddf_archs=("linear", "mlp"), participation=0.25, rounds=3)
    method, _ = run_toy(HeteroFedDF, cfg, monkeypatch)
    assert len(method.distill_logs) == 1 and set(method.distill_logs) == set(method.averaged)


def test_feddf_round_logs_the_average_and_the_ensemble(monkeypatch):
    cfg = toy_cfg(method="feddf")
    _, record = run_toy(FedDF, cfg, monkeypatch)
    assert {"fedavg_test_acc", "ensemble_test_acc", "distill_best_step"} <= set(record.history[-1])


# ------------------------------------------------------------------------------------------------- device

ARCHS = ("linear", "mlp")
ROUND_METHODS = {"feddf": (FedDF, {"method": "feddf"}),
                 "feddf_noise": (FedDF, {"method": "feddf", "feddf_source": "noise"}),
                 "feddf_keepstart": (FedDF, {"method": "feddf", "feddf_keep_start": True}),
                 "feddf_hetero": (HeteroFedDF, {"method": "feddf_hetero", "feddf_archs": ARCHS}),
                 "fedavg_hetero": (HeteroFedAvg, {"method": "fedavg_hetero", "feddf_archs": ARCHS})}
STEPS, VAL_EVERY = 6, 3


def toy_round_method(name, device, monkeypatch):
    """A method of ROUND_METHODS on a toy federation on `device`, with flip+crop augmentation everywhere (the
    clients, the distillation pool and the validation transform), and its start state."""
    cls, kw = ROUND_METHODS[name]
    cfg = toy_cfg(augment="flip_crop", feddf_steps=STEPS, feddf_val_every=VAL_EVERY, feddf_patience=2 * STEPS,
                  **kw)
    if cfg.feddf_source != "noise":
        pool_from_task(monkeypatch, "flip_crop")
    torch.manual_seed(0)   # every architecture is initialised on the CPU, then moved
    method = cls(cfg, toy_federation(cfg, device=device), build_model(cfg.model, (3, 8, 8), 3).to(device))
    return method, {k: v.detach().clone() for k, v in method.model.state_dict().items()}


def one_round(method, state) -> dict:
    """Local training of all four clients, aggregation and the server update: every server model after it."""
    update = method.client_update(state, [0, 1, 2, 3], 1)
    new = method.server_update(state, method.aggregate(state, update), update, 1)
    return dict(getattr(method, "states", {method.cfg.model: new}))


@pytest.mark.parametrize("name", ROUND_METHODS)
def test_a_round_is_device_aware_and_reads_the_host_a_bounded_number_of_times(name, monkeypatch):
    method, state = toy_round_method(name, "cpu", monkeypatch)
    with device_guard() as counts:  # (Adam's reads of its CPU step counter are not counted)
        one_round(method, state)
    archs = len(getattr(method, "archs", [method.cfg.model]))
    # local training: one divergence check per architecture's client_update (vectorised clients); distillation
    # (each architecture a student): one read per validation (early stopping decides on it), + one per student
    # for keep_start's scoring of the start, + one for all the students' losses when the phase ends (a
    # .tolist(), which the guard does not count on the CPU); never one per step
    distils = name != "fedavg_hetero"
    bound = archs + distils * (archs * (STEPS // VAL_EVERY + method.cfg.feddf_keep_start) + 1)
    assert counts["host_reads"] <= bound
    with device_guard() as counts:
        method.evaluate(state, 1)
    # evaluation: accuracy and loss per model scored (FedDF: the distilled model and the average), + the
    # ensemble's accuracy
    assert counts["host_reads"] <= (5 if isinstance(method, FedDF) else 2 * archs)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("name", ROUND_METHODS)
def test_a_round_on_the_device_gives_the_cpu_models(name, device, monkeypatch):
    cpu = one_round(*toy_round_method(name, "cpu", monkeypatch))
    there = one_round(*toy_round_method(name, device, monkeypatch))
    assert cpu.keys() == there.keys()
    for arch, state in cpu.items():
        for k, v in state.items():
            assert there[arch][k].device.type == device
            assert torch.allclose(there[arch][k].cpu().float(), v.float(), atol=1e-5), (arch, k)


def test_rounds_to_target_is_capped_when_never_reached():
    hist = [{"round": 1, "test_acc": 0.2}, {"round": 2, "test_acc": 0.5}]
    assert capped_rounds_to_target(hist, 0.4, 2) == 2.0
    assert capped_rounds_to_target(hist, 0.9, 2) == 3.0


def test_paired_rounds_compares_the_same_seed_and_round_from_a_given_round_on():
    import pandas as pd
    from papers.feddf.figures import _paired_rounds
    hist = pd.DataFrame({"setting": ["feddf_a01"] * 4 + ["fedavg_a01"] * 4, "seed": [0, 0, 1, 1] * 2,
                         "round": [1, 2, 1, 2] * 2,
                         "fedavg_test_acc": [0.9, 0.5, 0.9, 0.3] + [None] * 4,
                         "test_acc": [0.0] * 4 + [0.1, 0.4, 0.1, 0.4]})
    diff = _paired_rounds(hist, "feddf_a01", "fedavg_test_acc", "fedavg_a01", "test_acc", first_round=2)
    assert diff.to_dict() == pytest.approx({0: 0.1, 1: -0.1})


# --------------------------------------------------------------------------------------- the workflow

@pytest.mark.workflow
@pytest.mark.skipif(not has_data("mnist", "fashion_mnist"), reason="MNIST / Fashion-MNIST not under the data root")
def test_feddf_workflow(tmp_path):
    run_workflow("feddf", tmp_path)
    out = tmp_path / "reports" / "smoke" / "feddf"
    check_report(out, ["curves", "fusion", "partitions", "hetero"])
    record = json.loads((tmp_path / "results/smoke/feddf/feddf_a01/seed0.json").read_text())
    assert record["config"]["partition"] == "dirichlet_feddf" and record["history"][-1]["distill_steps"] >= 1
    text = (out / "README.md").read_text()
    assert "[issue#11]" in text and "rounds to" in text.lower()
