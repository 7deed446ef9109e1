"""Routes for API keys: an admin creates, lists and revokes them.

An admin key of one namespace manages that namespace's keys; a key for all namespaces
(``*``) manages every key, and only it may create another key for all namespaces. A new key's
token is in the answer to its creation and nowhere else (Redis keeps its SHA-256).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from services.common.api_keys import ALL_NAMESPACES, ApiKey, Role
from services.common.errors import NotFound

from .auth import AUTH_RESPONSES, Authenticator, Requires, forbid_unless, principal_of
from .errors import ERROR_RESPONSES
from .routes_graphs import Service

router = APIRouter(responses={**ERROR_RESPONSES, **AUTH_RESPONSES}, tags=["keys"])

_ADMIN = [Depends(Requires(Role.admin, scope="any"))]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(
        min_length=1, max_length=64, description="the key's namespace, or '*' for all"
    )
    role: Role
    name: str = Field(default="", max_length=200, description="a note: who or what uses it")


class KeyCreated(BaseModel):
    key: ApiKey
    token: str = Field(description="the secret: shown only now, pass it as `Bearer <token>`")


class KeyList(BaseModel):
    keys: list[ApiKey]


class KeyRevoked(BaseModel):
    id: str
    revoked: bool = True


def _authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


def _scope(namespace: str) -> str | None:
    return None if namespace == ALL_NAMESPACES else namespace


@router.post("/keys", status_code=201, dependencies=_ADMIN)
async def create_key(body: KeyCreate, request: Request, service: Service) -> KeyCreated:
    """A new key for ``namespace`` (created if missing) with ``role``."""
    forbid_unless(principal_of(request), Role.admin, _scope(body.namespace))
    if body.namespace != ALL_NAMESPACES:
        await service.create_namespace(body.namespace)  # validates the name
    key, token = await _authenticator(request).keys.create(body.namespace, body.role, body.name)
    return KeyCreated(key=key, token=token)


@router.get("/keys", dependencies=_ADMIN)
async def list_keys(
    request: Request,
    namespace: Annotated[
        str | None, Query(max_length=64, description="only this namespace's keys")
    ] = None,
) -> KeyList:
    """The keys this admin manages (never their tokens)."""
    principal = principal_of(request)
    if not principal.all_namespaces:
        forbid_unless(principal, Role.admin, namespace or principal.namespace)
        namespace = principal.namespace
    return KeyList(keys=await _authenticator(request).keys.keys(namespace))


@router.delete("/keys/{key_id}", dependencies=_ADMIN)
async def revoke_key(key_id: str, request: Request) -> KeyRevoked:
    """Revoke a key at once: requests with it are answered 401 from now on."""
    keys = _authenticator(request).keys
    key = await keys.get(key_id)
    if key is None:
        raise NotFound(
            f"no API key {key_id!r} (list them with GET /keys); the key set by "
            "INDEXIFY_API_ADMIN_KEY_SHA256 is not stored: change that setting to retire it"
        )
    forbid_unless(principal_of(request), Role.admin, _scope(key.namespace))
    await keys.revoke(key_id)
    return KeyRevoked(id=key_id)
