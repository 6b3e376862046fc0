"""Optimizers as users configure them: SGD with momentum, dampening and nesterov (buffers fresh
or given), Adam and AdamW with amsgrad, with or without state; state that cannot be honoured is
refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from contract.mix import Candidate
from contract.spec import SweepSpec
from tests.conftest import SweepAssets
from workers.data import DataError, LoadPolicy
from workers.data.optimizer_state import load_optimizer_state
from workers.sweep import prepare
from workers.trajectory import run_trajectory


def _state_file(
    assets: SweepAssets, tmp_path: Path, optimizer: torch.optim.Optimizer, kinds: tuple[str, ...]
) -> tuple[str, torch.nn.Module]:
    """Take two real steps with ``optimizer`` on the assets' model and save its state."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(assets.root / assets.model_dir)
    optimizer.add_param_group({"params": [p for p in model.parameters() if p.requires_grad]})
    batch = torch.randint(0, model.config.vocab_size, (4, 16))
    for _ in range(2):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors = {}
    for name, p in model.named_parameters():
        for kind in kinds:
            tensors[f"{kind}.{name}"] = optimizer.state[p][kind].detach().float().contiguous()
    if "exp_avg" in kinds:
        tensors["step"] = torch.tensor([2.0])
    path = tmp_path / "state.safetensors"
    save_file(tensors, str(path))
    return str(path), model


def _spec(assets: SweepAssets, optimizer: dict[str, object], state: str | None = None) -> SweepSpec:
    model: dict[str, object] = {"path": assets.model_dir}
    if state is not None:
        model["optimizer_state"] = state
    return SweepSpec.model_validate(
        assets.spec(
            model=model,
            optimizer=optimizer,
            ratios=[0.5],
            batches=1,
            trajectory={"steps": 2, "measure_every": 1},
        )
    )


def _prepare(assets: SweepAssets, tmp_path: Path, spec: SweepSpec):  # type: ignore[no-untyped-def]
    roots = (assets.root, tmp_path)
    policy = LoadPolicy(allowed_roots=roots, cache_dir=tmp_path / "cache")
    return prepare(spec, policy, device="cpu", dtype=torch.float32)


def test_sgd_nesterov_with_given_buffers_is_the_step_torch_takes(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    maker = torch.optim.SGD([torch.zeros(1)], lr=0.1, momentum=0.9, nesterov=True)
    maker.param_groups.clear()  # the model's parameters are added by _state_file
    path, _ = _state_file(sweep_assets, tmp_path, maker, ("momentum_buffer",))
    optimizer = {"name": "sgd", "momentum": 0.9, "nesterov": True}
    prepared = _prepare(sweep_assets, tmp_path, _spec(sweep_assets, optimizer, path))
    grads = prepared.gradients[0]
    params = grads.params
    g = list(grads.grads[1])  # the fine-tuning domain's gradient
    direction = prepared.transform(params, g)
    # torch's own step from the same buffers and gradient.
    state = load_optimizer_state(Path(path), prepared.model)
    names = {id(p): n for n, p in prepared.model.named_parameters()}
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    sgd = torch.optim.SGD(copies, lr=1e-3, momentum=0.9, nesterov=True)
    for copy, grad, p in zip(copies, g, params, strict=True):
        copy.grad = grad.clone()
        sgd.state[copy] = {"momentum_buffer": state[f"momentum_buffer.{names[id(p)]}"].clone()}
    sgd.step()
    for d, copy, p in zip(direction, copies, params, strict=True):
        torch.testing.assert_close(p.detach() - 1e-3 * d, copy.detach(), rtol=1e-5, atol=1e-7)
    fresh = _prepare(sweep_assets, tmp_path, _spec(sweep_assets, optimizer)).transform(params, g)
    assert not all(torch.equal(a, b) for a, b in zip(direction, fresh, strict=True))


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "momentum": 0.9, "dampening": 0.1},
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        {"name": "adam", "amsgrad": True, "weight_decay": 0.01},
        {"name": "adamw", "amsgrad": True, "betas": [0.9, 0.95]},
    ],
)
def test_trajectories_step_with_every_optimizer(
    sweep_assets: SweepAssets, tmp_path: Path, optimizer: dict[str, object]
) -> None:
    spec = _spec(sweep_assets, optimizer)
    prepared = _prepare(sweep_assets, tmp_path, spec)
    result = run_trajectory(prepared, Candidate(0.5))
    assert result.steps_done == 2
    assert any(p.eta_c is not None for p in result.points if p.step == 0)


def test_adam_state_with_amsgrad_is_used_and_a_mismatch_is_refused(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    maker = torch.optim.AdamW([torch.zeros(1)], lr=1e-3, amsgrad=True)
    maker.param_groups.clear()
    kinds = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    path, _ = _state_file(sweep_assets, tmp_path, maker, kinds)
    amsgrad = _spec(sweep_assets, {"name": "adamw", "amsgrad": True}, path)
    assert run_trajectory(_prepare(sweep_assets, tmp_path, amsgrad), Candidate(0.5)).steps_done == 2
    plain = _spec(sweep_assets, {"name": "adamw"}, path)
    with pytest.raises(DataError, match="amsgrad"):
        _prepare(sweep_assets, tmp_path, plain)
    sgd = _spec(sweep_assets, {"name": "sgd", "momentum": 0.9}, path)
    with pytest.raises(DataError, match="holds Adam moments"):
        _prepare(sweep_assets, tmp_path, sgd)
