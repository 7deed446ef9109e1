"""API keys for tests of the API app: minted through the app's own ``POST /keys``."""

from __future__ import annotations

import httpx

from services.common.api_keys import Role


async def create_key(client: httpx.AsyncClient, admin: str, namespace: str, role: Role) -> str:
    """A new key of ``role`` in ``namespace``, made with the ``admin`` key."""
    response = await client.post(
        "/keys",
        json={"namespace": namespace, "role": role.value, "name": f"{role.value} test"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])
