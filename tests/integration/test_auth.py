"""API keys against the real Redis, Kafka and MinIO: every route, every role, two namespaces.

The route table is read from the app itself: a route without a :class:`Requires` dependency
that is not on the public list below fails ``test_every_route_declares_what_it_needs``, and
every declared route is tried without a key, with a bad key, with another namespace's key,
with the role just below the one it needs, and with that role (on a real graph and
invocation, so it succeeds). No ``from __future__ import annotations``: the graph's function
keeps real annotations.
"""

import base64
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from indexify import Graph, indexify_function
from services.api.app import create_app
from services.api.auth import UI_COOKIE, Requires
from services.common.api_keys import Role, hash_token, new_token
from services.common.blobs import BlobStore
from services.common.kafka_bus import KafkaBus
from services.common.settings import ApiSettings, InfraSettings
from services.common.state_store import StateStore
from tests.integration.keys import create_key

pytestmark = pytest.mark.timeout(120)

#: (method, path) answered without a key: the health probe, the OpenAPI document and its
#: pages, and the UI's login form (which checks the key it is given).
PUBLIC = {
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
}
NS = "alpha"
OTHER = "beta"
_ROLES = [Role.read, Role.invoke, Role.deploy, Role.admin]
_PARAMS = {
    "namespace": NS,
    "graph": "g",
    "invocation_id": "inv1",  # replaced by a real invocation's id
    "function": "start",
    "task_id": "t1",
    "index": "0",
    "key_id": "0123456789ab",
    "replay_id": "r1",
}
#: streams that end only when the invocation does (no scheduler runs here), the API's and the
#: UI's: asked about an invocation that does not exist, they answer 404 once the key passed
ENDLESS = {
    "GET /namespaces/{namespace}/compute_graphs/{graph}/invocations/{invocation_id}/events",
    "GET /ui/namespaces/{namespace}/compute_graphs/{graph}/invocations/{invocation_id}/events",
}
#: routes that answer 404 even with the right key: their made-up ids name nothing
NOT_FOUND = {
    "GET /namespaces/{namespace}/compute_graphs/{graph}/invocations/{invocation_id}/fn/"
    "{function}/output/{task_id}/{index}",
    "DELETE /keys/{key_id}",
    "GET /namespaces/{namespace}/compute_graphs/{graph}/replays/{replay_id}",
    "POST /namespaces/{namespace}/compute_graphs/{graph}/replays/{replay_id}/cancel",
    *ENDLESS,
}
#: routes that answer 400 even with the right key: graph g's start takes an int, not a File
BAD_INPUT = {"POST /namespaces/{namespace}/compute_graphs/{graph}/invoke_file"}


@indexify_function()
def start(n: int) -> int:
    return n + 1


def _upload() -> dict[str, Any]:
    graph = Graph(name="g", start_node=start)
    return {
        "definition": graph.definition().model_dump(mode="json"),
        "code": base64.b64encode(graph.serialize()).decode(),
    }


def _body(template: str) -> dict[str, Any]:
    if template == "/namespaces":
        return {"name": NS}
    if template == "/keys":
        return {"namespace": NS, "role": "read"}
    if template.endswith("/compute_graphs"):
        return _upload()
    if template.endswith("/invoke_object"):
        return {"n": 1}
    return {}


@dataclass(frozen=True)
class Case:
    method: str
    template: str
    requires: Requires

    def path(self, params: dict[str, str]) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], self.template)

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def _requires(route: APIRoute) -> Requires | None:
    found = [d.call for d in route.dependant.dependencies if isinstance(d.call, Requires)]
    return found[0] if found else None


def _flat(routes: list[Any]) -> list[Any]:
    """The app's routes, with included routers (kept whole by FastAPI) opened up."""
    flat = []
    for route in routes:
        included = getattr(route, "original_router", None)
        flat.extend(_flat(included.routes) if included is not None else [route])
    return flat


def route_table(app: FastAPI) -> tuple[list[Case], list[str]]:
    """Every (method, path) of the app with its requirement, and the unguarded ones."""
    cases, unguarded = [], []
    for route in _flat(app.routes):
        methods = sorted(getattr(route, "methods", None) or ())
        path = getattr(route, "path", "")
        for method in methods:
            if method == "HEAD" or (method, path) in PUBLIC:
                continue
            requires = _requires(route) if isinstance(route, APIRoute) else None
            if requires is None:
                unguarded.append(f"{method} {path}")
            else:
                cases.append(Case(method, path, requires))
    # destructive routes last, so the others find what they read; the graph at the very end
    cases.sort(key=lambda c: (c.method == "DELETE", c.template.endswith("{graph}")))
    return cases, unguarded


