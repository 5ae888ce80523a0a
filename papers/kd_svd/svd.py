"""Thin SVD of a batch of feature matrices, with a backward that stays finite on degenerate spectra.

A feature map [B, C, H, W] is read as X [B, N, C]: N = HW rows (positions), C columns (channels), and
k = min(N, C). `thin_svd(X, route)` returns U [B, N, k], S [B, k] (descending) and V [B, C, k] with
X = U diag(S) Vᵀ:

- route "svd" (KD-SVD; KD_methods_with_TF nets/SVP.py::SVD): torch.linalg.svd.
- route "eid" (KD-EID; nets/SVP.py::SVD_eid): an eigendecomposition of the smaller Gram matrix. When N ≥ C,
  XᵀX = V S² Vᵀ [C, C], then U = XV / ‖XV‖ and S = ‖XV‖ (per column); when N < C, XXᵀ = U S² Uᵀ [N, N],
  then V = XᵀU / ‖XᵀU‖. The plain SVD only when 2/3 < N/C < 3/2, where no Gram matrix is much smaller.

Both routes share one backward, `svd_backward`: the exact gradient of the thin SVD (Ionescu, Vantzos and
Sminchisescu, ICCV 2015; Townsend 2016), masked as the official `gradient_svd` (nets/SVP.py, the `Svd_`
override; SSKD_SVD nets/Distillation.py::gradient_svd): every 1/(σ_j² − σ_i²) of a gap below rounding error
(repeated singular values) and every 1/σ of a zero singular value is replaced by 0, so ReLU maps with dead
channels give finite gradients. Non-finite entries of U, S and V are zeroed, as the official `removenan`.

Deviations from KD_methods_with_TF, each checked numerically: its gradient_svd is twice the exact gradient
when N ≥ C (its msym is X + Xᵀ, where SSKD_SVD's halves it) and is not the gradient when N < C; the exact one
is used here (SSKD_SVD's gradient_svd computes it). Its SVD_eid runs the plain-SVD branch on
tf.stop_gradient(x), so no gradient reaches the student there; here it does. It factors XXᵀ (N < C) with
tf.svd, here with eigh (the same factors for a symmetric PSD matrix). Gaps below eps·σ_max² are masked, not
only exact ties, so near-ties give no gradient of ~1/eps. Decompositions run on the input's device (the
official code pins them to the CPU).
"""
from __future__ import annotations

import torch

ROUTES = ("svd", "eid")
EID_SVD_RANGE = (2 / 3, 3 / 2)   # SVD_eid: the plain SVD when 2/3 < N/C < 3/2 (strict), else a Gram matrix


def feature_matrix(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, HW, C], the official reshape of an NHWC map to [B, HW, C]."""
    return fmap.flatten(2).mT


def zero_nonfinite(x: torch.Tensor) -> torch.Tensor:
    """SVP.py::removenan: NaN and ±inf entries set to 0."""
    return torch.where(torch.isfinite(x), x, 0.0)


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """tf.nn.l2_normalize: x / sqrt(max(Σ x², 1e-12)) along `dim` (a zero vector stays zero)."""
    return x * torch.rsqrt(x.square().sum(dim, keepdim=True).clamp_min(1e-12))


def masked_reciprocal(x: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """1/x where |x| > tol, else 0."""
    keep = x.abs() > tol
    return torch.where(keep, 1.0 / torch.where(keep, x, 1.0), 0.0)


# ------------------------------------------------------------------------------------------------- the routes
def _svd(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)   # [B, N, k], [B, k], [B, k, C]
    return U, S, Vh.mT


def _eid(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVP.py::SVD_eid's decomposition. eigh's ascending eigenvectors are flipped to descending order (the
    official flip_left_right). The columns of a zero singular value are 0/0, zeroed by the caller."""
    N, C = X.shape[-2:]
    if EID_SVD_RANGE[0] < N / C < EID_SVD_RANGE[1]:
        return _svd(X)
    if N >= C:
        V = torch.linalg.eigh(X.mT @ X).eigenvectors.flip(-1)    # [B, C, C]
        XV = X @ V                                               # [B, N, C]
        S = torch.linalg.vector_norm(XV, dim=-2)                 # [B, C]
        return XV / S.unsqueeze(-2), S, V
    U = torch.linalg.eigh(X @ X.mT).eigenvectors.flip(-1)        # [B, N, N]
    XtU = X.mT @ U                                               # [B, C, N]
    S = torch.linalg.vector_norm(XtU, dim=-2)                    # [B, N]
    return U, S, XtU / S.unsqueeze(-2)


