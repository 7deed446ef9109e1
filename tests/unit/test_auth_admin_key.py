"""The settings' admin key: checked by its hash once, then recognised without hashing."""

from __future__ import annotations

from typing import Any, cast

from services.api.auth import Authenticator
from services.common.api_keys import ALL_NAMESPACES, ApiKeyStore, Role, hash_token, new_token
from services.common.settings import ApiSettings


class NoKeys:
    """Stands in for the Redis key store: no key there is valid."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def verify(self, token: str) -> Any:
        self.asked.append(token)
        return None


async def test_admin_key_of_the_settings_is_recognised_every_time() -> None:
    token, other = new_token(), new_token()
    keys = NoKeys()
    auth = Authenticator(ApiSettings(admin_key_sha256=hash_token(token)), cast(ApiKeyStore, keys))
    first = await auth.principal(token)
    assert first is not None and first.role is Role.admin
    assert first.namespace == ALL_NAMESPACES
    assert await auth.principal(token) is first
    assert keys.asked == []
    assert await auth.principal(other) is None  # another token: asked of the store
    assert await auth.principal("bad \u00e9 token") is None  # not ASCII: still just refused
    assert await auth.principal(token + "x") is None
    assert keys.asked == [other, "bad \u00e9 token", token + "x"]
