"""bf16 products that keep 16 mantissa bits: the kernels of the `"compensated"` precision.

A float32 tensor is split into two bf16 parts, `x = hi + lo` (relative error <= 2**-17), and a
product of two such tensors is the sum of three bf16 products accumulated in float32:

    a b  ~=  a_hi b_hi + a_hi b_lo + a_lo b_hi          (a_lo b_lo is 2**-18 of the product)

On CUDA each product is a bf16 tensor-core matmul with a float32 output
(`torch.mm(..., out_dtype=torch.float32)`); elsewhere the same bf16 parts are multiplied in
float32, which gives the same numbers up to summation order (bf16 values are exact in float32).

`attention` is scaled-dot-product attention on float32 inputs built from those products: the
scores `Q K^T` and the output `P V` each as one matmul over concatenated parts, the softmax in
float32. It replaces float32 SDPA (about 40x a bf16 flash-attention call on an H200,
bench/results/measurement_cost_h200.json) while a compensated search runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["addmm_f32_", "attention", "bmm_f32", "mm_f32", "split_bf16"]

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


def bmm_f32(a: Tensor, b: Tensor) -> Tensor:
    """`a @ b` for bf16 batches `a` (n, M, K) and `b` (n, K, N), in float32."""
    kind = a.device.type
    if _fast(kind):
        try:
            return torch.bmm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE[kind] = False
    return torch.bmm(a.float(), b.float())


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


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    fallback: Callable[..., Tensor] = F.scaled_dot_product_attention,
) -> Tensor:
    """`F.scaled_dot_product_attention` for float32 `(B, H, L, E)` inputs, from bf16 products.

    Anything it does not cover (other dtypes, dropout, other layouts) goes to `fallback`.
    One sequence at a time bounds the `(H, L, S)` float32 temporaries.
    """
    if (
        query.dtype != torch.float32
        or dropout_p
        or query.dim() != 4
        or key.dim() != 4
        or key.shape[1] != value.shape[1]
    ):
        return fallback(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
            scale=scale, enable_gqa=enable_gqa,
        )  # fmt: skip
    batch, heads, length, _ = query.shape
    if key.shape[1] != heads:  # grouped-query attention: repeat the key/value heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    q_hi, q_lo = split_bf16(query * scale)
    k_hi, k_lo = split_bf16(key)
    v_hi, v_lo = split_bf16(value)
    span = key.shape[2]
    causal = None
    if is_causal:  # top-left aligned, as torch's is_causal
        causal = torch.ones(length, span, dtype=torch.bool, device=query.device).tril()
    out = torch.empty(
        batch, heads, length, value.shape[-1], dtype=torch.float32, device=query.device
    )
    for b in range(batch):
        # Scores: [q_hi, q_hi, q_lo] . [k_hi, k_lo, k_hi] over a tripled head dimension.
        qq = torch.cat([q_hi[b], q_hi[b], q_lo[b]], dim=-1)  # (H, L, 3E)
        kk = torch.cat([k_hi[b], k_lo[b], k_hi[b]], dim=-1)  # (H, S, 3E)
        scores = bmm_f32(qq, kk.transpose(1, 2))  # (H, L, S) float32
        del qq, kk
        if causal is not None:
            scores.masked_fill_(~causal, -math.inf)
        if attn_mask is not None:
            mask = attn_mask
            if mask.dim() == 4:  # (B or 1, H or 1, L, S)
                mask = mask[b if mask.shape[0] > 1 else 0]
            if mask.dtype == torch.bool:
                scores.masked_fill_(~mask, -math.inf)
            else:
                scores += mask.to(torch.float32)
        p = torch.softmax(scores, dim=-1)
        del scores
        p_hi, p_lo = split_bf16(p)
        del p
        # Output: [p_hi, p_hi, p_lo] . [v_hi; v_lo; v_hi] over a tripled key axis.
        pp = torch.cat([p_hi, p_hi, p_lo], dim=-1)  # (H, L, 3S)
        del p_hi, p_lo
        vv = torch.cat([v_hi[b], v_lo[b], v_hi[b]], dim=1)  # (H, 3S, E)
        out[b] = bmm_f32(pp, vv)
    return out
