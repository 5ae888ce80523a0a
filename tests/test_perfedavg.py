"""Per-FedAvg (issue #13): the three estimates of the MAML gradient against closed forms (linear and logistic
regression), the round's three batches, the personalised evaluation (own data only, by hand), the divergence
message, the users' split, the device discipline of a round, and a smoke run of the CLI (run, then report)."""
import json

import numpy as np
import pytest
import torch

from common.data import Dataset
from common.experiments import ConfigError
from common.fl import Federation, get_method, run_federated
from common.fl.aggregation import stack_states
from common.models import build_model
from common.partition import class_counts, split_clients
from common.results import RunRecord
from common.train import DivergenceError
from papers.perfedavg.config import PerFedAvgConfig
from papers.perfedavg.method import (
    GRADS_PER_STEP,
    PerFedAvgFO,
    PerFedAvgHF,
    PerFedAvgMAML,
    first_order_direction,
    hessian_free_direction,
    hessian_vector_product,
    maml_direction,
    maml_plan,
    personalised,
    step_batches,
)
from papers.perfedavg.partition import dominant_class_partition, dominant_classes_of
from tests.conftest import needs_mnist

torch.set_default_dtype(torch.float32)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------------------------------------- closed forms
def _batch(gen, n=12, d=4, logistic=False):
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    if logistic:
        y = torch.sign(y)
    w = torch.ones(n, dtype=torch.float64)
    w[-2:] = 0.0     # padding: weighted out
    return X, y, w


def square_loss(params, X, y, w):
    """Linear regression, f(θ) = Σ w (Xθ − y)² / (2 Σ w)."""
    return 0.5 * (w * (X @ params["theta"] - y) ** 2).sum() / w.sum()


def square_grad(theta, X, y, w):
    return X.T @ (w * (X @ theta - y)) / w.sum()


def square_hessian(X, y, w):
    return X.T @ (w[:, None] * X) / w.sum()


def logistic_loss(params, X, y, w):
    """Logistic regression with labels ±1, f(θ) = Σ w log(1 + exp(−y xᵀθ)) / Σ w."""
    return (w * torch.nn.functional.softplus(-y * (X @ params["theta"]))).sum() / w.sum()


def logistic_grad(theta, X, y, w):
    return X.T @ (w * -torch.sigmoid(-y * (X @ theta)) * y) / w.sum()


def logistic_hessian(theta, X, y, w):
    z = y * (X @ theta)
    return X.T @ ((w * torch.sigmoid(z) * torch.sigmoid(-z))[:, None] * X) / w.sum()


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(4, generator=gen, dtype=torch.float64)
    return theta, _batch(gen), _batch(gen), _batch(gen)


def test_first_order_is_the_gradient_at_the_adapted_point(problem):
    theta, D, D1, _ = problem
    alpha = 0.3
    w_hat = theta - alpha * square_grad(theta, *D)
    g, meta_loss = first_order_direction(square_loss, {"theta": theta}, D, D1, alpha)
    torch.testing.assert_close(g["theta"], square_grad(w_hat, *D1))
    torch.testing.assert_close(meta_loss, square_loss({"theta": w_hat}, *D1))


@pytest.mark.parametrize("hessian_batch", ["independent", "inner"])
def test_exact_maml_matches_the_closed_form(problem, hessian_batch):
    """(I − α H) ∇f(θ − α∇f(θ; D); D'), H = XᵀWX/ΣW on D'' (the paper's Algorithm 1) or on D (through the
    inner step)."""
    theta, D, D1, D2 = problem
    alpha = 0.3
    g = square_grad(theta - alpha * square_grad(theta, *D), *D1)
    H = square_hessian(*(D2 if hessian_batch == "independent" else D))
    exact = g - alpha * H @ g
    got, _ = maml_direction(square_loss, {"theta": theta}, D, D1, D2, alpha, hessian_batch)
    torch.testing.assert_close(got["theta"], exact)
    assert (alpha * H @ g).norm() > 1e-2     # the Hessian term is not negligible here: the test can fail


def test_first_order_is_exact_minus_the_hessian_term(problem):
    theta, D, D1, D2 = problem
    alpha = 0.3
    fo, _ = first_order_direction(square_loss, {"theta": theta}, D, D1, alpha)
    exact, _ = maml_direction(square_loss, {"theta": theta}, D, D1, D2, alpha, "independent")
    torch.testing.assert_close(fo["theta"] - alpha * square_hessian(*D2) @ fo["theta"], exact["theta"])
    assert not torch.allclose(fo["theta"], exact["theta"])


