"""The compensated attention kernel (attention.py) against float64 attention, and its hook into
transformers models during a `"compensated"` Perturbation.

Without CUDA the kernel runs through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports Triton); `make test` installs Triton, and in CI a
missing Triton fails this module rather than skipping it. The hook is off on CPU unless
SHARPMIX_COMPENSATED_ATTENTION=interpret.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import triton  # noqa: F401
except ImportError:
    # The dev extra installs Triton wherever it has wheels (Linux), so there, CI included, a
    # missing Triton is a broken set-up and fails the module instead of skipping the kernel.
    if sys.platform == "linux":
        raise ImportError("Triton is missing: pip install -e '.[dev]' (make test does)") from None
    pytest.skip("Triton has no wheels for this platform", allow_module_level=True)

from workers.curvature import (
    Perturbation,
    adamw_direction,
    attention,
    loss_change,
    measure,
)
from workers.curvature.attention import (
    ATTENTION_NAME,
    compensated_attention,
    float32_attention,
    kernel_runs_on,
)
from workers.curvature.errors import CurvatureError

pytestmark = pytest.mark.unit

BOUND = 2.0**-16  # max error over max |output|; float32 attention is at ~2**-23


@pytest.fixture(scope="module")
def device() -> torch.device:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Fail, not skip: with Triton installed the kernel must run here (else every comparison
    # below would be float32 SDPA against itself).
    assert kernel_runs_on(dev), "Triton is installed but the kernel does not run on " + str(dev)
    return dev


def _qkv(
    B: int, H: int, Hkv: int, T: int, D: int, device: torch.device, seed: int = 0
) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, H, T, D), (B, Hkv, T, D), (B, Hkv, T, D)]
    return [torch.randn(s, generator=gen).to(device) for s in shapes]


def _reference(q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None = None) -> Tensor:
    """Float64 attention with repeated key/value heads: (B, H, Tq, D)."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, H, Tq, Tk)
    if causal:
        seen = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~seen, -torch.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else s + mask.double()
    return s.softmax(-1) @ v


def _error(out: Tensor, ref: Tensor) -> float:
    return float((out.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("T", [1, 17, 64, 130])
@pytest.mark.parametrize("D", [16, 64])
def test_matches_float64_attention(device: torch.device, T: int, D: int) -> None:
    q, k, v = _qkv(2, 4, 2, T, D, device)
    ref = _reference(q, k, v, causal=True)
    out = compensated_attention(q, k, v, causal=True)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert _error(out, ref) <= BOUND
    # Plain bf16 attention misses the bound by far: the bound tells the two apart.
    plain = F.scaled_dot_product_attention(
        *(t.bfloat16() for t in (q, k, v)), is_causal=True, enable_gqa=True
    )
    assert _error(plain, ref) >= 32 * BOUND


def test_many_blocks_without_causal_mask(device: torch.device) -> None:
    # Small blocks: 5 query blocks and 9 key blocks, so the running maximum moves many times.
    q, k, v = _qkv(1, 4, 1, 130, 32, device, seed=1)
    q = q * 3.0  # larger logits: weights far from uniform
    blocks = {"BLOCK_M": 32, "BLOCK_N": 16}
    out = attention._triton_attention(
        q, k, v, causal=False, scale=32**-0.5, mask=None, config=blocks
    )
    assert _error(out, _reference(q, k, v, causal=False)) <= 4 * BOUND


def test_causal_rows_ignore_later_keys(device: torch.device) -> None:
    q, k, v = _qkv(1, 2, 2, 64, 16, device, seed=2)
    out = compensated_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 40:] += 10.0
    v2[:, :, 40:] -= 5.0
    out2 = compensated_attention(q, k2, v2)
    assert torch.equal(out[:, :, :40], out2[:, :, :40])  # bit for bit: those weights are 0
    assert not torch.equal(out[:, :, 40:], out2[:, :, 40:])


def test_gqa_reads_head_h_over_group(device: torch.device) -> None:
    q, k, v = _qkv(2, 6, 2, 33, 16, device, seed=3)
    grouped = compensated_attention(q, k, v)
    repeated = compensated_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1))
    assert torch.equal(grouped, repeated)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_padding_mask(device: torch.device, kind: str) -> None:
    B, T = 2, 40
    q, k, v = _qkv(B, 4, 2, T, 16, device, seed=4)
    keep = torch.ones(B, 1, T, T, dtype=torch.bool, device=device)
    keep[0, :, :, :7] = False  # left padding of the first sequence: its keys 0..6
    keep[0, :, :7, 0] = True  # padding queries see one key (no row fully masked)
    additive = torch.zeros(keep.shape, device=device).masked_fill(~keep, -1e9)
    mask = keep if kind == "bool" else additive
    ref = _reference(q, k, v, causal=True, mask=keep)
    out = compensated_attention(q, k, v, causal=True, mask=mask)
    assert _error(out, ref) <= BOUND
    assert _error(float32_attention(q, k, v, causal=True, mask=mask), ref) <= 1e-6


