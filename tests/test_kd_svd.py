"""KD-SVD / KD-EID building blocks (issue #15): the SVD backward against finite differences and on degenerate
spectra, the EID route against the SVD route, Align_rsv, the KD-SVD loss against a hand computation on
rank-1 maps, the per-tensor clip of the multi-task rule, the baselines' losses against torchdistill's, the
input checks, and the device discipline of a distillation step."""
import math

import pytest
import torch
from torch import nn
from torchdistill.losses.mid_level import ATLoss, FSPLoss, KDLoss, SimpleLossWrapper

from papers.kd_svd.losses import (
    AT_BETA,
    align_rsv,
    attention_transfer_loss,
    fitnets_loss,
    fsp_loss,
    fsp_matrix,
    hint_regressors,
    hinton_kd_loss,
    kd_svd_loss,
    multitask_gradients,
    sigmoid_ramp,
    singular_knowledge,
)
from papers.kd_svd.svd import feature_matrix, svd_backward, thin_svd, truncated_svd
from tests.device_guard import device_guard

torch.set_num_threads(1)
ROUTES = ["svd", "eid"]
# (N, C): N ≥ C uses XᵀX on the EID route, N < C uses XXᵀ, 2/3 < N/C < 3/2 the plain SVD
SHAPES = [(8, 4), (3, 6), (5, 4)]


def orthonormal(B, n, k, gen):
    """[B, n, k] with orthonormal columns."""
    return torch.linalg.qr(torch.randn(B, n, k, generator=gen, dtype=torch.float64)).Q


def separated(B, N, C, gen, spectrum=None):
    """(X, Q2): X = Q1 diag(s) Q2ᵀ [B, N, C], s = 5, 4, 3, ... (well separated) or `spectrum`."""
    k = min(N, C)
    s = torch.tensor(spectrum if spectrum is not None else [5.0 - i for i in range(k)], dtype=torch.float64)
    Q1, Q2 = orthonormal(B, N, k, gen), orthonormal(B, C, k, gen)
    return Q1 @ torch.diag_embed(s.expand(B, k)) @ Q2.mT, Q2


