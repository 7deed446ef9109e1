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

The OpenAPI document declares that body (:class:`.schemas.ErrorBody`) for every error status
of every route (:func:`document_errors`), so what is documented is what is sent.
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
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PlatformUnavailable,
    ServiceError,
)
from services.common.logging import get_logger

from .schemas import ErrorBody

_log = get_logger(__name__)

_ERROR_DESCRIPTIONS = {
    400: "invalid input (an id, the JSON, the definition, the arguments): `detail` says what",
    401: "no API key, or an invalid one",
    403: "the key's namespace or role does not allow this, or a cross-origin browser request",
    404: "no such namespace, graph, invocation, task or output",
    408: "the request body stalled",
    409: "it exists already, or changed meanwhile",
    413: "the request body is over the size limit",
    415: "a body without a JSON (or SDK payload) Content-Type",
    422: "a parameter or field of the wrong type; `errors` lists them",
    503: "Kafka, Redis or MinIO is not answering: retry later",
}

#: For the OpenAPI document: the error answers every route may give (all ``ErrorBody``).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in _ERROR_DESCRIPTIONS.items()
}

_STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, 404),
    (BadRequest, 400),
    (Forbidden, 403),
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
    """Map errors to JSON answers, and declare those answers on every route of the OpenAPI
    document (:func:`document_errors`)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with :data:`ERROR_RESPONSES` on every operation: what a route declares
    itself stays, except FastAPI's own 422 body (a list ``detail``), which this API never
    sends (see :func:`_validation_error`)."""
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, text in _ERROR_DESCRIPTIONS.items():
                if str(status) in responses and status != 422:
                    continue
                responses[str(status)] = {
                    "description": text,
                    "content": {"application/json": {"schema": ref}},
                }
    return document
