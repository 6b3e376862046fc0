"""bf16 products that keep 16 mantissa bits: the kernels of the `"compensated"` precision.

A float32 tensor is split into two bf16 parts, `x = hi + lo` (relative error <= 2**-17), and a
product of two such tensors is the sum of three bf16 products accumulated in float32:

    a b  ~=  a_hi b_hi + a_hi b_lo + a_lo b_hi          (a_lo b_lo is 2**-18 of the product)

On CUDA each product is a bf16 tensor-core matmul with a float32 output
(`torch.mm(..., out_dtype=torch.float32)`); elsewhere the same bf16 parts are multiplied in
float32, which gives the same numbers up to summation order (bf16 values are exact in float32).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["addmm_f32_", "mm_f32", "split_bf16"]

_MM_OUT_DTYPE: dict[str, bool] = {}  # device type -> whether the out_dtype= matmuls run there
_ADDMM_INPLACE: dict[str, bool] = {}  # device type -> whether the accumulating form checked out


def split_bf16(x: Tensor) -> tuple[Tensor, Tensor]:
    """`x` (float32) as `hi + lo` with both parts bf16: 16 mantissa bits, relative error <= 2**-17.

    Values below bf16's smallest normal lose their low part (both parts are bf16 subnormals); the
    activations of a language model never get there.
    """
    hi = x.to(torch.bfloat16)
    lo = (x - hi.to(x.dtype)).to(torch.bfloat16)
    return hi, lo


def _fast(kind: str) -> bool:
    return _MM_OUT_DTYPE.get(kind, kind == "cuda")


def mm_f32(a: Tensor, w: Tensor) -> Tensor:
    """`a @ w.T` for bf16 `a` (M, K) and `w` (N, K), accumulated and returned in float32."""
    kind = a.device.type
    if _fast(kind):
        try:
            return torch.mm(a, w.t(), out_dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE[kind] = False  # this build lacks the kernel: multiply in float32
    # bf16 values are exact in float32, so this is the same product (TF32 is off here).
    return torch.mm(a.float(), w.float().t())


def addmm_f32_(y: Tensor, a: Tensor, w: Tensor, alpha: float = 1.0) -> Tensor:
    """`y += alpha * a @ w.T` in place (float32 `y`, bf16 `a`, `w`), without an output-sized
    temporary where the GPU kernel allows (the language-model head's output is the largest
    tensor of a forward)."""
    kind = a.device.type
    ok = _ADDMM_INPLACE.get(kind)
    if ok is None and kind == "cuda" and _fast(kind):
        # First use on this device: check the fused form against the plain one, once.
        try:
            trial = y.clone()
            torch.addmm(trial, a, w.t(), out_dtype=torch.float32, alpha=alpha, out=trial)
            ok = bool(torch.allclose(trial, y + alpha * mm_f32(a, w), rtol=1e-5, atol=1e-6))
        except (RuntimeError, TypeError, NotImplementedError):
            ok = False
        _ADDMM_INPLACE[kind] = ok
    if ok:
        return torch.addmm(y, a, w.t(), out_dtype=torch.float32, alpha=alpha, out=y)
    return y.add_(mm_f32(a, w), alpha=alpha)