@pytest.mark.parametrize("delta", [1.0, 1e-3])
def test_hessian_free_is_exact_on_a_quadratic_for_any_delta(problem, delta):
    """The gradient of a quadratic is affine, so the central difference is its Hessian-vector product."""
    theta, D, D1, D2 = problem
    hf, _ = hessian_free_direction(square_loss, {"theta": theta}, D, D1, D2, 0.3, delta)
    exact, _ = maml_direction(square_loss, {"theta": theta}, D, D1, D2, 0.3, "independent")
    torch.testing.assert_close(hf["theta"], exact["theta"], atol=1e-9, rtol=1e-9)


def test_hessian_free_converges_to_exact_as_delta_shrinks():
    """Logistic regression (not quadratic): the finite-difference error falls like δ² (central difference)."""
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(4, generator=gen, dtype=torch.float64)
    D, D1, D2 = (_batch(gen, logistic=True) for _ in range(3))
    alpha = 0.5
    g = logistic_grad(theta - alpha * logistic_grad(theta, *D), *D1)
    exact = g - alpha * logistic_hessian(theta, *D2) @ g
    got, _ = maml_direction(logistic_loss, {"theta": theta}, D, D1, D2, alpha, "independent")
    torch.testing.assert_close(got["theta"], exact)                       # the jvp is the closed form
    hv = hessian_vector_product(logistic_loss, {"theta": theta}, {"theta": g}, D2)["theta"]
    torch.testing.assert_close(hv, logistic_hessian(theta, *D2) @ g)
    errors = []
    for delta in (0.3, 0.03, 0.003):
        hf, _ = hessian_free_direction(logistic_loss, {"theta": theta}, D, D1, D2, alpha, delta)
        errors.append(float((hf["theta"] - exact).norm()))
    assert errors[0] > 1e-6                                  # a real truncation error at a large δ
    assert errors[1] < errors[0] / 50 and errors[2] < errors[1] / 50   # ~ δ² (100x per decade)


# ---------------------------------------------------------------------------------------------- a toy federation
def toy(method: str = "perfedavg_hf", n_clients: int = 6, **kw):
    """6 users of 90 samples of a 3-class problem on 1x2x2 'images' (label readable from the pixels), split by
    our `dominant_classes` partition (1 dominant class, 80 %), 20 % of each label held out per user."""
    base = dict(method=method, model="linear", n_clients=n_clients, client_samples=90, dominant_classes=1,
                participation=0.5, rounds=2, local_steps=3, batch_size=8, lr=0.1, inner_lr=0.05, eval_every=1,
                adapt_extra_steps=2)
    cfg = PerFedAvgConfig(**{**base, **kw})
    gen = torch.Generator().manual_seed(123)
    n = 600
    y = torch.arange(n) % 3
    x = (torch.rand(n, 1, 2, 2, generator=gen) * 80 + 60 * y.view(n, 1, 1, 1)).to(torch.uint8)
    train = Dataset("toy", "train", x, y, (0.5,), (0.25,), 3)
    test = Dataset("toy", "test", x[:60], y[:60], (0.5,), (0.25,), 3)
    parts = dominant_class_partition(y.numpy(), cfg.n_clients, 0, 1, 0.8, cfg.client_samples)
    parts, client_test = split_clients(parts, y.numpy(), cfg.client_test_fraction, 0)
    return cfg, Federation(cfg, 0, train, test, parts, client_test, None)


