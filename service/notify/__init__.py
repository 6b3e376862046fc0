"""Telling the outside world that a sweep ended: signed webhooks and MLflow runs.

- `webhooks`: the signed POST, the receiver's signature check, the host rule.
- `mlflow_runs`: a finished sweep as an MLflow run (mlflow is optional).
- `loop`: the delivery loop over the outbox in ``service/db/deliveries.py``.
"""

from service.notify.loop import DeliveryLoop, backoff_seconds
from service.notify.webhooks import check_notify_url, sign, verify_signature

__all__ = ["DeliveryLoop", "backoff_seconds", "check_notify_url", "sign", "verify_signature"]
