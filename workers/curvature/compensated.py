"""bf16 products that keep 16 mantissa bits: the kernels of the `"compensated"` precision.

A float32 tensor is split into two bf16 parts, `x = hi + lo` (relative error <= 2**-17), and a
product of two such tensors is the sum of three bf16 products accumulated in float32:

    a b  ~=  a_hi b_hi + a_hi b_lo + a_lo b_hi          (a_lo b_lo is 2**-18 of the product)

On CUDA each product is a bf16 tensor-core matmul with a float32 output
(`torch.mm(..., out_dtype=torch.float32)`); elsewhere the same bf16 parts are multiplied in
float32, which gives the same numbers up to summation order (bf16 values are exact in float32).

The split itself is memory-bound: in PyTorch it is four elementwise passes (round, widen,
subtract, round) over a float32 activation; on CUDA with Triton it is one kernel that reads `x`
once and writes both parts
(`_split_kernel`, the same round-to-nearest-even values), and a failure to compile or launch it
falls back to PyTorch with one warning. With it (and one split per tensor, perturb.py) a probe
took 0.91x (1.2 B) and 0.93x (8 B) the time of the PyTorch split on one H100
(bench/results/measurement_cost_h100.json, `attention_hook`).
"""

from __future__ import annotations

import warnings
from typing import Any, no_type_check

import torch
from torch import Tensor

try:  # optional: without Triton the split runs as PyTorch elementwise operations
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CI installs triton
    triton = None

__all__ = ["addmm_f32_", "mm_f32", "split_bf16", "split_bf16_fused", "split_block", "triton_jit"]

_MM_OUT_DTYPE: dict[str, bool] = {}  # device type -> whether the out_dtype= matmuls run there
_ADDMM_INPLACE: dict[str, bool] = {}  # device type -> whether the accumulating form checked out
_SPLIT_FAILED: dict[str, str] = {}  # CUDA device -> why the fused split did not run there
_SPLIT_BLOCK = 4096


def triton_jit(fn: Any) -> Any:
    """`triton.jit` where Triton is installed; the plain function (never called) elsewhere."""
    return triton.jit(fn) if triton is not None else fn


@triton_jit
@no_type_check
def split_block(x, INTEGER_ROUNDING: tl.constexpr):
    """A float32 block as `hi + lo`, each a bf16 value held in float32, rounded to nearest even
    (in Triton kernels: this file's split and attention.py's products)."""
    if INTEGER_ROUNDING:  # on the bit pattern: bf16 is the top 16 bits of a float32
        bits = x.to(tl.int32, bitcast=True)
        hi = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
        bits = (x - hi).to(tl.int32, bitcast=True)
        lo = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    else:
        hi = x.to(tl.bfloat16).to(tl.float32)
        lo = (x - hi).to(tl.bfloat16).to(tl.float32)
    return hi, lo


@triton_jit
@no_type_check
def _split_kernel(x_ptr, hi_ptr, lo_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    # Rounded on the bit pattern on every backend (Triton's interpreter truncates a float32 ->
    # bf16 cast); the parts then convert to bf16 exactly. x - hi is exact.
    hi, lo = split_block(x, True)
    tl.store(hi_ptr + offsets, hi.to(tl.bfloat16), mask=mask)
    tl.store(lo_ptr + offsets, lo.to(tl.bfloat16), mask=mask)


def split_bf16_fused(x: Tensor) -> tuple[Tensor, Tensor]:
    """`split_bf16` as one Triton kernel: `x` (contiguous float32) read once, both parts written.

    Runs wherever Triton does: compiled for CUDA tensors, or through Triton's interpreter for
    CPU tensors when TRITON_INTERPRET=1 was set before Triton was imported (the tests).
    """
    if triton is None:
        raise RuntimeError("the fused split needs Triton")
    if x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(f"the fused split takes a contiguous float32 tensor, got {x.dtype}")
    hi = torch.empty_like(x, dtype=torch.bfloat16)
    lo = torch.empty_like(x, dtype=torch.bfloat16)
    n = x.numel()
    if n:
        _split_kernel[(triton.cdiv(n, _SPLIT_BLOCK),)](x, hi, lo, n, BLOCK=_SPLIT_BLOCK)
    return hi, lo


def split_bf16(x: Tensor) -> tuple[Tensor, Tensor]:
    """`x` (float32) as `hi + lo` with both parts bf16: 16 mantissa bits, relative error <= 2**-17.

    Values below bf16's smallest normal lose their low part (both parts are bf16 subnormals); the
    activations of a language model never get there.
    """
    device = str(x.device)
    if (
        x.is_cuda
        and triton is not None
        and x.dtype == torch.float32
        and x.is_contiguous()
        and device not in _SPLIT_FAILED
    ):
        try:
            return split_bf16_fused(x)
        except Exception as exc:  # an old GPU or a broken Triton: the PyTorch split from now on
            _SPLIT_FAILED[device] = repr(exc)[:300]
            warnings.warn(
                f"the fused bf16 split failed on {device} ({_SPLIT_FAILED[device]}); "
                "splitting with PyTorch operations instead",
                RuntimeWarning,
                stacklevel=2,
            )
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
