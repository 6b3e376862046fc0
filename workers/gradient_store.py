"""Per-domain gradients kept on disk between workers (issue 11, part 5: reuse).

A sweep's K x B per-domain gradients depend on the model's weights, the direction sets' data and
order, the batch shape and seed, and the worker's dtype and device; not on the candidate ratios,
the planned rate or the optimizer (that transform is applied after mixing). The sweep's
fingerprint (written by the API at submit, ``service/fingerprint.py``) hashes the first of those
per part, so the store keys each set of gradients by that fingerprint plus the rest: a worker
that did not compute them (another process, a restart) reads them back instead of running
``K x B`` backward passes again, for added candidates and for any later sweep over the same files.

Off unless the operator gives it room (``SHARPMIX_GRADIENT_STORE_BYTES``): gradients of a 1B model
are tens of GB. Sets larger than the room are not written. Files are written whole and then
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from contract.spec import SweepSpec
from workers.curvature import DomainGradients

META = "meta.json"


@dataclass(frozen=True)
class GradientStore:
    """Where gradients are kept and how many bytes one sweep's set may take (0: off)."""

    directory: Path
    max_bytes: int

    def key(
        self, fingerprint: dict[str, str] | None, spec: SweepSpec, dtype: torch.dtype, device: str
    ) -> str | None:
        """The store key of a sweep's gradients on this worker, or None when they must not be
        kept: the store is off, the sweep has no fingerprint, or its hub model is unpinned."""
        if self.max_bytes <= 0 or fingerprint is None:
            return None
        if spec.model.path is None and spec.model.revision is None:
            return None  # "whatever the hub serves today" is no fingerprint
        basis = {
            "fingerprint": fingerprint,
            # The order of the direction sets is the order of the gradients.
            "directions": [ref.name for ref in spec.direction_sets()],
            "dtype": str(dtype),
            "device": torch.device(device).type,
        }
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:32]

    def has(self, key: str) -> bool:
        """Whether gradients are kept under ``key``."""
        return (self.directory / key / META).is_file()

    def load(self, key: str, model: nn.Module) -> list[DomainGradients] | None:
        """The stored gradients of ``key`` for ``model``'s parameters, or None when absent."""
        folder = self.directory / key
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            return None
        named = dict(model.named_parameters())
        if any(name not in named for name in meta["params"]):
            return None
        params: list[Tensor] = [named[name] for name in meta["params"]]
        device = params[0].device if meta["device"] != "cpu" else torch.device("cpu")
        out = []
        for b in range(meta["batches"]):
            try:
                tensors = load_file(str(folder / f"batch{b}.safetensors"), device=str(device))
            except (OSError, SafetensorError):
                return None
            grads = [
                [tensors[f"{k}.{i}"] for i in range(len(params))] for k in range(meta["domains"])
            ]
            out.append(DomainGradients(params=params, grads=grads, backward_passes=0))
        return out

    def save(self, key: str, model: nn.Module, gradients: list[DomainGradients]) -> bool:
        """Keep ``gradients`` under ``key`` when they fit the room; True when written."""
        if not gradients:
            return False
        size = sum(g.numel() * g.element_size() for d in gradients for k in d.grads for g in k)
        if size > self.max_bytes:
            return False
        names = {id(p): name for name, p in model.named_parameters()}
        params = gradients[0].params
        folder = self.directory / key
        partial = self.directory / f".{key}.{os.getpid()}"
        partial.mkdir(parents=True, exist_ok=True)
        for b, batch in enumerate(gradients):
            tensors = {
                f"{k}.{i}": g.detach().contiguous()
                for k, domain in enumerate(batch.grads)
                for i, g in enumerate(domain)
            }
            save_file(tensors, str(partial / f"batch{b}.safetensors"))
        meta = {
            "params": [names[id(p)] for p in params],
            "domains": len(gradients[0].grads),
            "batches": len(gradients),
            "device": gradients[0].grads[0][0].device.type,
        }
        (partial / META).write_text(json.dumps(meta))
        try:
            partial.rename(folder)
        except OSError:  # another worker kept the same gradients first
            for file in partial.iterdir():
                file.unlink()
            partial.rmdir()
        return True


__all__ = ["GradientStore"]
