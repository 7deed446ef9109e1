"""Who may call which route: API keys checked on every request.

Every route declares what it needs with one dependency, for instance::

    @router.get("/namespaces/{namespace}/compute_graphs",
                dependencies=[Depends(Requires(Role.read))])

:class:`Requires` authenticates the request (``Authorization: Bearer <key>``; on the UI's own
pages also the UI's cookie), checks the key's role and scope against the route's
``{namespace}`` and answers

* 401 with a JSON ``detail`` saying how to pass a key, when none or an invalid one was sent;
* 403 naming what is needed, when the key is for another namespace (403 rather than 404:
  namespace names are not secret, and one answer for every route is easier to reason about)
  or has a lower role.

Routes about the whole deployment use ``scope="global"`` (only keys for all namespaces);
routes whose namespace is in the body or that filter what they show by the key's namespace
use ``scope="any"`` and check further with :func:`principal_of` / :meth:`Principal.has`.
``has_role(request, role)`` answers "does this request's key have ``role`` here", for a
route that allows more to stronger keys (pickled inputs only with ``deploy``).

Public: ``/health`` and the OpenAPI document and its pages (``/openapi.json``, ``/docs``,
``/redoc``), and the UI's login form.
"""

from __future__ import annotations

import hmac
from typing import Any, Literal

from fastapi import HTTPException, Request

from services.common.api_keys import (
    ALL_NAMESPACES,
    ApiKeyStore,
    Principal,
    Role,
    denial,
    key_id_of,
    same_hash,
)
from services.common.settings import ApiSettings

from .schemas import ErrorBody

__all__ = [
    "AUTH_RESPONSES",
    "UI_COOKIE",
    "Authenticator",
    "Requires",
    "has_role",
    "principal_of",
]

#: The cookie the UI keeps its key in (HttpOnly, SameSite=Strict, path /ui): accepted only
#: on the UI's own pages, never by the JSON API.
UI_COOKIE = "indexify_ui_key"
UI_PATH = "/ui"

#: For the OpenAPI document: the answers of the key check.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no API key, or an invalid one"},
    403: {"model": ErrorBody, "description": "the key's namespace or role does not allow this"},
}

HOW_TO_PASS = (
    "send it as the header `Authorization: Bearer <key>`; the SDK takes "
    "create_client(api_key=...), $INDEXIFY_API_KEY, or the credentials file that "
    "`indexify-cli server-dev-mode` writes; an admin creates keys with `indexify-cli keys create`"
)
_INSECURE = Principal(key_id="insecure-no-auth", namespace=ALL_NAMESPACES, role=Role.admin)


class Authenticator:
    """Turns a token into a :class:`Principal`: the settings' admin key first, then Redis."""

    def __init__(self, settings: ApiSettings, keys: ApiKeyStore) -> None:
        self._insecure = settings.insecure_no_auth
        self._admin_hash = settings.admin_key_sha256
        self._admin: tuple[bytes, Principal] | None = None  # the settings' key, once matched
        self.keys = keys

    @property
    def insecure(self) -> bool:
        return self._insecure

    async def principal(self, token: str) -> Principal | None:
        if self._insecure:
            return _INSECURE
        admin = self._admin
        if admin is not None and hmac.compare_digest(token.encode(), admin[0]):
            return admin[1]  # the settings' key again: no hashing, no new Principal
        if self._admin_hash and same_hash(token, self._admin_hash):
            principal = Principal(
                key_id=key_id_of(token) or "settings", namespace=ALL_NAMESPACES, role=Role.admin
            )
            self._admin = (token.encode(), principal)
            return principal
        key = await self.keys.verify(token)
        if key is None:
            return None
        return Principal(key_id=key.id, namespace=key.namespace, role=key.role)


def _is_ui(request: Request) -> bool:
    path = request.url.path
    return path == UI_PATH or path.startswith(UI_PATH + "/")


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorized("the Authorization header is not `Bearer <key>`")
        return value.strip()
    if _is_ui(request):
        return request.cookies.get(UI_COOKIE)
    return None


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=f"{reason}: {HOW_TO_PASS}",
        headers={"WWW-Authenticate": 'Bearer realm="indexify"'},
    )


async def authenticate(request: Request) -> Principal:
    """The request's principal; 401 when it has no valid key."""
    authenticator: Authenticator = request.app.state.authenticator
    if authenticator.insecure:
        return _INSECURE
    token = _token(request)
    if token is None:
        raise _unauthorized("this route needs an API key")
    principal = await authenticator.principal(token)
    if principal is None:
        raise _unauthorized("the API key is invalid or was revoked")
    return principal


class Requires:
    """A route dependency: the request's key must have ``role`` (or above).

    ``scope``: ``"path"`` in the route's ``{namespace}``; ``"global"`` for all namespaces;
    ``"any"`` in some namespace (the route narrows what it shows or checks its body).
    ``login_page``: the UI's pages answer a missing or invalid key with a login form, so
    for them the dependency yields None instead of raising 401.
    """

    def __init__(
        self,
        role: Role,
        *,
        scope: Literal["path", "global", "any"] = "path",
        login_page: bool = False,
    ) -> None:
        self.role = role
        self.scope = scope
        self.login_page = login_page

    def __repr__(self) -> str:
        return f"Requires({self.role.value!r}, scope={self.scope!r})"

    async def __call__(self, request: Request) -> Principal | None:
        try:
            principal = await authenticate(request)
        except HTTPException:
            if self.login_page:
                return None
            raise
        if self.scope == "any":
            reason = None if principal.role.includes(self.role) else _role_denial(self.role)
        else:
            namespace = request.path_params.get("namespace") if self.scope == "path" else None
            reason = denial(principal, self.role, namespace)
        if reason is not None:
            raise HTTPException(status_code=403, detail=reason)
        request.state.principal = principal
        return principal


def _role_denial(role: Role) -> str:
    return f"this route needs role {role.value!r} (or above): ask an admin for such a key"


def principal_of(request: Request) -> Principal:
    """The principal :class:`Requires` admitted for this request."""
    principal: Principal = request.state.principal
    return principal


def forbid_unless(principal: Principal, role: Role, namespace: str | None) -> None:
    """403 with the reason when ``principal`` may not act with ``role`` in ``namespace``."""
    reason = denial(principal, role, namespace)
    if reason is not None:
        raise HTTPException(status_code=403, detail=reason)


def has_role(request: Request, role: Role) -> bool:
    """Whether this request's key has ``role`` in the route's namespace (False before
    :class:`Requires` ran, which every route has)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        return False
    return principal.has(role, request.path_params.get("namespace"))
