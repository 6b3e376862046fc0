"""Domain errors become HTTP responses here, and only here.

Validation-style errors (422) keep FastAPI's own shape, ``{"detail": [{"loc", "msg", "type"}]}``,
so a client parses every 422 the same way; everything else is ``{"detail": "..."}``.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.errors import (
    AuthenticationError,
    ConflictError,
    DatabaseError,
    IdempotencyMismatchError,
    InvalidRequestError,
    NotFoundError,
)

# Order matters: the first class an error is an instance of decides (a subclass before its base).
STATUS_OF: list[tuple[type[Exception], int]] = [
    (IdempotencyMismatchError, 422),
    (InvalidRequestError, 422),
    (AuthenticationError, 401),
    (NotFoundError, 404),
    (ConflictError, 409),
    (DatabaseError, 503),
]

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def field_location(location: str, field: str) -> list[str | int]:
    """``("body", "finetuning[0].path")`` -> ``["body", "finetuning", 0, "path"]``."""
    parts: list[str | int] = [location]
    for name, index in _PART.findall(field):
        parts.append(int(index) if index else name)
    return parts


def _field_error(loc: list[str | int], message: str) -> JSONResponse:
    return JSONResponse(
        status_code=422, content={"detail": [{"loc": loc, "msg": message, "type": "value_error"}]}
    )


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The response for a domain error raised anywhere below a route."""
    if isinstance(exc, IdempotencyMismatchError):
        return _field_error(["header", "Idempotency-Key"], str(exc))
    if isinstance(exc, InvalidRequestError):
        return _field_error(field_location(exc.location, exc.field), exc.message)
    status = next(code for kind, code in STATUS_OF if isinstance(exc, kind))
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif status == 503:
        headers["Retry-After"] = "5"
    return JSONResponse(status_code=status, content={"detail": str(exc)}, headers=headers)


async def request_validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, without echoing the input back.

    The default handler returns each error's ``input``; a NaN or Infinity the client sent cannot be
    written as standard JSON, which would turn a client mistake into a server error.
    """
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    for kind, _status in STATUS_OF:
        app.add_exception_handler(kind, domain_error_handler)
    app.add_exception_handler(RequestValidationError, request_validation_handler)
