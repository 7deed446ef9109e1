"""The UI in a real headless Chromium (Playwright driving Debian's ``/usr/bin/chromium``)
against the whole stack: sign in with a key, the README graph's DAG, an invocation page that
shows its tasks, a failing task's traceback and follows the invocation live, the executors
and dead-letter pages. Screenshots are taken and checked (PNG, size of what was shot).

Every wait is on a condition (Playwright's ``expect`` polls the page; the test's function
waits for a file the test writes); nothing sleeps for a fixed time.
"""

import os
import re
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from indexify import Graph, IndexifyClient, RetryPolicy, indexify_function
from services.devstack import DevStack
from tests.bench.workloads import map_reduce_graph

CHROMIUM = Path(os.environ.get("INDEXIFY_CHROMIUM", "/usr/bin/chromium"))
WAIT_MS = 30_000

Await = Callable[..., Any]

# -- the README's graph -----------------------------------------------------------------------


README_FUNCTIONS = {"generate_sequence", "sum_all_numbers", "dynamic_router", "squared", "tripled"}

# -- a graph that waits for the test, then fails ----------------------------------------------


@indexify_function()
def gate(marks: str) -> str:
    """Runs until ``<marks>/go`` exists."""
    (Path(marks) / "started").write_text(str(os.getpid()))
    while not (Path(marks) / "go").exists():
        time.sleep(0.02)
    print("the gate opened")
    return marks


@indexify_function(retries=RetryPolicy(max_retries=1, initial_delay_sec=0.1))
def explode(marks: str) -> int:
    raise ValueError(f"boom from explode ({len(marks)})")


@indexify_function()
def prepare(x: int) -> int:
    return x


@indexify_function(placement_constraints=["gpu=h100"])
def on_h100(x: int) -> int:
    return x + 100


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(stack: DevStack) -> Iterator[Browser]:
    """Headless Chromium. It needs ``stack`` so that the stack is torn down after it: the
    stack's cleanup runs an event loop, which Playwright's sync API forbids while it runs."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run infra/chromium.sh (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox"],  # the tests run as root
        )
        yield launched
        launched.close()


@pytest.fixture
def ui(browser: Browser, stack: DevStack) -> Iterator[Page]:
    """A page signed in to the UI with the stack's admin key (through the sign-in form);
    fails the test on any script error or console error (a CSP refusal shows there)."""
    context = browser.new_context(base_url=stack.url, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto("/ui")  # 401: the sign-in form
    expect(page.locator("#login")).to_be_visible()
    assert stack.api_key
    page.fill("input[name=key]", stack.api_key)
    page.click("#login button[type=submit]")
    expect(page.locator("#logout")).to_be_visible(timeout=WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def worker_writable() -> Iterator[Path]:
    """A directory the executors' worker processes may write (they run as an unprivileged
    user, which cannot enter pytest's private ``tmp_path``)."""
    with tempfile.TemporaryDirectory(prefix="indexify-ui-") as directory:
        Path(directory).chmod(0o777)
        yield Path(directory)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# -- tests ------------------------------------------------------------------------------------


