"""FedGen: the generator's losses, the label-count weighting, where the regulariser's gradients go, the
official data split and test splits, every Table-1 method for one round, the official loader kept across
rounds, FedProx's weight decay, the test sets each protocol reads, the central reference, every method on the
run's device, and a smoke run of the workflow."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from common.data import Dataset
from common.experiments import ConfigError
from common.fl.engine import Federation
from common.models import build_model
from common.results import RunRecord
from papers.fedgen.config import FedGenConfig
from papers.fedgen.method import (METHOD_CLASSES, Central, ConditionalGenerator, FedGen, FedProxOfficial,
                                  class_counts, diversity_loss, fedgen_dirichlet_partition, generator_draws,
                                  label_weights, loader_batches, qualified_labels, regulariser_weight,
                                  teacher_loss, user_test_splits)
from tests.conftest import needs_mnist
from tests.device_guard import device_guard
from tests.test_workflow import check_report, run_workflow


# ------------------------------------------------------------------ the generator's losses
def test_diversity_loss_on_hand_made_tensors():
    eps = torch.tensor([[0.0], [1.0]])
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    # pairs (0,1) and (1,0): noise distance mean((1)^2) = 1, latent distance mean(|2|, |2|) = 2; diagonal 0
    assert diversity_loss(eps, z).item() == pytest.approx(math.exp(-(0 + 2 + 2 + 0) / 4))
    collapsed = torch.zeros(2, 2)
    assert diversity_loss(eps, collapsed).item() == pytest.approx(1.0)      # no diversity: the largest loss
    assert diversity_loss(eps, 3 * z) < diversity_loss(eps, z)              # more spread: smaller loss


def test_label_weights_and_qualified_labels():
    counts = torch.tensor([[1, 3, 1], [3, 1, 1]])                           # K = 2 users, C = 3 labels
    w = label_weights(counts)                                              # [C, K]
    assert torch.allclose(w, torch.tensor([[0.25, 0.75], [0.75, 0.25], [0.5, 0.5]]))
    assert torch.allclose(w.sum(1), torch.ones(3))
    assert qualified_labels(counts).tolist() == [0, 1]                      # label 2 seen by nobody (count 1)


def test_teacher_loss_weighting_on_hand_made_tensors():
    # two users, two samples with labels (0, 1), two classes
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]],                      # user 0
                           [[0.0, 0.0], [3.0, 0.0]]])                     # user 1
    y = torch.tensor([0, 1])
    w = torch.tensor([[0.9, 0.1],                                          # label 0: user 0 holds it
                      [0.2, 0.8]])                                         # label 1: user 1 holds it
    ce = [[0.0, 0.0], [0.0, 0.0]]
    for k in range(2):
        for i in range(2):
            ce[k][i] = -F.log_softmax(logits[k, i], 0)[y[i]].item()
    per_sample = sum((ce[k][0] * w[0, k] + ce[k][1] * w[1, k]) / 2 for k in range(2))
    official = sum((ce[k][0] + ce[k][1]) / 2 * (w[0, k] + w[1, k]) / 2 for k in range(2))
    assert teacher_loss(logits, y, w, "per_sample").item() == pytest.approx(float(per_sample), rel=1e-5)
    assert teacher_loss(logits, y, w, "official").item() == pytest.approx(float(official), rel=1e-5)
    assert abs(float(per_sample) - float(official)) > 0.1                  # the two readings differ here


def test_official_teacher_loss_is_the_codes_broadcast():
    """serverpFedGen: mean(NLL [B] * weight [B, 1]) broadcasts to [B, B]; our 'official' equals that."""
    torch.manual_seed(0)
    logits, y = torch.randn(3, 8, 5), torch.randint(0, 5, (8,))
    w = label_weights(torch.randint(1, 20, (3, 5)))
    broadcast = sum(torch.mean(F.nll_loss(F.log_softmax(logits[k], 1), y, reduction="none") * w[y][:, k].reshape(-1, 1))
                    for k in range(3))
    assert teacher_loss(logits, y, w, "official").item() == pytest.approx(broadcast.item(), rel=1e-5)


def test_regulariser_weights_decay_from_the_first_round():
    assert regulariser_weight(10.0, 0.98, 1) == 10.0
    assert regulariser_weight(10.0, 0.98, 3) == pytest.approx(10.0 * 0.98 ** 2)
    assert regulariser_weight(10.0, 0.5, 100) == 1e-4                      # floored


# ------------------------------------------------------------------ the generator
def test_generator_output_shape_and_conditioning():
    torch.manual_seed(0)
    gen = ConditionalGenerator(num_classes=10, noise_dim=32, hidden=256, latent=32).eval()
    eps = torch.rand(4, 32)
    z = gen(torch.tensor([0, 1, 2, 3]), eps)
    assert z.shape == (4, 32)
    same_noise = eps[:1].expand(10, 32)
    outs = gen(torch.arange(10), same_noise)
    assert torch.cdist(outs, outs)[~torch.eye(10, dtype=torch.bool)].min() > 1e-4   # the label changes G's output
    assert torch.allclose(gen(torch.tensor([3, 3]), same_noise[:2]), outs[3].expand(2, 32))
    # the label enters as a one-hot after the noise ([eps ; onehot(y)] -> FC)
    x = torch.cat([same_noise[:1], F.one_hot(torch.tensor([7]), 10).float()], 1)
    assert torch.allclose(gen.out(gen.hidden(x)), outs[7:8], atol=1e-6)
    z, eps = gen.sample(torch.arange(5), torch.Generator().manual_seed(1))
    assert z.shape == (5, 32) and eps.min() >= 0 and eps.max() < 1               # uniform noise, as the code


# ------------------------------------------------------------------ a tiny federation (no MNIST needed)
def tiny_federation(cfg: FedGenConfig, n: int = 400, device: str = "cpu") -> Federation:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 10
    x = (torch.rand(n, 1, 28, 28, generator=gen) * 60 + 15 * y.view(n, 1, 1, 1)).to(torch.uint8)
    train = Dataset("toy", "train", x, y, (0.3,), (0.3,), 10)
    test = Dataset("toy", "test", x[:200], y[:200], (0.3,), (0.3,), 10)
    parts = [torch.nonzero((y // 3) == (k % 4)).flatten() for k in range(cfg.n_clients)]   # label-skewed users
    parts = [p[k // 4::2] for k, p in enumerate(parts)]
    return Federation(cfg, 0, train.to(device), test.to(device), parts, None, None)


def tiny_config(**kw) -> FedGenConfig:
    base = dict(n_clients=8, participation=0.5, rounds=2, local_steps=3, gen_steps=3, latent_samples_per_label=3)
    return FedGenConfig(**{**base, **kw})


def fedgen_method(**kw):
    cfg = tiny_config(**kw)
    fed = tiny_federation(cfg)
    model = build_model(cfg.model, fed.train.shape, 10)
    return FedGen(cfg, fed, model), {k: v.detach().clone() for k, v in model.state_dict().items()}


def penalty_gradient(method, state, shared):
    """Gradient of FedGen's local penalty w.r.t. every model parameter, on 8 real samples."""
    from common.fl.local import forward

    params = {n: state[n] for n in method.param_names}
    buffers = {n: state[n] for n in method.buffer_names}
    x = method.fed.train.normalize(method.fed.train.x[:8])
    y, w = method.fed.train.y[:8], torch.ones(8)
    return grad(lambda p: method.local_penalty(p, x, y, w, forward(method.eval_model, p, buffers, x), shared, {}))(params)


