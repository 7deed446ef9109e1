"""Domain errors to HTTP, in one place: every error answer is JSON ``{"detail": "..."}``.

=============================  ======  =========================================
:class:`NotFound`              404     unknown namespace, graph, invocation, ...
:class:`BadRequest`            400     invalid definition, code or arguments
:class:`Conflict`              409
:class:`PayloadTooLarge`       413     body over ``ApiSettings.max_body_bytes``
:class:`PlatformUnavailable`   503     Kafka, Redis or MinIO not answering
other :class:`ServiceError`    502     a backend refused the request
request body/params invalid    422     FastAPI validation, flattened into ``detail``
=============================  ======  =========================================
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.common.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PlatformUnavailable,
    ServiceError,
)
from services.common.logging import get_logger

from .schemas import ErrorBody

_log = get_logger(__name__)

#: For the OpenAPI document: the error answers every route may give.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 404, 413, 503)
}

_STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, 404),
    (BadRequest, 400),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (PlatformUnavailable, 503),
)


def status_for(exc: ServiceError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 502


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = status_for(exc)
    if status >= 500:
        _log.warning("request failed", path=request.url.path, status=status, error=str(exc))
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg')}")
    return JSONResponse(
        {
            "detail": "invalid request: " + "; ".join(parts),
            "errors": jsonable_encoder(errors, exclude={"ctx", "input", "url"}),
        },
        status_code=422,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    _log.exception("unexpected error", path=request.url.path)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}); see the API's logs"},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