def test_the_readme_graph_dag_renders(
    client: IndexifyClient, stack: DevStack, ui: Page, tmp_path: Path
) -> None:
    client.register_compute_graph(map_reduce_graph("ui_readme", "Sequence Summer"))
    client.invoke_graph_with_object("ui_readme", block_until_done=True, a=4)

    ui.goto("/ui")
    card = ui.locator("article.graph-card[data-graph=ui_readme]")
    expect(card.locator("svg.dag g.dag-node")).to_have_count(len(README_FUNCTIONS))

    ui.goto("/ui/namespaces/default/compute_graphs/ui_readme")
    nodes = ui.locator("svg.dag g.dag-node")
    expect(nodes).to_have_count(len(README_FUNCTIONS))
    names = {nodes.nth(i).get_attribute("data-node") for i in range(nodes.count())}
    assert names == README_FUNCTIONS
    for name in README_FUNCTIONS:  # each drawn with its name
        expect(ui.locator(f"svg.dag g[data-node={name}] text.name")).to_have_text(name)
    router = ui.locator("svg.dag g[data-node=dynamic_router]")
    expect(router).to_have_class("dag-node kind-router state-none")
    expect(router.locator("polygon")).to_have_count(1)
    reducer = ui.locator("svg.dag g[data-node=sum_all_numbers]")
    expect(reducer.locator("text.tag")).to_contain_text("reducer (Sum)")
    expect(ui.locator("svg.dag path.dag-edge.route")).to_have_count(2)
    expect(ui.locator("svg.dag path.dag-edge")).to_have_count(4)
    expect(ui.locator("table.versions tr.current code")).to_have_count(1)
    expect(ui.locator("table.invocations tbody tr")).to_have_count(1)
    expect(ui.locator("table.invocations .badge")).to_have_text("succeeded")

    shot = tmp_path / "dag.png"
    dag = ui.locator("svg.dag")
    dag.screenshot(path=str(shot))
    box = dag.bounding_box()
    assert box is not None
    width, height = png_size(shot)
    assert abs(width - box["width"]) <= 1 and abs(height - box["height"]) <= 1
    assert width >= 400 and height >= 400  # four layers of 48 px nodes with gaps
    page_shot = tmp_path / "graph-page.png"
    ui.screenshot(path=str(page_shot), full_page=True)
    assert png_size(page_shot)[0] == 1400
    assert page_shot.stat().st_size > shot.stat().st_size


def test_an_invocation_page_shows_tasks_and_a_traceback_and_updates_live(
    client: IndexifyClient,
    ui: Page,
    await_condition: Await,
    worker_writable: Path,
    tmp_path: Path,
) -> None:
    graph = Graph(name="ui_gate", start_node=gate)
    graph.add_edge(gate, explode)
    client.register_compute_graph(graph)
    inv = client.invoke_graph_with_object("ui_gate", marks=str(worker_writable))
    await_condition((worker_writable / "started").exists, 60, "the gate to start")

    ui.goto(f"/ui/namespaces/default/compute_graphs/ui_gate/invocations/{inv}")
    live = ui.locator("#live")
    expect(live).to_have_attribute("data-live", "true")
    gate_row = ui.locator("tr.task[data-function=gate]")
    expect(gate_row).to_have_attribute("data-status", "running", timeout=WAIT_MS)
    expect(ui.locator("svg.dag g[data-node=gate]")).to_have_attribute("data-state", "running")
    expect(ui.locator("svg.dag g[data-node=explode]")).to_have_attribute("data-state", "idle")
    expect(ui.locator("#stream-state")).to_have_text("live", timeout=WAIT_MS)
    running_shot = tmp_path / "running.png"
    ui.screenshot(path=str(running_shot), full_page=True)
    # a mark the page keeps only as long as it is not reloaded
    ui.evaluate("window.__sameDocument = true")

    (worker_writable / "go").write_text("")

    expect(ui.locator("#status")).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    assert ui.evaluate("window.__sameDocument === true"), "the page was reloaded"
    assert int(live.get_attribute("data-updates") or 0) >= 1
    expect(live).to_have_attribute("data-live", "false")
    expect(gate_row).to_have_attribute("data-status", "succeeded")
    explode_row = ui.locator("tr.task[data-function=explode]")
    expect(explode_row).to_have_attribute("data-status", "failed")
    expect(explode_row.locator("td").nth(3)).to_contain_text("2 (1 retry)")
    expect(ui.locator("svg.dag g[data-node=gate]")).to_have_attribute("data-state", "succeeded")
    expect(ui.locator("svg.dag g[data-node=explode]")).to_have_attribute("data-state", "failed")
    # the anatomy of each attempt, and the traceback inline
    attempts = ui.locator("tr.anatomy table.attempts tbody tr")
    expect(attempts.filter(has_text="failure")).to_have_count(2)
    # the executors recorded each phase: queue wait, input read, execution, output write
    gate_anatomy = ui.locator(f"tr.anatomy[data-task='{gate_row.get_attribute('data-task')}']")
    expect(gate_anatomy).to_contain_text("since its message was sent")
    for phase in ("td.read-sec", "td.write-sec"):
        expect(gate_anatomy.locator(phase)).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
    expect(ui.locator("svg.timeline rect.write")).not_to_have_count(0)
    traceback = ui.locator("section#fn-explode pre.traceback")
    expect(traceback).to_contain_text("ValueError: boom from explode")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(ui.locator("section#fn-gate li.output")).to_contain_text(str(worker_writable))
    expect(ui.locator("section#fn-gate pre.stdout")).to_contain_text("the gate opened")
    expect(ui.locator("svg.timeline rect.run.failure")).to_have_count(2)

    done_shot = tmp_path / "failed.png"
    ui.screenshot(path=str(done_shot), full_page=True)
    for shot in (running_shot, done_shot):
        width, height = png_size(shot)
        assert width == 1400 and height >= 900
    assert png_size(done_shot)[1] > png_size(running_shot)[1]  # tracebacks and logs came in

    # the invocation list, filtered by status
    ui.goto("/ui/invocations?status=failed")
    expect(ui.locator(f"tr[data-invocation='{inv}']")).to_have_count(1)
    ui.goto("/ui/invocations?status=succeeded&since=1h")
    expect(ui.locator(f"tr[data-invocation='{inv}']")).to_have_count(0)