def make(method: str, cfg, fed):
    torch.manual_seed(0)
    cls = personalised(get_method(method))
    m = cls(cfg, fed, build_model(cfg.model, fed.train.shape, 3).to(fed.device))
    return m, {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def test_the_three_batches_are_distinct_draws_from_the_users_own_data():
    cfg, fed = toy(local_steps=3)
    method, _ = make("perfedavg_hf", cfg, fed)
    plan = maml_plan(method, [0, 2, 5], 1)
    B = cfg.batch_size
    assert plan.idx.shape == (3, 3 * cfg.local_steps, B) and plan.weight.min() == 1   # whole batches
    for k, c in enumerate([0, 2, 5]):
        own = set(fed.parts[c].tolist())
        steps = plan.idx[k].view(cfg.local_steps, 3, B)
        for s in range(cfg.local_steps):
            D, D1, D2 = (set(steps[s, j].tolist()) for j in range(3))
            assert D | D1 | D2 <= own and not set(fed.client_test_parts[c].tolist()) & (D | D1 | D2)
            assert len(D | D1 | D2) == 3 * B         # D, D', D'' share no sample (72 samples, 9 batches of 8)
            for j, (x, y, w) in enumerate(step_batches(fed.train, plan, s, k)):   # what the step trains on
                assert torch.equal(y, fed.train.y[steps[s, j]])
                assert torch.equal(x, fed.train.normalize(fed.train.x[steps[s, j]]))
        # the user's draws depend on (seed, round, user) only: not on who else is sampled, new every round
        alone = maml_plan(method, [c], 1)
        assert torch.equal(alone.idx[0], plan.idx[k])
        assert not torch.equal(maml_plan(method, [c], 2).idx[0], plan.idx[k])


@pytest.mark.parametrize("cls, direction", [
    (PerFedAvgFO, lambda m, p, b: first_order_direction(m.loss_fn, p, b[0], b[1], m.cfg.inner_lr)),
    (PerFedAvgHF, lambda m, p, b: hessian_free_direction(m.loss_fn, p, *b, m.cfg.inner_lr, m.cfg.hf_delta)),
    (PerFedAvgMAML, lambda m, p, b: maml_direction(m.loss_fn, p, *b, m.cfg.inner_lr, "independent"))])
def test_the_client_update_takes_tau_steps_of_the_estimate(cls, direction):
    """w <- w − β d(w; D_s, D'_s, D''_s) for s = 1..τ, each user from the global model, all K users at once."""
    cfg, fed = toy(cls.name)
    method, state = make(cls.name, cfg, fed)
    clients = [1, 4]
    update = method.client_update(state, clients, 3)
    plan = maml_plan(method, clients, 3)
    for k in range(len(clients)):
        p = {n: state[n] for n in method.param_names}
        for s in range(cfg.local_steps):
            d, _ = direction(method, p, step_batches(fed.train, plan, s, k))
            p = {n: p[n] - cfg.lr * d[n] for n in p}
        for n in p:
            torch.testing.assert_close(update.params[n][k], p[n], atol=1e-6, rtol=1e-5)
    assert method.grad_evals == GRADS_PER_STEP[cls.name] * cfg.local_steps * len(clients)


@pytest.mark.parametrize("name", ["perfedavg_fo", "perfedavg_hf", "perfedavg_maml"])
def test_vectorised_equals_sequential(name):
    states = []
    for vectorize in (True, False):
        cfg, fed = toy(name, vectorize=vectorize)
        m = run_federated(cfg, 0, RunRecord("t", "x", 0, "smoke", {}), personalised(get_method(name)), fed=fed)
        states.append(m.final_state)
    for n in states[0]:
        torch.testing.assert_close(states[0][n], states[1][n], atol=1e-5, rtol=1e-4)


def test_hf_and_exact_maml_agree_and_differ_from_fo():
    """On the model itself: HF with δ = 1e-3 follows exact MAML to float rounding, FO does not."""
    out = {}
    for name in ("perfedavg_fo", "perfedavg_hf", "perfedavg_maml"):
        cfg, fed = toy(name, inner_lr=0.5, lr=0.2)
        out[name] = run_federated(cfg, 0, RunRecord("t", "x", 0, "smoke", {}), personalised(get_method(name)),
                                  fed=fed).final_state
    gap = lambda a, b: max(float((out[a][n] - out[b][n]).abs().max()) for n in out[a])  # noqa: E731
    assert gap("perfedavg_hf", "perfedavg_maml") < 1e-3 < gap("perfedavg_fo", "perfedavg_maml")


# ---------------------------------------------------------------------------------------------- evaluation
def by_hand(method, state, round_):
    """pers_acc_0 and pers_acc_1 per user with a plain nn.Module and torch.optim.SGD (no vmap, no padding)."""
    from torch.nn.functional import cross_entropy

    a_idx, a_w = method.adaptation_plan(round_)
    data, rows = method.fed.train, []
    for u, test in enumerate(method.fed.client_test_parts):
        model = method.model_with(state)
        x_t, y_t = data.normalize(data.x[test]), data.y[test]
        before = (model(x_t).argmax(1) == y_t).float().mean().item()
        opt = torch.optim.SGD(model.parameters(), lr=method.cfg.inner_lr)
        real = a_w[u, 0] > 0
        cross_entropy(model(data.normalize(data.x[a_idx[u, 0][real]])), data.y[a_idx[u, 0][real]]).backward()
        opt.step()
        rows.append((before, (model(x_t).argmax(1) == y_t).float().mean().item()))
    return np.array(rows)


@pytest.mark.parametrize("name", ["fedavg", "perfedavg_fo"])
def test_personalised_accuracy_matches_a_by_hand_adaptation(name):
    cfg, fed = toy(name)
    method, state = make(name, cfg, fed)
    update = method.client_update(state, [0, 3, 5], 1)
    state = method.server_update(state, method.aggregate(state, update), update, 1)
    got = method.evaluate(state, 1)
    want = by_hand(method, state, 1).mean(0)
    assert got["pers_acc_0"] == pytest.approx(want[0], abs=1e-6)
    assert got["pers_acc_1"] == pytest.approx(want[1], abs=1e-6) and got["personal_acc"] == got["pers_acc_1"]
    assert got["grad_evals"] == GRADS_PER_STEP[name] * cfg.local_steps * 3
    assert {"pers_acc_2", "meta_objective", "test_acc"} <= set(got)


def test_the_evaluation_reads_only_each_users_own_data():
    cfg, fed = toy("fedavg")
    method, state = make("fedavg", cfg, fed)
    params, batched = method.eval_starts(state)
    before = method.user_rows(params, batched, 4)
    a_idx, _ = method.adaptation_plan(4)
    u = 2
    own_train, own_test = set(fed.parts[u].tolist()), set(fed.client_test_parts[u].tolist())
    assert set(a_idx[u].flatten().tolist()) <= own_train           # adaptation on its training split only
    # every other sample scrambled: user u's numbers do not move, everybody else's do
    others = torch.tensor(sorted(set(range(len(fed.train))) - own_train - own_test))
    fed.train.x[others] = 255 - fed.train.x[others]
    fed.train.y[others] = (fed.train.y[others] + 1) % 3
    after = method.user_rows(params, batched, 4)
    torch.testing.assert_close(after[u], before[u])
    assert all(not torch.allclose(after[v], before[v]) for v in range(len(fed.parts)) if v != u)
    # and its own test split does move them
    test = fed.client_test_parts[u]
    fed.train.y[test] = (fed.train.y[test] + 1) % 3
    assert not torch.allclose(method.user_rows(params, batched, 4)[u], before[u])


def test_every_method_adapts_on_the_same_batches_and_local_only_from_its_own_models():
    cfg, fed = toy("fedavg")
    a = make("fedavg", cfg, fed)[0].adaptation_plan(7)
    b = make("perfedavg_hf", *toy("perfedavg_hf"))[0].adaptation_plan(7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the adaptation draws are the user's own (seeded per user) and apart from the training plan's generator
    from common.fl.local import client_generator
    from papers.perfedavg.method import eval_generator

    draw = lambda g: torch.randperm(1000, generator=g)  # noqa: E731
    assert not torch.equal(draw(eval_generator(0, 7, 1)), draw(eval_generator(0, 7, 2)))
    assert not torch.equal(draw(eval_generator(0, 7, 1)), draw(client_generator(0, 7, 1)))
    cfg, fed = toy("local")
    local, state = make("local", cfg, fed)
    update = local.client_update(state, [1, 2], 1)
    local.aggregate(state, update)
    params, batched = local.eval_starts(state)
    assert batched and torch.equal(params["net.1.weight"][1], update.params["net.1.weight"][0])
    assert torch.equal(params["net.1.weight"][0], state["net.1.weight"])        # never sampled: the initial model


# ---------------------------------------------------------------------------------------------- divergence
def test_a_nonfinite_meta_loss_names_the_round_the_client_and_the_last_finite_value():
    cfg, fed = toy("perfedavg_hf")
    method, state = make("perfedavg_hf", cfg, fed)
    params = stack_states([{n: state[n] for n in method.param_names}] * 2)
    losses = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.7, 0.5, float("nan"), float("nan")]])
    with pytest.raises(DivergenceError, match=r"round 7, client 5: .* local step 3 of 4 .*last finite "
                                              r"meta-loss: 0\.5 at step 2"):
        method.check_divergence(losses, params, [3, 5], 7)
    params["net.1.bias"][0, 0] = float("inf")
    with pytest.raises(DivergenceError, match=r"round 2, client 3: its model has non-finite parameters"):
        method.check_divergence(losses[:1].expand(2, -1), params, [3, 5], 2)
    finite = stack_states([{n: state[n] for n in method.param_names}] * 2)
    method.check_divergence(losses[:1].expand(2, -1), finite, [3, 5], 2)   # all finite: no error


