"""KD-SVD's distillation loss and multi-task gradient rule, and the baselines' losses (Hinton KD, FitNets,
FSP, attention transfer).

Shapes: B batch, C channels, H×W spatial size (feature maps [B, C, H, W], PyTorch's layout), K teacher
singular vectors, K + 3 student candidates.

KD-SVD (KD_methods_with_TF nets/Shared.py::KD_SVD; KD-EID is the same with route "eid"), per point l:

    σ_T, V_T  the teacher map's K leading singular values and right singular vectors     [B, K], [B, C, K]
    V_S       the student map's K + 3 leading right singular vectors                      [B, C, K + 3]
    V_S <- Align_rsv(V_S, V_T): per teacher vector, the candidate of largest |cos|, times sign(cos)  [B, C, K]
    V_T, V_S <- V_T σ_T, V_S σ_T        (σ_T L2-normalised over its K values: 1 when K = 1)
    R_l[b, i, j, κ] = exp(−(V_l[b, i, κ] − V_{l−1}[b, j, κ])² / 8)          l ≥ 1, [B, C_l, C_{l−1}, K]
    loss = Σ_{l ≥ 1} Σ_{b, i, j, κ} (R_S,l − R_T,l)²         (summed over the batch; non-finite terms zeroed)

Teacher and student need the same channel count at each point (for V_Sᵀ V_T), not the same spatial size.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from papers.kd_svd.svd import ROUTES, feature_matrix, truncated_svd, zero_nonfinite

K_TEACHER = 1            # Shared.py::KD_SVD: K = 1 teacher vector ...
EXTRA_CANDIDATES = 3     # ... and K + 3 student candidates
RBF_SCALE = 8.0          # exp(−d² / 8)
KD_TEMPERATURE = 4.0     # nets/ResNet.py: Response.Soft_logits(logits, logits_tch, 4)
AT_BETA = 1e3            # Multiple.py::Attention_transfer and Zagoruyko & Komodakis: β = 1000, loss β/2 Σ


# ----------------------------------------------------------------------------------------------------- checks
def check_maps(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
               min_points: int = 1, same_channels: bool = False, same_spatial: bool = False) -> None:
    """ValueError unless both lists hold >= min_points [B, C, H, W] maps, pairwise, of one batch size."""
    if len(student_maps) != len(teacher_maps) or len(student_maps) < min_points:
        raise ValueError(f"need as many student as teacher maps, at least {min_points}: got "
                         f"{len(student_maps)} student and {len(teacher_maps)} teacher maps")
    B = student_maps[0].shape[0]
    for l, (f_s, f_t) in enumerate(zip(student_maps, teacher_maps)):
        if f_s.ndim != 4 or f_t.ndim != 4:
            raise ValueError(f"point {l}: maps must be [B, C, H, W], got {tuple(f_s.shape)} (student) and "
                             f"{tuple(f_t.shape)} (teacher)")
        if f_s.shape[0] != B or f_t.shape[0] != B:
            raise ValueError(f"point {l}: batch sizes differ (student {f_s.shape[0]}, teacher "
                             f"{f_t.shape[0]}, first student map {B})")
        if same_channels and f_s.shape[1] != f_t.shape[1]:
            raise ValueError(f"point {l}: the student has {f_s.shape[1]} channels, the teacher "
                             f"{f_t.shape[1]}; this loss needs them equal")
        if same_spatial and f_s.shape[2:] != f_t.shape[2:]:
            raise ValueError(f"point {l}: spatial sizes differ (student {tuple(f_s.shape[2:])}, teacher "
                             f"{tuple(f_t.shape[2:])})")


def max_rank(fmap: torch.Tensor) -> int:
    """min(HW, C) of a [B, C, H, W] map: how many singular vectors its [HW, C] matrix has."""
    return min(fmap.shape[2] * fmap.shape[3], fmap.shape[1])


def check_k(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor], k: int) -> None:
    """ValueError unless k >= 1, k <= min(HW, C) of each teacher map and k + 3 <= that of each student map."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (the teacher's singular vectors) must be a positive int, got {k!r}")
    for l, (f_s, f_t) in enumerate(zip(student_maps, teacher_maps)):
        if k + EXTRA_CANDIDATES > max_rank(f_s) or k > max_rank(f_t):
            raise ValueError(f"point {l}: k = {k} needs min(HW, C) >= {k + EXTRA_CANDIDATES} for the student "
                             f"(has {max_rank(f_s)}) and >= {k} for the teacher (has {max_rank(f_t)})")


