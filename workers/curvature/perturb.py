"""Moving a model to `theta - eta * d` and back, exactly (method.md §2, "Precision").

Fine-tuning steps (`eta` of 1e-6 to 1e-4 times a sign-like Adam direction) are far below the
resolution of bf16 weights (relative 2**-8): writing `theta - eta * d` into a bf16 parameter rounds
it back to `theta` and the search sees no change at all (method.md §6: "41 forwards, no bracket").
`Perturbation` therefore offers five precisions:

- `"exact"`: write `theta - eta * d`, computed in float32 from a saved copy, into each parameter in
  its own dtype. Exact for float32/float64 models; for bf16/fp16 parameters it is the naive path
  and loses small steps (kept as the benchmark's baseline).
- `"fp32"`: the reference for low-precision models (`"auto"`'s choice for fp16 ones). Each
  low-precision parameter is swapped for a float32 tensor holding `theta - eta * d` for the
  duration, so the forward runs in float32. Costs float32 weight memory and float32 matmul speed:
  on one H100, 0.98 s a forward for OLMo-2-1B on 8 x 2048 tokens (6.4x bf16) and 2.55 s for 7B on
  4 x 2048 tokens at 69 GB peak; within 0.1% of the fp32 model's eta_c and loss change.
- `"split"`: a fast bf16/fp16 path. `nn.Linear` and `nn.Embedding` modules keep their
  low-precision weight `W` untouched and add the step as its own term, in one matmul:

        y = [x, x] @ [W, -eta * D]^T  =  x W^T + x (-eta D)^T         # (N, out), K doubled

  The two products are accumulated together in float32 inside the matmul and rounded once, so the
  step is not rounded against `W`; it costs about twice a plain forward in those modules.
  Embeddings return `W[ids] - eta * D[ids]` in float32, which keeps the residual stream of
  OLMo-2/Llama-style models in float32 at negligible cost; the overridden `nn.Linear`s cast their
  input back to the weight dtype. Other low-precision parameters (norm gains, other biases) are
  swapped for float32 as in `"fp32"`.
  Known bias: the perturbation now survives, but every bf16 rounding of an activation that moves
  with `eta` flips by one ulp with probability ~|change|/ulp. That dither is unbiased in the
  activations but raises the loss in expectation (by ~ eta * ulp * curvature, i.e. linearly in
  eta), so `"split"` underestimates `eta_c`: by 5-10% on the trained tiny OLMo-2 of
  tests/workers/curvature/test_precision.py at its eta_c ~ 1e-3, more than `tol = 1/16`; and at a
  fine-tuning-sized step (1e-5) there the dither (+1.8e-4) swamps the true change (-4.3e-5).
  On the H100 (bench/results/curvature_gpu_h100.json, a 34M OLMo-2 trained 45 s) it was -3.6%
  (own direction) and -8.3% (relative direction) off the fp32 reference, at 1.5x a plain bf16
  forward. Experimental: never chosen by "auto".
- `"compensated"`: fast and accurate for bf16 models. The residual stream runs in float32 as in
  `"fp32"` (embeddings return `W[ids] - eta * D[ids]` in float32; norm gains and other small
  low-precision parameters are swapped for float32). Every `nn.Linear` with a bf16 weight keeps
  `W` untouched and splits its float32 input into two bf16 parts, `x = x_hi + x_lo` (16 mantissa
  bits together), and sums three bf16 products with float32 accumulation and a float32 result:

        y = x_hi W^T + x_lo W^T - eta * x_hi D^T                 # (N, out), float32

  `W` is exact in bf16 (it *is* the model), so the only roundings left are `x`'s at 2**-17
  instead of bf16's 2**-9 (256x less rounding dither than `"split"`) and the dropped
  `eta * x_lo D^T` (2**-9 of the step's own contribution); `D` is used rounded to bf16 (fixed
  across probes, so every probe lies on one line). On CUDA the products are bf16 tensor-core
  matmuls with a float32 output (`torch.mm(..., out_dtype=torch.float32)`), three times a plain
  linear layer; elsewhere the same bf16 parts are multiplied in float32 (the same numbers up to
  summation order). Attention receives the float32 projections. Float32 SDPA costs about 40x a
  bf16 flash-attention call on an H200 (bench/results/measurement_cost_h200.json; a version
  built from bf16 products in PyTorch, tried, was no faster), so on CUDA with Triton installed a
  transformers model's SDPA or eager attention is switched for the duration to the fused kernel
  of attention.py (the same split into bf16 parts, three products each, online softmax in
  float32; about 2**-16 of float32 attention) and switched back on exit;
  `SHARPMIX_COMPENSATED_ATTENTION=0` keeps float32 SDPA.
  Measured on one H200 with float32 SDPA (random-init Llama-3 shapes, bench/measurement_cost.py):
  a probe costs 5.3x a plain bf16 forward at 1.2 B parameters and 4.3x at 8 B, against 10.7x
  and 11.9x for `"fp32"`, with eta_c within 0.05% and the loss change at 3e-5 within 0.4% of
  `"fp32"`'s, and 65 GB peak at 8 B on 8 k tokens (`"fp32"`: 95 GB). With the attention kernel,
  on one H100: 2.9x at 1.2 B and 3.1x at 8 B (float32 SDPA in the same runs: 5.5x, 4.5x), the
  loss change within 0.14% of the float32-SDPA probe's (bench/results/measurement_cost_h100.json).
- `"auto"`: `"exact"` when every perturbed parameter is float32 or float64, `"compensated"` when
  any is bf16, else `"fp32"` (fp16 weights are not exact in bf16 parts).

During `"exact"`, `"fp32"` and `"compensated"` searches float32 matmuls run at full precision
(TF32 off): TF32 rounds matmul inputs to 10 mantissa bits, the same trap one level down.

On exit every parameter holds its original tensor again, bit for bit (also after an exception):
`exact` copies back from the saved clone; `fp32` and `split` never wrote into the original tensors;
`compensated` also puts back each config's attention implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.curvature.attention import restore_attention, switch_attention
from workers.curvature.compensated import addmm_f32_, mm_f32, split_bf16
from workers.curvature.errors import CurvatureError

__all__ = ["Perturbation", "Precision", "check_direction"]

Precision = Literal["auto", "exact", "fp32", "split", "compensated"]

_WIDE = (torch.float32, torch.float64)
_PRECISIONS = ("exact", "fp32", "split", "compensated")


def check_direction(params: Sequence[Tensor], direction: Sequence[Tensor]) -> None:
    """Raise CurvatureError unless `direction` has one tensor of the right shape per parameter."""
    if len(params) != len(direction):
        raise CurvatureError(
            f"direction has {len(direction)} tensors but {len(params)} parameters are perturbed; "
            "pass params= with the parameters the direction belongs to "
            "(e.g. direction_params(optimizer))"
        )
    for i, (p, d) in enumerate(zip(params, direction, strict=True)):
        if p.shape != d.shape:
            raise CurvatureError(
                f"direction tensor {i} has shape {tuple(d.shape)} but its parameter has shape "
                f"{tuple(p.shape)}; pass params= in the order the direction was computed"
            )
        if p.device != d.device:
            raise CurvatureError(
                f"direction tensor {i} is on {d.device} but its parameter on {p.device}; "
                "move the direction to the model's device"
            )


class Perturbation:
    """Context manager that sets a model's parameters to `theta - eta * d` for any `eta`.

    Use `set_step(eta)` before each forward; `set_step(0.0)` is `theta` through the same
    computation path (so `L(theta)` and the probes share their rounding). Gradients are not
    tracked; call inside `torch.no_grad()`.

    Args:
        model: The module that owns the parameters (searched for Linear/Embedding in `"split"`).
        params: Parameters to perturb (each once; tied parameters appear once).
        direction: `d`, one tensor per parameter, same shapes and devices (any float dtype).
        precision: See the module docstring.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[Tensor],
        direction: Sequence[Tensor],
        precision: Precision = "auto",
    ) -> None:
        check_direction(params, direction)
        if len({id(p) for p in params}) != len(params):
            raise CurvatureError("params lists a parameter twice; pass each parameter once")
        if precision == "auto":
            if all(p.dtype in _WIDE for p in params):
                precision = "exact"
            elif any(p.dtype == torch.bfloat16 for p in params):
                precision = "compensated"
            else:
                precision = "fp32"
        if precision not in _PRECISIONS:
            raise CurvatureError(
                "precision must be 'auto', 'exact', 'fp32', 'split' or 'compensated', "
                f"got {precision!r}"
            )
        self.model = model
        self.precision: Precision = precision
        self.eta = 0.0
        self._pairs = list(zip(params, direction, strict=True))
        self._saved: list[tuple[Tensor, Tensor, Tensor]] = []  # (param, theta0 copy, d)
        self._swapped: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # (param, orig, work, d)
        self._overridden: list[tuple[nn.Module, Callable[..., Tensor] | None]] = []
        self._matmul_precision: str | None = None
        self._attention: list[tuple[object, str]] = []  # (transformers config, implementation)
        self._cache: dict[int, Tensor] = {}  # per-search conversions (bf16 D, float32 biases)
        # The last linear input's split, kept with the input itself (so that its memory cannot
        # be reused while the key stands): q/k/v and gate/up read one tensor, split once.
        self._last_split: tuple[tuple[object, ...], Tensor, Tensor, Tensor] | None = None

    def __enter__(self) -> Perturbation:
        try:
            self._install()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()

    def set_step(self, eta: float) -> None:
        """Move the parameters to `theta - eta * d`."""
        self.eta = float(eta)
        self._last_split = None  # the last probe's activations: free them
        with torch.no_grad():
            for p, theta0, d in self._saved:
                # theta0 - eta * d in float32 (float64 for float64 params), one rounding to p.dtype.
                wide = torch.promote_types(p.dtype, torch.float32)
                p.copy_(torch.add(theta0.to(wide), d.to(wide), alpha=-self.eta))
            for _, orig, work, d in self._swapped:
                torch.add(orig.to(work.dtype), d.to(work.dtype), alpha=-self.eta, out=work)

    # -- setup and teardown --------------------------------------------------------------------

    def _install(self) -> None:
        if self.precision in ("exact", "fp32", "compensated"):
            self._matmul_precision = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision("highest")  # no TF32 while the step must count
        by_id = {id(p): (p, d) for p, d in self._pairs}
        handled: set[int] = set()
        if self.precision == "split":
            for module in self.model.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    handled |= self._override(module, by_id)
        elif self.precision == "compensated":
            for module in self.model.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    handled |= self._override_compensated(module, by_id)
            self._attention = switch_attention(self.model)
        for p, d in self._pairs:
            if id(p) in handled:
                continue
            if self.precision == "exact" or p.dtype in _WIDE:
                self._saved.append((p, p.detach().clone(), d))
            else:
                # Swap the storage for a float32 tensor; the original tensor is never written.
                orig = p.data
                work = orig.to(torch.float32, copy=True)
                p.data = work
                self._swapped.append((p, orig, work, d))
        self.set_step(0.0)

    def _override(
        self, module: nn.Linear | nn.Embedding, by_id: dict[int, tuple[Tensor, Tensor]]
    ) -> set[int]:
        weight: Tensor = module.weight
        if id(weight) not in by_id or weight.dtype in _WIDE:
            return set()
        d_weight = by_id[id(weight)][1]
        forward: Callable[..., Tensor]
        if isinstance(module, nn.Embedding):
            if module.max_norm is not None:
                return set()  # max_norm renormalises W in place; leave it to the fp32 swap
            forward = self._embedding_forward(weight, d_weight)
            covered = {id(weight)}
        else:
            bias: Tensor | None = module.bias
            d_bias = by_id[id(bias)][1] if bias is not None and id(bias) in by_id else None
            forward = self._linear_forward(weight, d_weight, bias, d_bias)
            covered = {id(weight)} | (
                {id(bias)} if d_bias is not None and bias is not None else set()
            )
        self._overridden.append((module, module.__dict__.get("forward")))
        module.__dict__["forward"] = forward  # an instance attribute shadows the class's forward
        return covered

    def _linear_forward(
        self, weight: Tensor, d_weight: Tensor, bias: Tensor | None, d_bias: Tensor | None
    ) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            x = x.to(weight.dtype)  # (..., K)
            step = d_weight.to(weight.dtype) * -self.eta  # (N, K), own relative precision
            parts_x, parts_w = [x, x], [weight, step]
            if d_bias is not None:
                # The bias step rides along as one more input column of ones, so it is also
                # accumulated in float32 before the single rounding.
                parts_x.append(torch.ones_like(x[..., :1]))
                parts_w.append((d_bias.to(weight.dtype) * -self.eta)[:, None])
            # (..., 2K[+1]) @ (N, 2K[+1])^T -> (..., N)
            return F.linear(torch.cat(parts_x, dim=-1), torch.cat(parts_w, dim=1), bias)

        return forward

    def _embedding_forward(
        self, weight: Tensor, d_weight: Tensor | None
    ) -> Callable[[Tensor], Tensor]:
        def forward(ids: Tensor) -> Tensor:
            rows = F.embedding(ids, weight).float()  # (..., E) exact upcast of W[ids]
            if d_weight is None:
                return rows
            return rows - self.eta * F.embedding(ids, d_weight).float()

        return forward

    def _override_compensated(
        self, module: nn.Linear | nn.Embedding, by_id: dict[int, tuple[Tensor, Tensor]]
    ) -> set[int]:
        weight: Tensor = module.weight
        if weight.dtype != torch.bfloat16:
            return set()  # float32 weights run as they are; fp16 ones go to the float32 swap
        # Frozen bf16 weights (not perturbed) are overridden too: the float32 residual stream
        # must not be rounded back to bf16 on the way through them.
        d_weight = by_id[id(weight)][1] if id(weight) in by_id else None
        forward: Callable[..., Tensor]
        covered = {id(weight)} if d_weight is not None else set()
        if isinstance(module, nn.Embedding):
            if module.max_norm is not None:
                return set()
            forward = self._embedding_forward(weight, d_weight)
        else:
            bias: Tensor | None = module.bias
            d_bias = by_id[id(bias)][1] if bias is not None and id(bias) in by_id else None
            if bias is not None and d_bias is not None:
                covered.add(id(bias))
            forward = self._compensated_linear_forward(weight, d_weight, bias, d_bias)
        self._overridden.append((module, module.__dict__.get("forward")))
        module.__dict__["forward"] = forward
        return covered

    def _bf16(self, t: Tensor) -> Tensor:
        """`t` in bf16, converted once per search (directions often come in float32)."""
        if t.dtype == torch.bfloat16:
            return t
        if id(t) not in self._cache:
            self._cache[id(t)] = t.to(torch.bfloat16)
        return self._cache[id(t)]

    def _f32(self, t: Tensor) -> Tensor:
        if t.dtype == torch.float32:
            return t
        if id(t) not in self._cache:
            self._cache[id(t)] = t.to(torch.float32)
        return self._cache[id(t)]

    def _split(self, x: Tensor, in_features: int) -> tuple[Tensor, Tensor]:
        """`x` as (M, K) bf16 parts; the same tensor, unchanged (its version counter), is split
        once however many linear layers read it."""
        key = (x.data_ptr(), x._version, x.dtype, x.device, tuple(x.shape), tuple(x.stride()))
        last = self._last_split
        if last is not None and last[0] == key:
            return last[2], last[3]
        hi, lo = split_bf16(x.reshape(-1, in_features).to(torch.float32).contiguous())
        self._last_split = (key, x, hi, lo)
        return hi, lo

    def _compensated_linear_forward(
        self,
        weight: Tensor,
        d_weight: Tensor | None,
        bias: Tensor | None,
        d_bias: Tensor | None,
    ) -> Callable[[Tensor], Tensor]:
        out_features, in_features = weight.shape

        def forward(x: Tensor) -> Tensor:
            lead = x.shape[:-1]
            hi, lo = self._split(x, in_features)  # (M, K) each
            y = mm_f32(hi, weight)  # (M, N) float32
            addmm_f32_(y, lo, weight)
            if d_weight is not None and self.eta != 0.0:
                addmm_f32_(y, hi, self._bf16(d_weight), alpha=-self.eta)
            if bias is not None:
                y += self._f32(bias)
                if d_bias is not None and self.eta != 0.0:
                    y.add_(self._f32(d_bias), alpha=-self.eta)
            return y.view(*lead, out_features)

        return forward

    def _restore(self) -> None:
        with torch.no_grad():
            for p, theta0, _ in self._saved:
                p.copy_(theta0)
            for p, orig, _, _ in self._swapped:
                p.data = orig
        for module, previous in self._overridden:
            del module.__dict__["forward"]
            if previous is not None:
                module.__dict__["forward"] = previous
        restore_attention(self._attention)
        self._saved, self._swapped, self._overridden, self._attention = [], [], [], []
        self._cache = {}
        self._last_split = None
        if self._matmul_precision is not None:
            torch.set_float32_matmul_precision(self._matmul_precision)
            self._matmul_precision = None