def test_synthetic_cross_entropy_reaches_only_the_last_layer():
    method, state = fedgen_method(gen_beta=0.0)                             # synthetic CE alone
    shared, _ = method.round_context(state, [0, 1], round_=2)
    assert method.alpha_t > 0 and method.beta_t == 1e-4                     # the code floors the weights at 1e-4
    method.beta_t = 0.0
    g = penalty_gradient(method, state, shared)
    for name, value in g.items():
        if name.startswith("classifier."):
            assert value.abs().sum() > 0, name
        else:
            assert torch.equal(value, torch.zeros_like(value)), name


def test_latent_matching_reaches_the_feature_extractor():
    method, state = fedgen_method(gen_alpha=0.0)                            # latent-matching KL alone
    shared, _ = method.round_context(state, [0, 1], round_=2)
    method.alpha_t = 0.0
    g = penalty_gradient(method, state, shared)
    assert g["features.0.weight"].abs().sum() > 0 and g["features.7.weight"].abs().sum() > 0


def test_no_regulariser_in_the_first_round():
    method, state = fedgen_method()
    shared, _ = method.round_context(state, [0, 1], round_=1)
    assert shared == {} and method.alpha_t == 0 and method.beta_t == 0


def test_generator_learns_what_the_heads_label():
    """After a few server steps against fixed heads, the heads label G(y) as y more often than at the start."""
    method, state = fedgen_method(gen_steps=60)
    torch.manual_seed(0)
    K, C, D = 2, 10, 32
    heads = {"classifier.weight": torch.randn(K, C, D), "classifier.bias": torch.zeros(K, C)}
    from common.fl.engine import ClientUpdate
    update = ClientUpdate([0, 1], heads, {}, torch.tensor([1.0, 1.0]), torch.zeros(2))
    method.label_counts = torch.full((K, C), 5)
    before = method.generator_label_accuracy(update).item()
    stats = method.train_generator(update, round_=1)
    after = method.generator_label_accuracy(update).item()
    assert after > before and after > 0.9 and stats["teacher"] > 0


