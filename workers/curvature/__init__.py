"""The curvature engine: critical and relative critical sharpness (see ../shared method.md).

Read in this order:

- `direction`: the update direction `d` an optimizer step would take (SGD, Adam, AdamW).
- `search`: the line search for `eta_c = min{eta: L(theta - eta d) > L(theta)}`.
- `perturb`: moving a model to `theta - eta d` exactly (also for bf16 models) and back.
- `compensated`: bf16 products with 16-bit operands and float32 results, for `perturb`.
- `measure`: the line function on a real model and one batch; the one-step loss change; the
  line's slope from a gradient.
- `mixture`: per-domain gradients mixed for any simplex weights, then the optimizer transform.
- `hessian`: directional sharpness and `lambda_max` for validation on small models.
- `stats`: mean, spread and confidence interval over batches.

Imports only torch, transformers, datasets, numpy and the standard library, so it runs on a bare
GPU box and inside someone else's training loop.
"""

from workers.curvature.direction import (
    AdamState,
    adam_direction,
    adamw_direction,
    direction_params,
    optimizer_parameters,
    sgd_direction,
    update_direction,
)
from workers.curvature.errors import CurvatureError
from workers.curvature.hessian import (
    DirectionalSharpness,
    Eigenvalue,
    HessianOperator,
    adam_preconditioner,
    directional_sharpness,
    lambda_max,
)
from workers.curvature.measure import LossChange, line_slope, loss_change, measure
from workers.curvature.mixture import (
    DirectionFn,
    DomainGradients,
    check_weights,
    domain_gradients,
    mix_gradients,
    mixed_direction,
    optimizer_transform,
)
from workers.curvature.perturb import Perturbation, Precision
from workers.curvature.search import CriticalLR, SearchMethod, Status, critical_lr, is_increase
from workers.curvature.stats import SharpnessStats, SpreadWarning, summarize, t_quantile

__all__ = [
    # directions
    "AdamState",
    # line search
    "CriticalLR",
    # errors
    "CurvatureError",
    # mixtures
    "DirectionFn",
    # validation
    "DirectionalSharpness",
    "DomainGradients",
    "Eigenvalue",
    "HessianOperator",
    # measurement on a model
    "LossChange",
    "Perturbation",
    "Precision",
    "SearchMethod",
    # statistics
    "SharpnessStats",
    "SpreadWarning",
    "Status",
    "adam_direction",
    "adam_preconditioner",
    "adamw_direction",
    "check_weights",
    "critical_lr",
    "direction_params",
    "directional_sharpness",
    "domain_gradients",
    "is_increase",
    "lambda_max",
    "line_slope",
    "loss_change",
    "measure",
    "mix_gradients",
    "mixed_direction",
    "optimizer_parameters",
    "optimizer_transform",
    "sgd_direction",
    "summarize",
    "t_quantile",
    "update_direction",
]