# ----------------------------------------------------------------------------------------------------- KD-SVD
def align_rsv(V_S: torch.Tensor, V_T: torch.Tensor) -> torch.Tensor:
    """SVP.py::Align_rsv: per teacher vector, the student candidate of largest |cos|, times sign(cos).
    V_S [B, C, K + 3], V_T [B, C, K] -> [B, C, K]; candidates tied for the largest |cos| are summed, as
    there."""
    cos = (V_S.mT @ V_T).detach()                                                  # [B, K + 3, K]
    best = cos.abs() == cos.abs().amax(dim=1, keepdim=True)
    return V_S @ torch.where(best, torch.sign(cos), 0.0)                           # [B, C, K]


def singular_knowledge(f_s: torch.Tensor, f_t: torch.Tensor, k: int, route: str):
    """Shared.py::KD_SVD, scope 'Compress_feature_map': the aligned student vectors and the teacher's, both
    weighted by the teacher's normalised singular values, ([B, C, K], [B, C, K])."""
    sigma_T, V_T = truncated_svd(feature_matrix(f_t), k, route)                   # [B, K], [B, C, K]
    _, V_S = truncated_svd(feature_matrix(f_s), k + EXTRA_CANDIDATES, route)       # [B, C, K + 3]
    V_S = align_rsv(V_S, V_T)                                                      # [B, C, K]
    weight = sigma_T.unsqueeze(1)                                                  # [B, 1, K]
    return V_S * weight, V_T * weight


def rbf_relation(V: torch.Tensor, V_prev: torch.Tensor) -> torch.Tensor:
    """Shared.py::KD_SVD, scope 'RBF': exp(−(V[b, i, κ] − V_prev[b, j, κ])² / 8), [B, C_l, C_{l−1}, K]."""
    return torch.exp(-(V.unsqueeze(2) - V_prev.unsqueeze(1)).square() / RBF_SCALE)


def kd_svd_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
                k: int = K_TEACHER, route: str = "svd") -> torch.Tensor:
    """Shared.py::KD_SVD(student_feature_maps, teacher_feature_maps, dist_type): Σ_l Σ (R_S,l − R_T,l)² over
    consecutive distillation points (see the module docstring); route "svd" is KD-SVD, "eid" KD-EID. No
    gradient reaches the teacher's maps (tf.stop_gradient(T_rbf))."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    check_maps(student_maps, teacher_maps, min_points=2, same_channels=True)
    check_k(student_maps, teacher_maps, k)
    loss, previous = student_maps[0].new_zeros(()), None
    for f_s, f_t in zip(student_maps, teacher_maps):
        V_S, V_T = singular_knowledge(f_s, f_t.detach(), k, route)
        if previous is not None:
            R_S = rbf_relation(V_S, previous[0])                                  # [B, C_l, C_l-1, K]
            R_T = rbf_relation(V_T, previous[1])
            loss = loss + zero_nonfinite((R_S - R_T).square()).sum()
        previous = V_S, V_T
    return loss


# -------------------------------------------------------------------------------------------- multi-task rule
def sigmoid_ramp(epoch: int) -> float:
    """op_util.py::sigmoid(epoch, 0): 1 / (1 + e^(−epoch)), set to 1 once above 1 − 1e-8. `epoch` counts the
    completed epochs from 0 (train_w_distill.py: floor(step · batch / dataset size)): 0.5 at the start."""
    s = 1.0 / (1.0 + math.exp(-epoch))
    return 1.0 if s > 1 - 1e-8 else s


def clip_by_norm(g: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """tf.clip_by_norm: g · bound / max(‖g‖, bound), so g is unchanged when ‖g‖ <= bound (0 if both are 0)."""
    scale = bound / torch.maximum(torch.linalg.vector_norm(g), bound).clamp_min(torch.finfo(g.dtype).tiny)
    return g * scale


def multitask_gradients(g_task: Sequence[torch.Tensor | None], g_decay: Sequence[torch.Tensor | None],
                        g_dist: Sequence[torch.Tensor | None], epoch: int) -> list[torch.Tensor | None]:
    """op_util.py::Optimizer_w_Distillation, branch 'KD-': per parameter tensor,

        g = g_task + g_decay + clip_by_norm(g_dist, ‖g_task‖ · sigmoid(epoch)),

    from three gradient lists computed separately (cross-entropy, weight decay, distillation), None where a
    loss does not reach the tensor (counted as 0). The distillation gradient never exceeds the task's."""
    if not len(g_task) == len(g_decay) == len(g_dist):
        raise ValueError(f"the three gradient lists must be as long: got {len(g_task)}, {len(g_decay)} and "
                         f"{len(g_dist)}")
    ramp = sigmoid_ramp(epoch)
    combined = []
    for gc, gw, gd in zip(g_task, g_decay, g_dist):
        terms = [g for g in (gc, gw) if g is not None]
        if gd is not None:
            task_norm = torch.linalg.vector_norm(gc) if gc is not None else gd.new_zeros(())
            terms.append(clip_by_norm(gd, task_norm * ramp))
        combined.append(sum(terms[1:], terms[0]) if terms else None)
    return combined


