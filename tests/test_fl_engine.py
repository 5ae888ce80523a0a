import pytest
import torch

from common.data import Dataset
from common.experiments import ConfigError
from common.fl import METHODS, FLConfig, Federation, get_method, run_federated
from common.fl.aggregation import stack_states, weighted_average
from common.fl.engine import ClientUpdate, sample_clients
from common.fl.local import client_batches
from common.models import build_model
from common.partition import dirichlet_partition, split_clients
from common.results import RunRecord


def toy_federation(cfg: FLConfig, seed: int = 0, n: int = 240) -> Federation:
    """A 3-class problem on 1x2x2 'images' whose label is readable from the pixels."""
    gen = torch.Generator().manual_seed(123)
    y = torch.arange(n) % 3
    x = (torch.rand(n, 1, 2, 2, generator=gen) * 80 + 60 * y.view(n, 1, 1, 1)).to(torch.uint8)
    train = Dataset("toy", "train", x, y, (0.5,), (0.25,), 3)
    test = Dataset("toy", "test", x[:60], y[:60], (0.5,), (0.25,), 3)
    parts = dirichlet_partition(y.numpy(), cfg.n_clients, seed, alpha=cfg.alpha, min_size=5)
    client_test = None
    if cfg.client_test_fraction:
        parts, client_test = split_clients(parts, y.numpy(), cfg.client_test_fraction, seed)
    return Federation(cfg, seed, train, test, parts, client_test, None)


def toy_config(**kw) -> FLConfig:
    base = dict(model="linear", n_clients=6, participation=0.5, rounds=2, local_epochs=2, batch_size=8, lr=0.1,
                alpha=0.5)
    return FLConfig(**{**base, **kw})


def test_weighted_average_of_params_and_buffers():
    stacked = stack_states([{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(2)},
                            {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)}])
    avg = weighted_average(stacked, torch.tensor([0.25, 0.75]))
    assert torch.allclose(avg["w"], torch.tensor([2.5, 5.0]))
    assert avg["n"].dtype == torch.int64 and avg["n"].item() == 4  # 3.5 rounds to 4


def _update(params, sizes):
    return ClientUpdate([0, 1], stack_states(params), {}, torch.tensor(sizes), torch.zeros(2))


def test_size_weighted_and_uniform_aggregation():
    cfg = toy_config()
    method = get_method("fedavg")(cfg, toy_federation(cfg), build_model("linear", (1, 2, 2), 3))
    state = {k: torch.zeros_like(v) for k, v in method.model.state_dict().items()}
    a = {k: torch.ones_like(v) for k, v in state.items()}
    b = {k: 4 * torch.ones_like(v) for k, v in state.items()}
    avg = method.aggregate(state, _update([a, b], [1.0, 3.0]))
    assert all(torch.allclose(v, torch.full_like(v, 3.25)) for v in avg.values())  # (1*1 + 3*4) / 4
    method.cfg = toy_config(weighting="uniform")
    avg = method.aggregate(state, _update([a, b], [1.0, 3.0]))
    assert all(torch.allclose(v, torch.full_like(v, 2.5)) for v in avg.values())


def test_fedprox_penalty_gradient_is_mu_times_the_drift():
    cfg = toy_config(method="fedprox", prox_mu=0.5)
    method = get_method("fedprox")(cfg, toy_federation(cfg), build_model("linear", (1, 2, 2), 3))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in method.model.named_parameters()}
    glob = {n: p.detach() - 1.0 for n, p in params.items()}
    penalty = method.local_penalty(params, None, None, None, None, {"global": glob}, {})
    penalty.backward()
    for n, p in params.items():
        assert torch.allclose(p.grad, 0.5 * (p.detach() - glob[n]))


def test_fedavgm_server_momentum():
    cfg = toy_config(method="fedavgm", server_momentum=0.5, server_lr=1.0)
    method = get_method("fedavgm")(cfg, toy_federation(cfg), build_model("linear", (1, 2, 2), 3))
    state = {k: torch.ones_like(v) for k, v in method.model.state_dict().items()}
    avg = {k: torch.zeros_like(v) for k, v in state.items()}
    new = method.server_update(state, avg, None, 1)    # m = 1, w = 1 - 1 = 0
    assert all(torch.allclose(v, torch.zeros_like(v)) for v in new.values())
    new2 = method.server_update(new, {k: v - 1 for k, v in new.items()}, None, 2)  # m = 0.5 + 1, w = -1.5
    assert all(torch.allclose(v, torch.full_like(v, -1.5)) for v in new2.values())


def _import_paper_methods():
    from papers.compare.method import import_paper_methods

    import_paper_methods()
    return sorted(METHODS)


