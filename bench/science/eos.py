"""Edge of Stability: full-batch GD on a small tanh MLP at several constant learning rates.

What it should show (method.md §5, Cohen et al. 2021): the sharpness rises during training
(progressive sharpening) until it reaches 2/eta, then hovers there while the loss keeps falling
non-monotonically. Every `every` steps we record three measures of it on the full batch:

- `lambda_c = 2 / eta_c` along the GD direction (the gradient), by `workers.curvature.measure`;
- `lambda_dir = g^T H g / g^T g`, its analytic twin from one Hessian-vector product;
- `lambda_max`, the top Hessian eigenvalue by power iteration (the classical EoS quantity).

The data are fixed Gaussian inputs labelled by a random teacher network, fitted with the square
loss (the setting in which progressive sharpening is strongest).

Run alone: `python -m bench.science.eos --tiny` (CPU, seconds).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.science.common import setup_torch, sync, write_json
from workers.curvature import directional_sharpness, lambda_max, measure, sgd_direction

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class EosConfig:
    """Sizes of the EoS experiment.

    Attributes:
        samples: Training points (one full batch).
        dim: Input dimension.
        classes: Outputs (one-hot targets, square loss).
        width: Hidden width of the two tanh layers.
        lrs: Constant GD learning rates, one run each from the same initialisation.
        steps: GD steps per run.
        every: Steps between measurements.
        power_iters: Hessian-vector products per `lambda_max`.
        seed: Seed of data, teacher and initialisation.
    """

    samples: int = 2000
    dim: int = 20
    classes: int = 5
    width: int = 128
    lrs: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    steps: int = 6000
    every: int = 60
    power_iters: int = 20
    seed: int = 0

    @classmethod
    def tiny(cls) -> EosConfig:
        """A CPU-debug size: the same code path in a few seconds."""
        return cls(samples=200, width=32, lrs=(0.05, 0.2), steps=60, every=20, power_iters=5)


def _mlp(cfg: EosConfig) -> nn.Module:
    return nn.Sequential(
        nn.Linear(cfg.dim, cfg.width),
        nn.Tanh(),
        nn.Linear(cfg.width, cfg.width),
        nn.Tanh(),
        nn.Linear(cfg.width, cfg.classes),
    )


def make_data(cfg: EosConfig, device: torch.device) -> Batch:
    """Gaussian inputs `(N, dim)` and one-hot labels `(N, classes)` of a random teacher."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.samples, cfg.dim, generator=gen)
    teacher = nn.Sequential(nn.Linear(cfg.dim, 64), nn.Tanh(), nn.Linear(64, cfg.classes))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        labels = teacher(x).argmax(1)
    y = nn.functional.one_hot(labels, cfg.classes).float()
    return x.to(device), y.to(device)


def square_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Half the squared error summed over outputs, averaged over points."""
    x, y = batch
    out: Tensor = model(x)  # (N, classes)
    return 0.5 * ((out - y) ** 2).sum(1).mean()


def _measure(model: nn.Module, batch: Batch, cfg: EosConfig, guess: float) -> dict[str, Any]:
    """lambda_c, lambda_dir and lambda_max at the current parameters, with their costs."""
    params = [p for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss = square_loss(model, batch)
    torch.autograd.backward(loss)
    direction = sgd_direction(params, [p.grad for p in params if p.grad is not None])
    device = params[0].device
    sync(device)
    t0 = time.perf_counter()
    crit = measure(model, square_loss, direction, batch, lr_guess=guess, params=params)
    sync(device)
    t1 = time.perf_counter()
    ds = directional_sharpness(model, square_loss, direction, batch, params=params)
    sync(device)
    t2 = time.perf_counter()
    top = lambda_max(model, square_loss, batch, params=params, iterations=cfg.power_iters)
    sync(device)
    t3 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    return {
        "loss": float(loss.detach()),
        "eta_c": crit.eta,
        "status": crit.status,
        "lambda_c": crit.sharpness,
        "lambda_dir": ds.value,
        "lambda_max": top.value,
        "lambda_max_converged": top.converged,
        "forwards_c": crit.forwards,
        "seconds_c": t1 - t0,
        "seconds_dir": t2 - t1,
        "hvps_max": top.iterations,
        "seconds_max": t3 - t2,
    }


def run_eos(cfg: EosConfig, device: torch.device, deadline: float = float("inf")) -> dict[str, Any]:
    """Train one GD run per learning rate and record the sharpness curves.

    Args:
        cfg: Sizes.
        device: Where to run.
        deadline: `time.perf_counter()` value after which remaining runs are skipped.

    Returns:
        `{"config": ..., "runs": [{"lr", "two_over_lr", "points": [...], "seconds"}]}`.
    """
    batch = make_data(cfg, device)
    torch.manual_seed(cfg.seed)
    init = _mlp(cfg).to(device).state_dict()
    runs = []
    for lr in cfg.lrs:
        if time.perf_counter() > deadline:
            break
        started = time.perf_counter()
        model = _mlp(cfg).to(device)
        model.load_state_dict(init)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        points: list[dict[str, Any]] = []
        guess = lr
        for step in range(cfg.steps + 1):
            if step % cfg.every == 0:
                point = _measure(model, batch, cfg, guess)
                point["step"] = step
                points.append(point)
                if point["status"] == "ok":
                    guess = point["eta_c"]  # warm start (method.md §2)
            if step == cfg.steps:
                break
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(square_loss(model, batch))
            opt.step()
        sync(device)
        runs.append(
            {
                "lr": lr,
                "two_over_lr": 2 / lr,
                "points": points,
                "seconds": time.perf_counter() - started,
            }
        )
        last = points[-1]
        print(
            f"eos lr {lr:g}: loss {last['loss']:.4f} lambda_c {last['lambda_c']:.1f} "
            f"lambda_dir {last['lambda_dir']:.1f} lambda_max {last['lambda_max']:.1f} "
            f"(2/lr {2 / lr:.1f}) in {runs[-1]['seconds']:.1f}s",
            flush=True,
        )
    return {"config": asdict(cfg), "runs": runs}


def main() -> None:
    """Parse, run, write `eos.json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-debug sizes")
    parser.add_argument("--out", type=Path, default=Path("bench/science/results/tiny"))
    args = parser.parse_args()
    device = setup_torch(threads=1)
    cfg = EosConfig.tiny() if args.tiny else EosConfig()
    write_json(args.out / "eos.json", run_eos(cfg, device))


if __name__ == "__main__":
    main()
