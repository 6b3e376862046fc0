"""The bounded numbers a sweep request is written in; a reader of the JSON schema sees each bound
inline (they are aliases, not models).

Ratio means the fraction of pre-training tokens in the mix: 0 is pure fine-tuning data, 1 is pure
pre-training data (see ../shared/method.md §3).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Ratio = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]

__all__ = ["Beta", "NonNegativeFloat", "PositiveFloat", "Ratio"]
