"""MLflow: each finished edition of a sweep as one run in the operator's tracking store.

The run (experiment ``SHARPMIX_MLFLOW_EXPERIMENT``, named ``sweep-<id>``, or ``sweep-<id>-e<n>``
for edition n > 1) holds:

- params: the spec, flattened to dotted keys (``finetuning.0.path``, ``optimizer.betas.1``, ...),
  without ``notify_url`` (webhook URLs often carry a token);
- metrics: per ratio and evaluation set ``eta_c/<set>``, ``eta_c_low/<set>``, ``eta_c_high/<set>``,
  ``sharpness/<set>``, ``loss/<set>`` and ``loss_change/<set>``, logged at step
  ``round(1000 * ratio)`` so MLflow's charts draw them against the ratio (in thousandths), and
  the answer: ``recommended_ratio`` (and, for k-domain mixes, ``recommended_weight/<set>``),
  ``max_stable_lr``, the planned ``learning_rate``, the cost;
- artifacts: ``plot.png`` (the API's plot: lambda_c, or the table of k-domain mixes),
  ``recommendation.json``, ``spec.json``;
- tags: ``sharpmix.sweep_id``, ``sharpmix.edition``, ``sharpmix.state``, ``sharpmix.delivery_id``,
  ``sharpmix.study_name``, and ``sharpmix.complete`` once everything above is written.

A sweep reopened by added candidates that ends again (its next edition) gets a new run beside the
first, rather than the first one rewritten: MLflow keeps a param's first value for good and a
run's metrics as a history, so the grown spec and the new answer would mix with the old ones in
one run, and a run is a record that others (a registered model, a comparison) may point at. The
earlier run stays as the answer the sweep gave then; ``tags.sharpmix.sweep_id = '<id>'`` lists
every edition, and the highest ``sharpmix.edition`` is the sweep's answer now.

A retried delivery first looks for the run of its delivery id: a complete one means the earlier
attempt got through (its answer was lost), an incomplete one is deleted and written again, so one
edition ends as one run. mlflow is an optional dependency (``pip install 'sharpmix[mlflow]'``,
mlflow-skinny is enough) and is imported only here.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from contract.recommendation import Recommendation
from contract.spec import SweepSpec
from contract.states import SweepState
from service import plot
from service.config import Settings
from service.db.deliveries import DueDelivery, Outcome
from service.db.models import Measurement, Sweep
from service.mix_plot import render_mix_plot

__all__ = ["flatten_params", "log_sweep", "public_spec", "ratio_step", "run_name"]

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
METRICS_PER_BATCH = 1000
MEASURED = ("eta_c", "eta_c_low", "eta_c_high", "sharpness", "loss", "loss_change")
RUN_STATUS = {
    SweepState.succeeded: "FINISHED",
    SweepState.failed: "FAILED",
    SweepState.cancelled: "KILLED",
}


# Left out of params and spec.json: a webhook URL often carries its receiver's token, and an
# MLflow store is usually shared more widely than the sweep.
PRIVATE_FIELDS = ("notify_url",)


def public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as logged to MLflow: without the fields in PRIVATE_FIELDS."""
    return {k: v for k, v in spec.items() if k not in PRIVATE_FIELDS}


def run_name(sweep_id: str, edition: int) -> str:
    """The MLflow run name of a sweep's edition: ``sweep-<id>``, then ``sweep-<id>-e<n>``."""
    return f"sweep-{sweep_id}" if edition == 1 else f"sweep-{sweep_id}-e{edition}"


def ratio_step(ratio: float) -> int:
    """The MLflow step a ratio's metrics are logged at: the ratio in thousandths."""
    return round(1000 * ratio)


