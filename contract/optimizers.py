"""The fine-tuning run's optimizer as a sweep states it (:class:`AdamWSpec`, :class:`AdamSpec`,
:class:`SGDSpec`, one of them by ``name``): it sets the update direction the sweep measures along.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.quantities import Beta, NonNegativeFloat, PositiveFloat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdamWSpec(_Strict):
    """AdamW (decoupled weight decay) as the fine-tuning run will use it; fresh state unless the
    model comes with one (``model.optimizer_state``)."""

    name: Literal["adamw"] = Field(default="adamw", description="Selects AdamW.")
    betas: tuple[Beta, Beta] = Field(
        default=(0.9, 0.999),
        description="AdamW's (beta1, beta2), as the fine-tuning run sets them.",
    )
    eps: PositiveFloat = Field(default=1e-8, description="AdamW's epsilon.")
    weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Decoupled weight decay of the fine-tuning run."
    )
    amsgrad: bool = Field(
        default=False,
        description="Use the running maximum of the second moment (with a given state, it must "
        "hold max_exp_avg_sq.<name>).",
    )


class AdamSpec(_Strict):
    """Adam with coupled (L2) weight decay, added to the gradient before the moments."""

    name: Literal["adam"] = Field(default="adam", description="Selects Adam.")
    betas: tuple[Beta, Beta] = Field(
        default=(0.9, 0.999), description="Adam's (beta1, beta2), as the fine-tuning run sets them."
    )
    eps: PositiveFloat = Field(default=1e-8, description="Adam's epsilon.")
    weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Coupled (L2) weight decay, added to the gradient."
    )
    amsgrad: bool = Field(
        default=False, description="Use the running maximum of the second moment."
    )


class SGDSpec(_Strict):
    """SGD with optional momentum; buffers start empty unless the model comes with them
    (``model.optimizer_state`` holding ``momentum_buffer.<name>``)."""

    name: Literal["sgd"] = Field(default="sgd", description="Selects SGD.")
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = Field(
        default=0.0, description="SGD momentum (its buffer starts empty)."
    )
    dampening: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = Field(
        default=0.0, description="Scales each new gradient by 1 - dampening (not the first)."
    )
    nesterov: bool = Field(
        default=False, description="Nesterov momentum (needs momentum > 0 and dampening 0)."
    )
    weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Coupled weight decay, added to the gradient."
    )

    @model_validator(mode="after")
    def _nesterov(self) -> SGDSpec:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("'nesterov' needs 'momentum' above 0 and 'dampening' 0 (as torch)")
        return self


OptimizerSpec = Annotated[AdamWSpec | AdamSpec | SGDSpec, Field(discriminator="name")]


__all__ = ["AdamSpec", "AdamWSpec", "OptimizerSpec", "SGDSpec"]
