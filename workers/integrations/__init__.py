"""Sharpness monitoring inside other people's training code.

- `SharpnessCallback`: a `transformers.TrainerCallback` around `workers.curvature.monitor`.

For a plain PyTorch loop use `workers.curvature.SharpnessMonitor.attach(optimizer)` directly. Part
of the compute core: imports torch and transformers only (``tools/check_imports.py``).
"""

from workers.integrations.trainer import SharpnessCallback

__all__ = ["SharpnessCallback"]