def test_fully_masked_rows_stay_finite(device: torch.device) -> None:
    q, k, v = _qkv(1, 2, 2, 20, 16, device, seed=5)
    keep = torch.ones(1, 1, 20, 20, dtype=torch.bool, device=device)
    keep[..., 3, :] = False
    out = compensated_attention(q, k, v, causal=False, mask=keep)
    assert bool(out.isfinite().all())
    others = torch.arange(20) != 3
    ref = _reference(q, k, v, causal=False, mask=keep)
    assert _error(out[:, :, others], ref[:, :, others]) <= BOUND


def test_refuses_what_it_cannot_compute() -> None:
    q = torch.zeros(1, 4, 8, 16)
    with pytest.raises(CurvatureError, match="divide"):
        compensated_attention(q, torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16))
    with pytest.raises(CurvatureError, match="float32"):
        compensated_attention(q.bfloat16(), q.bfloat16(), q.bfloat16())
    with pytest.raises(CurvatureError, match="broadcast"):
        compensated_attention(q, q, q, mask=torch.ones(2, 1, 8, 8, dtype=torch.bool))


def test_a_kernel_that_cannot_run_falls_back_to_float32_sdpa_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A GPU the kernel does not compile for (an old one, too little shared memory): the call is
    # float32 SDPA with a warning, and the kernel is not tried again on that device.
    calls = []

    def broken(*args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(attention, "_INTERPRETED", False)
    monkeypatch.setattr(attention, "_FAILED", {})
    monkeypatch.setattr(attention, "_triton_attention", broken)
    monkeypatch.setattr(attention.torch.cuda, "get_device_capability", lambda device: (9, 0))
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    device = torch.device("cuda")  # kernel_runs_on only reads the device's type and name here
    assert kernel_runs_on(device)
    monkeypatch.setattr(attention, "kernel_runs_on", lambda d: str(d) not in attention._FAILED)
    with pytest.warns(RuntimeWarning, match="runs as float32 SDPA from now on"):
        out = compensated_attention(q, k, v)
    assert torch.equal(out, float32_attention(q, k, v))
    assert attention._FAILED and len(calls) == 1
    compensated_attention(q, k, v)
    assert len(calls) == 1  # not tried again


def test_no_kernel_below_compute_capability_8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "_INTERPRETED", False)
    monkeypatch.setattr(attention.torch.cuda, "get_device_capability", lambda device: (7, 5))
    assert not kernel_runs_on(torch.device("cuda"))
    monkeypatch.setattr(attention.torch.cuda, "get_device_capability", lambda device: (8, 0))
    assert kernel_runs_on(torch.device("cuda"))


# -- the hook into transformers models -----------------------------------------------------------


