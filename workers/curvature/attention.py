"""Causal attention on float32 q, k, v from bf16 tensor-core products: the `"compensated"` path's.

Why: the `"compensated"` precision (perturb.py) keeps the residual stream in float32 and runs every
bf16 linear layer as three bf16 products, so attention receives float32 q, k and v. HF's SDPA then
runs in float32, which on an H200 costs about 40x a bf16 flash-attention call
(bench/results/measurement_cost_h200.json, `sdpa_fp32_vs_bf16`): about a third of a probe's time
at 1.2 B parameters. This module computes the same attention from bf16 tensor-core dots only.

How: flash-attention's tiling (Dao et al. 2022): one program per block of `BLOCK_M` queries of one
head walks the keys in blocks of `BLOCK_N`, keeping a running row maximum `m`, row sum `l` and
output `acc` in float32, so the `T x T` score matrix never exists. Every product of two float32
operands is split as in compensated.py, `a = a_hi + a_lo` with bf16 parts (16 mantissa bits), and
formed from three bf16 dots with float32 accumulation; `a_lo b_lo` is dropped:

    s   = q_lo k_hi^T + q_hi k_lo^T + q_hi k_hi^T          # (BLOCK_M, BLOCK_N) scores
    acc = acc * exp(m_old - m) + p_lo v_hi + p_hi v_lo + p_hi v_hi     # (BLOCK_M, D)

q is split inside the kernel (once per program); k and v are split once per call in PyTorch
(`split_bf16`), since every query block of every head of a group reads them again; the weights
`p = exp(s - m)` are split in the inner loop. The softmax runs in base 2 (`log2(e)` is folded into
q's scale). GQA: query head `h` reads key/value head `h // (H / Hkv)`, as HF's `repeat_kv`.

Error budget, relative to what float32 attention computes:

- splitting: `|a - a_hi - a_lo| <= 2**-16 |a|`; the dropped `a_lo b_lo` is below `2**-16 |a b|`;
  so each dot carries an error of a few `2**-16 * sum |a_i b_i|` (worst case; random signs
  average it down), accumulated in float32 (`2**-24` per addition);
- the scores, and so the logarithms of the weights, are off by about `2**-16 * scale *
  sum_d |q_d k_d|` absolute: `2**-16` relative in the weights at logits of order one (the test's
  random data), `1e-4` at logits of order ten. The linear layers of the compensated path carry the
  same `2**-16` of `|x| |W|`;
- `p` and `v`: `2**-16` each, relative to `sum_j p_j |v_j|`; `exp2` on the GPU is `ex2.approx`
  (`2**-22`).

Plain bf16 attention (bf16 q, k, v and weights) is off by `2**-8` in every operand: 100x more
(tests/workers/curvature/test_attention.py shows both).

Masks: `causal` is upper-left aligned (key `j` is seen by query `i` when `j <= i`, as SDPA's
`is_causal`); an optional boolean (True: attend) or additive mask, broadcast to (B, H, Tq, Tk),
enters as a float32 bias clamped at -1e30, so a row whose every key is masked (a padding query)
returns the mean of its values where SDPA returns zeros or NaN; no loss reads those rows.

Where it runs: on CUDA tensors where Triton is installed; on CPU tensors when Triton was first
imported with TRITON_INTERPRET=1 (its interpreter, slow: tests/conftest.py sets it where there is
no CUDA). Elsewhere `compensated_attention` is float32 SDPA (`float32_attention`), what ran before.
Triton's interpreter (3.6 and 3.8) multiplies bf16 blocks as their integer bit patterns and
truncates float32 -> bf16 casts, so there the parts are carried in float32 (bf16 values are exact
in float32) and rounded to nearest-even in integer arithmetic: the numbers the GPU forms.

Block sizes (`_launch_config`) are fixed, not autotuned. On one H100 (bench/results/
measurement_cost_h100.json, `attention` section) the default call cost 4.4x (1.2 B layer shape)
and 4.2x (8 B) a bf16 SDPA call and a tenth of float32 SDPA's; of five candidates, 3 stages
instead of 2 was 11% faster at head size 64 and ran out of shared memory at 128.

With a transformers model (`switch_attention`): a `"compensated"` `Perturbation` points every SDPA
or eager config of the model at `"sharpmix_compensated"`, registered in transformers'
`AttentionInterface` (this kernel) and `AttentionMaskInterface` (SDPA's masks, so a plain causal
batch brings no mask at all), and puts the previous names back on exit. Calls the kernel cannot
take (non-float32 inputs, dropout, soft-capping, sinks, sliding windows, paged caches) go to HF's
SDPA function unchanged. `SHARPMIX_COMPENSATED_ATTENTION=0` leaves the model's attention alone;
on CPU the switch needs `SHARPMIX_COMPENSATED_ATTENTION=interpret` (tests).
"""

