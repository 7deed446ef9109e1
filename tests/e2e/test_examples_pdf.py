"""The PDF example (examples/pdf_index) end to end, in-process and on the real stack.

Four generated documents of three pages (twelve topics, one per page) are indexed; for every
topic, the question about it must come back with the document and page the generator put it
on, and each document's statistics must match what the LanceDB table holds. On the stack the
embedding functions are placed on the executor labelled ``model=minilm`` only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from examples.pdf_index.documents import PAGES_PER_DOCUMENT, document_name, generate, page_topics
from examples.pdf_index.graph import EMBED_PLACEMENT, INDEX_GRAPH, QUERY_GRAPH
from examples.pdf_index.run import ask, index_documents, register
from indexify import IndexifyClient, create_client
from services.devstack import DevStack, ProcessSpec

pytestmark = pytest.mark.timeout(420)

DOCUMENTS = 4
PLAIN_EXECUTOR = "examples-plain"
MODEL_EXECUTOR = "examples-model"
MODEL_LABEL = ",".join(f"{k}={v}" for k, v in EMBED_PLACEMENT.items())


@pytest.fixture(scope="module")
def model_stack(
    tmp_path_factory: pytest.TempPathFactory,
    cleanup: Callable[[str], None],
    live_executors: Callable[[DevStack], set[str]],
    await_condition: Callable[..., object],
) -> Iterator[DevStack]:
    """API, scheduler, a plain executor and one labelled as having the model."""
    prefix = f"e2e{os.urandom(5).hex()}"
    dev = DevStack({"INDEXIFY_PREFIX": prefix}, log_dir=tmp_path_factory.mktemp("services"))
    try:
        dev.start(ProcessSpec("api", "services.api"))
        dev.start(ProcessSpec("scheduler", "services.scheduler"))
        dev.start(ProcessSpec("executor-plain", "services.executor", ["--id", PLAIN_EXECUTOR]))
        dev.start(
            ProcessSpec(
                "executor-model",
                "services.executor",
                ["--id", MODEL_EXECUTOR, "--label", MODEL_LABEL],
            )
        )
        dev.wait_healthy(timeout=60)
        await_condition(
            lambda: live_executors(dev) >= {PLAIN_EXECUTOR, MODEL_EXECUTOR},
            60,
            "both executors to send heartbeats",
        )
        yield dev
    finally:
        dev.stop()
        cleanup(prefix)


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory the executors' unprivileged workers can write (the LanceDB index)."""
    path = tempfile.mkdtemp(prefix="pdf-index-")
    os.chmod(path, 0o777)  # the workers run as another user; removed after
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _index_and_ask(client: IndexifyClient, folder: Path, index: str) -> None:
    import lancedb

    register(client)
    paths = generate(folder, DOCUMENTS)
    stats = index_documents(client, paths, index)
    rows = lancedb.connect(index).open_table("chunks").to_arrow().to_pylist()
    assert sorted(stats) == [document_name(n) for n in range(DOCUMENTS)]
    for name, doc in stats.items():
        mine = [r for r in rows if r["document"] == name]
        assert doc.document == name
        assert doc.pages == PAGES_PER_DOCUMENT
        assert doc.chunks == len(mine) > 0
        assert doc.words == sum(len(r["text"].split()) for r in mine)
        assert {r["page"] for r in mine} == set(range(1, PAGES_PER_DOCUMENT + 1))
    for n in range(DOCUMENTS):
        for page, topic in enumerate(page_topics(n), start=1):
            (best, *_) = ask(client, index, topic.question)
            assert (best.document, best.page) == (document_name(n), page), (topic.key, best)
            assert best.text in {r["text"] for r in rows}


def test_pdf_example_in_process(tmp_path: Path) -> None:
    client = create_client(in_process=True)
    _index_and_ask(client, tmp_path / "pdfs", str(tmp_path / "index"))


def test_pdf_example_on_the_stack(model_stack: DevStack, tmp_path: Path, shared_dir: str) -> None:
    with create_client(service_url=model_stack.url) as client:
        _index_and_ask(client, tmp_path / "pdfs", shared_dir)
        placed = {
            task.function: {a.executor for a in task.attempts}
            for graph in (INDEX_GRAPH, QUERY_GRAPH)
            for inv in client.invocations(graph)
            for task in client.invocation_tasks(graph, inv.id)
            if task.function in ("embed_page", "search")
        }
    assert placed == {"embed_page": {MODEL_EXECUTOR}, "search": {MODEL_EXECUTOR}}, placed
