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

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
            max_trajectory_steps: operator limits on the size of one sweep; a sweep above them
            gets 422 naming the field.
        lease_seconds: A claimed piece of work whose heartbeat is older than this is handed to
            another worker.
        heartbeat_seconds: How often a worker renews its lease while it computes.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]`` for workers.
        dtype: Model weights dtype on the worker (``float32`` or ``bfloat16``); the perturbation is
            fp32 whatever this is.
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
        url: Client side: the server ``sharpmix submit`` talks to.
        api_key: Client side: the key ``sharpmix submit`` sends (``SHARPMIX_API_KEY``).
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
    max_trajectory_steps: int = Field(default=5000, gt=0)

    lease_seconds: float = Field(default=120.0, gt=0)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    device: str = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"

    database_connect_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    database_statement_timeout: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    database_pool_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    metrics_token: SecretStr | None = None
    auth_cache_seconds: float = Field(default=10.0, ge=0, allow_inf_nan=False)

    url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # An environment variable holds the roots as an os.pathsep-separated list (like PATH).
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
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
        return self

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
    def cache_dir(self) -> Path:
        """Where tokenised data and other caches live."""
        return self.home / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