def flatten_params(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested JSON value as MLflow params: dotted keys, string values within MLflow's limit."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten_params(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten_params(item, f"{prefix}.{i}" if prefix else str(i)))
        return out if out else {prefix: "[]"}
    return {prefix: ("" if value is None else str(value))[:MAX_PARAM_CHARS]}


def _metrics(
    sweep: Sweep, measurements: list[Measurement], stamp: int
) -> list[tuple[str, float, int]]:
    out: list[tuple[str, float, int]] = []
    for m in measurements:
        for name in MEASURED:
            value = getattr(m, name)
            if value is not None and math.isfinite(value):
                out.append((f"{name}/{m.eval_set}", float(value), ratio_step(m.ratio)))
    spec = SweepSpec.model_validate(sweep.spec)
    summary: dict[str, float | None] = {
        "learning_rate": spec.learning_rate,
        "forwards": float(sweep.forwards),
        "backwards": float(sweep.backwards),
        "compute_seconds": sweep.compute_seconds,
    }
    if sweep.recommendation is not None:
        summary["recommended_ratio"] = sweep.recommendation.get("ratio")
        summary["max_stable_lr"] = sweep.recommendation.get("max_stable_lr")
        # k-domain answers: the recommended mix's share of each set, beside its ratio.
        for name, share in (sweep.recommendation.get("weights") or {}).items():
            summary[f"recommended_weight/{name}"] = share
    out += [
        (key, float(value), 0)
        for key, value in summary.items()
        if value is not None and math.isfinite(value)
    ]
    return out


def _write_artifacts(folder: Path, sweep: Sweep, measurements: list[Measurement]) -> list[Path]:
    spec = SweepSpec.model_validate(sweep.spec)
    files = [folder / "spec.json"]
    files[0].write_text(json.dumps(public_spec(sweep.spec), indent=2, sort_keys=True))
    recommendation = None
    if sweep.recommendation is not None:
        recommendation = Recommendation.model_validate(sweep.recommendation)
        files.append(folder / "recommendation.json")
        files[-1].write_text(json.dumps(sweep.recommendation, indent=2, sort_keys=True))
    if measurements:
        files.append(folder / "plot.png")
        if spec.mixes is not None or spec.mix_search is not None:
            files[-1].write_bytes(render_mix_plot(spec, measurements, recommendation))
        else:
            files[-1].write_bytes(plot.render_sweep_plot(spec, measurements, recommendation))
    return files


def log_sweep(
    delivery: DueDelivery, sweep: Sweep, measurements: list[Measurement], settings: Settings
) -> Outcome:
    """Log one finished edition of a sweep as an MLflow run; never raises for what MLflow does.

    Args:
        delivery: The claimed delivery (its id makes retries idempotent; its edition names the
            run).
        sweep: The finished sweep, at the delivery's edition.
        measurements: Its measurements.
        settings: The tracking URI, experiment and artifact location.
    """
    started = time.monotonic()
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        return Outcome(
            ok=False,
            error="mlflow is not installed on this server: pip install 'sharpmix[mlflow]' "
            "(or unset SHARPMIX_MLFLOW_TRACKING_URI)",
            retry=False,
        )
    try:
        client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        experiment_id = _experiment(client, settings)
        earlier = client.search_runs(
            [experiment_id], filter_string=f"tags.`sharpmix.delivery_id` = '{delivery.id}'"
        )
        if any(run.data.tags.get("sharpmix.complete") == "1" for run in earlier):
            return Outcome(ok=True, seconds=time.monotonic() - started)
        for run in earlier:  # a half-written run of an attempt that died: write it again
            client.delete_run(run.info.run_id)
        run = client.create_run(
            experiment_id,
            run_name=run_name(sweep.id, delivery.edition),
            tags={
                "sharpmix.sweep_id": sweep.id,
                "sharpmix.edition": str(delivery.edition),
                "sharpmix.state": sweep.state.value,
                "sharpmix.delivery_id": delivery.id,
                "sharpmix.study_name": sweep.study_name,
            },
        )
        run_id = run.info.run_id
        stamp = int(time.time() * 1000)
        params = [Param(k, v) for k, v in flatten_params(public_spec(sweep.spec)).items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i : i + PARAMS_PER_BATCH])
        metrics = [Metric(k, v, stamp, step) for k, v, step in _metrics(sweep, measurements, stamp)]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])
        with tempfile.TemporaryDirectory(prefix="sharpmix-mlflow-") as folder:
            for path in _write_artifacts(Path(folder), sweep, measurements):
                client.log_artifact(run_id, str(path))
        client.set_tag(run_id, "sharpmix.complete", "1")
        client.set_terminated(run_id, status=RUN_STATUS.get(sweep.state, "FINISHED"))
    except Exception as exc:  # any MLflow or store error: retried with backoff
        error = f"{type(exc).__name__}: {exc}"[:2000]
        return Outcome(ok=False, error=error, seconds=time.monotonic() - started)
    return Outcome(ok=True, seconds=time.monotonic() - started)


def _experiment(client: Any, settings: Settings) -> str:
    found = client.get_experiment_by_name(settings.mlflow_experiment)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(
            client.create_experiment(
                settings.mlflow_experiment,
                artifact_location=settings.mlflow_artifact_location or None,
            )
        )
    except Exception:
        # Another process created it first; theirs is the one.
        found = client.get_experiment_by_name(settings.mlflow_experiment)
        if found is None:
            raise
        return str(found.experiment_id)
