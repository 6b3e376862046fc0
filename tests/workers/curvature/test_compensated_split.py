"""The bf16 split of the compensated path: the fused Triton kernel against PyTorch's, and one
split per input tensor however many linear layers read it."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from workers.curvature import compensated
from workers.curvature.compensated import split_bf16, split_bf16_fused
from workers.curvature.perturb import Perturbation

pytestmark = pytest.mark.unit

needs_kernel = pytest.mark.skipif(
    compensated.triton is None
    or not (torch.cuda.is_available() or compensated.triton.knobs.runtime.interpret),
    reason="the fused split runs compiled on CUDA or in Triton's interpreter",
)


def _torch_split(x: Tensor) -> tuple[Tensor, Tensor]:
    hi = x.to(torch.bfloat16)
    return hi, (x - hi.float()).to(torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("n", [1, 4095, 4096, 10_000])
def test_the_fused_split_is_bit_identical_to_pytorch(n: int) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(n)
    x = (torch.randn(n, generator=gen) * 10 ** torch.randint(-6, 6, (n,), generator=gen)).to(device)
    x[0] = 1 + 2**-9 + 2**-20  # a tie-free value whose low part matters
    hi, lo = split_bf16_fused(x)
    ref_hi, ref_lo = _torch_split(x)
    assert hi.dtype == lo.dtype == torch.bfloat16
    assert torch.equal(hi.view(torch.int16), ref_hi.view(torch.int16))
    assert torch.equal(lo.view(torch.int16), ref_lo.view(torch.int16))
    assert torch.allclose(hi.double() + lo.double(), x.double(), rtol=2**-16, atol=0)


@needs_kernel
def test_the_fused_split_takes_only_contiguous_float32() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with pytest.raises(ValueError, match="contiguous float32"):
        split_bf16_fused(torch.ones(4, 4, device=device).t())
    with pytest.raises(ValueError, match="contiguous float32"):
        split_bf16_fused(torch.ones(4, device=device, dtype=torch.float64))


def test_split_bf16_matches_pytorch_everywhere() -> None:
    x = torch.randn(3, 5) * 1e3
    hi, lo = split_bf16(x)
    ref_hi, ref_lo = _torch_split(x)
    assert torch.equal(hi, ref_hi) and torch.equal(lo, ref_lo)


class _Shared(nn.Module):
    """Three projections of one input, as q/k/v of an attention layer, then one of another."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(8, 8, dtype=torch.bfloat16) for _ in range(3))
        self.o = nn.Linear(8, 8, dtype=torch.bfloat16)

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        return self.o(self.q(h) * self.k(h) + self.v(h))


def test_one_input_read_by_three_layers_is_split_once(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _Shared()
    x = torch.randn(4, 8)
    params = list(model.parameters())
    direction = [torch.randn_like(p) for p in params]
    calls: list[tuple[int, ...]] = []
    real = compensated.split_bf16

    def counting(t: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(tuple(t.shape))
        return real(t)

    monkeypatch.setattr("workers.curvature.perturb.split_bf16", counting)
    with torch.no_grad(), Perturbation(model, params, direction, "compensated") as pert:
        pert.set_step(1e-3)
        shared = model(x)
        calls_shared = len(calls)
        pert.set_step(1e-3)  # a new probe forgets the last split
        again = model(x)
    # q, k, v read one tensor (one split), o another: 2 splits per forward, not 4.
    assert calls_shared == 2 and len(calls) == 4
    assert torch.equal(shared, again)
    with torch.no_grad():
        ref = nn.Sequential()  # the same forward without reuse: split every input afresh
        del ref
        monkeypatch.setattr("workers.curvature.perturb.Perturbation._split", _no_reuse)
        with Perturbation(model, params, direction, "compensated") as pert:
            pert.set_step(1e-3)
            fresh = model(x)
    assert torch.equal(shared, fresh)


def _no_reuse(self: Perturbation, x: Tensor, in_features: int) -> tuple[Tensor, Tensor]:
    return split_bf16(x.reshape(-1, in_features).to(torch.float32).contiguous())


def test_an_input_changed_in_place_is_split_again() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(8, 8, dtype=torch.bfloat16)
    params = list(lin.parameters())
    direction = [torch.zeros_like(p) for p in params]
    x = torch.randn(2, 8)
    with torch.no_grad(), Perturbation(lin, params, direction, "compensated"):
        before = lin(x)
        x.mul_(2)  # same tensor, same address, a new version
        after = lin(x)
    assert torch.allclose(after, 2 * before - lin.bias.float(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)