# -------------------------------------------------------------------------------------------------- baselines
def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float = KD_TEMPERATURE) -> torch.Tensor:
    """Hinton et al. (2015): T² · KL(softmax(z_T / T) ‖ softmax(z_S / T)), mean over the batch, logits
    [B, classes]: torchdistill KDLoss's soft term times T² (Response.py::Soft_logits has no T², and weights
    it 0.3 against 0.7 cross-entropy)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit shapes differ: student {tuple(student_logits.shape)}, teacher "
                         f"{tuple(teacher_logits.shape)}")
    log_p_S = F.log_softmax(student_logits / temperature, dim=1)
    p_T = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_p_S, p_T, reduction="batchmean")


def hint_regressors(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """FitNets' regressors r_l, trained with the student: a 1×1 convolution without bias from the student's
    channels to the teacher's, or the identity where they agree (Multiple.py::FitNet maps only then)."""
    if len(student_channels) != len(teacher_channels):
        raise ValueError(f"need as many student as teacher channel counts: {len(student_channels)} and "
                         f"{len(teacher_channels)}")
    return nn.ModuleList(nn.Identity() if c_s == c_t else nn.Conv2d(c_s, c_t, 1, bias=False)
                         for c_s, c_t in zip(student_channels, teacher_channels))


def fitnets_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
                 regressors: nn.ModuleList) -> torch.Tensor:
    """Romero et al. (2015), as Multiple.py::FitNet: Σ_l mean((r_l(F_S,l) − F_T,l)²), the mean over all
    entries (torchdistill: MSELoss on the regressor's output)."""
    check_maps(student_maps, teacher_maps, same_spatial=True)
    if len(regressors) != len(student_maps):
        raise ValueError(f"need one regressor per point: {len(regressors)} for {len(student_maps)} points")
    return sum(F.mse_loss(r(f_s), f_t.detach())
               for r, f_s, f_t in zip(regressors, student_maps, teacher_maps))


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Yim et al. (2017): G[b, i, j] = Σ_{h,w} F1[b, i, h, w] F2[b, j, h, w] / (h w), [B, C1, C2], the larger
    map max-pooled to the smaller's size first (Shared.py::FSP pools the earlier map 2×2)."""
    size = (min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3]))
    first, second = F.adaptive_max_pool2d(first, size), F.adaptive_max_pool2d(second, size)
    return first.flatten(2) @ second.flatten(2).mT / (size[0] * size[1])


def fsp_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Yim et al. (2017) with λ = 1: Σ_l mean_b ‖G_T,l − G_S,l‖²_F over consecutive points (l, l + 1).
    Shared.py::FSP is this times 1e-3 / 2 (a weight left to the caller)."""
    check_maps(student_maps, teacher_maps, min_points=2, same_channels=True)
    loss = student_maps[0].new_zeros(())
    for l in range(len(student_maps) - 1):
        G_S = fsp_matrix(student_maps[l], student_maps[l + 1])                    # [B, C_l, C_l+1]
        G_T = fsp_matrix(teacher_maps[l].detach(), teacher_maps[l + 1].detach())
        loss = loss + (G_T - G_S).square().sum((1, 2)).mean()
    return loss


def attention_map(fmap: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017), p = 2: the channel mean of F², flattened and L2-normalised, [B, HW]."""
    return F.normalize(fmap.square().mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
                            beta: float = AT_BETA) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017, their code) and Multiple.py::Attention_transfer:
    β/2 Σ_l mean((Q_S,l − Q_T,l)²)."""
    check_maps(student_maps, teacher_maps, same_spatial=True)
    return beta / 2 * sum((attention_map(f_s) - attention_map(f_t.detach())).square().mean()
                          for f_s, f_t in zip(student_maps, teacher_maps))