@pytest.mark.parametrize("name, message", [("perfedavg_fo", r"perfedavg_fo diverged at round 1, client \d+: "),
                                           ("fedavg", r"fedavg diverged at round 1 \(the round's clients are users "
                                                      r"\[\d+, \d+, \d+\], in this order\): loss is nan")])
def test_a_diverging_run_stops_with_one_clear_message(name, message):
    cfg, fed = toy(name, lr=1e38, inner_lr=1e38)
    with pytest.raises(DivergenceError, match=message):
        run_federated(cfg, 0, RunRecord("t", "x", 0, "smoke", {}), personalised(get_method(name)), fed=fed)


# ---------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("name", ["perfedavg_fo", "perfedavg_hf", "perfedavg_maml", "fedavg", "local", "central"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_a_round_makes_every_tensor_on_the_runs_device_and_reads_the_host_once(name, vectorize):
    """Under the guard a tensor made without the run's device lands on `meta` and mixing it in fails. Per-FedAvg
    reads the host once per round (the divergence check), the engine's baselines once per round (vectorised) or
    per client (sequential); the evaluation's one read is a copy, which the guard counts only across devices."""
    from tests.device_guard import device_guard

    cfg, fed = toy(name, vectorize=vectorize)
    method, state = make(name, cfg, fed)
    clients = [0, 2, 4]
    with device_guard() as counts:
        update = method.client_update(state, clients, 1)
        new = method.server_update(state, method.aggregate(state, update), update, 1)
        metrics = method.evaluate(new, 1)
    assert {"pers_acc_0", "pers_acc_1", "pers_acc_2", "meta_objective", "grad_evals"} <= set(metrics)
    assert counts["host_reads"] <= (1 if vectorize or name.startswith("perfedavg") or name == "central"
                                    else len(clients))
    assert counts["cross_device_copies"] == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["perfedavg_hf", "perfedavg_maml"])
