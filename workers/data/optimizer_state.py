"""Optimizer state for the update direction, in a safe, name-keyed file layout.

Layout (one flat mapping of tensors, stored as safetensors, or as a ``torch.save`` dict that
``torch.load(weights_only=True)`` can read), either Adam/AdamW moments:

- ``exp_avg.<param_name>``: first moment ``m`` of parameter ``<param_name>``, same shape;
- ``exp_avg_sq.<param_name>``: second moment ``v``, same shape;
- ``max_exp_avg_sq.<param_name>``: running maximum of ``v``, only for amsgrad;
- ``step``: number of optimizer steps taken so far, a one-element tensor (``t`` in method.md §1);

or SGD momentum buffers: ``momentum_buffer.<param_name>`` for every trainable parameter.

``<param_name>`` is the name in ``model.named_parameters()`` (tied weights appear once). Every
trainable parameter needs both moments. Names rather than positions key the state so the file
stays valid whatever order a training loop built its parameter groups in.
:func:`save_optimizer_state` writes this layout from a live ``torch.optim.AdamW``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workers.data.errors import DataError

_FIELD = "model.optimizer_state"
_SAFETENSORS_SUFFIX = ".safetensors"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def load_optimizer_state(
    path: Path, model: torch.nn.Module, *, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read and validate AdamW state for ``model`` from ``path``.

    Args:
        path: A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin`` file readable with
            ``torch.load(weights_only=True)``, in the layout above.
        model: The model the state belongs to; names and shapes are checked against it.
        device: Where to put the tensors.

    Returns:
        The state, fp32 (moments are compared with fp32 master weights) on ``device``.

    Raises:
        DataError: Unreadable file, unsupported suffix, or state that does not match ``model``.
    """
    raw = _read(path)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    families = {key.split(".", 1)[0] for key in raw if key != "step"}
    if "momentum_buffer" in families:
        kinds: tuple[str, ...] = ("momentum_buffer",)
        layout = "momentum_buffer.<name>"
    else:
        if "step" not in raw or raw["step"].numel() != 1:
            raise DataError(_FIELD, f"{path.name} has no one-element 'step' tensor; add the step")
        kinds = ("exp_avg", "exp_avg_sq")
        if "max_exp_avg_sq" in families:
            kinds += ("max_exp_avg_sq",)
        layout = "exp_avg.<name> and exp_avg_sq.<name> (and max_exp_avg_sq.<name> for amsgrad)"
    expected = {f"{kind}.{name}" for name in params for kind in kinds}
    missing = sorted(expected - raw.keys())
    extra = sorted(raw.keys() - expected - {"step"})
    if missing or extra:
        raise DataError(
            _FIELD,
            f"{path.name} does not match the model: missing {_few(missing)}, unexpected "
            f"{_few(extra)}; keys must be {layout} for every trainable parameter name in "
            "model.named_parameters(), not both kinds of state",
        )
    for name, param in params.items():
        for kind in kinds:
            shape = tuple(raw[f"{kind}.{name}"].shape)
            if shape != tuple(param.shape):
                raise DataError(
                    _FIELD,
                    f"{kind}.{name} has shape {shape} but the parameter has "
                    f"{tuple(param.shape)}; the state is for a different model",
                )
    return {key: value.to(device=device, dtype=torch.float32) for key, value in raw.items()}


def save_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path
) -> None:
    """Write ``optimizer``'s AdamW state for ``model`` to ``path`` (safetensors).

    Args:
        model: The model whose parameters the optimizer updates.
        optimizer: An ``Adam``/``AdamW`` that has taken at least one step.
        path: Destination ``.safetensors`` file.

    Raises:
        ValueError: When the optimizer has no state for some trainable parameter yet.
    """
    tensors: dict[str, torch.Tensor] = {}
    step = 0.0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        state = optimizer.state.get(param)
        if not state:
            raise ValueError(f"no optimizer state for {name}; take a step first")
        tensors[f"exp_avg.{name}"] = state["exp_avg"].detach().float().contiguous().cpu()
        tensors[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().float().contiguous().cpu()
        step = float(state["step"])
    tensors["step"] = torch.tensor([step])
    save_file(tensors, str(path))


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == _SAFETENSORS_SUFFIX:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise DataError(_FIELD, f"cannot read {path.name} as safetensors: {exc}") from exc
    if path.suffix in _TORCH_SUFFIXES:
        try:
            # weights_only=True: tensors and plain containers only, no pickled code.
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for a bad file
            raise DataError(
                _FIELD,
                f"cannot read {path.name} with torch.load(weights_only=True): {exc}; "
                "save a flat dict of tensors, or use safetensors",
            ) from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise DataError(_FIELD, f"{path.name} must hold a flat dict of name -> tensor")
        return loaded
    raise DataError(
        _FIELD,
        f"unsupported optimizer state file '{path.name}'; use .safetensors "
        f"(or {', '.join(_TORCH_SUFFIXES)} for torch.save dicts)",
    )


def _few(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:3])
    return shown if len(names) <= 3 else f"{shown} and {len(names) - 3} more"
