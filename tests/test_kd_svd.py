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