def test_an_invocation_no_executor_can_run_says_why_on_its_page(
    client: IndexifyClient, ui: Page
) -> None:
    graph = Graph(name="ui_h100", start_node=prepare)
    graph.add_edge(prepare, on_h100)
    client.register_compute_graph(graph)
    inv = client.invoke_graph_with_object("ui_h100", x=1)
    try:
        ui.goto(f"/ui/namespaces/default/compute_graphs/ui_h100/invocations/{inv}")
        # the page follows the invocation until prepare is done and on_h100 waits
        node = ui.locator("svg.dag g[data-node=on_h100]")
        expect(node).to_have_attribute("data-state", "waiting", timeout=WAIT_MS)
        expect(ui.locator("#waiting")).to_contain_text("no live executor offers gpu=h100")
        waiting_row = ui.locator("tr.task[data-function=on_h100]")
        expect(waiting_row).to_have_attribute("data-status", "waiting")
        expect(waiting_row).to_contain_text("no live executor offers gpu=h100")
        expect(ui.locator("svg.dag g[data-node=prepare]")).to_have_attribute(
            "data-state", "succeeded"
        )
    finally:
        client.cancel_invocation("ui_h100", inv)
    expect(ui.locator("#status")).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)


def test_executors_and_dead_letters_pages(
    ui: Page, executor_ids: dict[str, str], tmp_path: Path
) -> None:
    ui.goto("/ui/executors")
    for executor in executor_ids.values():
        expect(ui.locator(f"tr[data-executor='{executor}']")).to_have_count(1)
    gpu = ui.locator(f"tr[data-executor='{executor_ids['gpu']}']")
    expect(gpu).to_contain_text("gpu=a100")
    expect(gpu).to_contain_text("slots busy")
    shot = tmp_path / "executors.png"
    ui.screenshot(path=str(shot))
    assert png_size(shot) == (1400, 900)

    ui.goto("/ui/deadletters")
    expect(ui.locator("h1")).to_have_text("Dead letters")
    expect(ui.locator("main .problem")).to_have_count(0)

    # an unknown invocation: an error page saying so (fetched with the page's cookie)
    missing = ui.request.get("/ui/namespaces/default/compute_graphs/no_such/invocations/nope")
    assert missing.status == 404
    assert "Cannot show this page (404)" in missing.text()
    assert "graph &#39;no_such&#39; is not registered" in missing.text()
