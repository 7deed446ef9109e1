"""The UI's drawing decisions as pure functions: the DAG's layered layout and its SVG, the
function states that colour it, the attempts' timeline, and the small formatters."""

from xml.etree import ElementTree

import pytest

from indexify.definition import GraphDefinition
from indexify.engine import Attempt, ErrorInfo
from indexify.models import InvocationInfo, TaskInfo
from services.api.ui.dag_layout import NODE_HEIGHT, NODE_WIDTH, layers, layout
from services.api.ui.templating import duration, environment
from services.api.ui.timeline import TRACK_PX, function_states, task_rows
from services.api.ui.views import filter_invocations, preview
from tests.bench.workloads import map_reduce_graph

SVG = "{http://www.w3.org/2000/svg}"
DAG_ALONE = '{% from "_dag.html" import dag %}{{ dag(layout, states) }}'

# -- the README's graph -----------------------------------------------------------------------


def readme() -> GraphDefinition:
    return map_reduce_graph("sequence_summer").definition()


def _definition(edges: dict[str, tuple[str, ...]], start: str = "a") -> GraphDefinition:
    names = {start} | set(edges) | {t for ts in edges.values() for t in ts}
    return GraphDefinition.model_validate(
        {
            "name": "g",
            "start_node": start,
            "nodes": {n: {"name": n} for n in names},
            "edges": edges,
        }
    )


# -- layout -----------------------------------------------------------------------------------


def test_the_readme_graph_is_laid_out_in_layers_with_its_kinds() -> None:
    placed = layout(readme())
    assert {n.name: n.layer for n in placed.nodes} == {
        "generate_sequence": 0,
        "sum_all_numbers": 1,
        "dynamic_router": 2,
        "squared": 3,
        "tripled": 3,
    }
    kinds = {n.name: n.kind for n in placed.nodes}
    assert kinds["sum_all_numbers"] == "reducer" and kinds["dynamic_router"] == "router"
    assert kinds["squared"] == kinds["generate_sequence"] == "function"
    assert placed.node("sum_all_numbers").accumulator == "Sum"
    assert [n.name for n in placed.nodes if n.start] == ["generate_sequence"]
    routes = {(e.source, e.target) for e in placed.edges if e.route}
    assert routes == {("dynamic_router", "squared"), ("dynamic_router", "tripled")}
    assert len(placed.edges) == 4


def test_edges_point_down_and_nodes_neither_overlap_nor_leave_the_canvas() -> None:
    placed = layout(readme())
    for edge in placed.edges:
        assert placed.node(edge.target).y > placed.node(edge.source).y
        assert edge.path.startswith("M")
    boxes = [(n.x, n.y) for n in placed.nodes]
    for i, (x1, y1) in enumerate(boxes):
        for x2, y2 in boxes[i + 1 :]:
            assert abs(x1 - x2) >= NODE_WIDTH or abs(y1 - y2) >= NODE_HEIGHT
    for node in placed.nodes:
        assert node.x >= 0 and node.x + NODE_WIDTH <= placed.width
        assert node.y >= 0 and node.y + NODE_HEIGHT <= placed.height


def test_a_node_sits_below_its_longest_path() -> None:
    # a -> b -> c and a -> c: c is on layer 2, not 1
    assert layers(_definition({"a": ("b", "c"), "b": ("c",)})) == {"a": 0, "b": 1, "c": 2}


def test_a_layer_follows_its_parents_order_not_the_alphabet() -> None:
    # a -> (m, n); m -> z; n -> b: z sits under m (left), b under n (right)
    placed = layout(_definition({"a": ("m", "n"), "m": ("z",), "n": ("b",)}))
    assert placed.node("m").x < placed.node("n").x
    assert placed.node("z").x < placed.node("b").x


def test_the_svg_names_every_function_with_its_shape() -> None:
    placed = layout(readme())
    states = function_states(["generate_sequence"], [_task("t1", "generate_sequence", "failed")])
    svg = environment().from_string(DAG_ALONE).render(layout=placed, states=states)
    root = ElementTree.fromstring(svg)
    groups = {g.get("data-node"): g for g in root.iter(f"{SVG}g") if g.get("data-node")}
    assert set(groups) == {n.name for n in placed.nodes}
    assert groups["dynamic_router"].find(f"{SVG}polygon") is not None
    assert len(groups["sum_all_numbers"].findall(f"{SVG}rect")) == 2  # a double border
    assert groups["generate_sequence"].get("data-state") == "failed"
    assert "state-failed" in (groups["generate_sequence"].get("class") or "")
    assert len(root.findall(f"{SVG}path")) == len(placed.edges)


# -- states and timeline ----------------------------------------------------------------------


