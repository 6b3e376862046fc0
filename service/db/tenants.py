"""Tenants and their bearer API keys.

A key reads ``smx_<key_id>_<secret>``. ``key_id`` is public and finds the row; only the SHA-256 of
the whole key is stored, so a leaked database does not leak working keys. Every function that
call is one short transaction (see :func:`service.db._errors.transaction`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db._errors import database_errors, transaction
from service.db.models import ApiKey, Tenant, utcnow
from service.errors import AuthenticationError, InvalidRequestError, NotFoundError

KEY_PREFIX = "smx"
_KEY_RE = re.compile(r"^smx_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Compared against when the key_id is unknown, so an unknown id costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"sharpmix-no-such-key").hexdigest()


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant(session: Session, name: str) -> Tenant:
    """Return the tenant called ``name``, creating it first if needed (idempotent by name).

    Raises:
        InvalidRequestError: when the name is not 1-64 letters, digits, ``_``, ``.`` or ``-``.
        DatabaseError: when the database cannot be reached.
    """
    if not _TENANT_RE.match(name):
        raise InvalidRequestError(
            "tenant", f"{name!r} is not a tenant name: use 1-64 letters, digits, '_', '.' or '-'"
        )
    with database_errors("create the tenant"):
        existing = _tenant_by_name(session, name)
        if existing is not None:
            session.commit()
            return existing
        tenant = Tenant(name=name)
        session.add(tenant)
        try:
            session.commit()
        except IntegrityError:
            # Another process created it between our read and our insert: theirs is the one.
            session.rollback()
            raced = _tenant_by_name(session, name)
            session.commit()
            assert raced is not None, "the unique constraint fired, so the row exists"
            return raced
        return tenant


def _tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def create_api_key(session: Session, tenant_id: int) -> tuple[ApiKey, str]:
    """Create a key for the tenant and return its row and the key itself (shown only once).

    Raises:
        NotFoundError: when the tenant does not exist.
        DatabaseError: when the database cannot be reached.
    """
    key_id = secrets.token_hex(8)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    with transaction(session, "create the API key"):
        if session.get(Tenant, tenant_id) is None:
            raise NotFoundError(f"tenant {tenant_id} does not exist")
        row = ApiKey(tenant_id=tenant_id, key_id=key_id, key_hash=_hash(key))
        session.add(row)
    return row, key


def authenticate(session: Session, key: str) -> Tenant:
    """The tenant owning ``key``.

    Raises:
        AuthenticationError: when the key is malformed, unknown or revoked (one message for all,
            so a caller learns nothing about which key ids exist).
        DatabaseError: when the database cannot be reached.
    """
    refused = AuthenticationError(
        "invalid or revoked API key. A key works only on servers using the database it was "
        "created in: run `sharpmix keys create --tenant NAME` with this server's "
        "SHARPMIX_DATABASE_URL (or, on the embedded SQLite default, its SHARPMIX_HOME)"
    )
    match = _KEY_RE.match(key)
    if match is None:
        raise refused
    with transaction(session, "check the API key"):
        row = session.scalars(select(ApiKey).where(ApiKey.key_id == match.group(1))).one_or_none()
        stored = row.key_hash if row is not None else _DUMMY_HASH
        if not hmac.compare_digest(stored, _hash(key)) or row is None or row.revoked_at:
            raise refused
        tenant = row.tenant
    return tenant


def revoke_api_key(session: Session, key_id: str) -> ApiKey:
    """Revoke the key with this public id; requests with it get 401 from now on. Idempotent.

    Raises:
        NotFoundError: when no key has this id.
        DatabaseError: when the database cannot be reached.
    """
    with transaction(session, "revoke the API key"):
        row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no API key has the id {key_id!r} (the part after 'smx_')")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    return row