@pytest.mark.parametrize("name", _import_paper_methods())
def test_every_registered_method_runs_a_round(name):
    """Every method, the papers' too, with its own config class and the smallest model it accepts."""
    method = get_method(name)
    config_cls = getattr(method, "config_cls", FLConfig)
    base = {**toy_config().__dict__, "method": name, "rounds": 1, "local_steps": 3,
            "model": getattr(method, "test_model", "linear"),
            "client_test_fraction": 0.2 if name == "local" else 0.0}
    cfg = config_cls(**{k: v for k, v in base.items() if k in config_cls.__dataclass_fields__})
    record = RunRecord("t", name, 0, "smoke", {})
    run_federated(cfg, 0, record, fed=toy_federation(cfg))
    assert len(record.history) == 1 and 0.0 <= record.summary["final_test_acc"] <= 1.0


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9, weight_decay=1e-3), dict(local_steps=5, local_epochs=1),
                                dict(method="fedprox", prox_mu=0.1)])
def test_vectorised_equals_sequential(kw):
    histories = []
    for vectorize in (True, False):
        cfg = toy_config(vectorize=vectorize, rounds=3, **kw)
        record = RunRecord("t", "x", 0, "smoke", {})
        method = run_federated(cfg, 0, record, fed=toy_federation(cfg))
        histories.append((record.history, method.final_state))
    (h_vec, s_vec), (h_seq, s_seq) = histories
    for n in s_vec:
        assert torch.allclose(s_vec[n], s_seq[n], atol=1e-5), n
    assert [h["test_acc"] for h in h_vec] == [h["test_acc"] for h in h_seq]


def test_client_sampling_is_seeded_and_method_independent():
    assert sample_clients(20, 5, 0, 3) == sample_clients(20, 5, 0, 3)
    assert sample_clients(20, 5, 0, 3) != sample_clients(20, 5, 0, 4)
    assert len(set(sample_clients(20, 5, 1, 1))) == 5


def test_epoch_batches_pad_the_last_batch():
    pos, w = client_batches(10, 4, 2, 0, torch.Generator().manual_seed(0))
    assert pos.shape == (6, 4) and w.sum() == 20 and w[2].tolist() == [1, 1, 0, 0]
    assert sorted(pos[:3][w[:3] > 0].tolist()) == list(range(10))


@pytest.mark.parametrize("kw, message", [
    (dict(participation=0.0), "participation"), (dict(participation=1.5), "participation"),
    (dict(alpha=0.0), "alpha must be > 0"), (dict(weighting="median"), "weighting"),
    (dict(lr=-0.1), "lr must be > 0"),
])
def test_bad_config_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        toy_config(**kw)


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown FL method 'fedfoo'"):
        get_method("fedfoo")


def test_batchnorm_statistics_ignore_the_padding_of_a_partial_batch():
    """10 samples in batches of 4: the last batch has 2 real samples and 2 padded copies. The running mean of a
    BatchNorm on the inputs must follow the genuine batches only (issue #10: padding entered the statistics)."""
    from torch import nn

    from common.fl import local

    cfg = toy_config(n_clients=1, participation=1.0, local_epochs=1, batch_size=4, vectorize=False)
    fed = toy_federation(cfg, n=30)
    fed.parts = [torch.arange(10)]
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4, momentum=0.1), nn.Linear(4, 3))
    method = get_method("fedavg")(cfg, fed, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = stack_states([state])
    plan = local.make_plan(fed.parts, [0], cfg, 0, 1, 2)
    assert plan.weight[0, -1].tolist() == [1, 1, 0, 0]
    _, buffers, _ = local.train_sequential(method, model, {n: start[n] for n in method.param_names},
                                           {n: start[n] for n in method.buffer_names}, fed.train, plan, 1e-9, {}, {})
    expected = torch.zeros(4)
    for s in range(plan.steps):
        real = plan.idx[0, s][plan.weight[0, s] > 0]
        expected = 0.9 * expected + 0.1 * fed.train.normalize(fed.train.x[real]).flatten(1).mean(0)
    assert torch.allclose(buffers["1.running_mean"][0], expected, atol=1e-6)


def test_final_round_is_evaluated_on_the_full_test_set():
    cfg = toy_config(rounds=2)
    fed = toy_federation(cfg)
    full = fed.test
    fed.test, fed.full_test = full.subset(torch.arange(7)), full
    seen = []
    method_cls = get_method("fedavg")

    class Probe(method_cls):
        def evaluate(self, state, round_):
            seen.append(len(self.fed.test))
            return super().evaluate(state, round_)

    run_federated(cfg, 0, RunRecord("t", "x", 0, "smoke", {}), method_cls=Probe, fed=fed)
    assert seen == [7, len(full)]