from __future__ import annotations

import math
import os
import warnings
from functools import cache
from typing import Any, no_type_check

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.curvature.compensated import split_bf16
from workers.curvature.compensated import split_block as _split
from workers.curvature.compensated import triton_jit as _jit
from workers.curvature.errors import CurvatureError

try:  # optional: without Triton every call is float32 SDPA
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CI installs triton
    triton = None

__all__ = [
    "ATTENTION_NAME",
    "compensated_attention",
    "float32_attention",
    "kernel_runs_on",
    "restore_attention",
    "switch_attention",
]

ATTENTION_NAME = "sharpmix_compensated"
MODE_VARIABLE = "SHARPMIX_COMPENSATED_ATTENTION"  # "0": off; "interpret": also CPU models (tests)
_LOG2E = math.log2(math.e)
_MASKED = -1e30  # a masked score in log2 units; finite, so a fully masked row gives no NaN
# Triton decides when it is first imported whether kernels run compiled or interpreted
# (TRITON_INTERPRET=1); tests/conftest.py sets it on machines without CUDA.
_INTERPRETED = triton is not None and bool(triton.knobs.runtime.interpret)
# CUDA devices where the kernel failed to compile or launch (an older GPU without bf16 dots, too
# little shared memory for the block sizes): their calls go to float32 SDPA from then on.
_FAILED: dict[str, str] = {}


def _mode() -> str:
    return os.environ.get(MODE_VARIABLE, "1").strip().lower()


def kernel_runs_on(device: torch.device) -> bool:
    """Whether `compensated_attention` runs the Triton kernel for tensors on `device`: CUDA
    tensors with Triton compiling, CPU tensors with Triton interpreting."""
    if triton is None:
        return False
    if _INTERPRETED:
        return device.type == "cpu"
    if device.type != "cuda" or str(device) in _FAILED:
        return False
    # bf16 tensor-core dots need compute capability 8.0 (A100) or newer.
    return torch.cuda.get_device_capability(device) >= (8, 0)


# -- the kernel --------------------------------------------------------------------------------


@_jit
@no_type_check
def _dot3(a_hi, a_lo, b_hi, b_lo, acc):
    """`acc + a b` from three dots with float32 accumulation, the small products first."""
    acc = tl.dot(a_lo, b_hi, acc, input_precision="ieee")
    acc = tl.dot(a_hi, b_lo, acc, input_precision="ieee")
    return tl.dot(a_hi, b_hi, acc, input_precision="ieee")