def test_rounds_on_a_device_give_the_cpus_models(name, device):
    from dataclasses import replace

    runs = []
    for dev in ("cpu", device):
        cfg, fed = toy(name)
        fed = replace(fed, train=fed.train.to(dev), test=fed.test.to(dev))
        record = RunRecord("t", "x", 0, "smoke", {})
        runs.append((run_federated(cfg, 0, record, personalised(get_method(name)), fed=fed), record))
    (cpu, cpu_record), (other, record) = runs
    for n in cpu.final_state:
        torch.testing.assert_close(other.final_state[n].cpu(), cpu.final_state[n], atol=1e-5, rtol=1e-4)
    assert all(v.device.type == device for v in other.final_state.values())
    assert abs(cpu_record.history[-1]["pers_acc_1"] - record.history[-1]["pers_acc_1"]) < 1e-4


# ---------------------------------------------------------------------------------------------- the split
def test_every_user_has_two_dominant_classes_with_80_percent_and_a_test_split_of_the_same_mix():
    labels = np.repeat(np.arange(10), 4000)
    parts = dominant_class_partition(labels, 50, 3, dominant_classes=2, dominant_share=0.8, client_samples=750)
    assert len(set(np.concatenate([p.numpy() for p in parts]))) == 50 * 750          # disjoint users
    train, test = split_clients(parts, labels, 0.2, 3)
    tr, te = class_counts(train, labels, 10), class_counts(test, labels, 10)
    dom = dominant_classes_of(tr, 2)
    assert (np.bincount(dom.ravel(), minlength=10) == 10).all()                       # each class: 10 users
    share = lambda c: np.take_along_axis(c, dom, 1).sum(1) / c.sum(1)  # noqa: E731
    assert np.allclose(share(tr), 0.8, atol=0.01) and np.allclose(share(te), 0.8, atol=0.02)
    assert (tr.sum(1) + te.sum(1) == 750).all() and (abs(te.sum(1) - 150) <= 4).all()  # per-label rounding
    assert np.abs(tr / tr.sum(1, keepdims=True) - te / te.sum(1, keepdims=True)).max() < 0.02  # same label mix
    assert (tr > 0).all()                                                  # 20 % spread over the other classes
    again = dominant_class_partition(labels, 50, 3, 2, 0.8, 750)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))                       # seeded
    assert not torch.equal(dominant_class_partition(labels, 50, 4, 2, 0.8, 750)[0], parts[0])


