"""FedNTD: the not-true distillation loss on hand-made logits, FedLSD's loss, the methods on the engine, and
a smoke run of the workflow."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.experiments import ConfigError
from common.fl import get_method
from common.models import build_model
from papers.fedntd.config import FedNTDConfig
from papers.fedntd.method import (
    FedLSD,
    FedNTD,
    all_class_distillation_loss,
    not_true_distillation_loss,
    not_true_index,
    not_true_logits,
    official_out_of_local,
    per_class_accuracy,
)
from tests.conftest import needs_mnist
from tests.test_workflow import check_report, run_workflow

LOCAL = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 1.5, -2.0, 1.0], [-0.5, 0.2, 0.1, 3.0]])   # [B=3, C=4]
GLOBAL = torch.tensor([[1.0, 0.5, -0.5, 2.0], [-1.0, 0.0, 1.0, 0.5], [0.7, -0.3, 1.2, 0.4]])
Y = torch.tensor([0, 1, 3])


def by_hand_kl(p, q):
    return sum(pi * (torch.log(pi) - torch.log(qi)) for pi, qi in zip(p, q))


def test_not_true_index_drops_exactly_the_label():
    idx = not_true_index(Y, 4)
    assert idx.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 2]]
    assert torch.equal(not_true_logits(LOCAL, Y)[1], LOCAL[1, [0, 2, 3]])


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_ntd_equals_kl_of_renormalised_not_true_probabilities(tau):
    """KL(q_g || q_l) where q is the softmax(z / tau) renormalised over the not-true classes, times tau^2."""
    expected = 0.0
    for b in range(3):
        keep = [c for c in range(4) if c != Y[b]]
        p_l = F.softmax(LOCAL[b] / tau, 0)[keep]
        p_g = F.softmax(GLOBAL[b] / tau, 0)[keep]
        expected += by_hand_kl(p_g / p_g.sum(), p_l / p_l.sum())
    expected = tau ** 2 * expected / 3
    got = not_true_distillation_loss(LOCAL, GLOBAL, Y, tau)
    assert torch.allclose(got, expected, atol=1e-6)
    # ... and it matches the released criterion's form: KLDivLoss(batchmean)(log_softmax(local), softmax(global))
    ref = tau ** 2 * F.kl_div(F.log_softmax(not_true_logits(LOCAL, Y) / tau, 1),
                              F.softmax(not_true_logits(GLOBAL, Y) / tau, 1), reduction="batchmean")
    assert torch.allclose(got, ref, atol=1e-6)


def test_ntd_ignores_the_true_class_logit_of_either_model():
    base = not_true_distillation_loss(LOCAL, GLOBAL, Y, 1.0)
    local, glob = LOCAL.clone(), GLOBAL.clone()
    local[torch.arange(3), Y] += torch.tensor([10.0, -7.0, 3.0])
    glob[torch.arange(3), Y] -= torch.tensor([5.0, 2.0, -9.0])
    assert torch.allclose(not_true_distillation_loss(local, glob, Y, 1.0), base, atol=1e-6)
    # all-class distillation does depend on them
    assert not torch.allclose(all_class_distillation_loss(local, glob, 1.0), all_class_distillation_loss(LOCAL, GLOBAL, 1.0))


def test_ntd_is_zero_when_models_agree_on_not_true_classes_and_positive_otherwise():
    agree = GLOBAL.clone() + 4.0            # a shift per sample leaves the softmax unchanged
    agree[torch.arange(3), Y] = torch.tensor([-3.0, 8.0, 0.0])   # any true-class logit
    assert not_true_distillation_loss(agree, GLOBAL, Y, 1.0).abs() < 1e-6
    assert not_true_distillation_loss(LOCAL, GLOBAL, Y, 1.0) > 1e-3


def test_no_gradient_reaches_the_global_copy():
    local = LOCAL.clone().requires_grad_(True)
    glob = GLOBAL.clone().requires_grad_(True)
    not_true_distillation_loss(local, glob, Y, 1.0).backward()
    assert glob.grad is None
    assert local.grad is not None and local.grad.abs().sum() > 0
    # the true-class column of the local logits receives no gradient from the NTD term
    assert local.grad[torch.arange(3), Y].abs().max() == 0


def test_padding_weight_excludes_samples():
    w = torch.tensor([1.0, 1.0, 0.0])
    assert torch.allclose(not_true_distillation_loss(LOCAL, GLOBAL, Y, 1.0, w),
                          not_true_distillation_loss(LOCAL[:2], GLOBAL[:2], Y[:2], 1.0), atol=1e-6)


def test_fedlsd_loss_is_the_all_class_kl():
    tau = 2.0
    expected = sum(by_hand_kl(F.softmax(GLOBAL[b] / tau, 0), F.softmax(LOCAL[b] / tau, 0)) for b in range(3)) / 3
    assert torch.allclose(all_class_distillation_loss(LOCAL, GLOBAL, tau), tau ** 2 * expected, atol=1e-6)
    assert all_class_distillation_loss(GLOBAL + 1.5, GLOBAL, tau).abs() < 1e-6


def _method(name, **kw):
    cfg = FedNTDConfig(method=name, **kw)
    model = build_model("cnn", (1, 28, 28), 10)
    return get_method(name)(cfg, None, model), model


@pytest.mark.parametrize("name, cls", [("fedntd", FedNTD), ("fedlsd", FedLSD)])
def test_local_penalty_is_beta_times_distillation_from_the_received_model(name, cls):
    """Through the engine's hook: the penalty uses the frozen global copy passed in `shared` and beta."""
    method, model = _method(name, ntd_beta=0.5, lsd_beta=0.5)
    assert isinstance(method, cls)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shared, mine = method.round_context(state, [0], 1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 1, 28, 28, generator=gen), torch.randint(0, 10, (5,), generator=gen)
    params = {n: state[n] + 0.01 * torch.randn(state[n].shape, generator=gen) for n in method.param_names}
    logits = torch.func.functional_call(model, params, (x,))
    g_logits = model(x).detach()
    w = torch.ones(5)
    got = method.local_penalty(params, x, y, w, logits, shared, mine)
    want = (not_true_distillation_loss(logits, g_logits, y, 1.0) if name == "fedntd"
            else all_class_distillation_loss(logits, g_logits, 1.0))
    assert torch.allclose(got, 0.5 * want, atol=1e-5)
    # at the received model itself the penalty vanishes
    same = torch.func.functional_call(model, {n: state[n] for n in method.param_names}, (x,))
    assert method.local_penalty(params, x, y, w, same, shared, mine).abs() < 1e-5


