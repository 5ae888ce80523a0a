"""pFedHN (issue #14): the hypernetwork update's direction and its equality with a hand-written gradient, the
generated shapes, the official split (class slots, shares, the spare slot, the label-matched test split),
private heads that are never averaged, the novel clients' embedding tuning, bad configs, and a smoke run of the
CLI and of the workflow."""
import json

import numpy as np
import pytest
import torch

from common.experiments import ConfigError
from common.fl.engine import ClientUpdate
from common.models import build_model
from common.partition import class_counts
from papers.pfedhn.config import PFedHNConfig
from papers.pfedhn.method import HEAD, METHODS, HyperNetwork, PFedHN, tune_novel_clients
from papers.pfedhn.partition import SplitFederation, class_shares, data_split
from tests.conftest import needs_cifar

SMALL = dict(train_subset=600, val_size=400, val_subset=200, test_subset=400, n_clients=10, participation=0.1,
             rounds=4, local_steps=2, eval_every=2, hn_hidden=8, hn_layers=1)


def setup(method="pfedhn", **kw):
    cfg = PFedHNConfig(method=method, **{**SMALL, **kw})
    engine = cfg.engine_config()
    fed = SplitFederation.build(cfg, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, fed.train.shape, fed.train.num_classes)
    return engine, fed, METHODS[method](engine, fed, model), model.state_dict()


# ---------------------------------------------------------------------------------------------- the hypernetwork
def test_generated_weights_have_the_target_networks_shapes():
    model = build_model("pfedhn_cnn", (3, 32, 32), 10)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert shapes["features.0.weight"] == (16, 3, 5, 5) and shapes["fc.0.weight"] == (120, 800)   # CNNTarget
    hnet = HyperNetwork(7, 3, shapes, hidden=100, n_hidden=3)
    out = hnet(torch.tensor([0, 4, 6]))
    assert {n: v.shape[1:] for n, v in out.items()} == shapes and all(v.shape[0] == 3 for v in out.values())
    assert hnet.embeddings.weight.shape == (7, 3)
    assert sum(isinstance(m, torch.nn.Linear) for m in hnet.mlp) == 4                 # d -> 100, then 3 x 100
    assert not torch.equal(out["fc.0.weight"][0], out["fc.0.weight"][1])              # clients differ


@needs_cifar
@pytest.mark.parametrize("method", ["pfedhn", "pfedhn_pc"])
def test_the_update_is_the_gradient_of_half_the_squared_distance_to_the_trained_weights(method):
    """(d theta / d phi)^T (theta - theta~) equals grad_phi 0.5 ||h(v; phi) - theta~||^2, so a small step moves
    the generated weights towards theta~ (the flipped sign, the classic silent bug, moves them away)."""
    cfg, fed, m, state = setup(method, hn_momentum=0.0, hn_weight_decay=0.0, hn_clip=0.0, hn_lr=1e-5)
    c = 3
    start = m.start_state(state, [c])
    names = list(m.generated)
    assert (HEAD + "weight" in names) == (method == "pfedhn")                   # PC: the head is not generated
    gen = torch.Generator().manual_seed(1)
    trained = {n: start[n] + 0.05 * torch.randn(start[n].shape, generator=gen) for n in start}
    update = ClientUpdate([c], trained, {}, torch.ones(1), torch.zeros(1))
    # the expected gradient, by hand
    m.hnet.zero_grad()
    out = m.hnet(torch.tensor([c]))
    loss = 0.5 * sum(((out[n] - trained[n]) ** 2).sum() for n in names)
    expected = torch.autograd.grad(loss, list(m.hnet.parameters()))
    dist = lambda: sum(((m.hnet(torch.tensor([c]))[n] - trained[n]) ** 2).sum() for n in names).item()  # noqa
    d0 = dist()
    m.server_update(state, state, update, 1)
    for p, g in zip(m.hnet.parameters(), expected):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)          # the step's gradient
    assert dist() < d0
    assert m.generated == {}