DECOMPOSITIONS = {"svd": _svd, "eid": _eid}


# ----------------------------------------------------------------------------------------------- the backward
def svd_backward(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor,
                 gU: torch.Tensor, gS: torch.Tensor, gV: torch.Tensor) -> torch.Tensor:
    """dL/dX [B, N, C] from the cotangents gU, gS, gV of U [B, N, k], S [B, k], V [B, C, k], X = U S Vᵀ:

        dL/dX = U [(F ∘ (UᵀgU − gUᵀU)) S + S (F ∘ (VᵀgV − gVᵀV)) + diag(gS)] Vᵀ
                + (I − UUᵀ) gU S⁻¹ Vᵀ   (if N > k)   + U S⁻¹ gVᵀ (I − VVᵀ)   (if C > k),

    F_ij = 1/(σ_j² − σ_i²), set to 0 on the diagonal and where |σ_j² − σ_i²| <= eps·σ_max²; S⁻¹ set to 0
    where σ <= eps·σ_max (official gradient_svd: inf and NaN entries of 1/(σ_i² − σ_j²) zeroed)."""
    N, C, k = U.shape[-2], V.shape[-2], S.shape[-1]
    eps = torch.finfo(S.dtype).eps
    S_max = S.amax(-1, keepdim=True)                                               # [B, 1]
    S2 = S.square()
    F_ = masked_reciprocal(S2.unsqueeze(-2) - S2.unsqueeze(-1),
                           eps * S_max.square().unsqueeze(-1))                     # [B, k, k]
    S_inv = masked_reciprocal(S, eps * S_max)                                      # [B, k]
    UtgU, VtgV = U.mT @ gU, V.mT @ gV                                              # [B, k, k]
    inner = ((F_ * (UtgU - UtgU.mT)) * S.unsqueeze(-2) + S.unsqueeze(-1) * (F_ * (VtgV - VtgV.mT))
             + torch.diag_embed(gS))                                               # [B, k, k]
    gX = U @ inner @ V.mT                                                          # [B, N, C]
    if N > k:
        gX = gX + ((gU - U @ UtgU) * S_inv.unsqueeze(-2)) @ V.mT
    if C > k:
        gX = gX + U @ ((gV - V @ VtgV) * S_inv.unsqueeze(-2)).mT
    return gX


class _ThinSVD(torch.autograd.Function):
    """(U, S, V) of X by one route, with `svd_backward` (official: the `Svd_` gradient override for SVD, and
    the Defun SVP.py::SVD_grad_map with the same gradient for SVD_eid)."""

    @staticmethod
    def forward(ctx, X, route):
        U, S, V = (zero_nonfinite(t) for t in DECOMPOSITIONS[route](X))
        ctx.save_for_backward(U, S, V)
        return U, S, V

    @staticmethod
    def backward(ctx, gU, gS, gV):
        return svd_backward(*ctx.saved_tensors, gU, gS, gV), None


def check_matrix(X: torch.Tensor, route: str) -> None:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if X.ndim != 3 or not X.is_floating_point():
        raise ValueError(f"X must be a floating [B, N, C] tensor, got {X.dtype} of shape {tuple(X.shape)}")


def thin_svd(X: torch.Tensor, route: str = "svd") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U [B, N, k], S [B, k], V [B, C, k] of X [B, N, C] by `route` ("svd" or "eid"), k = min(N, C)."""
    check_matrix(X, route)
    return _ThinSVD.apply(X, route)


def truncated_svd(X: torch.Tensor, n: int, route: str = "svd") -> tuple[torch.Tensor, torch.Tensor]:
    """The tail of the official SVP.py::SVD and SVD_eid: the n leading singular values, L2-normalised over
    the n values, [B, n], and right singular vectors, each L2-normalised, [B, C, n]. (U is not returned:
    KD_SVD never uses it.)"""
    check_matrix(X, route)
    k = min(X.shape[-2:])
    if not 1 <= n <= k:
        raise ValueError(f"cannot keep {n} singular vectors of a [B, {X.shape[-2]}, {X.shape[-1]}] matrix: "
                         f"need 1 <= n <= min(HW, C) = {k}")
    _, S, V = thin_svd(X, route)
    return l2_normalize(S[:, :n], 1), l2_normalize(V[..., :n], 1)
