"""Input Hessians of linear layers and their damped inverses.

For a linear layer ``Y = W X`` (``W``: out x in, ``X``: in x tokens) the layer-wise reconstruction
error ``||W X - Ŵ X||²`` has, per output row, the Hessian ``H = 2 X Xᵀ``. We accumulate the token
*sum* in float32 and divide by the token count once at the end (``H = 2/n · Σ x xᵀ``); the official
code normalises by the number of sequences instead, which only rescales ``H`` and therefore changes
nothing but the absolute error values (damping is relative to the mean diagonal).

Pure torch: nothing here knows about Hugging Face.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from typing import Optional, Union

import torch

logger = logging.getLogger(__name__)


class NotPositiveDefiniteError(ValueError):
    """The Hessian could not be made positive definite by damping."""


class HessianAccumulator:
    """Accumulates ``H = 2/n · Σ_tokens x xᵀ`` of a layer input, in float32.

    Args:
        columns: Input features of the layer.
        device: Where ``H`` lives (the block's device).
    """

    def __init__(self, columns: int, device: torch.device | str | None = None) -> None:
        self.columns = columns
        self.sum = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.sum_x = torch.zeros(columns, dtype=torch.float32, device=device)
        self.tokens = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Add a batch of inputs of shape ``(..., columns)``."""
        x = x.reshape(-1, x.shape[-1])
        if x.shape[-1] != self.columns:
            raise ValueError(f"expected inputs with {self.columns} features, got {x.shape[-1]}")
        if self.sum is None:
            raise RuntimeError("this accumulator's Hessian was taken (take_hessian); it cannot take more inputs")
        x = x.to(device=self.sum.device, dtype=torch.float32)
        self.sum.addmm_(x.T, x)
        self.sum_x.add_(x.sum(0))
        self.tokens += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """The normalised Hessian ``2/n · Σ x xᵀ`` (a new tensor)."""
        self._check()
        return self.sum * (2.0 / self.tokens)

    def take_hessian(self) -> torch.Tensor:
        """:meth:`hessian`, normalised in place: the accumulator hands over its sum, which saves one
        ``columns²`` matrix at the peak (256 MiB for an FFN of 8192). The values are those of :meth:`hessian`;
        afterwards only :meth:`mean` still works."""
        self._check()
        H, self.sum = self.sum.mul_(2.0 / self.tokens), None
        return H

    def _check(self) -> None:
        if self.sum is None:
            raise RuntimeError("this accumulator's Hessian was taken (take_hessian); it holds no sum any more")
        if self.tokens == 0:
            raise ValueError("no calibration tokens reached this layer: the Hessian is empty")

    def mean(self) -> torch.Tensor:
        """Mean input vector over the tokens seen."""
        if self.tokens == 0:
            raise ValueError("no calibration tokens reached this layer")
        return self.sum_x / self.tokens

    def covariance(self) -> torch.Tensor:
        """Covariance of the inputs over tokens, ``E[x xᵀ] − μ μᵀ``."""
        self._check()
        mu = self.mean()
        return self.sum / self.tokens - torch.outer(mu, mu)


class SquareSumAccumulator:
    """Per-feature sums of squares ``Σ_tokens x_j²`` of a layer input, in float32."""

    def __init__(self, columns: int, device: torch.device | str | None = None) -> None:
        self.sum = torch.zeros(columns, dtype=torch.float32, device=device)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sum.add_((x * x).sum(0))


@contextlib.contextmanager
def full_precision_matmul():
    """Float32 matmuls in full IEEE precision inside the block (TF32 off), restored afterwards.

    With TF32 (``torch.set_float32_matmul_precision("high")``, a common speed setting on Ampere+ GPUs) the
    Hessian products and OBS solves keep a 10-bit mantissa, which changes which heads and channels win and
    the compensated weights. Models in bf16/fp16 are unaffected (their matmuls never use TF32).
    """
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def all_finite(A: torch.Tensor, rows: int = 1024) -> bool:
    """``torch.isfinite(A).all()`` by row blocks (no d x d temporaries)."""
    if A.dim() == 0 or A.shape[0] <= rows:
        return bool(torch.isfinite(A).all())
    return all(bool(torch.isfinite(A[i:i + rows]).all()) for i in range(0, A.shape[0], rows))


def affine_hessian(H: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The Hessian of the inputs augmented with a constant 1: ``[[H, 2μ], [2μᵀ, 2]]`` (``(d+1) x (d+1)``).

    With ``H = 2/n Σ x xᵀ`` and ``μ = 1/n Σ x`` this is ``2/n Σ [x; 1][x; 1]ᵀ``: the last column is the input
    that multiplies an output bias (see ``docs/algorithms.md``, *Affine OBS compensation*).
    """
    d = H.shape[0]
    if mean.shape != (d,):
        raise ValueError(f"the input mean has shape {tuple(mean.shape)}, expected ({d},)")
    Ha = H.new_zeros(d + 1, d + 1)
    Ha[:d, :d] = H
    m = 2 * mean.to(H)
    Ha[:d, d] = m
    Ha[d, :d] = m
    Ha[d, d] = 2
    return Ha


def damped_inverse(
    H: torch.Tensor,
    damp_percent: float = 0.01,
    *,
    max_tries: int = 8,
    growth: float = 10.0,
    name: str = "layer",
    constant_last: bool = False,
    overwrite: bool = False,
    spill_dir: Optional[Union[str, os.PathLike]] = None,
) -> tuple[torch.Tensor, float]:
    """Return ``(H + λI)⁻¹`` via Cholesky, and the damping ``λ`` that was used.

    ``λ = damp_percent · mean(diag H)``. Dead inputs (``H_jj = 0``: a feature that is zero on every
    calibration token) get ``H_jj = 1`` first, as in the official code, so they neither break the
    factorisation nor couple to other columns. If the damped matrix is still not positive definite
    (too few tokens, nearly collinear inputs, fp32 round-off), the damping is multiplied by
    ``growth`` and retried, with a warning; only when that cannot help (non-finite values, an all-zero
    Hessian, or ``max_tries`` exhausted) a :class:`NotPositiveDefiniteError` is raised.

    ``constant_last``: ``H`` is an :func:`affine_hessian`; its last row/column (the constant input) is left
    undamped and out of the mean diagonal, so ``λ`` is the plain Hessian's (the augmented matrix stays positive
    definite: its Schur complement ``2 − 4μᵀ(H_xx + λI)⁻¹μ`` is positive whenever ``H_xx + λI`` is).

    ``overwrite``: factorise and invert in ``H``'s own storage, so the solve holds one ``d x d`` matrix instead of
    two (the low-memory path: 256 MiB less for an FFN of 8192). ``H`` is then the returned inverse; its values are
    first written to a temporary file in ``spill_dir`` (the system's temporary folder when ``None``), read back only
    if a factorisation fails and has to be retried with more damping, and deleted on return. The result is
    bit-identical to ``overwrite=False``. Only a float32/float64 contiguous ``H`` can be overwritten; any other is
    copied as without ``overwrite``.
    """
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"{name}: Hessian must be square, got {tuple(H.shape)}")
    if not all_finite(H):
        raise NotPositiveDefiniteError(
            f"{name}: the Hessian contains NaN or Inf: the layer inputs are not finite "
            "(NaN/Inf in the model weights or activations?)"
        )
    # Memory: besides the caller's H, one d x d matrix at any time (the damped copy, factorised and inverted in
    # place); the values are those of cholesky_inverse(cholesky(H' + damp I)), H' = H with dead diagonals set to 1
    # (with ``constant_last``, the constant's row and column take no damping and do not count in the mean).
    dt = torch.promote_types(H.dtype, torch.float32)  # float32 (float64 stays float64: tests)
    n = H.shape[0] - 1 if constant_last else H.shape[0]
    diag = H.diagonal()[:n].to(dt)
    dead = diag == 0
    if bool(dead.all()):
        raise NotPositiveDefiniteError(
            f"{name}: every input feature is zero on all calibration tokens; nothing can be estimated"
        )
    diag = torch.where(dead, torch.ones_like(diag), diag)
    mean = float(diag.mean())
    damp = damp_percent * mean
    info = torch.empty((), dtype=torch.int32, device=H.device)
    in_place = overwrite and H.dtype == dt and H.is_contiguous()
    spill = _Spill(H, spill_dir) if in_place else None
    try:
        for attempt in range(max_tries):
            if in_place:
                A = H
                if attempt:
                    spill.restore(A)  # type: ignore[union-attr]
            else:
                A = H.to(dt, copy=True)
            A.diagonal()[:n].copy_(diag + damp if damp > 0 else diag)
            F = A.mT  # A is symmetric: its transpose is the column-major matrix LAPACK works on, so no copy is made
            torch.linalg.cholesky_ex(F, out=(F, info))  # F = L (lower triangle), in place
            if int(info) == 0:
                torch.cholesky_inverse(F, out=F)  # F = (L Lᵀ)⁻¹, symmetric, in place
                if all_finite(A):
                    return A, damp
            del A, F
            new = damp * growth if damp > 0 else 1e-6 * mean
            warnings.warn(
                f"{name}: Hessian not positive definite with damping {damp:.3g} "
                f"({damp / mean:.2%} of its mean diagonal); retrying with {new:.3g}",
                RuntimeWarning,
                stacklevel=2,
            )
            damp = new
    finally:
        if spill is not None:
            spill.close()
    raise NotPositiveDefiniteError(
        f"{name}: the Hessian is not positive definite even with damping {damp:.3g} "
        f"({damp / mean:.0%} of its mean diagonal); use more calibration tokens (num_samples x seqlen)"
    )


class _Spill:
    """A square matrix's values in an anonymous temporary file (written and read by row blocks, so no second copy
    is ever in memory), for :func:`damped_inverse` ``overwrite=True``."""

    def __init__(self, A: torch.Tensor, folder: Optional[Union[str, os.PathLike]], rows: int = 256) -> None:
        self.rows = rows
        self.file = tempfile.TemporaryFile(dir=None if folder is None else os.fspath(folder), prefix="hessian-")
        try:
            for i in range(0, A.shape[0], rows):
                self.file.write(A[i:i + rows].cpu().numpy().tobytes())
            self.file.flush()
        except BaseException:
            self.file.close()
            raise

    def restore(self, A: torch.Tensor) -> None:
        self.file.seek(0)
        width = A.shape[1] * A.element_size()
        for i in range(0, A.shape[0], self.rows):
            k = min(self.rows, A.shape[0] - i)
            buf = bytearray(self.file.read(k * width))
            A[i:i + k].copy_(torch.frombuffer(buf, dtype=A.dtype).view(k, A.shape[1]))

    def close(self) -> None:
        self.file.close()
