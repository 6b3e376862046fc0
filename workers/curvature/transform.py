"""The optimizer transform of a planned run, built from its hyperparameters and saved state.

`mixed_direction` needs a `DirectionFn`, `(params, grads) -> direction`. With a live
`torch.optim.Optimizer` that is `optimizer_transform`; a sweep has no optimizer, only what the
planned run will use: its kind, its hyperparameters and, optionally, the moments or momentum
buffers it saved, keyed by parameter name (``exp_avg.<name>``, ``exp_avg_sq.<name>``,
``max_exp_avg_sq.<name>``, ``momentum_buffer.<name>`` and ``step``). `state_transform` turns
those into the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from workers.curvature.direction import AdamState, adam_direction, sgd_direction
from workers.curvature.mixture import DirectionFn

__all__ = ["AdamHyper", "SGDHyper", "state_transform"]


@dataclass(frozen=True)
class SGDHyper:
    """SGD as torch defines it: momentum, dampening, Nesterov, coupled weight decay."""

    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass(frozen=True)
class AdamHyper:
    """Adam (``decoupled=False``: L2 decay added to the gradient) or AdamW (decoupled decay)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    decoupled: bool = True


def state_transform(
    hyper: SGDHyper | AdamHyper, model: nn.Module, state: Mapping[str, Tensor] | None
) -> DirectionFn:
    """The transform from a (mixed) gradient to the optimizer's update direction.

    Args:
        hyper: The optimizer and its hyperparameters.
        model: The model whose parameters the directions are for; its parameter names key
            ``state``.
        state: Saved moments or momentum buffers by ``<kind>.<parameter name>``, with ``step``
            for Adam; None starts them empty, as a fresh optimizer would.

    Returns:
        A `DirectionFn` over any subset of ``model``'s parameters.
    """
    names = {id(p): n for n, p in model.named_parameters()}

    def keyed(kind: str, params: Sequence[Tensor]) -> list[Tensor]:
        assert state is not None
        return [state[f"{kind}.{names[id(p)]}"] for p in params]

    if isinstance(hyper, SGDHyper):
        sgd = hyper

        def sgd_transform(params: Sequence[Tensor], grads: Sequence[Tensor]) -> list[Tensor]:
            buffers: list[Tensor | None] | None = (
                list(keyed("momentum_buffer", params)) if state is not None else None
            )
            return sgd_direction(
                params,
                grads,
                momentum_buffers=buffers,
                momentum=sgd.momentum,
                dampening=sgd.dampening,
                nesterov=sgd.nesterov,
                weight_decay=sgd.weight_decay,
            )

        return sgd_transform
    adam = hyper

    def adam_transform(params: Sequence[Tensor], grads: Sequence[Tensor]) -> list[Tensor]:
        moments = None
        if state is not None:
            steps = int(state["step"].item())
            moments = AdamState(
                exp_avg=keyed("exp_avg", params),
                exp_avg_sq=keyed("exp_avg_sq", params),
                steps=[steps] * len(params),
                max_exp_avg_sq=keyed("max_exp_avg_sq", params) if adam.amsgrad else None,
            )
        return adam_direction(
            params,
            grads,
            state=moments,
            betas=adam.betas,
            eps=adam.eps,
            weight_decay=adam.weight_decay,
            decoupled_weight_decay=adam.decoupled,
            amsgrad=adam.amsgrad,
        )

    return adam_transform
