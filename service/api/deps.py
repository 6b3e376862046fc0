"""Dependencies routes declare, as ``Annotated`` aliases: a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import tenants
from service.db.models import Tenant

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `sharpmix keys create --tenant NAME` (smx_...).",
)


def get_app_settings(request: Request) -> Settings:
    """The settings the application was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one request, closed (and any open transaction rolled back) after."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant whose API key came in ``Authorization: Bearer ...``.

    Raises:
        HTTPException: 401 when no bearer key was sent (a wrong key raises AuthenticationError,
            which becomes 401 as well).
    """
    if credentials is None:
        raise HTTPException(
            status_code=401,
            detail="send your API key as 'Authorization: Bearer smx_...'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenants.authenticate(session, credentials.credentials)


TenantDep = Annotated[Tenant, Depends(get_tenant)]
