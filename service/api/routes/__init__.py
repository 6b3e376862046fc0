"""One router per resource: ``sweeps`` (the ``/v1`` API), ``health`` (probes and metrics)."""