# ---------------------------------------------------------------------------------------------- the split
def test_every_client_gets_its_classes_and_each_class_its_slots():
    labels = np.repeat(np.arange(10), 500)
    rng = np.random.default_rng(0)
    classes, shares = class_shares(labels, 10, 2, spare_slot=False, rng=rng)
    assert classes.shape == (10, 2) and np.bincount(classes.ravel(), minlength=10).tolist() == [2] * 10
    totals = np.zeros(10)
    np.add.at(totals, classes.ravel(), shares.ravel())
    assert np.allclose(totals, 1.0)                                   # the shares of a class sum to 1
    assert (shares >= 0.4 - 1e-9).all() and (shares <= 0.6 + 1e-9).all()   # two U(0.4, 0.6), normalised
    parts = data_split(labels, classes, shares, np.random.default_rng(1))
    counts = class_counts(parts, labels, 10)
    assert ((counts > 0).sum(1) <= 2).all() and counts.sum() >= 5000 - 20        # int() drops < 1 per share
    assert len(np.unique(np.concatenate([p.numpy() for p in parts]))) == counts.sum()   # disjoint


def test_the_spare_slot_leaves_about_a_third_of_each_class_unused():
    labels = np.repeat(np.arange(10), 3000)
    classes, shares = class_shares(labels, 10, 2, spare_slot=True, rng=np.random.default_rng(0))
    used = class_counts(data_split(labels, classes, shares, np.random.default_rng(1)), labels, 10).sum()
    assert 0.55 < used / len(labels) < 0.78                           # 3 slots, 2 holders
    with pytest.raises(ConfigError, match="multiple of the 10 classes"):
        class_shares(labels, 7, 2, spare_slot=False, rng=np.random.default_rng(0))


@needs_cifar
def test_validation_and_test_splits_follow_each_clients_training_mix():
    cfg = PFedHNConfig(**{**SMALL, "train_subset": 0, "val_size": 10000, "val_subset": 0, "test_subset": 0})
    fed = SplitFederation.build(cfg, 0)
    tr = class_counts(fed.parts, fed.train.y.numpy(), 10)
    te = class_counts(fed.client_test, fed.full_test.y.numpy(), 10)
    va = class_counts(fed.client_val, fed.server_val.y.numpy(), 10)
    assert ((tr > 0) == (te > 0)).all() and ((tr > 0) == (va > 0)).all()
    mix = lambda c: c / c.sum(1, keepdims=True)  # noqa: E731
    assert np.abs(mix(tr) - mix(te)).max() < 0.01 and np.abs(mix(tr) - mix(va)).max() < 0.03
    assert len(fed.server_val) == 10000 and len(fed.train) == 40000   # the code's get_datasets
    assert te.sum() >= 10000 - 20                                     # the whole official test split, shared out
    # (the validation split's class sizes vary around 1,000, so its mix follows the shares less tightly)


# ---------------------------------------------------------------------------------------------- private heads
@needs_cifar
@pytest.mark.parametrize("method", ["fedper", "pfedhn_pc"])
def test_private_heads_are_kept_per_client_and_never_averaged(method):
    cfg, fed, m, state = setup(method, participation=0.2 if method == "fedper" else 0.1)
    clients = [1, 4] if method == "fedper" else [4]
    heads_before = {n: v.clone() for n, v in m.heads.items()}
    update = m.client_update(state, clients, 1)
    new = m.server_update(state, m.aggregate(state, update), update, 1)
    for n in m.head_names:
        for k, c in enumerate(clients):
            torch.testing.assert_close(m.heads[n][c], update.params[n][k])     # each kept its own
        others = [c for c in range(10) if c not in clients]
        torch.testing.assert_close(m.heads[n][others], heads_before[n][others])
        torch.testing.assert_close(new[n], state[n])                          # the global head never moves
        assert not torch.allclose(m.heads[n][clients[0]], heads_before[n][clients[0]])
    if method == "fedper":
        body, w = "fc.0.weight", update.n_samples / update.n_samples.sum()
        torch.testing.assert_close(new[body], (w[0] * update.params[body][0] + w[1] * update.params[body][1]))
    down, up = m.message_bytes(state)
    assert down == up == sum(v.numel() * 4 for n, v in state.items() if not n.startswith(HEAD))