def _tiny_llama(device: torch.device, attn: str = "sdpa") -> nn.Module:
    """Random init at 5x the usual scale, so attention is far from uniform and the loss feels it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
        initializer_range=0.1,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).bfloat16().eval().to(device)


def lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss  # type: ignore[no-any-return]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, ...]]]:
    """Shapes of the queries the hook handed to the kernel."""
    seen: list[tuple[int, ...]] = []
    inner = attention.compensated_attention

    def spy(q: Tensor, k: Tensor, v: Tensor, **kw: object) -> Tensor:
        seen.append(tuple(q.shape))
        return inner(q, k, v, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "compensated_attention", spy)
    yield seen


def _hook(monkeypatch: pytest.MonkeyPatch, device: torch.device, on: bool) -> None:
    """On: the default on CUDA; on CPU the interpreter must be asked for."""
    mode = ("1" if device.type == "cuda" else "interpret") if on else "0"
    monkeypatch.setenv(attention.MODE_VARIABLE, mode)


def _zeros(model: nn.Module) -> list[Tensor]:
    return [torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hook_switches_and_restores_exactly(
    monkeypatch: pytest.MonkeyPatch, device: torch.device, calls: list[tuple[int, ...]], attn: str
) -> None:
    _hook(monkeypatch, device, on=True)
    model = _tiny_llama(device, attn)
    config = model.config  # type: ignore[union-attr]
    before = dict(vars(config))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0)).to(device)
    params = list(model.parameters())
    with torch.no_grad(), Perturbation(model, params, _zeros(model), "compensated"):
        assert config._attn_implementation == ATTENTION_NAME
        lm_loss(model, ids)
    assert calls == [(2, 4, 12, 16)] * 2  # both layers, through the kernel
    assert vars(config) == before and config._attn_implementation == attn
    with (
        pytest.raises(RuntimeError, match="boom"),
        torch.no_grad(),
        Perturbation(model, params, _zeros(model), "compensated"),
    ):
        assert config._attn_implementation == ATTENTION_NAME
        raise RuntimeError("boom")
    assert vars(config) == before


def test_hook_off_leaves_the_model_alone(
    monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    model = _tiny_llama(device)
    params = list(model.parameters())
    modes = ["0"] if device.type == "cuda" else ["0", "1"]  # on CPU only "interpret" switches
    for mode in modes:
        monkeypatch.setenv(attention.MODE_VARIABLE, mode)
        with torch.no_grad(), Perturbation(model, params, _zeros(model), "compensated"):
            assert model.config._attn_implementation == "sdpa"  # type: ignore[union-attr]


def test_measurements_agree_with_the_hook_on_and_off(
    monkeypatch: pytest.MonkeyPatch, device: torch.device, calls: list[tuple[int, ...]]
) -> None:
    model = _tiny_llama(device)
    ids = torch.randint(0, 64, (4, 24), generator=torch.Generator().manual_seed(1)).to(device)
    reference = copy.deepcopy(model).float()
    lm_loss(reference, ids).backward()
    params = list(model.parameters())
    d = adamw_direction(params, [p.grad for p in reference.parameters()], weight_decay=0.0)  # type: ignore[misc]
    runs = {}
    for on in (False, True):
        _hook(monkeypatch, device, on)
        r = measure(model, lm_loss, d, ids, lr_guess=1e-3, precision="compensated")
        changes = [
            loss_change(model, lm_loss, d, ids, lr, loss0=r.loss0, precision="compensated")
            for lr in (1e-5, 1e-4)
        ]
        runs[on] = (r, changes)
    assert calls, "the hook never reached the kernel"
    (r_off, changes_off), (r_on, changes_on) = runs[False], runs[True]
    assert r_on.status == r_off.status == "ok"
    # The loss and the one-step loss changes to float32 accuracy: a few units in the last place
    # of the loss (measured on CPU: one).
    ulp = 2.0**-23 * r_off.loss0
    assert abs(r_on.loss0 - r_off.loss0) <= 8 * ulp
    for on, off in zip(changes_on, changes_off, strict=True):
        assert abs(on.delta - off.delta) <= 8 * ulp and abs(off.delta) > 1e3 * ulp
    # eta_c: the same up to the search's own tolerance (here the brackets agree to 2e-4).
    assert r_on.eta == pytest.approx(r_off.eta, rel=1 / 16)


def test_padded_batch_through_the_hook(
    monkeypatch: pytest.MonkeyPatch, device: torch.device, calls: list[tuple[int, ...]]
) -> None:
    # A padding mask makes transformers build a boolean (B, 1, T, T) mask: the kernel takes it.
    model = _tiny_llama(device)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2)).to(device)
    pad = torch.ones_like(ids)
    pad[0, :3] = 0  # left padding
    params = list(model.parameters())
    logits = {}
    for on in (False, True):
        _hook(monkeypatch, device, on)
        with torch.no_grad(), Perturbation(model, params, _zeros(model), "compensated"):
            out = model(input_ids=ids, attention_mask=pad).logits  # type: ignore[operator]
        logits[on] = out.double()[pad.bool()]  # (real tokens, V)
    assert len(calls) == 2
    assert _error(logits[True], logits[False]) <= 4 * BOUND