# ------------------------------------------------------------------ data
def test_official_partition_caps_classes_and_users():
    labels = np.repeat(np.arange(10), 600)                                 # 6,000 samples, 600 per class
    parts = fedgen_dirichlet_partition(labels, 20, seed=3, alpha=0.1, sampling_ratio=0.5, data_seed=42)
    sizes = [len(p) for p in parts]
    # per class min(0.5 * 6000 / 20, 0.5 * 600) = 150 samples, so 1,500 in all
    assert sum(sizes) == 1500 and min(sizes) >= 10
    assert np.bincount(labels[np.concatenate(parts)], minlength=10).tolist() == [150] * 10
    assert len(np.unique(np.concatenate(parts))) == 1500                   # disjoint
    again = fedgen_dirichlet_partition(labels, 20, seed=7, alpha=0.1, sampling_ratio=0.5, data_seed=42)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))            # the data seed fixes the split
    other = fedgen_dirichlet_partition(labels, 20, seed=7, alpha=0.1, sampling_ratio=0.5, data_seed=-1)
    assert not all(torch.equal(a, b) for a, b in zip(parts, other))


def test_user_test_splits_hold_only_the_users_labels():
    train_y = torch.tensor([0, 0, 1, 2, 2, 2])
    parts = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]              # user 0: labels {0, 1}; user 1: {2}
    test_y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])                   # 4 zeros, 3 ones, 3 twos
    splits = user_test_splits(parts, train_y, test_y, 3)
    assert sorted(test_y[splits[0]].tolist()) == [0, 0, 1]                  # int(4/2) zeros, int(3/2) ones
    assert test_y[splits[1]].tolist() == [2]                                # int(3/2) twos
    assert len(set(splits[0].tolist()) & set(splits[1].tolist())) == 0


