"""Float tolerances derived from the numbers, not from one CPU.

A bound such as ``err < 1e-9`` that holds on the machine that wrote it fails on another CPU (other BLAS kernels,
blocking and thread counts sum in another order). Every float comparison in the suite takes its tolerance from
here, from the problem's own scale and conditioning:

* :func:`gamma` is the classical rounding bound ``γ_n = n·u / (1 − n·u)`` (Higham, *Accuracy and Stability of
  Numerical Algorithms*, §3.1), ``u`` the unit roundoff of the dtype. A sum or dot product of ``n`` terms computed in
  *any* order is off by at most ``γ_n`` times the sum of the terms' absolute values: :func:`matmul_bound`.
* :func:`solve_tol` bounds the error of a solution of a linear (least-squares / OBS) problem of size ``n``
  computed by a backward-stable method: ``safety · n · κ(H) · u · scale`` (the first-order perturbation bound
  ``‖Δx‖/‖x‖ ≲ κ · backward error``, with ``n·u`` as the backward error and ``safety = 10`` for the constant).
* :func:`logits64` runs a model in float64 (restoring its dtypes after), for the tests that check that two models
  compute *the same function* (saved vs loaded, sliced vs masked, per-layer vs padded, cached vs uncached). Two
  float64 evaluations of one forward pass in different orders differ by about ``d · L · u64 ≈ 1e-13`` relative
  (``d ≤ 1536``, ``L ≤ 30`` here), but transformers' RMSNorms (Llama, Gemma, ...) compute in float32 even for
  float64 inputs, so a float64 forward still rounds to float32 inside its norms. Values that differ by ~1e-16
  round the same way at almost every norm; a rare different rounding moves the logits by about
  ``u32 ≈ 6e-8`` relative. :func:`assert_same_function` allows ``SAME_FUNCTION_RTOL = 1e-6`` of the largest
  ``|logit|``: a handful of such roundings, while any real difference between the models (a weight missing,
  moved, or rounded to bf16/fp16, whose relative errors are 4e-3 / 5e-4) moves the logits by 1e-4 or more.

Quantities compared in float32 on real models (perplexities, losses) use relative tolerances stated where they
are used, derived from ``u32`` and the number of terms summed.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

#: two float64 forward passes of the same function agree to this, relative to the largest |logit| (module doc)
SAME_FUNCTION_RTOL = 1e-6


def unit_roundoff(dtype: torch.dtype = torch.float32) -> float:
    """``u = eps / 2``: the largest relative rounding error of one operation in ``dtype``."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """``γ_n = n·u/(1 − n·u)``: bound on the relative error of a sum of ``n`` terms, in any summation order."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"n={n} is too large for the rounding bound in {dtype}")
    return nu / (1 - nu)


def matmul_bound(A: torch.Tensor, B: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Elementwise bound on ``|fl(A @ B) − A @ B|``: ``γ_k · |A| @ |B|`` (``k`` the inner dimension), evaluated in
    float64. Holds whatever the kernel's blocking, vectorisation or thread count."""
    A64, B64 = A.detach().double().abs(), B.detach().double().abs()
    return gamma(A.shape[-1], dtype) * (A64 @ B64)


def cond(H: torch.Tensor) -> float:
    """2-norm condition number of a symmetric matrix, in float64."""
    ev = torch.linalg.eigvalsh(H.detach().double())
    return float(ev.abs().max() / ev.abs().min())


def solve_tol(H: torch.Tensor, scale: float, dtype: torch.dtype = torch.float64, safety: float = 10.0) -> float:
    """Absolute tolerance for a solution of size ``n = H.shape[0]`` (OBS update, least squares) computed in
    ``dtype`` by a backward-stable method: ``safety · n · κ(H) · u · scale`` (module docstring)."""
    return safety * H.shape[0] * cond(H) * unit_roundoff(dtype) * float(scale)


@contextlib.contextmanager
def float64(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` in float64 inside the block; every floating parameter and buffer gets its dtype back after
    (a float32/bf16/fp16 value survives the round trip through float64 exactly)."""
    saved = {name: t.dtype for name, t in list(model.named_parameters()) + list(model.named_buffers())
             if t.is_floating_point()}
    model.double()
    try:
        yield model
    finally:
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name in saved and t.dtype != saved[name]:
                t.data = t.data.to(saved[name])


@torch.no_grad()
def logits64(model: torch.nn.Module, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """The model's logits for ``ids`` computed in float64 (the model keeps its dtypes)."""
    with float64(model):
        return model(ids, **kwargs).logits.double()


def assert_same_function(got: torch.Tensor, ref: torch.Tensor, rtol: float = SAME_FUNCTION_RTOL) -> None:
    """``got`` and ``ref`` (float64 logits of two models) agree to ``rtol`` times the largest ``|ref|``."""
    got, ref = got.double(), ref.double()
    atol = rtol * max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(got, ref, rtol=0, atol=atol)
