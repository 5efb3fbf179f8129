"""The editing math as pure functions over float64 tensors (DESIGN.md section 1).

Shapes: K is (d_in, n) keys as columns, R is (d_out, n) residuals as columns,
C is (d_in, d_in) the keys' second moment, lam is the covariance weight.
"""

from __future__ import annotations

import torch


def memit_delta(K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """Delta = R K^T (lam C + K K^T)^-1, shape (d_out, d_in)."""
    A = lam * C + K @ K.T                      # (d_in, d_in), symmetric positive definite
    return torch.linalg.solve(A, K @ R.T).T   # A^-1 K R^T, transposed


def d4s_delta(S: torch.Tensor, T: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """The D4S solution S (lam C + T)^-1 from the running sums S = sum r k^T, T = sum k k^T."""
    A = lam * C + T
    return torch.linalg.solve(A, S.T).T


def ridged(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """C + ridge * median(diag C) * I: a covariance that weighs every key direction at least a
    little, so a solve against it needs a smaller, less key-specific change (ridge 0: C). The
    median, not the mean: one massive activation can hold most of C's trace (SmolLM2's layer
    11: diagonal mean 25, median 0.02)."""
    if not ridge:
        return C
    return C + ridge * C.diagonal().median() * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)


def null_space_projector(C: torch.Tensor, keep: float) -> torch.Tensor:
    """P = U U^T over the eigenvectors of C with the smallest eigenvalues, ``keep`` of all
    d_in directions (AlphaEdit's null space of the preserved keys; keep = 1 is the identity)."""
    if keep >= 1:
        return torch.eye(C.shape[0], dtype=C.dtype)
    _, vectors = torch.linalg.eigh(C)                      # eigenvalues ascending
    U = vectors[:, :round(keep * C.shape[0])]
    return U @ U.T


def null_space_delta(S: torch.Tensor, T: torch.Tensor, P: torch.Tensor, alpha: float) -> torch.Tensor:
    """Null-space D4S: Delta = S P (T P + alpha I)^-1 from D4S's sums, the AlphaEdit solution
    min ||Delta K - R||^2 + alpha ||Delta||^2 over Delta = Delta P. T P is not symmetric, so
    this is an LU solve of the transposed system (P T + alpha I) Delta^T = P S^T."""
    A = P @ T + alpha * torch.eye(T.shape[0], dtype=T.dtype)
    return torch.linalg.solve(A, P @ S.T).T


def alphaedit_delta(K: torch.Tensor, R: torch.Tensor, T_before: torch.Tensor, P: torch.Tensor,
                    alpha: float) -> torch.Tensor:
    """AlphaEdit's sequential update of one batch: R K^T P (T_before P + K K^T P + alpha I)^-1,
    with T_before the earlier batches' keys (sum k k^T); added to the current weights."""
    return null_space_delta(R @ K.T, T_before + K @ K.T, P, alpha)


def outer_sums(K: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The terms one batch adds to D4S's sums: (R K^T, K K^T)."""
    return R @ K.T, K @ K.T


def realised_fraction(K: torch.Tensor, C: torch.Tensor, lam: float, T: torch.Tensor | None = None) -> torch.Tensor:
    """For each key k, a/(1+a) with a = k^T (lam C + T)^-1 k: the share of the wanted
    change that a single-key closed form realises at k. Shape (n,)."""
    A = lam * C if T is None else lam * C + T
    a = (K * torch.linalg.solve(A, K)).sum(dim=0)
    return a / (1 + a)


def spread_residual(z: torch.Tensor, h: torch.Tensor, layers_left: int) -> torch.Tensor:
    """MEMIT's share of the remaining residual for one layer: (z - h) / layers_left."""
    return (z - h) / layers_left
