"""Checking mixture weights over a sweep's domains (method.md §3)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from workers.data.errors import DataError

# Weights typed by people (0.3, 0.7) or produced by a sampler never sum to exactly 1.
SIMPLEX_TOLERANCE = 1e-6


def validate_simplex_weights(
    weights: Mapping[str, float], domains: Iterable[str], *, field: str = "weights"
) -> dict[str, float]:
    """Check that ``weights`` is a point on the simplex over ``domains``.

    Args:
        weights: Domain name -> weight; a domain left out has weight 0.
        domains: The sweep's domain names.
        field: Sweep field named in errors.

    Returns:
        Weights for every domain, in ``domains`` order, renormalised to sum to exactly 1.

    Raises:
        DataError: Unknown domain, negative or non-finite weight, or a sum away from 1.
    """
    names = list(domains)
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise DataError(
            field, f"unknown domains {unknown}; weights may name only {', '.join(names)}"
        )
    for name, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise DataError(f"{field}.{name}", f"weight {weight} must be finite and >= 0")
    total = math.fsum(weights.values())
    if abs(total - 1.0) > SIMPLEX_TOLERANCE:
        raise DataError(field, f"weights sum to {total:g}; they must sum to 1")
    return {name: weights.get(name, 0.0) / total for name in names}
