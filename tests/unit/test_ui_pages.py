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


def test_a_replayed_invocation_shows_its_computations_and_reused_tasks() -> None:
    import time

    from indexify import Graph, create_client, indexify_function
    from indexify.models import Replay
    from services.api.ui.dag_layout import layout
    from services.api.ui.timeline import function_states, task_rows
    from services.api.ui.views import GraphPage, InvocationPage

    @indexify_function()
    def ui_first(x: int) -> int:
        return x + 1

    @indexify_function()
    def ui_second(x: int) -> int:
        return x * 2

    graph = Graph("ui_replayed", start_node=ui_first).add_edge(ui_first, ui_second)
    client = create_client(in_process=True, echo_output=False)
    client.register_compute_graph(graph)
    inv = client.invoke_graph_with_object("ui_replayed", x=1)
    replay = client.rerun_graph("ui_replayed", from_function="ui_second")
    info = client.invocation_status("ui_replayed", inv)
    definition = graph.definition()
    page = InvocationPage(
        info=info,
        definition=definition,
        dag=layout(definition),
        states=function_states(definition.nodes, info.tasks),
        rows=task_rows(info, definition.start_node, time.time()),
        logs={},
        outputs={},
        live=False,
    )
    html = render("invocation.html", viewer=ADMIN, inv=page, nav="invocations")
    assert "computation 1" in html and "from <code>ui_second</code> on" in html
    assert "1 task reused" in html and html.count('class="reused"') == 1
    assert 'data-generation="0"' in html and "Earlier computations" in html

    graph_page = GraphPage(
        info=client.graph("ui_replayed"),
        dag=layout(definition),
        versions=[],
        invocations=[info],
        queued={},
        replays=[
            replay,
            Replay(
                id="r" * 32,
                namespace="default",
                graph="ui_replayed",
                graph_version="v",
                total=4,
                done=1,
                failed=1,
            ),
        ],
    )
    filters = {"status_filter": "", "since_filter": "", "statuses": [], "periods": []}
    html = render("graph.html", viewer=ADMIN, graph=graph_page, nav="graphs", **filters)
    assert html.count("data-replay=") == 2 and "1/4" in html and "(1 failed)" in html