# ----------------------------------------------------------------------------------------------- SVD backward
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("N, C", SHAPES)
def test_svd_backward_matches_finite_differences(route, N, C):
    gen = torch.Generator().manual_seed(N * 10 + C)
    X, Q2 = separated(2, N, C, gen)
    sign = torch.sign((Q2.mT @ thin_svd(X, route)[2]).diagonal(dim1=-2, dim2=-1)).unsqueeze(1)   # [B, 1, k]

    def gauge_fixed(X):   # U and V with the signs of the unperturbed X's, so finite differences are smooth
        U, S, V = thin_svd(X, route)
        return U * sign, S, V * sign

    assert torch.autograd.gradcheck(gauge_fixed, (X.requires_grad_(),), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("N, C", [(6, 4), (3, 5), (4, 4)])
def test_svd_backward_is_finite_on_repeated_and_zero_singular_values(N, C):
    gen = torch.Generator().manual_seed(1)
    k = min(N, C)
    U, V = orthonormal(2, N, k, gen), orthonormal(2, C, k, gen)
    S = torch.tensor([2.0, 1.0, 1.0, 0.0, 0.0][:k], dtype=torch.float64).expand(2, k)   # exact repeats, zeros
    gU, gS, gV = (torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (U, S, V))
    gX = svd_backward(U, S, V, gU, gS, gV)
    assert torch.isfinite(gX).all() and gX.abs().sum() > 0


@pytest.mark.parametrize("route", ROUTES)
def test_gradient_is_finite_on_relu_maps_with_dead_and_repeated_channels(route):
    gen = torch.Generator().manual_seed(2)
    fmap = torch.relu(torch.randn(3, 8, 4, 4, generator=gen))
    fmap[:, 2:5] = 0.0                     # dead channels: zero singular values
    fmap[:, 6] = fmap[:, 7]                # a repeated channel
    fmap.requires_grad_()
    _, V = truncated_svd(feature_matrix(fmap), 4, route)
    V[..., :2].pow(3).sum().backward()
    assert torch.isfinite(fmap.grad).all() and fmap.grad.abs().sum() > 0


@pytest.mark.parametrize("N, C", SHAPES)
def test_eid_route_gives_the_svd_routes_values_and_vectors(N, C):
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(4, N, C, generator=gen, dtype=torch.float64)
    U1, S1, V1 = thin_svd(X, "svd")
    U2, S2, V2 = thin_svd(X, "eid")
    torch.testing.assert_close(S2, S1, rtol=1e-9, atol=1e-9)
    for A, Bm in ((U1, U2), (V1, V2)):   # the same columns up to sign
        torch.testing.assert_close((A * Bm).sum(-2).abs(), torch.ones_like(S1), rtol=0, atol=1e-8)
    # and the same gradients of a sign-invariant function of the two leading right vectors
    grads = []
    for route in ROUTES:
        Xr = X.clone().requires_grad_()
        thin_svd(Xr, route)[2][..., :2].pow(2).mul(torch.arange(C, dtype=X.dtype)[:, None]).sum().backward()
        grads.append(Xr.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------------------------------- KD-SVD
def test_align_fixes_a_flipped_and_permuted_candidate():
    gen = torch.Generator().manual_seed(4)
    q = orthonormal(2, 7, 4, gen).unbind(-1)                 # q1..q4 [B, C]
    V_T = torch.stack([q[0], q[1]], -1)                       # K = 2 teacher vectors
    V_S = torch.stack([q[2], -q[1], q[0], q[3]], -1)          # q2 flipped, order permuted
    torch.testing.assert_close(align_rsv(V_S, V_T), V_T)
    noisy = torch.nn.functional.normalize(-q[0] + 0.1 * q[3], dim=1)    # close to −q1, not equal
    aligned = align_rsv(torch.stack([q[1], noisy, q[2], q[3]], -1), q[0].unsqueeze(-1))
    torch.testing.assert_close(aligned.squeeze(-1), -noisy)


def test_knowledge_is_weighted_by_the_teachers_normalised_singular_values():
    gen = torch.Generator().manual_seed(14)
    X, Q2 = separated(2, 9, 6, gen, spectrum=[4.0, 3.0, 2.0, 1.0, 0.5, 0.2])   # K = 2: σ̂ = (4, 3) / 5
    fmap = X.mT.reshape(2, 6, 3, 3)
    V_S, V_T = singular_knowledge(fmap, fmap, 2, "svd")
    torch.testing.assert_close(V_S, V_T)
    weights = torch.tensor([[0.8, 0.6]] * 2, dtype=torch.float64)
    torch.testing.assert_close(V_T.norm(dim=1), weights)
    torch.testing.assert_close((V_T * Q2[..., :2]).sum(1).abs(), weights)          # along ±q1, ±q2


def rank_one_maps(b, a, H, W):
    """[B, C, H, W] maps whose [HW, C] matrices are a bᵀ: right singular vector ±b/‖b‖."""
    return torch.einsum("bc,bn->bcn", b, a).reshape(b.shape[0], b.shape[1], H, W)


@pytest.mark.parametrize("route", ROUTES)
def test_kd_svd_loss_on_rank_one_maps_equals_the_hand_computation(route):
    gen = torch.Generator().manual_seed(5)
    sizes = [(4, 4, 4), (6, 2, 2)]                            # (C, H, W): tall then wide matrices

    def rnd(*shape):   # positive entries
        return torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.1

    b_T = [rnd(2, c) for c, _, _ in sizes]
    b_S = [b + 0.2 * rnd(*b.shape) for b in b_T]              # cos(b_S, b_T) > 1/√2: the top candidate wins
    maps_T = [rank_one_maps(b, rnd(2, h * w), h, w) for b, (c, h, w) in zip(b_T, sizes)]
    maps_S = [rank_one_maps(b, rnd(2, h * w), h, w) for b, (c, h, w) in zip(b_S, sizes)]
    v_T, v_S = [], []
    for fmap, b, bs in zip(maps_T, b_T, b_S):
        sign = torch.sign((truncated_svd(feature_matrix(fmap), 1, route)[1][..., 0] * b).sum(1, keepdim=True))
        v_T.append(sign * b / b.norm(dim=1, keepdim=True))   # the decomposition's own sign for the teacher,
        v_S.append(sign * bs / bs.norm(dim=1, keepdim=True))  # the student aligned to it
    expected = 0.0
    for n in range(2):
        for i in range(6):
            for j in range(4):
                r_S = math.exp(-(v_S[1][n, i] - v_S[0][n, j]).item() ** 2 / 8)
                r_T = math.exp(-(v_T[1][n, i] - v_T[0][n, j]).item() ** 2 / 8)
                expected += (r_S - r_T) ** 2
    assert expected > 1e-6
    assert kd_svd_loss(maps_S, maps_T, route=route).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("route", ROUTES)
def test_kd_svd_loss_is_zero_for_the_teachers_own_maps_and_positive_otherwise(route):
    gen = torch.Generator().manual_seed(6)
    shapes = [(4, 8, 8, 8), (4, 16, 4, 4), (4, 32, 2, 2)]
    teacher, student = ([torch.relu(torch.randn(s, generator=gen, dtype=torch.float64)).requires_grad_()
                         for s in shapes] for _ in range(2))
    assert kd_svd_loss([t.detach().clone() for t in teacher], teacher, route=route).item() < 1e-20
    loss = kd_svd_loss(student, teacher, route=route)
    assert loss.item() > 1e-3
    loss.backward()
    assert all(t.grad is None for t in teacher)                # the teacher is a fixed target
    assert all(torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0 for s in student)


def test_kd_svd_and_kd_eid_differ_only_by_the_teachers_sign(monkeypatch):
    """The teacher's sign enters the relation between points: flipping one point's teacher vector changes the loss,
    flipping all of them does not, and with the teacher's vectors turned to one sign the two routes give the same
    loss and gradient (README, "Why KD-SVD falls behind KD-EID")."""
    from papers.kd_svd import losses

    gen = torch.Generator().manual_seed(8)
    shapes = [(4, 8, 8, 8), (4, 16, 4, 4), (4, 32, 2, 2)]     # N/C = 8, 1, 1/8: XᵀX, plain SVD, XXᵀ on "eid"
    teacher, student = ([torch.relu(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
                        for _ in range(2))
    original = losses.truncated_svd

    def loss_and_grads(route, signs):
        teacher_signs = iter(signs)   # one per point, for the teacher's vector (n = 1; the student's have n = 4)

        def turned(X, n, route="svd"):
            sigma, V = original(X, n, route)
            if n != 1:
                return sigma, V
            return sigma, V * next(teacher_signs) * torch.sign(V.sum(1, keepdim=True))
        monkeypatch.setattr(losses, "truncated_svd", turned)
        leaves = [f.clone().requires_grad_() for f in student]
        value = losses.kd_svd_loss(leaves, teacher, route=route)
        return value, torch.autograd.grad(value, leaves)

    positive, g_pos = loss_and_grads("svd", [1, 1, 1])
    negative, g_neg = loss_and_grads("svd", [-1, -1, -1])
    one_flipped, _ = loss_and_grads("svd", [1, -1, 1])
    eid, g_eid = loss_and_grads("eid", [1, 1, 1])
    assert negative.item() == pytest.approx(positive.item(), rel=1e-12)
    assert abs(one_flipped.item() - positive.item()) > 1e-3 * positive.item()
    assert eid.item() == pytest.approx(positive.item(), rel=1e-9)
    for a, b, c in zip(g_pos, g_neg, g_eid):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(c, a, rtol=1e-6, atol=1e-10)


# -------------------------------------------------------------------------------------------- multi-task rule
def gradient_lists(gen, dist_scale):
    shapes = [(3, 4), (5,), (2, 2, 3)]
    g_task, g_decay, g_dist = ([torch.randn(s, generator=gen) * scale for s in shapes]
                               for scale in (1, 0.1, 1))
    g_dist = [g * dist_scale * (i + 1) for i, g in enumerate(g_dist)]
    return g_task, g_decay, g_dist


def test_sigmoid_ramp_is_one_half_at_epoch_zero_and_one_later():
    assert sigmoid_ramp(0) == 0.5
    assert sigmoid_ramp(2) == pytest.approx(1 / (1 + math.exp(-2)))
    assert sigmoid_ramp(30) == 1.0


@pytest.mark.parametrize("epoch", [0, 2, 30])
def test_clipped_distillation_gradient_has_the_task_gradients_norm_per_tensor(epoch):
    g_task, g_decay, g_dist = gradient_lists(torch.Generator().manual_seed(7), dist_scale=100.0)
    for g, gc, gw, gd in zip(multitask_gradients(g_task, g_decay, g_dist, epoch), g_task, g_decay, g_dist):
        clipped = g - gc - gw
        bound = gc.norm() * sigmoid_ramp(epoch)
        torch.testing.assert_close(clipped.norm(), bound, rtol=1e-5, atol=0)               # at the bound,
        torch.testing.assert_close(clipped / clipped.norm(), gd / gd.norm(), rtol=1e-4, atol=1e-5)  # along gd


def test_clip_is_inactive_when_the_distillation_gradient_is_small():
    g_task, g_decay, g_dist = gradient_lists(torch.Generator().manual_seed(8), dist_scale=1e-3)
    for g, gc, gw, gd in zip(multitask_gradients(g_task, g_decay, g_dist, 5), g_task, g_decay, g_dist):
        torch.testing.assert_close(g, gc + gw + gd)


def test_multitask_rule_counts_missing_gradients_as_zero():
    gc, gw, gd = torch.ones(3), torch.full((3,), 0.5), torch.full((3,), 100.0)
    out = multitask_gradients([gc, gc, None], [gw, None, None], [None, gd, gd], epoch=30)
    torch.testing.assert_close(out[0], gc + gw)
    torch.testing.assert_close(out[1], gc + gd / gd.norm() * gc.norm())
    torch.testing.assert_close(out[2], torch.zeros(3))        # no task gradient: no room for distillation


# -------------------------------------------------------------------------------------------------- baselines
def feature_pairs(gen, student_channels=(4, 8), teacher_channels=(4, 8), sizes=(8, 4)):
    S = [torch.randn(3, c, s, s, generator=gen) for c, s in zip(student_channels, sizes)]
    T = [torch.randn(3, c, s, s, generator=gen) for c, s in zip(teacher_channels, sizes)]
    return S, T


def test_hinton_kd_equals_torchdistill_kdloss():
    gen = torch.Generator().manual_seed(9)
    z_S, z_T, y = torch.randn(5, 10, generator=gen), torch.randn(5, 10, generator=gen), torch.arange(5)
    io_S, io_T = {"fc": {"output": z_S}}, {"fc": {"output": z_T}}
    soft = KDLoss("fc", "output", "fc", "output", temperature=4.0, alpha=0.0)(io_S, io_T, y)
    torch.testing.assert_close(hinton_kd_loss(z_S, z_T), 16.0 * soft)
    mixed = KDLoss("fc", "output", "fc", "output", temperature=4.0, alpha=0.9)(io_S, io_T, y)
    ours = 0.9 * nn.functional.cross_entropy(z_S, y) + 0.1 * hinton_kd_loss(z_S, z_T)
    torch.testing.assert_close(ours, mixed)


def test_attention_transfer_equals_torchdistill_atloss():
    S, T = feature_pairs(torch.Generator().manual_seed(10), student_channels=(3, 5))
    pairs = {f"p{l}": {"student": {"io": "output", "path": f"s{l}"},
                       "teacher": {"io": "output", "path": f"t{l}"}, "weight": 1} for l in range(2)}
    io_S = {f"s{l}": {"output": f} for l, f in enumerate(S)}
    io_T = {f"t{l}": {"output": f} for l, f in enumerate(T)}
    reference = ATLoss(pairs, mode="code")(io_S, io_T)
    torch.testing.assert_close(attention_transfer_loss(S, T), AT_BETA / 2 * reference)


def test_fitnets_equals_torchdistill_mse_wrapper_on_the_regressors_output():
    S, T = feature_pairs(torch.Generator().manual_seed(11), student_channels=(3, 8), teacher_channels=(6, 8))
    regressors = hint_regressors([3, 8], [6, 8])
    assert isinstance(regressors[0], nn.Conv2d) and isinstance(regressors[1], nn.Identity)
    reference = 0.0
    for l, (r, f_s, f_t) in enumerate(zip(regressors, S, T)):
        wrapper = SimpleLossWrapper(
            nn.MSELoss(), input={"is_from_teacher": False, "module_path": "regressor", "io": "output"},
            target={"is_from_teacher": True, "module_path": f"layer{l}", "io": "output"})
        io_S, io_T = {"regressor": {"output": r(f_s)}}, {f"layer{l}": {"output": f_t}}
        reference = reference + wrapper(io_S, io_T, None)
    torch.testing.assert_close(fitnets_loss(S, T, regressors), reference)


def test_fsp_matrix_equals_torchdistills_and_the_loss_is_yims_squared_distance():
    S, T = feature_pairs(torch.Generator().manual_seed(12))
    G_S, G_T = FSPLoss.compute_fsp_matrix(*S), FSPLoss.compute_fsp_matrix(*T)   # [B, 4, 8], 8×8 pooled to 4×4
    torch.testing.assert_close(fsp_matrix(*S), G_S)
    torch.testing.assert_close(fsp_loss(S, T), (G_T - G_S).pow(2).sum((1, 2)).mean())


# --------------------------------------------------------------------------------------------- checks, device
def maps(*shapes):
    return [torch.rand(s) for s in shapes]


@pytest.mark.parametrize("student, teacher, kwargs, message", [
    (maps((2, 8, 4, 4), (2, 8, 2, 2)), maps((3, 8, 4, 4), (3, 8, 2, 2)), {}, "batch sizes differ"),
    (maps((2, 8, 4, 4), (2, 8, 2, 2)), maps((2, 8, 4, 4), (2, 8, 2, 2)), {"k": 0}, "positive int"),
    (maps((2, 8, 4, 4), (2, 8, 2, 2)), maps((2, 8, 4, 4), (2, 8, 2, 2)), {"k": 2}, r"min\(HW, C\) >= 5"),
    (maps((2, 8, 4, 4), (2, 8, 2, 2)), maps((2, 8, 4, 4), (2, 6, 2, 2)), {}, "channels"),
    (maps((2, 8, 4, 4)), maps((2, 8, 4, 4)), {}, "at least 2"),
    (maps((2, 8, 4, 4), (2, 8, 2, 2)), maps((2, 8, 4, 4), (2, 8, 2, 2)), {"route": "qr"}, "route"),
])
def test_kd_svd_loss_rejects_invalid_inputs(student, teacher, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kd_svd_loss(student, teacher, **kwargs)


def test_other_invalid_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="as long"):
        multitask_gradients([torch.ones(2)], [], [torch.ones(2)], 0)
    with pytest.raises(ValueError, match="spatial sizes differ"):
        attention_transfer_loss(maps((2, 4, 4, 4)), maps((2, 4, 2, 2)))
    with pytest.raises(ValueError, match="temperature"):
        hinton_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0)
    with pytest.raises(ValueError, match="n <= min"):
        truncated_svd(torch.rand(2, 3, 5), 4)


@pytest.mark.parametrize("route", ROUTES)
def test_a_distillation_step_makes_no_tensor_without_a_device_and_reads_nothing_back(route):
    gen = torch.Generator().manual_seed(13)
    student = [torch.randn(s, generator=gen).requires_grad_() for s in [(2, 4, 4, 4), (2, 8, 2, 2)]]
    teacher = [torch.randn(s, generator=gen) for s in [(2, 4, 4, 4), (2, 8, 2, 2)]]
    g_task = [torch.randn(s.shape, generator=gen) for s in student]
    with device_guard() as counts:   # a tensor made without a device lands on `meta` and fails here
        g_dist = torch.autograd.grad(kd_svd_loss(student, teacher, route=route), student)
        combined = multitask_gradients(g_task, [None, None], list(g_dist), epoch=1)
    assert all(g.device.type == "cpu" and torch.isfinite(g).all() for g in combined)
    assert counts["host_reads"] == 0 and counts["cross_device_copies"] == 0


# ------------------------------------------------------------------------------ runs: the centralised loop (#15)
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from common.data import Dataset  # noqa: E402
from common.experiments import ConfigError, build_config, settings  # noqa: E402
from common.train import TrainConfig, epoch_plan, lr_at, sgd, stratified_subset, train_epochs  # noqa: E402
from papers.kd_svd import method as kd_method  # noqa: E402
from papers.kd_svd.config import METHODS, KDConfig, TeacherConfig  # noqa: E402
from tests.conftest import REPO, needs_cifar  # noqa: E402

SMOKE_SETTINGS = ["student", "fsp", "kd_svd", "kd_eid"]


def toy_data(n=64, side=16, classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return Dataset("toy", "train", torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen),
                   torch.randint(0, classes, (n,), generator=gen), (0.5,) * 3, (0.25,) * 3, classes)


def test_learning_rate_schedules_and_the_stratified_subset():
    step = TrainConfig(epochs=10, lr=0.1, lr_schedule="step", lr_milestones=(0.3, 0.6, 0.8))
    assert [round(lr_at(step, e), 6) for e in (0, 2, 3, 5, 6, 8, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 1e-4, 1e-4]
    cosine = TrainConfig(epochs=4, lr=0.2, lr_schedule="cosine")
    assert lr_at(cosine, 0) == pytest.approx(0.2) and lr_at(cosine, 2) == pytest.approx(0.1)
    assert lr_at(cosine, 3, 0.999) < 1e-4
    y = torch.arange(10).repeat_interleave(50)                   # 10 classes of 50
    idx = stratified_subset(y, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(y[idx]), torch.full((10,), 5))
    assert not torch.equal(idx, stratified_subset(y, 0.1, torch.Generator().manual_seed(1)))


def test_an_epoch_plan_repeats_with_its_seed_and_covers_every_sample_once():
    cfg = TrainConfig(batch_size=24)
    a, b = (epoch_plan(100, cfg, 32, torch.Generator().manual_seed(3), "cpu") for _ in range(2))
    assert all(torch.equal(i, j) and all(torch.equal(p[k], q[k]) for k in p) for (i, p), (j, q) in zip(a, b))
    assert torch.equal(torch.cat([i for i, _ in a]).sort().values, torch.arange(100))
    assert [len(i) for i, _ in a] == [24, 24, 24, 24, 4]


@pytest.mark.parametrize("method", ["student", "hinton", "fsp", "at", "kd_svd", "kd_eid"])
def test_a_student_epoch_makes_no_tensor_without_a_device_and_reads_the_host_once(method):
    data = toy_data()
    cfg = KDConfig(method=method, dataset="toy", widths=(4, 4, 8, 8), epochs=1, batch_size=32, init_epochs=0)
    student = kd_method.KDResNet(3, 10, cfg.widths, 1)
    teacher = kd_method.freeze(kd_method.KDResNet(3, 10, cfg.widths, 2))
    step = kd_method.StudentStep(cfg, student, teacher, nn.ModuleList())
    optimizer = sgd(step.params, cfg)
    data.normalize(data.x[:1])   # builds the cached mean and std outside the guard
    with device_guard() as counts:
        [(epoch, loss, _)] = list(train_epochs(student, data, cfg, optimizer, step, torch.Generator().manual_seed(1)))
    assert epoch == 1 and math.isfinite(loss)
    assert counts["host_reads"] == 1 and counts["cross_device_copies"] == 0


def test_kd_svd_step_clips_each_distillation_gradient_to_the_task_gradients_norm():
    """The student step of KD-SVD applies multitask_gradients (op_util.py, 'KD-'): per tensor the applied
    gradient minus the CE gradient has norm <= ‖g_CE‖ · sigmoid(epoch)."""
    data = toy_data()
    cfg = KDConfig(method="kd_svd", dataset="toy", widths=(4, 4, 8, 8), batch_size=64, weight_decay=0.0)
    student = kd_method.KDResNet(3, 10, cfg.widths, 1)
    teacher = kd_method.freeze(kd_method.KDResNet(3, 10, cfg.widths, 2))
    step = kd_method.StudentStep(cfg, student, teacher, nn.ModuleList())
    x, y = data.normalize(data.x), data.y
    g_ce = torch.autograd.grad(nn.functional.cross_entropy(student(x), y), step.params)
    step(x, y, epoch=0)
    excess = [(p.grad - g).norm() / (g.norm() * 0.5) for p, g in zip(step.params, g_ce)]
    assert max(excess) <= 1 + 1e-4 and max(excess) > 0.99   # at the bound somewhere: the clip acts here


def test_the_alignment_ablation_differs_from_kd_svd_only_by_align_rsv(monkeypatch):
    gen = torch.Generator().manual_seed(15)
    teacher, student = [], []
    for point, (N, h, w) in enumerate(((16, 4, 4), (4, 2, 2))):   # two points of 8 channels: [HW, C] [16, 8], [4, 8]
        X, Q2 = separated(2, N, 8, gen)                           # spectrum 5, 4, 3, ...; right vectors Q2
        teacher.append(X.mT.reshape(2, 8, h, w))
        k = Q2.shape[-1]
        order = [1, 0, *range(2, k)] if point == 0 else list(range(k))   # at point 0 the two leading swap
        s = torch.tensor([5.0 - i for i in range(k)], dtype=torch.float64)
        U = orthonormal(2, N, k, gen)
        student.append((U @ torch.diag_embed(s.expand(2, k)) @ Q2[..., order].mT).mT.reshape(2, 8, h, w))
    aligned = kd_svd_loss(student, teacher)
    unaligned = kd_method.kd_svd_loss_unaligned(student, teacher)
    assert aligned.item() < 1e-20 and unaligned.item() > 1e-4   # Align_rsv finds the teacher's vector second
    import papers.kd_svd.losses as losses
    monkeypatch.setattr(losses, "align_rsv", lambda V_S, V_T: V_S[..., :V_T.shape[-1]])   # no alignment
    torch.testing.assert_close(kd_svd_loss(student, teacher), unaligned)


def test_bad_config_values_give_one_clear_config_error():
    for overrides, message in [({"method": "kd"}, "method must be one of student, hinton"),
                               ({"widths": [8, 16, 32]}, "widths must be 4 positive ints"),
                               ({"widths": [8, 8, 2, 32]}, r"svd_k \+ 3 = 4 student candidates"),
                               ({"train_fraction": 0}, r"train_fraction must be in \(0, 1\]"),
                               ({"lr_schedule": "poly"}, "lr_schedule must be one of step, cosine, constant"),
                               ({"lr_milestones": [0.8, 0.3]}, "lr_milestones must be increasing"),
                               ({"init_epochs": -1}, "init_epochs must be >= 0"),
                               ({"kd_alpha": 1.5}, r"kd_alpha must be in \[0, 1\]"),
                               ({"temperature": 4}, r"unknown config key\(s\) \['temperature'\]")]:
        with pytest.raises(ConfigError, match=message):
            build_config(KDConfig, overrides)
    with pytest.raises(ConfigError, match="blocks .* must be >= 1"):
        build_config(TeacherConfig, {"blocks": 0})
    # through the CLI: one line on stderr, exit status 2, nothing written
    out = REPO / "results" / "never" / "x.json"
    proc = subprocess.run([sys.executable, "-m", "papers.kd_svd", "run", "--scale", "smoke", "--setting", "kd_svd",
                           "--set", "method=kd", "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "method must be one of" in proc.stderr
    assert not out.exists()


def test_every_scale_names_a_teacher_that_fits_each_of_its_settings():
    from papers.kd_svd.__main__ import check_teacher

    for scale in ("smoke", "quick", "paper"):
        check_teacher(scale)
        assert "teacher" not in settings("kd_svd", scale)


def test_the_workflow_gives_kd_svd_runs_the_teacher_their_cli_reads_and_other_papers_nothing():
    from common import workflow
    from papers.kd_svd.__main__ import default_teacher_path

    assert workflow.run_teacher("kd_svd", "smoke", "3") == {"teacher": "results/smoke/kd_svd/teacher/seed3.pt"}
    assert str(default_teacher_path("results/smoke/kd_svd/kd_eid/seed3.json", 3)) == workflow.teacher_path(
        "kd_svd", "smoke", 3)
    assert workflow.run_teacher("gradient_dropping", "smoke", "0") == {}
    assert workflow.teacher_records("gradient_dropping", "smoke", None) == []
    assert workflow.teacher_records("kd_svd", "quick", None) == [
        f"results/quick/kd_svd/teacher/teacher-seed{k}.json" for k in (0, 1, 2)]
    assert workflow.teacher_papers() == ["kd_svd"]
    assert json.loads(workflow.teacher_settings("kd_svd", "smoke"))["blocks"] == 2   # the params trigger


# ----------------------------------------------------------------------------------- runs through the CLI (#15)
@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory):
    """The smoke teacher of seed 0, trained once through the CLI (`teacher`), at the workflow's path."""
    from papers.kd_svd.__main__ import main

    results = tmp_path_factory.mktemp("kd") / "results"
    path = results / "teacher" / "seed0.pt"
    assert main(["teacher", "--scale", "smoke", "--seed", "0", "--device", "cpu", "--out", str(path)]) == 0
    return results, path


@needs_cifar
@pytest.mark.parametrize("method", METHODS)
def test_the_teachers_weights_never_change_while_a_student_trains(smoke_teacher, method, monkeypatch, tmp_path):
    """Every method's student run (the real `train`) leaves the teacher it distils from exactly as loaded: its
    weights and its BN statistics (the teacher runs in eval mode, outside the optimiser)."""
    from papers.kd_svd.__main__ import main

    _, path = smoke_teacher
    loaded = {}
    real_load = kd_method.load_teacher

    def spy(*args, **kwargs):
        out = real_load(*args, **kwargs)
        loaded["teacher"] = out[0]
        return out

    monkeypatch.setattr(kd_method, "load_teacher", spy)
    out = tmp_path / "run.json"
    assert main(["run", "--scale", "smoke", "--setting", "kd_svd", "--set", f"method={method}", "--set", "epochs=1",
                 "--teacher", str(path), "--device", "cpu", "--out", str(out)]) == 0
    stored = torch.load(path, weights_only=True)["state_dict"]
    after = loaded["teacher"].state_dict()
    assert stored.keys() == after.keys()
    assert all(torch.equal(stored[k], after[k]) for k in stored)
    assert not loaded["teacher"].training and not any(p.requires_grad for p in loaded["teacher"].parameters())
    record = json.loads(out.read_text())
    assert record["summary"]["teacher_unchanged"] is True and record["config"]["method"] == method


@needs_cifar
def test_smoke_run_then_report(smoke_teacher):
    """`teacher` (the fixture), then `run` for a few smoke settings (in-process: the CLI's own main; the
    teacher found at the workflow's path from --out), then `report` from their records."""
    from papers.kd_svd.__main__ import main

    results, path = smoke_teacher
    for setting in SMOKE_SETTINGS:
        assert main(["run", "--scale", "smoke", "--setting", setting, "--seed", "0", "--device", "cpu",
                     "--out", str(results / setting / "seed0.json")]) == 0
    teacher = json.loads((results / "teacher" / "teacher-seed0.json").read_text())
    assert teacher["setting"] == "teacher" and 0 < teacher["summary"]["test_acc"] < 1
    record = json.loads((results / "kd_svd" / "seed0.json").read_text())
    s = record["summary"]
    assert record["config"]["teacher"]["path"] == str(path) and s["teacher_test_acc"] == teacher["summary"]["test_acc"]
    assert 0 <= s["final_agreement"] <= 1 and s["final_kl_teacher_student"] >= 0 and s["dist_loss_s"] > 0
    assert s["grad_ratio"] > 0 and s["best_test_acc"] >= s["final_test_acc"]
    pairs = s["relation_sample"]
    assert [p["points"] for p in pairs] == [[0, 1], [1, 2]]
    assert np_shape(pairs[1]["teacher"]) == np_shape(pairs[1]["student"]) == (32, 16)
    fsp = json.loads((results / "fsp" / "seed0.json").read_text())
    assert [h["stage"] for h in fsp["history"]] == ["init", "main", "main"]   # 1 initialisation epoch, then 2
    report = results.parent / "report"
    assert main(["report", "--scale", "smoke", "--results", str(results), "--out", str(report)]) == 0
    text = (report / "README.md").read_text()
    assert "scale | `smoke`" in text and "Claims" in text and "[README-KDTF]" in text
    claims = {c["id"]: c for c in json.loads((report / "claims.json").read_text())}
    assert claims["kd_svd_beats_student_small_data"]["n_seeds"] == 1
    assert claims["kd_svd_beats_hinton_small_data"]["verdict"] == "not run at this scale"
    assert claims["kd_eid_faster_per_step"]["verdict"] == "shown, not judged (illustrative)"
    for name in ("learning_curves_0", "grad_ratio", "accuracy_agreement", "relations", "cost"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 1000
    assert "teachers.csv" in {p.name for p in (report / "tables").iterdir()}


def test_over_ce_share_counts_main_stage_probes_after_the_first_epoch():
    from papers.kd_svd.figures import over_ce_share

    history = [{"stage": "init", "grad_ratio": 9.0}, {"stage": "main", "grad_ratio": 5.0},
               {"stage": "main", "grad_ratio": 0.5}, {"stage": "main", "grad_ratio": 2.0},
               {"stage": "main", "grad_ratio": 1.0}, {"stage": "main", "grad_ratio": 3.0}, {"stage": "main"}]
    assert over_ce_share(history) == 0.5            # 2.0 and 3.0 of [0.5, 2.0, 1.0, 3.0]
    assert math.isnan(over_ce_share([{"stage": "main", "train_loss": 1.0}]))


def np_shape(nested):
    return (len(nested), len(nested[0]))


@needs_cifar
def test_a_run_without_its_teacher_or_with_an_unfitting_one_is_a_clear_error(smoke_teacher, tmp_path, capsys):
    from papers.kd_svd.__main__ import main

    _, path = smoke_teacher
    out = tmp_path / "kd_svd" / "seed0.json"
    assert main(["run", "--scale", "smoke", "--setting", "kd_svd", "--out", str(out)]) == 2
    assert "no teacher at" in capsys.readouterr().err and not out.exists()
    assert main(["run", "--scale", "smoke", "--setting", "kd_svd", "--set", "widths=[8, 8, 16, 16]", "--teacher",
                 str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not fit this run (widths: student [8, 8, 16, 16], teacher [8, 8, 16, 32])" in err
    assert err.count("\n") == 1 and not out.exists()


# ------------------------------------------------------------------------------------------ the workflow (#15)
@pytest.mark.workflow
@needs_cifar
def test_kd_svd_workflow(tmp_path_factory):
    """The smoke report through Snakemake: the teacher is trained once (one job for the one smoke seed, before
    every student run of that seed, each of which distils it); a changed teacher config retrains the teacher and
    reruns its students."""
    from tests.test_workflow import SNAKEMAKE, check_report, copy_repo, run_workflow

    repo, work = copy_repo(tmp_path_factory.mktemp("repo")), tmp_path_factory.mktemp("work")
    proc = run_workflow("kd_svd", work, snakefile=repo / "Snakefile")
    jobs = job_counts(proc.stdout + proc.stderr)
    assert jobs["teacher"] == 1 and jobs["run"] == len(settings("kd_svd", "smoke"))
    out = work / "reports" / "smoke" / "kd_svd"
    check_report(out, ["learning_curves_0", "accuracy_agreement", "relations", "cost"])
    weights = work / "results" / "smoke" / "kd_svd" / "teacher" / "seed0.pt"
    teacher = json.loads((weights.parent / "teacher-seed0.json").read_text())
    for setting in settings("kd_svd", "smoke"):
        record_path = work / "results" / "smoke" / "kd_svd" / setting / "seed0.json"
        record = json.loads(record_path.read_text())
        assert record["config"]["teacher"]["path"] == "results/smoke/kd_svd/teacher/seed0.pt"
        assert record["summary"]["teacher_test_acc"] == teacher["summary"]["test_acc"]
        assert record_path.stat().st_mtime >= weights.stat().st_mtime
    base = [SNAKEMAKE, "-s", str(repo / "Snakefile"), "-d", str(work), "-c1", "reports/smoke/kd_svd", "--config",
            "scale=smoke"]
    spec_path = repo / "papers" / "kd_svd" / "experiments.yaml"
    good = spec_path.read_text()
    assert "blocks: 2, epochs: 1," in good
    spec_path.write_text(good.replace("blocks: 2, epochs: 1,", "blocks: 2, epochs: 2,"))   # the smoke teacher
    dry = job_counts(subprocess.run(base + ["-n"], capture_output=True, text=True).stdout)
    assert dry["teacher"] == 1 and dry["run"] == len(settings("kd_svd", "smoke"))


def job_counts(snakemake_output: str) -> dict:
    """{rule: jobs} from Snakemake's job-stats table."""
    counts = {}
    for line in snakemake_output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "count", "job"):
            counts[parts[0]] = int(parts[1])
    return counts