def _task(
    task_id: str,
    function: str,
    status: str,
    attempts: list[Attempt] | None = None,
    **extra: object,
) -> TaskInfo:
    return TaskInfo.model_validate(
        {
            "id": task_id,
            "function": function,
            "kind": "call",
            "status": status,
            "attempt": len(attempts or []) or 1,
            "attempts": attempts or [],
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("statuses", "state"),
    [
        ([], "idle"),
        (["succeeded", "succeeded"], "succeeded"),
        (["succeeded", "running", "failed"], "running"),
        (["succeeded", "failed"], "failed"),
        (["queued", "succeeded"], "queued"),
        (["cancelled"], "cancelled"),
    ],
)
def test_a_function_takes_the_state_of_its_most_telling_task(
    statuses: list[str], state: str
) -> None:
    tasks = [_task(f"t{i}", "f", s) for i, s in enumerate(statuses)]
    found = function_states(["f"], tasks)["f"]
    assert found.state == state
    assert sum(found.counts.values()) == len(statuses)


def test_a_task_waiting_for_an_executor_colours_its_function_waiting() -> None:
    waiting = _task("t1", "f", "queued", waiting="no live executor offers gpu=h100")
    assert function_states(["f"], [waiting])["f"].state == "waiting"


def test_attempts_are_placed_on_the_invocation_track_with_their_waits() -> None:
    error = ErrorInfo(message="boom", type="ValueError", traceback="Traceback ...")
    retried = [
        Attempt(
            attempt=1,
            executor="e1",
            started_at=102,
            finished_at=104,
            outcome="failure",
            error=error,
        ),
        Attempt(attempt=2, executor="e2", started_at=106, finished_at=110, outcome="success"),
    ]
    info = InvocationInfo(
        id="inv",
        namespace="ns",
        graph="g",
        graph_version="v",
        status="succeeded",
        created_at=100,
        finished_at=110,
        tasks=[
            _task(
                "later",
                "other",
                "succeeded",
                [Attempt(attempt=1, started_at=104.5, finished_at=105, outcome="success")],
            ),
            _task("first", "start", "succeeded", retried),
        ],
    )
    rows = task_rows(info, "start", now=999)
    assert [r.task.id for r in rows] == ["first", "later"]  # by their first start
    first, second = rows[0].attempts
    assert first.wait_sec == pytest.approx(2) and "creation" in first.wait_from
    assert second.wait_sec == pytest.approx(2) and "previous" in second.wait_from
    assert second.execution_sec == pytest.approx(4) and rows[0].retries == 1
    assert first.run_x == pytest.approx(TRACK_PX * 0.2) and second.run_x + second.run_px == (
        pytest.approx(TRACK_PX)
    )
    assert first.error == error
    assert rows[1].attempts[0].wait_sec is None  # when "later" was created is not recorded


def test_a_recorded_anatomy_splits_an_attempt_into_its_four_phases() -> None:
    attempt = Attempt(
        attempt=1,
        executor="e1",
        queued_at=101,
        input_read_sec=0.5,
        started_at=102,
        finished_at=104,
        output_write_sec=1,
        outcome="success",
    )
    info = InvocationInfo(
        id="inv",
        namespace="ns",
        graph="g",
        graph_version="v",
        status="succeeded",
        created_at=100,
        finished_at=105,
        tasks=[_task("t", "later", "succeeded", [attempt])],
    )
    ((row,),) = [r.attempts for r in task_rows(info, "start", now=999)]
    assert row.wait_sec == pytest.approx(0.5) and "message was sent" in row.wait_from
    assert (row.input_read_sec, row.execution_sec, row.output_write_sec) == (0.5, 2, 1)
    px = TRACK_PX / 5  # per second: the invocation took 5 s
    assert row.wait_x == pytest.approx(px) and row.wait_px == pytest.approx(0.5 * px)
    assert row.read_x == pytest.approx(1.5 * px) and row.read_px == pytest.approx(0.5 * px)
    assert row.run_x == pytest.approx(2 * px) and row.run_px == pytest.approx(2 * px)
    assert row.write_x == pytest.approx(4 * px) and row.write_px == pytest.approx(px)


def test_a_running_task_gets_a_bar_up_to_now() -> None:
    running = _task("t", "start", "running", executor="e1", started_at=105.0)
    info = InvocationInfo(
        id="inv",
        namespace="ns",
        graph="g",
        graph_version="v",
        status="running",
        created_at=100,
        tasks=[running],
    )
    (row,) = task_rows(info, "start", now=110)
    (attempt,) = row.attempts
    assert attempt.outcome == "running" and attempt.finished_at is None
    assert attempt.execution_sec == pytest.approx(5)
    assert attempt.run_x + attempt.run_px == pytest.approx(TRACK_PX)


# -- lists and formatters ---------------------------------------------------------------------


def _inv(inv_id: str, status: str, created_at: float) -> InvocationInfo:
    return InvocationInfo(
        id=inv_id,
        namespace="ns",
        graph="g",
        graph_version="v",
        status=status,
        created_at=created_at,
    )


def test_invocations_filter_by_status_and_age_newest_first() -> None:
    now = 100_000.0
    found = [
        _inv("old", "failed", now - 7200),
        _inv("new", "failed", now - 60),
        _inv("ok", "succeeded", now - 30),
    ]
    assert [i.id for i in filter_invocations(found, "failed", None, now)] == ["new", "old"]
    assert [i.id for i in filter_invocations(found, None, "1h", now)] == ["ok", "new"]
    assert [i.id for i in filter_invocations(found, "failed", "15m", now)] == ["new"]


def test_outputs_are_previewed_cut_and_binary_named() -> None:
    short = preview("t:0", "application/json", b'{"val": 3}')
    assert short.text == '{"val": 3}' and not short.cut
    long = preview("t:1", "application/json", b'"' + b"x" * 5000 + b'"')
    assert long.cut and len(long.text) < 500 and long.size == 5002
    binary = preview("t:2", "application/x-cloudpickle", b"\x80\x05")
    assert binary.text == "<2 bytes of application/x-cloudpickle>"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.34, "340 ms"), (2.414, "2.41 s"), (185, "3 min 05 s"), (7260, "2 h 01 min")],
)
def test_durations_read_like_people_write_them(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text