def test_per_class_accuracy():
    logits = torch.eye(3)[[0, 1, 1, 2]]
    acc = per_class_accuracy(logits, torch.tensor([0, 1, 2, 2]), 4)
    assert acc[:3].tolist() == [1.0, 1.0, 0.5] and torch.isnan(acc[3])


def test_official_out_of_local_weights_classes_by_one_minus_share():
    """measures.py: sum_c acc_c (1 - p_c) / (C - 1); a class the client lacks weighs 1/(C - 1), one it holds
    entirely 0, and the weights sum to 1."""
    counts = np.array([[2, 2, 0], [0, 0, 5]])
    acc = np.array([[1.0, 0.0, 0.5], [0.2, 0.6, 1.0]])
    got = official_out_of_local(acc, counts)
    assert np.allclose(got, [0.25 * 1.0 + 0.25 * 0.0 + 0.5 * 0.5, 0.5 * 0.2 + 0.5 * 0.6 + 0.0])
    assert np.allclose(official_out_of_local(np.ones((2, 3)), counts), 1.0)


def test_mlp2nn_is_mcmahans_2nn():
    model = build_model("mlp2nn", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10


@pytest.mark.parametrize("kw, message", [({"ntd_tau": 0.0}, "ntd_tau"), ({"ntd_beta": -1.0}, "ntd_beta"),
                                         ({"lsd_tau": -2.0}, "lsd_tau"), ({"forget_every": -1}, "forget_every"),
                                         ({"forget_every": 3, "eval_every": 2}, "multiple of eval_every")])
def test_bad_config_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        FedNTDConfig(**kw)


def test_defaults_are_the_released_config():
    cfg = FedNTDConfig()
    assert (cfg.ntd_tau, cfg.ntd_beta, cfg.lr, cfg.lr_decay, cfg.momentum, cfg.batch_size) == (1.0, 1.0, 0.01, 0.99, 0.9, 50)
    assert (cfg.n_clients, cfg.clients_per_round, cfg.local_epochs, cfg.rounds) == (100, 10, 5, 200)
    assert cfg.augment == "flip_crop_cutout" and cfg.partition == "shards" and cfg.shards_per_client == 2


@pytest.mark.workflow
@needs_mnist
def test_fedntd_workflow(tmp_path):
    run_workflow("fedntd", tmp_path)
    out = tmp_path / "reports" / "smoke" / "fedntd"
    check_report(out, ["learning_curves", "forgetting", "forgetting_ours", "class_accuracy", "partition_s2"])
    record = json.loads((tmp_path / "results/smoke/fedntd/fedntd_s2/seed0.json").read_text())
    assert record["config"]["method"] == "fedntd" and record["history"]
    assert {"out_before", "out_after", "official_out_after", "final_test_acc"} <= set(record["summary"])
    claims = {c["id"]: c for c in json.loads((out / "claims.json").read_text())}
    assert claims["ntd_forgets_less"]["n_seeds"] == 1 and claims["ntd_beats_avg_a01"]["n_seeds"] == 0


@pytest.mark.parametrize("name", ["fedntd", "fedlsd"])
def test_vectorised_equals_sequential(name):
    """The NTD / LSD term runs under vmap (gather, frozen global forward) and gives the sequential path's models."""
    from common.fl import run_federated
    from common.results import RunRecord
    from tests.test_fl_engine import toy_config, toy_federation

    states = []
    for vectorize in (True, False):
        cfg = toy_config(method=name, vectorize=vectorize, rounds=2, momentum=0.9)
        method = run_federated(cfg, 0, RunRecord("t", "x", 0, "smoke", {}), fed=toy_federation(cfg))
        states.append(method.final_state)
    for n in states[0]:
        assert torch.allclose(states[0][n], states[1][n], atol=1e-5), n
    # and the penalty changes training: FedNTD's models differ from FedAvg's
    cfg = toy_config(method="fedavg", vectorize=False, rounds=2, momentum=0.9)
    plain = run_federated(cfg, 0, RunRecord("t", "x", 0, "smoke", {}), fed=toy_federation(cfg)).final_state
    assert any(not torch.allclose(plain[n], states[1][n], atol=1e-4) for n in plain)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _toy_probed(name, device="cpu", **kw):
    """A probed FedNTD / FedLSD on the engine tests' toy federation (6 clients, 3 classes), data on `device`."""
    from dataclasses import replace

    from papers.fedntd.method import probed
    from tests.test_fl_engine import toy_federation

    base = dict(method=name, model="linear", augment="none", n_clients=6, participation=0.5, rounds=2,
                local_epochs=1, batch_size=8, lr=0.1, weight_decay=0.0, lr_decay=1.0, alpha=0.5, eval_every=1,
                forget_every=1)
    cfg = FedNTDConfig(**{**base, **kw})
    fed = toy_federation(cfg)
    fed = replace(fed, train=fed.train.to(device), test=fed.test.to(device))
    return cfg, fed, probed(get_method(name))


@pytest.mark.parametrize("name", ["fedntd", "fedlsd"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_a_probed_round_makes_every_tensor_on_the_runs_device(name, vectorize):
    """Under the guard a tensor made without the run's device fails. Host reads per round: the engine's
    divergence check (1 vectorised, 1 per client sequential); the probe's and the evaluation's single reads
    (per-class accuracies, accuracy and loss) are copies, which the guard counts only across devices."""
    from tests.device_guard import device_guard

    cfg, fed, cls = _toy_probed(name, vectorize=vectorize)
    method = cls(cfg, fed, build_model("linear", fed.train.shape, 3))
    state = {k: v.detach().clone() for k, v in method.model.state_dict().items()}
    clients = [0, 2, 4]
    with device_guard() as counts:
        update = method.client_update(state, clients, 1)
        new = method.server_update(state, method.aggregate(state, update), update, 1)
        metrics = method.evaluate(new, 1)
    assert {"out_before", "out_after", "official_out_after", "class_acc_2"} <= set(metrics)
    assert counts["host_reads"] <= (1 if vectorize else len(clients))
    assert counts["cross_device_copies"] == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["fedntd", "fedlsd"])
def test_rounds_on_a_device_give_the_cpus_models(name, device):
    from common.fl import run_federated
    from common.results import RunRecord

    runs = []
    for dev in ("cpu", device):
        cfg, fed, cls = _toy_probed(name, dev, momentum=0.9)
        record = RunRecord("t", "x", 0, "smoke", {})
        runs.append((run_federated(cfg, 0, record, cls, fed=fed), record))
    (cpu, cpu_record), (other, record) = runs
    assert all(torch.allclose(cpu.final_state[n], other.final_state[n].cpu(), atol=1e-5) for n in cpu.final_state)
    assert all(v.device.type == device for v in other.final_state.values())
    assert [sorted(h) for h in cpu_record.history] == [sorted(h) for h in record.history]
    assert all(abs(a["in_after"] - b["in_after"]) < 1e-4 for a, b in zip(cpu_record.history, record.history))
