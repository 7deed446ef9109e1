"""``File`` on the real stack: invoked with a file (raw bytes over HTTP) and as a keyword
argument (JSON), by a key that may only invoke (so nothing is pickled), with File outputs
equal to the in-process run's and the raw output route serving the file's bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexify import File, Graph, create_client, indexify_function
from indexify.local import LocalClient
from services.devstack import DevStack

pytestmark = pytest.mark.timeout(300)

#: three pages of ~70 KB: over the inline limit, so inputs and outputs go through MinIO
PAGES = [bytes(b for b in range(256) if b != 0x0C) * 280, b"second page \xc3\xa9" * 5000, b""]
SCAN = b"\f".join(PAGES)


@indexify_function()
def split_scan(doc: File) -> list[File]:
    source = (doc.metadata or {}).get("source", "?")
    return [
        File(data=page, mime_type=doc.mime_type, metadata={"source": source, "page": n})
        for n, page in enumerate(doc.data.split(b"\f"))
    ]


@indexify_function()
def extract_scan_text(page: File) -> File:
    text = page.data.decode("utf-8", "replace").upper()
    return File(data=text.encode(), mime_type="text/plain", metadata=page.metadata)


@indexify_function()
def scan_page_size(page: File) -> int:
    return len(page.data)


def scan_graph() -> Graph:
    graph = Graph(name="scans", start_node=split_scan)
    graph.add_edge(split_scan, extract_scan_text)
    graph.add_edge(split_scan, scan_page_size)
    return graph


FUNCTIONS = ("split_scan", "extract_scan_text", "scan_page_size")


def _key(stack: DevStack, role: str) -> str:
    answer = httpx.post(
        f"{stack.url}/keys",
        json={"namespace": "default", "role": role, "name": f"files {role}"},
        headers=stack.auth_headers,
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


def test_files_in_and_out_match_in_process_with_an_invoke_key(
    stack: DevStack, tmp_path: Path
) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(SCAN)
    document = File(data=SCAN, mime_type="application/pdf", metadata={"source": "scan"})

    local = LocalClient(echo_output=False)
    local.register_compute_graph(scan_graph())
    in_process = local.invoke_graph_with_file("scans", path, metadata={"source": "scan"})
    expected = {fn: local.graph_outputs("scans", in_process, fn) for fn in FUNCTIONS}
    assert expected["scan_page_size"] == [len(p) for p in PAGES]
    assert all(isinstance(f, File) for f in expected["extract_scan_text"])

    with create_client(service_url=stack.url) as admin:
        admin.register_compute_graph(scan_graph())
    invoker_key = _key(stack, "invoke")
    with create_client(service_url=stack.url, api_key=invoker_key) as invoker:
        by_path = invoker.invoke_graph_with_file(
            "scans", path, metadata={"source": "scan"}, block_until_done=True
        )
        by_object = invoker.invoke_graph_with_object("scans", block_until_done=True, doc=document)
        for invocation in (by_path, by_object):
            assert invoker.invocation_status("scans", invocation).status == "succeeded"
            for fn in FUNCTIONS:
                got = invoker.graph_outputs("scans", invocation, fn)
                assert _ordered(got) == _ordered(expected[fn]), fn

        rerun = invoker.rerun_invocation("scans", by_path)
        invoker.wait_for_invocation("scans", rerun, timeout=120)
        texts = invoker.graph_outputs("scans", rerun, "extract_scan_text")
        assert _ordered(texts) == _ordered(expected["extract_scan_text"])

    # the raw output route serves a File's own bytes, mime type and metadata
    outputs_path = (
        f"{stack.url}/namespaces/default/compute_graphs/scans/invocations/{by_path}/fn/"
        "extract_scan_text/outputs"
    )
    headers = {"Authorization": f"Bearer {invoker_key}"}
    page = httpx.get(outputs_path, headers=headers, timeout=10).json()
    first = page["outputs"][0]
    task_id, index = first["id"].split(":")
    raw = httpx.get(
        outputs_path.removesuffix("outputs") + f"output/{task_id}/{index}",
        headers=headers,
        timeout=10,
    )
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "text/plain"
    metadata = json.loads(raw.headers["x-indexify-file-metadata"])
    wanted = expected["extract_scan_text"][metadata["page"]]
    assert metadata == wanted.metadata
    assert raw.content == wanted.data


def _ordered(values: list[Any]) -> list[Any]:
    """Outputs of a fan-out's downstream tasks, in the order of the pages they came from (the
    server lists them as they were accepted)."""
    return sorted(values, key=lambda v: v.metadata["page"] if isinstance(v, File) else v)


@indexify_function()
def halve_scan(n: int) -> int:
    return n // 2


def test_bad_file_invocations_are_refused_before_anything_starts(stack: DevStack) -> None:
    with create_client(service_url=stack.url) as admin:
        admin.register_compute_graph(Graph(name="halves", start_node=halve_scan))
        admin.register_compute_graph(scan_graph())
        scans_before = len(admin.invocations("scans"))
    base = f"{stack.url}/namespaces/default/compute_graphs"

    def upload(graph: str, key: str | None = None, **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}"} if key else stack.auth_headers
        return httpx.post(
            f"{base}/{graph}/invoke_file", content=b"x", headers={**auth, **headers}, timeout=10
        )

    wrong_type = upload("halves", **{"Content-Type": "text/plain"})
    assert wrong_type.status_code == 400 and "not a File" in wrong_type.json()["detail"]
    bad_metadata = upload("scans", **{"X-Indexify-File-Metadata": "[1]"})
    assert bad_metadata.status_code == 400, bad_metadata.text
    assert "JSON object" in bad_metadata.json()["detail"]
    refused = upload("scans", _key(stack, "read"), **{"Content-Type": "image/png"})
    assert refused.status_code == 403 and "'invoke'" in refused.json()["detail"]
    with create_client(service_url=stack.url) as admin:
        assert admin.invocations("halves") == []
        assert len(admin.invocations("scans")) == scans_before