@dataclass
class Keys:
    admin: str  # the settings' key, all namespaces
    alpha: dict[Role, str]
    beta_admin: str


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    keys: Keys
    params: dict[str, str]

    async def call(self, case: Case, key: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body: dict[str, Any] = {}
        if case.method in ("POST", "PUT", "PATCH"):
            body["json"] = _body(case.template)
        params = self.params
        if str(case) in ENDLESS:
            params = {**params, "invocation_id": "no-such-invocation"}
        return await self.client.request(case.method, case.path(params), headers=headers, **body)


@contextlib.asynccontextmanager
async def running_api(settings: InfraSettings) -> AsyncIterator[Api]:
    admin = new_token()
    app = create_app(
        settings, ApiSettings(insecure_no_auth=False, admin_key_sha256=hash_token(admin))
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            alpha = {role: await create_key(client, admin, NS, role) for role in _ROLES}
            beta = await create_key(client, admin, OTHER, Role.admin)
            auth = {"Authorization": f"Bearer {admin}"}
            graphs = f"/namespaces/{NS}/compute_graphs"
            registered = await client.post(graphs, json=_upload(), headers=auth)
            assert registered.status_code == 201, registered.text
            invoked = await client.post(f"{graphs}/g/invoke_object", json={"n": 1}, headers=auth)
            assert invoked.status_code == 200, invoked.text
            params = {**_PARAMS, "invocation_id": invoked.json()["id"]}
            keys = Keys(admin=admin, alpha=alpha, beta_admin=beta)
            yield Api(app, client, keys, params)


@pytest.fixture
async def api(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore, store: StateStore
) -> AsyncIterator[Api]:
    """The app with keys on this test's prefix; ``store`` deletes its keys afterwards."""
    async with running_api(infra_settings) as api:
        yield api


def _below(role: Role) -> Role | None:
    index = _ROLES.index(role)
    return _ROLES[index - 1] if index else None


def _detail(response: httpx.Response) -> str:
    return str(response.json()["detail"])


async def test_every_route_declares_what_it_needs(api: Api) -> None:
    cases, unguarded = route_table(api.app)
    assert not unguarded, f"routes without a Requires(...) dependency: {unguarded}"
    templates = {str(c) for c in cases}
    for expected in ("GET /ui", "GET /internal/executors", "POST /keys", "GET /namespaces"):
        assert expected in templates


async def test_every_route_across_keys_and_roles(api: Api) -> None:
    cases, _ = route_table(api.app)
    assert len(cases) >= 20
    problems: list[str] = []

    def expect(case: Case, what: str, response: httpx.Response, ok: bool) -> None:
        if not ok:
            problems.append(f"{case} {what}: {response.status_code} {response.text[:200]}")

    for case in cases:
        ui_page = case.requires.login_page
        # no key, and a key that does not exist: 401 saying how to pass one
        for what, key in (("without a key", None), ("with an unknown key", new_token())):
            response = await api.call(case, key)
            ok = response.status_code == 401
            if ok and not ui_page:
                ok = "Authorization: Bearer <key>" in _detail(response)
                ok = ok and response.headers.get("www-authenticate", "").startswith("Bearer")
            expect(case, what, response, ok)
        # another namespace's admin: 403 where the route names a namespace (or needs all)
        if case.requires.scope in ("path", "global"):
            response = await api.call(case, api.keys.beta_admin)
            expect(
                case, "with another namespace's admin key", response, response.status_code == 403
            )
        # the role just below: 403 naming the role needed
        needed = case.requires.role
        if case.requires.scope == "global":
            response = await api.call(case, api.keys.alpha[Role.admin])
            expect(case, "with a namespace's admin key", response, response.status_code == 403)
        elif (lower := _below(needed)) is not None:
            response = await api.call(case, api.keys.alpha[lower])
            ok = response.status_code == 403 and repr(needed.value) in _detail(response)
            expect(case, f"with role {lower.value}", response, ok)
        # the role needed: it succeeds
        key = api.keys.admin if case.requires.scope == "global" else api.keys.alpha[needed]
        response = await api.call(case, key)
        ok = response.status_code == 404 if str(case) in NOT_FOUND else response.is_success
        if str(case) in BAD_INPUT:
            ok = response.status_code == 400 and "not a File" in _detail(response)
        expect(case, f"with role {needed.value}", response, ok)
    assert not problems, "\n".join(problems)


async def test_progress_stream_needs_invoke(api: Api) -> None:
    path = f"/namespaces/{NS}/compute_graphs/g/invoke_object"
    params = {"block_until_finish": "true"}
    response = await api.client.post(path, params=params, json={})
    assert response.status_code == 401
    read = {"Authorization": f"Bearer {api.keys.alpha[Role.read]}"}
    response = await api.client.post(path, params=params, json={}, headers=read)
    assert response.status_code == 403


async def test_pickled_arguments_need_a_key_that_may_deploy(api: Api) -> None:
    path = f"/namespaces/{NS}/compute_graphs/g/invoke_object"
    encoded = {"X-Indexify-Encoded": "1"}
    pickled = {**encoded, "Content-Type": "application/x-cloudpickle"}
    body = cloudpickle.dumps({"n": 1})
    invoke = _bearer(api.keys.alpha[Role.invoke])
    refused = await api.client.post(path, content=body, headers={**pickled, **invoke})
    assert refused.status_code == 403 and "deploy" in _detail(refused), refused.text
    as_json = {**encoded, "Content-Type": "application/json"}
    accepted = await api.client.post(path, content=b'{"n": 1}', headers={**as_json, **invoke})
    assert accepted.status_code == 200, accepted.text
    deploy = _bearer(api.keys.alpha[Role.deploy])
    allowed = await api.client.post(path, content=body, headers={**pickled, **deploy})
    assert allowed.status_code == 200, allowed.text


async def test_namespaces_are_listed_by_scope(api: Api) -> None:
    everything = await api.client.get("/namespaces", headers=_bearer(api.keys.admin))
    assert {NS, OTHER} <= set(everything.json()["namespaces"])
    own = await api.client.get("/namespaces", headers=_bearer(api.keys.alpha[Role.read]))
    assert own.json()["namespaces"] == [NS]
    other = await api.client.post(
        "/namespaces", json={"name": NS}, headers=_bearer(api.keys.beta_admin)
    )
    assert other.status_code == 403
    assert "scoped to namespace 'beta'" in _detail(other)
    again = await api.client.post(
        "/namespaces", json={"name": OTHER}, headers=_bearer(api.keys.beta_admin)
    )
    assert again.status_code == 200 and again.json()["created"] is False


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_key_management(api: Api) -> None:
    admin, beta_admin = _bearer(api.keys.admin), _bearer(api.keys.beta_admin)
    # a namespace admin manages its namespace's keys only
    made = await api.client.post(
        "/keys", json={"namespace": OTHER, "role": "read"}, headers=beta_admin
    )
    assert made.status_code == 201
    token, key_id = made.json()["token"], made.json()["key"]["id"]
    assert token.startswith(f"ifx_{key_id}_")
    listed = await api.client.get("/keys", headers=beta_admin)
    assert {k["namespace"] for k in listed.json()["keys"]} == {OTHER}
    assert all("token" not in k and "hash" not in k for k in listed.json()["keys"])
    for body in ({"namespace": NS, "role": "read"}, {"namespace": "*", "role": "read"}):
        refused = await api.client.post("/keys", json=body, headers=beta_admin)
        assert refused.status_code == 403, body
    alpha_ids = [
        k["id"]
        for k in (await api.client.get("/keys", headers=admin)).json()["keys"]
        if k["namespace"] == NS
    ]
    assert len(alpha_ids) == len(_ROLES)
    assert (await api.client.delete(f"/keys/{alpha_ids[0]}", headers=beta_admin)).status_code == 403
    # the new key works until it is revoked, then it is refused at once
    reader = _bearer(token)
    assert (await api.client.get(f"/namespaces/{OTHER}/compute_graphs", headers=reader)).is_success
    revoked = await api.client.delete(f"/keys/{key_id}", headers=beta_admin)
    assert revoked.status_code == 200 and revoked.json() == {"id": key_id, "revoked": True}
    after = await api.client.get(f"/namespaces/{OTHER}/compute_graphs", headers=reader)
    assert after.status_code == 401 and "revoked" in _detail(after)
    assert (await api.client.delete(f"/keys/{key_id}", headers=admin)).status_code == 404
    bad_role = await api.client.post(
        "/keys", json={"namespace": NS, "role": "owner"}, headers=admin
    )
    assert bad_role.status_code == 422


async def test_ui_takes_a_key_in_a_cookie_only_for_its_pages(api: Api) -> None:
    page = await api.client.get("/ui")
    assert page.status_code == 401 and "<form" in page.text
    wrong = await api.client.post("/ui/login", json={"key": new_token()})
    assert wrong.status_code == 401 and UI_COOKIE not in wrong.cookies
    login = await api.client.post("/ui/login", json={"key": api.keys.beta_admin})
    assert login.status_code == 200
    assert login.json()["namespace"] == OTHER
    cookie = login.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui"):
        assert attribute.lower() in cookie.lower(), cookie
    token = login.cookies[UI_COOKIE]
    jar = {UI_COOKIE: token}
    page = await api.client.get("/ui", cookies=jar)
    assert page.status_code == 200
    assert f"namespace {OTHER}" in page.text and f"namespace {NS}" not in page.text
    # the JSON API never accepts the cookie
    api_call = await api.client.get(f"/namespaces/{OTHER}/compute_graphs", cookies=jar)
    assert api_call.status_code == 401
    # a UI page of another namespace is refused
    other = await api.client.get(
        f"/ui/namespaces/{NS}/compute_graphs/g/invocations/inv1", cookies=jar
    )
    assert other.status_code == 403
    logout = await api.client.post("/ui/logout", cookies=jar)
    assert logout.status_code == 303 and f'{UI_COOKIE}=""' in logout.headers["set-cookie"]


async def test_insecure_mode_admits_everyone(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore
) -> None:
    app = create_app(infra_settings, ApiSettings(insecure_no_auth=True))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            assert (await client.get("/internal/executors")).status_code == 200
            assert (await client.get("/ui")).status_code == 200
