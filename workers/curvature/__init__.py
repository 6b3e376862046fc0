"""The curvature engine: critical and relative critical sharpness (see ../shared method.md).

Read in this order:

- `direction`: the update direction `d` an optimizer step would take (SGD, Adam, AdamW).
- `search`: the line search for `eta_c = min{eta: L(theta - eta d) > L(theta)}`.
- `perturb`: moving a model to `theta - eta d` exactly (also for bf16 models) and back.
- `compensated`: bf16 products with 16-bit operands and float32 results, for `perturb`.
- `attention`: causal attention on float32 q, k, v from those products (a Triton kernel), for
  `perturb`; imported from `workers.curvature.attention`, not re-exported here.
- `measure`: the line function on a real model and one batch; the one-step loss change; the
  line's slope from a gradient.
- `mixture`: per-domain gradients mixed for any simplex weights (streamed in from CPU memory
  when they do not fit beside the model), then the optimizer transform.
- `transform`: that transform for a planned run, from its hyperparameters and saved state.
- `hessian`: directional sharpness and `lambda_max` for validation on small models.
- `stats`: mean, spread, confidence interval and point estimate of eta_c over batches.
- `monitor`: lambda_c along the optimizer's own steps inside a training loop (a step pre-hook;
  `workers.integrations` has the `transformers.Trainer` callback).
- `distributed`: the same measurements on a model sharded with FSDP2 over the ranks of a process
  group (per-domain gradients, directions and the exact perturbation on local shards, the loss
  all-reduced); imported from `workers.curvature.distributed`, not re-exported here.

Imports only torch, transformers, datasets, numpy and the standard library (and Triton, where
installed, in `attention`), so it runs on a bare GPU box and inside someone else's training loop.
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
    stream_mixed_gradients,
)
from workers.curvature.monitor import (
    BasinWarning,
    MonitorReport,
    SharpnessMonitor,
    SharpnessReading,
)
from workers.curvature.perturb import Perturbation, Precision
from workers.curvature.search import CriticalLR, SearchMethod, Status, critical_lr, is_increase
from workers.curvature.stats import (
    SharpnessStats,
    SpreadWarning,
    eta_estimate,
    summarize,
    t_quantile,
)
from workers.curvature.transform import AdamHyper, SGDHyper, state_transform

__all__ = [
    # directions
    "AdamHyper",
    "AdamState",
    # training-loop monitoring
    "BasinWarning",
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
    "MonitorReport",
    "Perturbation",
    "Precision",
    "SGDHyper",
    "SearchMethod",
    # statistics
    "SharpnessMonitor",
    "SharpnessReading",
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
    "eta_estimate",
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
    "state_transform",
    "stream_mixed_gradients",
    "summarize",
    "t_quantile",
    "update_direction",
]
