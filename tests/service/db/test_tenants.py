"""Tenants and API keys: idempotent tenants, hashed keys, authentication and revocation."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import tenants
from service.db.models import ApiKey
from service.errors import AuthenticationError, InvalidRequestError, NotFoundError

pytestmark = pytest.mark.db


def test_tenant_is_created_once(session: Session) -> None:
    first = tenants.create_tenant(session, "acme")
    assert tenants.create_tenant(session, "acme").id == first.id
    assert tenants.create_tenant(session, "other").id != first.id


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "-leading"])
def test_tenant_name_is_checked(session: Session, name: str) -> None:
    with pytest.raises(InvalidRequestError, match="tenant name"):
        tenants.create_tenant(session, name)


def test_only_the_hash_is_stored_and_the_key_authenticates(session: Session) -> None:
    tenant = tenants.create_tenant(session, "acme")
    row, key = tenants.create_api_key(session, tenant.id)
    prefix, key_id, secret = key.split("_", 2)
    assert (prefix, key_id) == ("smx", row.key_id)
    assert len(secret) >= 40
    stored = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one()
    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert secret not in stored.key_hash
    assert tenants.authenticate(session, key).name == "acme"


def test_keys_are_unique(session: Session) -> None:
    tenant = tenants.create_tenant(session, "acme")
    keys = {tenants.create_api_key(session, tenant.id)[1] for _ in range(5)}
    assert len(keys) == 5


def test_wrong_unknown_and_malformed_keys_are_refused(session: Session) -> None:
    tenant = tenants.create_tenant(session, "acme")
    _, key = tenants.create_api_key(session, tenant.id)
    wrong_secret = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    unknown_id = f"smx_{'0' * 16}_{key.split('_', 2)[2]}"
    for bad in (wrong_secret, unknown_id, "smx_nope", "", "Bearer " + key):
        with pytest.raises(AuthenticationError, match="invalid or revoked"):
            tenants.authenticate(session, bad)


def test_revoked_key_is_refused_and_revoking_twice_is_fine(session: Session) -> None:
    tenant = tenants.create_tenant(session, "acme")
    row, key = tenants.create_api_key(session, tenant.id)
    _, other_key = tenants.create_api_key(session, tenant.id)
    tenants.revoke_api_key(session, row.key_id)
    assert tenants.revoke_api_key(session, row.key_id).revoked_at is not None
    with pytest.raises(AuthenticationError):
        tenants.authenticate(session, key)
    assert tenants.authenticate(session, other_key).id == tenant.id


def test_revoking_an_unknown_key_says_so(session: Session) -> None:
    with pytest.raises(NotFoundError, match="no API key"):
        tenants.revoke_api_key(session, "0123456789abcdef")


def test_key_for_a_missing_tenant_is_refused(session: Session) -> None:
    with pytest.raises(NotFoundError, match="tenant 999"):
        tenants.create_api_key(session, 999)
