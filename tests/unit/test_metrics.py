"""Prometheus metrics and the offline API docs, without servers: the pure parts (labels of
topics and dead letters, the lag arithmetic, the executor's queue gauge, task outcomes), the
API's ``/metrics`` route and request counting, and ``/docs`` and ``/redoc`` whose every asset
is served locally."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from indexify.engine import CANCELLED_ERROR_TYPE, ErrorInfo, Task, TaskFinished
from services.api.app import create_app
from services.api.auth import Authenticator
from services.common import metrics
from services.common.api_keys import ApiKeyStore
from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.kafka_tools import LagRow, TopicRow
from services.common.names import Names
from services.common.settings import ApiSettings, InfraSettings
from services.executor.metrics import observe_task, update_queue_depth
from services.scheduler.lag import measure_lags

NAMES = Names("pfx")


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("invalid message (json_invalid at top level: Invalid JSON)", "undecodable"),
        ("empty message (no value)", "undecodable"),
        ("the scheduler failed on this event: KeyError: 'x'", "handler_error"),
        ("the executor failed on this message: ValueError: y", "handler_error"),
        ("task t1 ran but its result cannot be published: too large", "unpublishable"),
        (
            "graph ns/g has no version 'v1' (deleted or never registered); ...",
            "unknown_graph_version",
        ),
        ("something nobody foresaw", "other"),
    ],
)
def test_dead_letter_reasons_become_bounded_kinds(reason: str, kind: str) -> None:
    assert metrics.dead_letter_kind(reason) == kind


def test_function_of_a_task_topic() -> None:
    topic = NAMES.task_topic("image=x.gpu=a100", "ns", "graph", "fn")
    assert metrics.function_of_topic(topic, "pfx") == metrics.FunctionKey("ns", "graph", "fn")
    assert metrics.function_of_topic(NAMES.events_topic, "pfx") is None
    assert metrics.function_of_topic("other.tasks.p.ns.g.f", "pfx") is None
    assert metrics.function_of_topic("pfx.tasks.ns.g", "pfx") is None


def test_lags_per_function_and_of_the_events_topic() -> None:
    served = NAMES.task_topic("p", "ns", "g", "served")
    unserved = NAMES.task_topic("gpu", "ns", "g", "unserved")
    executors, schedulers = "pfx.indexify-executors", "pfx.indexify-scheduler"
    topics = [
        TopicRow(served, 2, 30),
        TopicRow(unserved, 2, 7),  # nobody ever committed: every retained message waits
        TopicRow(NAMES.events_topic, 1, 100),
        TopicRow(NAMES.deadletter_topic, 1, 3),
    ]
    rows = [
        LagRow(executors, served, 0, 10, 12),
        LagRow(executors, served, 1, 18, 18),
        LagRow("pfx.someone-else", unserved, 0, 0, 7),  # another group's offsets
        LagRow(schedulers, NAMES.events_topic, 0, 95, 100),
    ]
    lags = measure_lags(NAMES, topics, rows, executors_group=executors, scheduler_group=schedulers)
    assert lags.functions == {
        metrics.FunctionKey("ns", "g", "served"): 2,
        metrics.FunctionKey("ns", "g", "unserved"): 7,
    }
    assert lags.events == 5


def test_queue_depth_per_function_stays_at_zero_once_shown() -> None:
    topic = NAMES.task_topic("p", "qd-ns", "g", "f")
    shown = update_queue_depth("pfx", {topic: 3}, set())
    labels = {"namespace": "qd-ns", "graph": "g", "function": "f"}
    assert _sample("indexify_task_queue_depth", **labels) == 3
    shown = update_queue_depth("pfx", {}, shown)
    assert shown == {topic}
    assert REGISTRY.get_sample_value("indexify_task_queue_depth", labels) == 0


def _finished(outcome: str, error: ErrorInfo | None) -> tuple[TaskMessage, TaskFinishedEvent]:
    task = Task(id="t1", invocation_id="i1", function="fn", kind="call", inputs=())
    common = {"namespace": "obs-ns", "graph": "g", "invocation_id": "i1", "task_id": "t1"}
    message = TaskMessage(**common, graph_version="v", task=task, inputs=())
    finished = TaskFinished(
        task_id="t1", outcome=outcome, error=error, started_at=10.0, finished_at=12.5
    )
    return message, TaskFinishedEvent(**common, finished=finished)


def test_task_outcomes_and_durations() -> None:
    labels = {"namespace": "obs-ns", "graph": "g", "function": "fn"}
    before = {
        outcome: _sample("indexify_tasks_total", **labels, outcome=outcome)
        for outcome in ("success", "user", "platform", "cancelled")
    }
    observe_task(*_finished("success", None))
    observe_task(*_finished("failure", ErrorInfo(kind="user", message="boom")))
    observe_task(*_finished("failure", ErrorInfo(kind="platform", message="worker died")))
    cancelled = ErrorInfo(kind="permanent", type=CANCELLED_ERROR_TYPE, message="cancelled")
    observe_task(*_finished("failure", cancelled))
    for outcome in ("success", "user", "platform", "cancelled"):
        after = _sample("indexify_tasks_total", **labels, outcome=outcome)
        assert after == before[outcome] + 1, outcome
    assert _sample("indexify_task_duration_seconds_sum", **labels, outcome="success") >= 2.5
    assert _sample("indexify_task_duration_seconds_bucket", **labels, outcome="user", le="5.0")


# -- the API --------------------------------------------------------------------------------


def _app(settings: ApiSettings) -> FastAPI:
    """The API app without its lifespan (no backends): docs, metrics and routing only."""
    app = create_app(InfraSettings(prefix="unit"), settings)
    keys = ApiKeyStore(None, NAMES, None)  # type: ignore[arg-type]  # never asked: no Redis here
    app.state.authenticator = Authenticator(settings, keys)
    return app


@pytest.fixture
async def open_api() -> AsyncIterator[httpx.AsyncClient]:
    app = _app(ApiSettings(insecure_no_auth=True))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        yield client


_URL = re.compile(r"""(?:src|href|url|spec-url)\s*[=:]\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_local_assets(open_api: httpx.AsyncClient, page: str) -> None:
    response = await open_api.get(page)
    assert response.status_code == 200
    html = response.text
    assert "cdn" not in html.lower() and "fonts.googleapis" not in html
    assert not re.search(r"https?://", html), "the page names another host"
    urls = set(_URL.findall(html))
    assert any(u.endswith(".js") for u in urls) and "/openapi.json" in urls, urls
    for url in urls:
        assert not urlsplit(url).netloc, url
        answer = await open_api.get(url)
        assert answer.status_code == 200, (url, answer.status_code)
        assert answer.content, url


async def test_metrics_route_counts_requests_by_route_template(
    open_api: httpx.AsyncClient,
) -> None:
    await open_api.get("/docs")
    await open_api.get("/no/such/route/abc123")
    response = await open_api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = families["indexify_http_requests"]
    seen = {(s.labels["route"], s.labels["status"]) for s in requests.samples}
    assert ("/docs", "200") in seen
    assert ("<unmatched>", "404") in seen
    assert not any("abc123" in route for route, _ in seen)
    assert "indexify_http_request_duration_seconds" in families
    assert "indexify_backend_errors" in families and "indexify_dead_letters" in families


async def test_metrics_need_a_global_admin_key_unless_public() -> None:
    guarded = _app(ApiSettings(insecure_no_auth=False))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guarded), base_url="http://api"
    ) as client:
        response = await client.get("/metrics")
        assert response.status_code == 401
        assert "Authorization: Bearer <key>" in response.json()["detail"]
    public = _app(ApiSettings(insecure_no_auth=False, public_metrics=True))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=public), base_url="http://api"
    ) as client:
        assert (await client.get("/metrics")).status_code == 200