# ---------------------------------------------------------------------------------------------- novel clients
@needs_cifar
def test_novel_clients_are_never_trained_then_learn_only_their_embedding():
    cfg = PFedHNConfig(**{**SMALL, "n_clients": 15, "novel_clients": 5, "novel_steps": 3})
    engine = cfg.engine_config()
    assert engine.n_clients == 10 and engine.clients_per_round == 1
    fed = SplitFederation.build(cfg, 0)
    torch.manual_seed(0)
    m = PFedHN(engine, fed, build_model(cfg.model, fed.train.shape, 10))
    phi = {n: p.detach().clone() for n, p in m.hnet.named_parameters() if not n.startswith("embeddings")}
    rows = m.hnet.embeddings.weight.detach().clone()
    result = tune_novel_clients(m)
    assert {"novel_test_acc", "novel_test_acc_before"} <= set(result)
    for n, p in m.hnet.named_parameters():
        if n in phi:
            assert torch.equal(p, phi[n])                              # phi frozen
    new = m.hnet.embeddings.weight.detach()
    assert torch.equal(new[:10], rows[:10]) and not torch.equal(new[10:], rows[10:])


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("kw, message", [({"method": "fedprox"}, "method must be"),
                                         ({"partition": "dirichlet"}, "pfedhn_classes"),
                                         ({"novel_clients": 50}, "novel_clients"),
                                         ({"client_test_fraction": 0.2}, "official test"),
                                         ({"embed_dim": 0}, "embed_dim"),
                                         ({"hn_lr": 0.0}, "hn_lr"),
                                         ({"rounds": 20, "participation": 1.0}, "client visits")])
def test_bad_config_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        PFedHNConfig(**kw)


def test_visits_become_engine_rounds():
    cfg = PFedHNConfig(method="fedavg", n_clients=10, participation=1.0, rounds=500, eval_every=50, vectorize=True)
    engine = cfg.engine_config()
    assert (engine.rounds, engine.eval_every, engine.vectorize) == (50, 5, True)
    engine = PFedHNConfig(n_clients=10, participation=0.1, rounds=500, vectorize=True).engine_config()
    assert (engine.rounds, engine.vectorize) == (500, False)                  # one client: the sequential path


# ---------------------------------------------------------------------------------------------- the CLI
@needs_cifar
def test_smoke_run_then_report(tmp_path):
    from common.cli import main
    from papers.pfedhn.__main__ import ENTRY

    results = tmp_path / "results"
    for setting in ("pfedhn", "fedavg", "pfedhn_novel"):
        out = results / setting / "seed0.json"
        assert main(*ENTRY, ["run", "--scale", "smoke", "--setting", setting, "--seed", "0", "--device", "cpu",
                             "--out", str(out)]) == 0   # the smoke setting itself: the report reads no --set run
    record = json.loads((results / "pfedhn_novel" / "seed0.json").read_text())
    assert {"novel_test_acc", "novel_minus_trained", "best_val_test_acc", "label_mix_match"} <= set(record["summary"])
    assert record["history"][-1]["visits"] == 20
    fedavg = json.loads((results / "fedavg" / "seed0.json").read_text())
    assert [h["visits"] for h in fedavg["history"]] == [10, 20] and "final_global_test_acc" in fedavg["summary"]
    report = tmp_path / "report"
    assert main(*ENTRY, ["report", "--scale", "smoke", "--results", str(results), "--out", str(report)]) == 0
    claims = {c["id"]: c for c in json.loads((report / "claims.json").read_text())}
    assert claims["pfedhn_far_above_fedavg"]["n_seeds"] == 1 and claims["novel_clients_close"]["n_seeds"] == 1
    for name in ("curves", "partition", "partition_test"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 1000
    assert (report / "tables" / "novel_clients.csv").exists()


@pytest.mark.workflow
@needs_cifar
def test_pfedhn_workflow(tmp_path):
    """The smoke report through Snakemake (every smoke setting, then report and publish)."""
    from tests.test_workflow import check_report, run_workflow

    run_workflow("pfedhn", tmp_path)
    out = tmp_path / "reports" / "smoke" / "pfedhn"
    check_report(out, ["curves", "partition", "partition_test"])