# ------------------------------------------------------------------ every method, one round; configs
@pytest.mark.parametrize("name", sorted(METHOD_CLASSES))
def test_every_table1_method_runs(name):
    cfg = tiny_config(method=name)
    record = RunRecord("fedgen", name, 0, "smoke", {})
    from common.fl.engine import run_federated
    method = run_federated(cfg, 0, record, method_cls=METHOD_CLASSES[name], fed=tiny_federation(cfg))
    last = record.history[-1]
    assert len(record.history) == 2 and 0.0 <= last["paper_acc"] <= 1.0 and 0.0 <= last["test_acc"] <= 1.0
    if name == "fedgen":
        assert "gen_label_acc" in last and record.summary["bytes_down"] > record.summary["bytes_up"]
    if name in ("fedavg", "fedgen"):   # BN statistics stay per user; the global state keeps its initial ones
        assert method.client_buffers and torch.equal(method.final_state["features.1.running_mean"], torch.zeros(6))


def test_users_keep_their_own_batchnorm_statistics():
    cfg = tiny_config(method="fedavg")
    fed = tiny_federation(cfg)
    model = build_model(cfg.model, fed.train.shape, 10)
    method = METHOD_CLASSES["fedavg"](cfg, fed, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    method.client_buffers[2] = {n: torch.full_like(state[n], 7) for n in method.buffer_names}
    start = method.start_state(state, [1, 2])
    assert torch.equal(start["features.1.running_mean"][1], torch.full((6,), 7.0))
    assert torch.equal(start["features.1.running_mean"][0], state["features.1.running_mean"])
    assert torch.equal(start["features.0.weight"][1], state["features.0.weight"])


@pytest.mark.parametrize("kw, message", [(dict(method="fedfoo"), "method must be one of"),
                                         (dict(gen_teacher_weighting="mean"), "gen_teacher_weighting"),
                                         (dict(model="cnn"), "fedgen_cnn"),
                                         (dict(gen_batch_size=1), "gen_batch_size")])
def test_bad_config_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        FedGenConfig(**kw)


def test_defaults_are_the_official_mnist_setting():
    cfg = FedGenConfig()
    assert (cfg.n_clients, cfg.clients_per_round, cfg.local_steps, cfg.batch_size, cfg.lr) == (20, 10, 20, 32, 0.01)
    assert (cfg.gen_lr, cfg.gen_weight_decay, cfg.gen_steps, cfg.gen_alpha, cfg.gen_beta) == (3e-4, 1e-2, 50, 10.0, 10.0)
    assert cfg.aggregate_buffers is False and cfg.rounds == 200


# ------------------------------------------------------------------ the workflow
@pytest.mark.workflow
@needs_mnist
def test_fedgen_workflow(tmp_path):
    run_workflow("fedgen", tmp_path)
    out = tmp_path / "reports" / "smoke" / "fedgen"
    check_report(out, ["curves_paper_protocol", "curves_standard", "latents", "partition_alpha0.1"])
    record = json.loads((tmp_path / "results/smoke/fedgen/fedgen_a0.1/seed0.json").read_text())
    assert record["scale"] == "smoke" and record["history"] and record["bytes_sent"] > 0
    assert {"paper_acc", "test_acc", "gen_label_acc"} <= set(record["history"][-1])
    assert "paper_top5_acc" in record["summary"] and record["summary"]["latent_pca"]["generated"]
    text = (out / "README.md").read_text()
    assert "90.71" in text and "[issue#7]" in text                         # the paper's number, with provenance


# ------------------------------------------------------------------ the official loader, FedProx, evaluation, reference
def test_loader_batches_continue_the_epoch_across_rounds():
    n, B = 100, 32                                                        # 3 whole batches an epoch, 4 dropped
    whole = loader_batches(n, B, 0, 7, seed=1, user=2)
    assert whole.shape == (7, B)
    split = torch.cat([loader_batches(n, B, 0, 2, 1, 2), loader_batches(n, B, 2, 5, 1, 2)])
    assert torch.equal(split, whole)                                      # round 2 picks up where round 1 stopped
    for e in range(2):
        assert len(set(whole[3 * e:3 * e + 3].flatten().tolist())) == 96  # an epoch: 96 distinct samples
    assert set(whole[:3].flatten().tolist()) != set(whole[3:6].flatten().tolist())   # a fresh shuffle per epoch
    assert not torch.equal(whole, loader_batches(n, B, 0, 7, seed=1, user=3))          # each user its own stream
    small = loader_batches(10, B, 0, 2, 1, 2)                             # fewer samples than a batch
    assert small.shape == (2, B) and sorted(small[0, :10].tolist()) == list(range(10))


def test_users_continue_their_loader_across_rounds():
    cfg = tiny_config(method="fedavg", batch_size=8)
    fed = tiny_federation(cfg)
    model = build_model(cfg.model, fed.train.shape, 10)
    method = METHOD_CLASSES["fedavg"](cfg, fed, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    method.client_update(state, [1, 3], 1)
    method.client_update(state, [3, 5], 2)
    S = cfg.local_steps
    assert method.batches_drawn[:6] == [0, S, 0, 2 * S, 0, S]
    second = fed.parts[3][loader_batches(len(fed.parts[3]), 8, S, S, fed.seed, 3)]
    assert torch.equal(method.plan.idx[0], second)                        # user 3's batches S .. 2S-1
    assert torch.equal(method.round_samples(0), second.flatten())


def test_fedprox_adds_the_official_weight_decay():
    """FedProxOptimizer: w -= lr (grad + lamda (w - w_global) + mu w); the penalty's gradient is the last two terms."""
    cfg = tiny_config(method="fedprox", prox_mu=0.5, prox_decay=1e-3)
    fed = tiny_federation(cfg)
    model = build_model(cfg.model, fed.train.shape, 10)
    method = FedProxOfficial(cfg, fed, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shared, _ = method.round_context(state, [0], 1)
    params = {n: state[n] + 0.1 for n in method.param_names}
    g = grad(lambda p: method.local_penalty(p, None, None, None, None, shared, {}))(params)
    for n in method.param_names:
        assert torch.allclose(g[n], 0.5 * 0.1 + 1e-3 * params[n], atol=1e-6), n


def test_curves_read_the_subset_and_the_final_round_the_full_test_set():
    cfg = tiny_config(method="fedavg")
    full = tiny_federation(cfg)
    fed = Federation(cfg, 0, full.train, full.test.subset(torch.arange(50)), full.parts, None, None, full.test)
    model = build_model(cfg.model, fed.train.shape, 10)
    method = METHOD_CLASSES["fedavg"](cfg, fed, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    expected = user_test_splits(fed.parts, fed.train.y, full.test.y, 10)   # user splits: cut from the full test set
    assert all(torch.equal(a, b) for a, b in zip(method.user_tests, expected))
    assert sum(map(len, expected)) > sum(map(len, user_test_splits(fed.parts, fed.train.y, fed.test.y, 10)))
    method.evaluate(state, 1)
    assert len(method.test_data()[1]) == 50                               # a round's curve point: the subset
    fed.use_full_test()                                                   # what the engine does at the last round
    method.evaluate(state, 2)
    assert len(method.test_data()[1]) == 200


def test_central_reference_trains_one_user_on_everything():
    cfg = tiny_config(method="central", partition="iid")
    fed = tiny_federation(cfg)
    n_all = sum(len(p) for p in fed.parts)
    model = build_model(cfg.model, fed.train.shape, 10)
    method = Central(cfg, fed, model)
    assert len(fed.parts[0]) == n_all and all(len(p) == 0 for p in fed.parts[1:])
    assert method.cfg.local_steps == cfg.local_steps * cfg.clients_per_round   # a round: all its users' steps
    method.client_buffers[0] = {n: torch.full_like(b, 7.0) for n, b in model.named_buffers()}
    assert method.buffers_of(5) is method.client_buffers[0]              # every split read with its statistics


# ------------------------------------------------------------------ devices
def test_generator_draws_are_the_per_step_draws_of_the_cpu_generator():
    """Drawn for the whole round at once, in the order the steps used to draw them (labels, then noise)."""
    pos, eps = generator_draws(torch.Generator().manual_seed(5), 3, 4, 6, 2)
    gen = torch.Generator().manual_seed(5)
    for s in range(3):
        assert torch.equal(pos[s], torch.randint(0, 4, (6,), generator=gen))
        assert torch.equal(eps[s], torch.rand(6, 2, generator=gen))
    assert generator_draws(gen, 0, 4, 6, 2)[0].shape == (0, 6)           # gen_steps = 0: no draws
    y = torch.tensor([2, 0, 2, 2])
    assert torch.equal(class_counts(y, 4), torch.bincount(y, minlength=4))


def device_method(name: str, device: str):
    """A Table-1 method on the tiny federation on `device` (its model initialised on the CPU), its state."""
    cfg = tiny_config(method=name)
    fed = tiny_federation(cfg, device=device)
    torch.manual_seed(0)
    model = build_model(cfg.model, fed.train.shape, 10).to(device)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return METHOD_CLASSES[name](cfg, fed, model), state


def play_round(method, state: dict, round_: int):
    update = method.client_update(state, [0, 2, 5], round_)
    return update, method.server_update(state, method.aggregate(state, update), update, round_)


@pytest.mark.parametrize("name", sorted(METHOD_CLASSES))
def test_every_method_keeps_to_the_run_device_and_reads_it_once_per_round(name):
    """Under the guard a tensor made without a device is on `meta` and mixing it in fails: two rounds
    (FedGen's regulariser, with its in-loss draws, is on from the second), their evaluations and the latent
    projection run, so every tensor they make is on the run's device (or deliberately on the CPU)."""
    cfg = tiny_config(method=name)
    fed = tiny_federation(cfg)
    model = build_model(cfg.model, fed.train.shape, 10)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with device_guard() as counts:  # (Adam's reads of its CPU step counter are not counted)
        method = METHOD_CLASSES[name](cfg, fed, model)
        for r in (1, 2):
            _, state = play_round(method, state, r)
        # per round: the local training's divergence check (1, vectorised clients); FedGen's generator steps
        # sum their losses on the device and read them, with the label accuracy, in one `.tolist()` (which the
        # guard sees only on a GPU, as a copy); never per step. Two rounds:
        assert counts["host_reads"] <= 2 * 1
        for r in (1, 2):
            method.evaluate(state, r)                                       # read with `.tolist()`, once
        if name == "fedgen":
            projection = method.latent_projection(state, n_real=50)
            assert len(projection["generated"]) == 10 * cfg.latent_samples_per_label


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("name", sorted(METHOD_CLASSES))
def test_a_round_on_the_device_gives_the_cpu_models(name, device):
    """The batches and the generator's draws are made on the CPU, so round 1 (before FedGen's users draw noise
    in their loss, from the device's RNG) gives the CPU's users, global model and generator up to rounding."""
    results = []
    for dev in ("cpu", device):
        method, state = device_method(name, dev)
        update, state = play_round(method, state, 1)
        out = {**state, **{f"user.{n}": v for n, v in update.params.items()}}
        if isinstance(method, FedGen):
            out.update({f"generator.{n}": v for n, v in method.generator.state_dict().items()})
        results.append((out, method.evaluate(state, 1)))
    (cpu, cpu_metrics), (there, metrics) = results
    assert cpu.keys() == there.keys()
    for n, v in cpu.items():
        assert there[n].device.type == device, n
        torch.testing.assert_close(there[n].cpu(), v, atol=1e-4, rtol=1e-3, msg=n)
    assert metrics["paper_loss"] == pytest.approx(cpu_metrics["paper_loss"], rel=1e-4)