@_jit
@no_type_check
def _attention_fwd(
    Q, K_HI, K_LO, V_HI, V_LO, BIAS, OUT,
    sq_b, sq_h, sq_t, sq_d,
    sk_b, sk_h, sk_t, sk_d,
    sv_b, sv_h, sv_t, sv_d,
    sb_b, sb_h, sb_q, sb_k,
    so_b, so_h, so_t, so_d,
    t_q, t_k, head_dim, group, qk_scale,
    CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INTEGER_ROUNDING: tl.constexpr,  # the interpreter's float32 -> bf16 cast truncates
    DOT: tl.constexpr,  # the dots' operand dtype: bf16 on the GPU, float32 interpreted
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    h_kv = h // group  # GQA: as HF's repeat_kv
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < t_q
    dim_ok = dims < head_dim

    # The q block, scaled by scale * log2(e) and split once: (BLOCK_M, BLOCK_D) each.
    q_ptrs = Q + b * sq_b + h * sq_h + rows[:, None] * sq_t + dims[None, :] * sq_d
    q = tl.load(q_ptrs, mask=row_ok[:, None] & dim_ok[None, :], other=0.0) * qk_scale
    q_hi, q_lo = _split(q, INTEGER_ROUNDING)
    q_hi = q_hi.to(DOT)
    q_lo = q_lo.to(DOT)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row maximum (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of the weights
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running unnormalised output
    end = t_k
    if CAUSAL:  # keys past the block's last query are masked for all its rows
        end = tl.minimum(t_k, (start_m + 1) * BLOCK_M)
    k_base = b * sk_b + h_kv * sk_h
    v_base = b * sv_b + h_kv * sv_h
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key positions
        col_ok = cols < t_k
        kt_ptrs = k_base + cols[None, :] * sk_t + dims[:, None] * sk_d  # k^T: (BLOCK_D, BLOCK_N)
        kt_mask = dim_ok[:, None] & col_ok[None, :]
        kt_hi = tl.load(K_HI + kt_ptrs, mask=kt_mask, other=0.0)
        kt_lo = tl.load(K_LO + kt_ptrs, mask=kt_mask, other=0.0)
        s = _dot3(q_hi, q_lo, kt_hi, kt_lo, tl.zeros([BLOCK_M, BLOCK_N], tl.float32))
        if HAS_BIAS:
            b_ptrs = BIAS + b * sb_b + h * sb_h + rows[:, None] * sb_q + cols[None, :] * sb_k
            s += tl.load(b_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        s = tl.where(keep, s, float("-inf"))  # (BLOCK_M, BLOCK_N) scores, log2 units

        # Online softmax. Key 0 lies in every row's first block, so m_new is finite from there.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old maximum
        p = tl.exp2(s - m_new[:, None])  # (BLOCK_M, BLOCK_N) weights in [0, 1]
        l_i = l_i * alpha + tl.sum(p, 1)
        p_hi, p_lo = _split(p, INTEGER_ROUNDING)

        v_ptrs = v_base + cols[:, None] * sv_t + dims[None, :] * sv_d  # (BLOCK_N, BLOCK_D)
        v_mask = col_ok[:, None] & dim_ok[None, :]
        v_hi = tl.load(V_HI + v_ptrs, mask=v_mask, other=0.0)
        v_lo = tl.load(V_LO + v_ptrs, mask=v_mask, other=0.0)
        acc = _dot3(p_hi.to(DOT), p_lo.to(DOT), v_hi, v_lo, acc * alpha[:, None])
        m_i = m_new

    out = acc / l_i[:, None]  # (BLOCK_M, BLOCK_D)
    o_ptrs = OUT + b * so_b + h * so_h + rows[:, None] * so_t + dims[None, :] * so_d
    tl.store(o_ptrs, out, mask=row_ok[:, None] & dim_ok[None, :])


def _launch_config(head_dim: int) -> dict[str, int]:
    """Block sizes for Hopper (H100/H200), timed there (module docstring). Compiled offline for
    sm_90 with Triton 3.6 (ptxas -v): 255 registers and no or 24 bytes of spills up to D = 128;
    (128, 32, 8 warps) has none at D = 128; D = 256 spills with any of these."""
    if head_dim <= 128:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2}


def _bias(mask: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """A boolean (True: attend) or additive mask as a float32 bias in log2 units, (B, H, Tq, Tk)
    with zero strides where it broadcasts."""
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        bias.masked_fill_(~mask, _MASKED)
    else:
        bias = (mask.to(torch.float32) * _LOG2E).clamp_(min=_MASKED)
    return bias.broadcast_to(shape)


def _triton_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float,
    mask: Tensor | None,
    config: dict[str, int] | None = None,
) -> Tensor:
    """The kernel's launch; `config` overrides `_launch_config`'s block sizes, warps, stages."""
    B, H, t_q, D = q.shape
    t_k = k.shape[2]
    interpret = _INTERPRETED
    config = _launch_config(D) | (config or {})
    # k and v split once here: every query block of every head in a group reads them again.
    k_hi, k_lo = split_bf16(k)  # (B, Hkv, Tk, D) each
    v_hi, v_lo = split_bf16(v)
    if interpret:  # the interpreter's bf16 dots are wrong; bf16 is exact in float32
        k_hi, k_lo, v_hi, v_lo = (t.float() for t in (k_hi, k_lo, v_hi, v_lo))
    if k_hi.stride() != k_lo.stride() or v_hi.stride() != v_lo.stride():
        k_hi, k_lo, v_hi, v_lo = (t.contiguous() for t in (k_hi, k_lo, v_hi, v_lo))
    bias = _bias(mask, (B, H, t_q, t_k)) if mask is not None else None
    # Written as (B, T, H, D) memory, so HF's transpose(1, 2).contiguous() is free.
    out = torch.empty(B, t_q, H, D, dtype=torch.float32, device=q.device).transpose(1, 2)
    grid = (triton.cdiv(t_q, config["BLOCK_M"]), H, B)
    _attention_fwd[grid](
        q, k_hi, k_lo, v_hi, v_lo, bias if bias is not None else q, out,
        *q.stride(), *k_hi.stride(), *v_hi.stride(),
        *(bias.stride() if bias is not None else (0, 0, 0, 0)), *out.stride(),
        t_q, t_k, D, H // k.shape[1], scale * _LOG2E,
        CAUSAL=causal,
        HAS_BIAS=bias is not None,
        INTEGER_ROUNDING=interpret,
        DOT=tl.float32 if interpret else tl.bfloat16,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        **config,
    )  # fmt: skip
    return out


# -- the entry points --------------------------------------------------------------------------


def _check(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise CurvatureError(
            "attention takes q (B, H, T, D) and k, v of one shape (B, Hkv, Tk, D); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or q.shape[1] % k.shape[1]:
        raise CurvatureError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} need the same batch and head size, and "
            "a number of query heads that the key/value heads divide (GQA)"
        )
    if not (q.dtype == k.dtype == v.dtype == torch.float32):
        raise CurvatureError(f"compensated attention takes float32 q, k, v; got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise CurvatureError("q, k and v must be on one device")
    if mask is not None and not _mask_fits(mask, q, k):
        raise CurvatureError(
            f"mask {tuple(mask.shape)} on {mask.device} does not broadcast to (B, H, Tq, Tk) = "
            f"{(*q.shape[:3], k.shape[2])} on {q.device}"
        )


def _mask_fits(mask: Tensor, q: Tensor, k: Tensor) -> bool:
    """Whether `mask` broadcasts to (B, H, Tq, Tk) on q's device."""
    target = (*q.shape[:3], k.shape[2])
    dims = (1,) * (4 - mask.dim()) + tuple(mask.shape)  # right-aligned, as broadcasting
    fits = len(dims) == 4 and all(m in (1, t) for m, t in zip(dims, target, strict=True))
    return fits and mask.device == q.device


def compensated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """`softmax(q k^T * scale + mask) v` on float32 tensors, to about 2**-16 of float32 attention.

    Args:
        q: Queries, float32 (B, H, Tq, D), any strides.
        k: Keys, float32 (B, Hkv, Tk, D), with Hkv dividing H (GQA: head h reads h // (H/Hkv)).
        v: Values, float32, the shape of `k`.
        causal: Mask key j for query i where j > i (upper-left, as SDPA's `is_causal`).
        scale: Multiplies the scores; default `D ** -0.5`.
        mask: Optional boolean (True: attend) or additive mask broadcasting to (B, H, Tq, Tk),
            applied with `causal` if both are given.

    Returns:
        float32 (B, H, Tq, D), laid out as (B, Tq, H, D) in memory where the kernel ran.
        Without Triton (or off CUDA) this is `float32_attention`.
    """
    _check(q, k, v, mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not kernel_runs_on(q.device):
        return float32_attention(q, k, v, causal=causal, scale=scale, mask=mask)
    try:
        return _triton_attention(q, k, v, causal=causal, scale=scale, mask=mask)
    except Exception as exc:  # compile or launch: Triton raises several types across versions
        if _INTERPRETED:
            raise  # the tests run the kernel itself: a failure must show
        _FAILED[str(q.device)] = repr(exc)[:300]
        warnings.warn(
            f"the compensated attention kernel cannot run on {q.device} ({exc!r:.200}); its "
            f"attention runs as float32 SDPA from now on (slower, as exact). Set "
            f"{MODE_VARIABLE}=0 to skip the kernel.",
            RuntimeWarning,
            stacklevel=2,
        )
        return float32_attention(q, k, v, causal=causal, scale=scale, mask=mask)


def float32_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """`compensated_attention`'s contract through float32 SDPA (the fallback; any dtype)."""
    if causal and mask is not None:  # SDPA takes one or the other: fold causality into the mask
        t_q, t_k = q.shape[2], k.shape[2]
        seen = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril()
        mask = mask & seen if mask.dtype == torch.bool else mask.masked_fill(~seen, -math.inf)
        causal = False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


# -- transformers ------------------------------------------------------------------------------

# Keyword arguments HF models pass that change nothing here (the rest, when set, go to SDPA).
_HARMLESS = frozenset({"position_ids", "use_cache", "cache_position", "past_key_values"})


def _hf_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-function signature, as `sdpa_attention_forward`'s; q (B, H, T, D),
    k, v (B, Hkv, Tk, D); returns (B, T, H, D) and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    extras = any(val not in (None, False) for name, val in kwargs.items() if name not in _HARMLESS)
    usable = (
        query.dtype == key.dtype == value.dtype == torch.float32
        and kernel_runs_on(query.device)
        and dropout == 0.0
        and not extras
        and query.shape[1] % key.shape[1] == 0
        and (attention_mask is None or _mask_fits(attention_mask, query, key))
    )
    if not usable:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # As HF's SDPA function: a mask, when present, already holds the causal pattern; one query
    # (decoding) sees every key.
    causal = bool(causal) and attention_mask is None and query.shape[2] > 1
    out = compensated_attention(
        query, key, value, causal=causal, scale=scaling, mask=attention_mask
    )  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None


@cache
def _register() -> None:
    """Make `ATTENTION_NAME` a transformers attention implementation (once per process)."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _hf_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def switch_attention(model: nn.Module) -> list[tuple[Any, str]]:
    """Point `model`'s transformers configs that use SDPA or eager attention at the compensated
    kernel, where it runs (CUDA with Triton, or the interpreter when asked) and is not switched
    off (`SHARPMIX_COMPENSATED_ATTENTION=0`).

    Returns:
        (config, previous implementation) pairs for `restore_attention`; empty where nothing was
        switched.
    """
    if _mode() in ("0", "off", "false", "no"):
        return []
    param = next(model.parameters(), None)
    if param is None or not kernel_runs_on(param.device):
        return []
    if param.device.type != "cuda" and _mode() != "interpret":
        return []  # the interpreter is for tests, which ask for it
    configs: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation_internal", None) in ("sdpa", "eager"):
            configs.setdefault(id(config), config)
    # Eager models fall back to HF's SDPA function for the calls the kernel cannot take: only
    # those whose class supports SDPA.
    if not configs or not getattr(model, "_supports_sdpa", True):
        return []
    _register()
    switched = []
    for config in configs.values():
        switched.append((config, config._attn_implementation_internal))
        config._attn_implementation_internal = ATTENTION_NAME
    return switched


def restore_attention(switched: list[tuple[Any, str]]) -> None:
    """Put back what `switch_attention` changed."""
    for config, previous in reversed(switched):
        config._attn_implementation_internal = previous
