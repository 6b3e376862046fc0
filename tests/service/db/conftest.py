"""Fixtures of the db-layer tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from service.db.engine import make_engine, make_session_factory


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    """A session on a migrated database, once per backend."""
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        yield session
    engine.dispose()
