"""API keys: the token format, roles and scopes, and their storage in Redis (hashed).

A key is a token ``ifx_<id>_<secret>``: ``id`` (12 hex digits) names the key's record, the
secret is 256 random bits. Only the SHA-256 of the whole token is stored (under the
deployment's prefix, ``<prefix>:apikey:<id>``); the token itself is shown once, when it is
created. A fast hash is enough: the secret is random, not a password that could be guessed.

A key is scoped to one namespace, or to all of them (``*``), and has one role; each role
includes the ones below it:

=========  ==================================================================
``read``   status, outputs, logs, progress streams, the UI
``invoke`` + start invocations, cancel, rerun
``deploy`` + register and delete graphs, download their code, delete invocations
``admin``  + create namespaces, create, list and revoke keys
=========  ==================================================================

:func:`denial` is the one decision "may this key do that in this namespace": pure, so it is
tested with tables.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .redis_calls import REDIS_DOWN, RedisRepository, text, unavailable

__all__ = [
    "ALL_NAMESPACES",
    "TOKEN_PREFIX",
    "ApiKey",
    "ApiKeyStore",
    "Principal",
    "Role",
    "denial",
    "hash_token",
    "key_id_of",
    "new_token",
    "same_hash",
]

TOKEN_PREFIX = "ifx"
ALL_NAMESPACES = "*"
_TOKEN = re.compile(rf"{TOKEN_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_SCAN_BATCH = 500


class Role(StrEnum):
    read = "read"
    invoke = "invoke"
    deploy = "deploy"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def includes(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.read: 0, Role.invoke: 1, Role.deploy: 2, Role.admin: 3}


def new_token() -> str:
    """A fresh token (show it once; store only :func:`hash_token` of it)."""
    return f"{TOKEN_PREFIX}_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def key_id_of(token: str) -> str | None:
    """The id part of a well-formed token, None for anything else."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def hash_token(token: str) -> str:
    """SHA-256 (hex) of the token: what is stored and compared."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(token: str, expected_hex: str) -> bool:
    return hmac.compare_digest(hash_token(token), expected_hex.lower())


class ApiKey(BaseModel):
    """A key's public record (never its secret or hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    namespace: str = Field(description="the namespace the key may act in; '*' for all")
    role: Role
    name: str = ""
    created_at: float = 0.0


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a key's scope and role (``key_id`` for the logs)."""

    key_id: str
    namespace: str
    role: Role

    @property
    def all_namespaces(self) -> bool:
        return self.namespace == ALL_NAMESPACES

    def covers(self, namespace: str) -> bool:
        return self.all_namespaces or self.namespace == namespace

    def has(self, role: Role, namespace: str | None = None) -> bool:
        return denial(self, role, namespace) is None


def denial(principal: Principal, role: Role, namespace: str | None) -> str | None:
    """Why ``principal`` may not act with ``role`` in ``namespace`` (None: it may).

    ``namespace`` None means "every namespace" (routes about the whole deployment, such as
    ``/internal/executors``): only keys for all namespaces qualify.
    """
    if namespace is None and not principal.all_namespaces:
        return (
            f"this route needs a key for all namespaces with role {role.value!r}; this key is "
            f"scoped to namespace {principal.namespace!r}"
        )
    if namespace is not None and not principal.covers(namespace):
        return (
            f"this key is scoped to namespace {principal.namespace!r}; namespace {namespace!r} "
            "needs a key of its own (or one for all namespaces)"
        )
    if not principal.role.includes(role):
        return (
            f"this route needs role {role.value!r} (or above); this key has role "
            f"{principal.role.value!r}: ask an admin for a key with role {role.value!r}"
        )
    return None


class ApiKeyStore(RedisRepository):
    """Keys of one deployment in Redis: one hash per key, ``<prefix>:apikey:<id>``."""

    def _key(self, key_id: str) -> str:
        return f"{self.names.prefix}:apikey:{key_id}"

    async def create(self, namespace: str, role: Role, name: str = "") -> tuple[ApiKey, str]:
        """A new key and its token (the only time the token is seen)."""
        token = new_token()
        key_id = key_id_of(token)
        assert key_id is not None
        key = ApiKey(id=key_id, namespace=namespace, role=role, name=name, created_at=time.time())
        record = {**key.model_dump(mode="json"), "hash": hash_token(token)}
        await self._call(self._redis.hset(self._key(key_id), mapping=record))  # type: ignore[arg-type]
        return key, token

    async def verify(self, token: str) -> ApiKey | None:
        """The key ``token`` belongs to, None when it is malformed, unknown or revoked."""
        key_id = key_id_of(token)
        if key_id is None:
            return None
        fields = await self._record(key_id)
        if fields is None or not same_hash(token, fields.get("hash", "")):
            return None
        return _key_of(fields)

    async def get(self, key_id: str) -> ApiKey | None:
        fields = await self._record(key_id) if _KEY_ID.fullmatch(key_id) else None
        return None if fields is None else _key_of(fields)

    async def keys(self, namespace: str | None = None) -> list[ApiKey]:
        """Every key (of ``namespace`` only, when given), oldest first."""
        try:
            names = [n async for n in self._redis.scan_iter(self._key("*"), count=_SCAN_BATCH)]
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        found = []
        for name in names:
            fields = await self._record(text(name).rpartition(":")[2])
            if fields is None:
                continue  # revoked meanwhile
            key = _key_of(fields)
            if namespace is None or key.namespace == namespace:
                found.append(key)
        return sorted(found, key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str) -> bool:
        """Delete the key; False when there was none of that id."""
        if not _KEY_ID.fullmatch(key_id):
            return False
        return bool(await self._call(self._redis.delete(self._key(key_id))))

    async def _record(self, key_id: str) -> dict[str, str] | None:
        """The key's hash (read on the link: every request with a stored key reads one)."""
        flat = await self._command("HGETALL", self._key(key_id))
        if not flat:
            return None
        return {text(k): text(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}


def _key_of(fields: dict[str, str]) -> ApiKey:
    return ApiKey(
        id=fields["id"],
        namespace=fields["namespace"],
        role=Role(fields["role"]),
        name=fields.get("name", ""),
        created_at=float(fields.get("created_at", 0) or 0),
    )


_TRUE = frozenset({"1", "true", "yes", "on"})


def provision_dev_key(env: dict[str, str], url: str) -> str | None:
    """For a local dev stack at ``url``: a fresh admin key for all namespaces, its hash put
    in ``env`` (``INDEXIFY_API_ADMIN_KEY_SHA256``, read by the API) and the key saved in the
    user's credentials file for ``url`` (:mod:`indexify.credentials`), where clients find it.

    None (nothing done) when ``env`` turns authentication off or already names an admin key.
    """
    from indexify.credentials import save_api_key

    if env.get("INDEXIFY_API_INSECURE_NO_AUTH", "").strip().lower() in _TRUE:
        return None
    if env.get("INDEXIFY_API_ADMIN_KEY_SHA256"):
        return None
    token = new_token()
    env["INDEXIFY_API_ADMIN_KEY_SHA256"] = hash_token(token)
    save_api_key(url, token)
    return token
