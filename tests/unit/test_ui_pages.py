"""The UI's templates rendered without servers: what each page shows for data the browser
tests do not reach (parked letters of every shape, executors, the sign-in page), that
everything a user wrote is escaped, and that the navigation follows the key's scope."""

from __future__ import annotations

from services.api.ui.templating import render
from services.api.ui.views import DeadLetters, ExecutorRow, served
from services.common.api_keys import ALL_NAMESPACES, Principal, Role
from services.common.events import DeadLetter
from services.common.executor_registry import ExecutorInfo
from services.common.graphs import GraphRecord
from services.common.kafka_tools import DeadLetterRow

ADMIN = Principal(key_id="k1", namespace=ALL_NAMESPACES, role=Role.admin)
READER = Principal(key_id="k2", namespace="ns", role=Role.read)


def _graph(required: dict[str, str]) -> GraphRecord:
    return GraphRecord.model_validate(
        {
            "namespace": "ns",
            "name": "g",
            "version": "v1",
            "created_at": 1.0,
            "code_key": "k",
            "code_sha256": "0",
            "definition": {
                "name": "g",
                "start_node": "cpu",
                "nodes": {
                    "cpu": {"name": "cpu"},
                    "gpu": {"name": "gpu", "required_labels": required},
                },
                "edges": {"cpu": ["gpu"]},
            },
        }
    )


def test_an_executor_serves_the_functions_its_labels_satisfy() -> None:
    graph = _graph({"gpu": "h100"})
    plain = ExecutorInfo(id="e1", labels={}, concurrency=2, heartbeat_at=1.0)
    h100 = ExecutorInfo(id="e2", labels={"gpu": "h100"}, concurrency=4, heartbeat_at=1.0)
    assert served(plain, [graph]) == ["ns/g/cpu"]
    assert served(h100, [graph]) == ["ns/g/cpu", "ns/g/gpu"]
    html = render(
        "executors.html",
        viewer=ADMIN,
        nav="executors",
        executors=[ExecutorRow(h100, served(h100, [graph]))],
    )
    assert "<code>gpu=h100</code>" in html and "0 / 4 slots busy" in html
    assert "<code>ns/g/gpu</code>" in html


def test_dead_letters_of_every_shape_are_listed_escaped() -> None:
    letter = DeadLetter(
        reason="undecodable: <script>alert(1)</script>",
        topic="p.events",
        partition=0,
        offset=7,
        value=b"{",
        value_size=1,
    )
    rows = [
        DeadLetterRow(offset=3, partition=0, letter=letter, raw=b"", handled=True),
        DeadLetterRow(offset=4, partition=0, letter=None, raw=b"garbage"),
    ]
    html = render("deadletters.html", viewer=ADMIN, nav="deadletters", letters=DeadLetters(rows))
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'data-ref="0:3" class="handled"' in html
    assert "not a dead letter (7 bytes)" in html
    problem = render(
        "deadletters.html",
        viewer=ADMIN,
        nav="deadletters",
        letters=DeadLetters([], problem="Kafka is unavailable"),
    )
    assert "Kafka is unavailable" in problem and "No dead letters" not in problem


def test_the_navigation_follows_the_keys_scope() -> None:
    admin = render("error.html", viewer=ADMIN, nav="", detail="x", code=404)
    reader = render("error.html", viewer=READER, nav="", detail="x", code=404)
    assert "/ui/executors" in admin and "/ui/deadletters" in admin
    assert "/ui/executors" not in reader and "/ui/deadletters" not in reader
    assert "namespace ns" in reader and "all namespaces" in admin


def test_the_sign_in_page_has_its_form_and_no_inline_script() -> None:
    html = render("login.html", viewer=None, nav="")
    assert '<form id="login">' in html and 'type="password"' in html
    assert "<script>" not in html  # the CSP allows only /ui-assets/ui.js
    assert '<script src="/ui-assets/ui.js" defer></script>' in html
