"""Every error the API answers is JSON ``{"error": "<stable_code>", "message": "<human>"}``.

Validation errors (422) add ``details``: a list of ``{"loc", "msg", "type"}``, never the
offending input (it may be large or secret). Every input is validated before it reaches
the database, so a request the database refuses is Flow's own bug: 500
``internal_error`` with an ``error_id`` that the log line carries with the database's
message (which never reaches the caller: it names tables and constraints). Conflicts
with what is stored are 409 ``conflict``. An unreachable database is 503 with
``Retry-After``.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from flow.auth.models import AuthFailure
from flow.db.client import DatabaseError, DatabaseUnavailable

logger = logging.getLogger(__name__)

DATABASE_RETRY_AFTER_SECONDS = 5
# SQLSTATE classes/codes that mean "conflicts with what is stored".
CONFLICT_CODES = ("23505", "40001", "40P01", "55P03")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    message: str
    details: list[dict[str, Any]] | None = None


class ApiError(Exception):
    """Raised by routes for an answer other than success."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details
        self.fields = fields

    def response(self) -> JSONResponse:
        """The error body; ``fields`` go beside ``error`` and ``message`` (a refused
        join's budget figures)."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        if self.fields:
            body.update({k: v for k, v in self.fields.items() if k not in body})
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


STATUS_CODES = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed"}


def _status_code_name(status_code: int) -> str:
    if status_code in STATUS_CODES:
        return STATUS_CODES[status_code]
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def validation_details(errors: Any) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in errors
    ]


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _auth_failure(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AuthFailure)
    return ApiError(exc.status_code, exc.code, exc.message, headers=exc.headers()).response()


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else _status_code_name(exc.status_code)
    return ApiError(
        exc.status_code,
        _status_code_name(exc.status_code),
        message,
        headers=dict(exc.headers) if exc.headers else None,
    ).response()


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc.errors())
    first = details[0] if details else None
    where = ".".join(first["loc"]) if first else "request"
    message = f"invalid {where}: {first['msg']}" if first else "the request is not valid"
    return ApiError(422, "validation_error", message, details=details).response()


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DatabaseError)
    if exc.code and exc.code.startswith(CONFLICT_CODES):
        return ApiError(
            409, "conflict", "the request conflicts with a concurrent change; retry it"
        ).response()
    error_id = uuid.uuid4().hex[:16]
    logger.error(
        "error %s: the database refused %s %s (%s): %s",
        error_id,
        request.method,
        request.url.path,
        exc.code,
        exc.message,
    )
    return _internal_error(error_id)


def _internal_error(error_id: str) -> JSONResponse:
    """A 500 that names only the id under which the log tells what went wrong."""
    return ApiError(
        500,
        "internal_error",
        f"an unexpected error occurred (error id {error_id})",
        headers={"X-Error-Id": error_id},
    ).response()


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", exc)
    return ApiError(
        503,
        "database_unavailable",
        "the database is unavailable; retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    ).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:16]
    logger.exception("error %s: unhandled on %s %s", error_id, request.method, request.url.path)
    return _internal_error(error_id)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(AuthFailure, _auth_failure)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DatabaseError, _database_error)
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, malformed or invalid API key"},
    403: {"model": ErrorBody, "description": "The key may not use this API"},
    413: {"model": ErrorBody, "description": "Request body too large"},
    422: {"model": ErrorBody, "description": "Validation error"},
    429: {"model": ErrorBody, "description": "Rate limited (see Retry-After)"},
    503: {"model": ErrorBody, "description": "A dependency is unavailable (see Retry-After)"},
}
