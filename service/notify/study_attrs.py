"""The answer of a succeeded sweep written into its Optuna study, as study user attributes.

optuna-dashboard (and ``optuna.load_study(...).user_attrs``) then shows, beside the trials, what
the sweep concluded: ``answer_ratio`` (the recommended fraction of pre-training tokens, or None),
``answer_weights`` (the recommended mix's share of each set), ``answer_trial`` (the number of
the trial that measured it), ``objective``, ``planned_lr``,
``reason``, ``flat_ratio``, ``balanced_ratio``, ``least_forgetting_ratio``, ``max_stable_lr``,
``in_basin``, ``confidence``, ``warnings``, ``sweep_id`` and ``edition`` (the sweep's edition
the answer is of). Setting an attribute twice is harmless, so a retried delivery simply writes
them again, and a sweep reopened by added candidates that succeeds again writes its new answer
over the old one: the study is the sweep's, and holds its answer now.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from service.db.deliveries import DueDelivery, Outcome
from service.db.models import Sweep

__all__ = ["annotate_study", "study_attrs"]

RATIO_PARAM = "ratio"  # the parameter name the workers' studies use
WEIGHT_ATTR = "weight:"  # a k-domain trial's user attribute per set: weight:<name>


def study_attrs(sweep: Sweep, answer_trial: int | None) -> dict[str, Any]:
    """The study user attributes for a succeeded sweep's recommendation."""
    rec = sweep.recommendation or {}
    return {
        "sweep_id": sweep.id,
        "edition": sweep.edition,
        "answer_ratio": rec.get("ratio"),
        "answer_weights": rec.get("weights"),
        "answer_trial": answer_trial,
        "objective": rec.get("objective"),
        "planned_lr": rec.get("learning_rate"),
        "reason": rec.get("reason"),
        "flat_ratio": rec.get("flat_ratio"),
        "balanced_ratio": rec.get("balanced_ratio"),
        "least_forgetting_ratio": rec.get("least_forgetting_ratio"),
        "max_stable_lr": rec.get("max_stable_lr"),
        "in_basin": rec.get("in_basin"),
        "confidence": rec.get("confidence"),
        "warnings": list(rec.get("warnings") or []),
    }


def _same_mix(attrs: dict[str, Any], weights: dict[str, float]) -> bool:
    return bool(weights) and all(
        abs(float(attrs.get(f"{WEIGHT_ATTR}{name}", -1.0)) - share) < 1e-9
        for name, share in weights.items()
    )


def annotate_study(delivery: DueDelivery, sweep: Sweep, store: RDBStorage) -> Outcome:
    """Write the sweep's answer into its study; never raises for what the storage does.

    Args:
        delivery: The claimed delivery (its target is the study's name).
        sweep: The succeeded sweep.
        store: Optuna's storage on the sweep database.
    """
    started = time.monotonic()
    try:
        study = optuna.load_study(study_name=delivery.target, storage=store)
        answer = (sweep.recommendation or {}).get("ratio")
        trial = None
        if answer is not None:
            # Any state: the worker that finished the sweep may not have told its trial yet
            # (it writes the result first), but the trial holds its ratio from the start.
            weights = (sweep.recommendation or {}).get("weights") or {}
            matching = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.state != TrialState.FAIL
                and (
                    t.params.get(RATIO_PARAM) == answer
                    # A k-domain trial has no ratio parameter: its mix is in its user attributes.
                    or (RATIO_PARAM not in t.params and _same_mix(t.user_attrs, weights))
                )
            ]
            matching.sort(key=lambda t: (t.state != TrialState.COMPLETE, t.number))
            trial = matching[0].number if matching else None
        for key, value in study_attrs(sweep, trial).items():
            study.set_user_attr(key, value)
    except KeyError:
        return Outcome(
            ok=False,
            error=f"the Optuna study {delivery.target!r} does not exist",
            retry=False,
            seconds=time.monotonic() - started,
        )
    except Exception as exc:  # a storage error: retried with backoff
        error = f"{type(exc).__name__}: {exc}"[:2000]
        return Outcome(ok=False, error=error, seconds=time.monotonic() - started)
    return Outcome(ok=True, seconds=time.monotonic() - started)
