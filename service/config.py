"""The one validated settings object for sharpmix.

Every knob is an environment variable with the ``SHARPMIX_`` prefix (or a ``.env`` file). The API
gets the settings through a dependency, workers and the command line get them as an argument;
nothing else reads the environment.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.spec import Limits

Environment = Literal["development", "production"]


def _default_home() -> Path:
    return Path.home() / ".sharpmix"


class Settings(BaseSettings):
    """Operator settings, read once per process.

    Attributes:
        environment: ``production`` refuses the unsafe development defaults (embedded SQLite,
            unrestricted roots).
        home: Caches, demo assets and the embedded SQLite database live under here.
        database_url: SQLAlchemy URL. Empty means the embedded SQLite file ``<home>/sharpmix.db``.
            Production: ``postgresql+psycopg://user:pass@host:5432/db``.
        allowed_roots: Local model and data paths must resolve inside one of these directories.
            Empty means ``<home>`` only.
        offline: Refuse hub ids at once instead of trying the network.
        trust_remote_code: Let transformers run code shipped with a model. Off unless the operator
            turns it on.
        max_body_bytes: Largest accepted request body; larger bodies get 413.
        max_batches, max_batch_tokens, max_seq_len, max_ratios, max_trials, max_eval_sets,
            max_trajectory_steps, max_learning_rates: operator limits on the size of one sweep;
            a sweep above them gets 422 naming the field.
        lease_seconds: A claimed piece of work whose heartbeat is older than this is handed to
            another worker.
        heartbeat_seconds: How often a worker renews its lease while it computes.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]`` for workers.
        dtype: Model weights dtype on the worker (``float32`` or ``bfloat16``); the perturbation is
            fp32 whatever this is.
        gradient_store_bytes: Room per sweep for its per-domain gradients on disk (under
            ``home/cache/gradients``), keyed by the sweep's fingerprint, so that another worker
            measuring added candidates (or a later sweep over the same files) reads them back
            instead of recomputing them. 0 (the default) keeps them in the worker's memory only.
            Not used by a worker over several devices.
        devices: Devices one worker shards each model over (FSDP2,
            ``workers/curvature/distributed.py``). 1 (the default) is one process on ``device``.
            Above 1, ``sharpmix worker`` starts one process per device (``sharpmix/ranks.py``):
            ``cuda:0`` to ``cuda:N-1`` over NCCL when ``device`` is ``auto`` or ``cuda`` (pick
            the GPUs with ``CUDA_VISIBLE_DEVICES``), or N CPU processes over gloo when it is
            ``cpu`` (tests, debugging). Needs ``dtype`` float32 (FSDP's master weights).
        dist_timeout_seconds: How long a rank of such a worker waits for the others in one
            collective (the orders between tasks included) before the group gives up and its
            launcher starts a fresh one.
        micro_batch_tokens: Tokens per forward or backward micro-batch on a worker; 0 (the
            default) is 4096 on the CPU and 8192 on a GPU. Over several devices it applies to
            each rank's rows.
        database_connect_timeout: Seconds to open a database connection before giving up.
        database_statement_timeout: Seconds one statement may run (PostgreSQL cancels it); a
            connection busy for longer than this plus the connect timeout is cut on our side,
            so a hung database cannot park a request or a worker forever.
        database_pool_timeout: Seconds a request waits for a free pooled connection before
            answering 503 with Retry-After.
        metrics_token: When set, ``GET /metrics`` needs ``Authorization: Bearer <token>``;
            unset, it is open (put it behind the network's own protection then).
        auth_cache_seconds: How long a checked API key is remembered by an API process, so
            polling does not cost a database read per request. A revoked key stops working
            within this many seconds.
        sweep_read_cache: On PostgreSQL, keep each ``GET /v1/sweeps/{id}`` answer in the API
            process until the database announces a change of that sweep (migration 0005's
            notices; see ``service/db/reads.py``). Off, every poll reads the database.
        url: Client side: the server ``sharpmix submit`` talks to.
        api_key: Client side: the key ``sharpmix submit`` sends (``SHARPMIX_API_KEY``).
        notify: Run the delivery loop (webhooks, MLflow) in the API process.
        notify_poll_seconds: How often the delivery loop looks for finished sweeps and due
            deliveries.
        notify_lookback_hours: Sweeps that finished longer ago than this are not delivered (so
            turning deliveries on does not replay a year of history).
        notify_lease_seconds: How long one delivery attempt may take before another loop may
            try again (a process that died mid-attempt holds it this long).
        webhook_secret: HMAC-SHA256 key that signs every webhook POST; a tenant's own key in
            ``webhook_tenant_secrets`` takes precedence.
        webhook_tenant_secrets: Per-tenant signing keys, JSON ``{"tenant": "secret"}``.
        webhook_tenant_urls: Per-tenant default ``notify_url``, JSON ``{"tenant": "https://..."}``.
        webhook_allowed_hosts: Hosts a ``notify_url`` may point at (``hooks.example.com`` or
            ``*.example.com``); empty allows any host.
        webhook_max_attempts: Tries per delivery before it counts as failed.
        webhook_backoff_seconds: Wait after the first failed try; doubles after each further one.
        webhook_backoff_max_seconds: Longest wait between tries.
        webhook_timeout_seconds: Timeout of one POST.
        mlflow_tracking_uri: When set, each finished sweep is logged as an MLflow run there
            (``sqlite:///mlflow.db``, ``file:///path/mlruns`` or ``http://mlflow:5000``).
        mlflow_experiment: The MLflow experiment the runs go to.
        mlflow_artifact_location: Artifact root for a new experiment (default: MLflow's).
    """

    model_config = SettingsConfigDict(env_prefix="SHARPMIX_", env_file=".env", extra="ignore")

    environment: Environment = "development"
    home: Path = Field(default_factory=_default_home)
    database_url: str = ""
    allowed_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    offline: bool = False
    trust_remote_code: bool = False

    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    max_batches: int = Field(default=64, gt=0)
    max_batch_tokens: int = Field(default=1 << 20, gt=0)
    max_seq_len: int = Field(default=32768, gt=0)
    max_ratios: int = Field(default=64, gt=0)
    max_trials: int = Field(default=128, gt=0)
    max_eval_sets: int = Field(default=16, gt=0)
    max_learning_rates: int = Field(default=32, gt=0)
    max_trajectory_steps: int = Field(default=5000, gt=0)

    lease_seconds: float = Field(default=120.0, gt=0)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    device: str = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    devices: int = Field(default=1, ge=1, le=64)
    gradient_store_bytes: int = Field(default=0, ge=0)
    dist_timeout_seconds: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    micro_batch_tokens: int = Field(default=0, ge=0)

    database_connect_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    database_statement_timeout: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    database_pool_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    metrics_token: SecretStr | None = None
    auth_cache_seconds: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    sweep_read_cache: bool = True

    url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None

    notify: bool = True
    notify_poll_seconds: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    notify_lookback_hours: float = Field(default=168.0, gt=0, allow_inf_nan=False)
    notify_lease_seconds: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    webhook_secret: SecretStr | None = None
    webhook_tenant_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    webhook_tenant_urls: dict[str, str] = Field(default_factory=dict)
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_seconds: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    webhook_backoff_max_seconds: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = Field(default="sharpmix", min_length=1)
    mlflow_artifact_location: str = ""

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # An environment variable holds the roots as an os.pathsep-separated list (like PATH).
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        # A comma-separated list in the environment: hooks.example.com,*.internal.example.com
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        self.allowed_roots = [root.expanduser().resolve() for root in self.allowed_roots]
        if not math.isfinite(self.lease_seconds) or self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                "SHARPMIX_HEARTBEAT_SECONDS must be at most half of SHARPMIX_LEASE_SECONDS, "
                "or a live worker loses its work to another"
            )
        if self.devices > 1 and (self.dtype != "float32" or ":" in self.device):
            raise ValueError(
                "SHARPMIX_DEVICES above 1 shards float32 master weights over cuda:0..N-1 (or N "
                "CPU processes): set SHARPMIX_DTYPE=float32 and SHARPMIX_DEVICE to auto, cuda or "
                "cpu, and pick GPUs with CUDA_VISIBLE_DEVICES"
            )
        if self.environment == "production":
            if not self.database_url or self.database_url.startswith("sqlite"):
                raise ValueError(
                    "SHARPMIX_ENVIRONMENT=production needs SHARPMIX_DATABASE_URL pointing at "
                    "PostgreSQL (postgresql+psycopg://...); the embedded SQLite file is for one "
                    "host"
                )
            if not self.allowed_roots:
                raise ValueError(
                    "SHARPMIX_ENVIRONMENT=production needs SHARPMIX_ALLOWED_ROOTS: the directories "
                    "that sweeps may read models and data from"
                )
        if self.notify_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError(
                "SHARPMIX_NOTIFY_LEASE_SECONDS must be above SHARPMIX_WEBHOOK_TIMEOUT_SECONDS, or "
                "a slow POST is sent again while it is still in flight"
            )
        secrets = [("SHARPMIX_WEBHOOK_SECRET", self.webhook_secret)]
        secrets += [
            (f"SHARPMIX_WEBHOOK_TENANT_SECRETS[{name!r}]", key)
            for name, key in self.webhook_tenant_secrets.items()
        ]
        for variable, key in secrets:
            if key is not None and len(key.get_secret_value()) < 16:
                raise ValueError(
                    f"{variable} is shorter than 16 characters; use a long random key, e.g. "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )
        for tenant, url in self.webhook_tenant_urls.items():
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise ValueError(
                    f"SHARPMIX_WEBHOOK_TENANT_URLS[{tenant!r}] is not an http(s)://host/... URL"
                )
            if self.webhook_secret_for(tenant) is None:
                raise ValueError(
                    f"SHARPMIX_WEBHOOK_TENANT_URLS names tenant {tenant!r}, which has no signing "
                    "key: set SHARPMIX_WEBHOOK_SECRET or add it to SHARPMIX_WEBHOOK_TENANT_SECRETS"
                )
        return self

    def webhook_secret_for(self, tenant: str) -> SecretStr | None:
        """The key that signs ``tenant``'s webhooks: its own, else the global one, else None."""
        return self.webhook_tenant_secrets.get(tenant, self.webhook_secret)

    @property
    def resolved_database_url(self) -> str:
        """The database URL, with the embedded SQLite default filled in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'sharpmix.db'}"

    @property
    def is_embedded(self) -> bool:
        """True on the embedded SQLite database."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def roots(self) -> tuple[Path, ...]:
        """Directories local paths must stay inside (``home`` when none are configured)."""
        return tuple(self.allowed_roots) if self.allowed_roots else (self.home,)

    @property
    def limits(self) -> Limits:
        """The operator's limits on one sweep, as the contract's check reads them."""
        return Limits(
            max_batches=self.max_batches,
            max_batch_tokens=self.max_batch_tokens,
            max_seq_len=self.max_seq_len,
            max_ratios=self.max_ratios,
            max_trajectory_steps=self.max_trajectory_steps,
            max_trials=self.max_trials,
            max_eval_sets=self.max_eval_sets,
            max_learning_rates=self.max_learning_rates,
        )

    @property
    def cache_dir(self) -> Path:
        """Where tokenised data and other caches live."""
        return self.home / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