def test_a_split_asking_for_more_than_a_class_holds_is_an_error():
    with pytest.raises(ConfigError, match="too few"):
        dominant_class_partition(np.repeat(np.arange(10), 100), 50, 0, 2, 0.8, 750)
    with pytest.raises(ConfigError, match="dominant_classes must be in"):
        dominant_class_partition(np.repeat(np.arange(3), 100), 2, 0, 3, 0.8, 10)


@pytest.mark.parametrize("kw, message", [({"inner_lr": 0.0}, "inner_lr"), ({"hf_delta": -1.0}, "hf_delta"),
                                         ({"maml_hessian_batch": "outer"}, "maml_hessian_batch"),
                                         ({"method": "fedprox"}, "method must be"),
                                         ({"local_steps": 0}, "local_steps"),
                                         ({"dominant_share": 1.5}, "dominant_share")])
def test_bad_config_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        PerFedAvgConfig(**kw)


def test_the_model_is_the_papers_mlp():
    model = build_model("perfedavg_mlp", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 784 * 80 + 80 + 80 * 60 + 60 + 60 * 10 + 10
    acts = [type(m).__name__ for m in model.net]
    assert acts == ["Flatten", "Linear", "ELU", "Linear", "ELU", "Linear"]             # no ELU on the logits


# ---------------------------------------------------------------------------------------------- the CLI
@needs_mnist
def test_smoke_run_then_report(tmp_path):
    """`run` for a few smoke settings (in-process: the CLI's own main), then `report` from their records."""
    from papers.perfedavg.__main__ import ENTRY
    from common.cli import main

    results = tmp_path / "results"
    for setting in ("fedavg", "perfedavg_hf", "perfedavg_maml", "fedavg_alpha0.05", "perfedavg_hf_alpha0.05"):
        out = results / setting / "seed0.json"
        assert main(*ENTRY, ["run", "--scale", "smoke", "--setting", setting, "--seed", "0", "--device", "cpu",
                             "--out", str(out)]) == 0   # the smoke setting itself: the report reads no --set run
    record = json.loads((results / "perfedavg_hf" / "seed0.json").read_text())
    assert record["config"]["method"] == "perfedavg_hf" and len(record["history"]) == 3
    assert record["summary"]["total_grad_evals"] == 4 * 2 * 3 * 3          # HF: 4 x tau x 3 users x 3 rounds
    summary = set(record["summary"])
    assert {"final_pers_acc_0", "final_pers_acc_1", "final_pers_acc_5", "final_meta_objective"} <= summary
    report = tmp_path / "report"
    assert main(*ENTRY, ["report", "--scale", "smoke", "--results", str(results), "--out", str(report)]) == 0
    text = (report / "README.md").read_text()
    assert "scale | `smoke`" in text and "Claims" in text and "not retrieved" in text
    claims = {c["id"]: c for c in json.loads((report / "claims.json").read_text())}
    assert claims["hf_beats_fedavg"]["n_seeds"] == 1 and claims["fo_beats_fedavg"]["n_seeds"] == 0
    for name in ("learning_curves", "gradient_evaluations", "step_sizes", "partition", "partition_test"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 1000
    # a diverging run is one line on stderr and exit status 2, nothing written
    bad = results / "perfedavg_fo" / "seed0.json"
    assert main(*ENTRY, ["run", "--scale", "smoke", "--setting", "perfedavg_fo", "--set", "lr=1.0e+38",
                         "--set", "inner_lr=1.0e+38", "--out", str(bad)]) == 2
    assert not bad.exists()


@pytest.mark.workflow
@needs_mnist
def test_perfedavg_workflow(tmp_path):
    """The smoke report through Snakemake (every smoke setting, then report and publish)."""
    from tests.test_workflow import check_report, run_workflow

    run_workflow("perfedavg", tmp_path)
    out = tmp_path / "reports" / "smoke" / "perfedavg"
    check_report(out, ["learning_curves", "gradient_evaluations", "step_sizes", "partition", "partition_test"])
    record = json.loads((tmp_path / "results/smoke/perfedavg/perfedavg_maml/seed0.json").read_text())
    assert record["config"]["method"] == "perfedavg_maml" and record["summary"]["total_grad_evals"] > 0
