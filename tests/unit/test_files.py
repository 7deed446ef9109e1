"""The seed SDK's ``File``: stored as raw bytes (never pickled), its mime type and metadata in
the content type; the start function's single argument when a graph is invoked with a file;
the same outputs in-process and through the remote client's HTTP layer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from indexify import EncodingError, File, Graph, InvalidInputError, indexify_function
from indexify.data_objects import (
    MAX_METADATA_BYTES,
    file_attributes,
    file_content_type,
    file_input_problem,
    is_file_content_type,
)
from indexify.encoding import JSON, PICKLE, Payload, coerce, decode, encode, encode_arguments
from indexify.http import HttpRequest, HttpResponse
from indexify.local import LocalClient
from indexify.remote import RemoteClient
from services.api.middleware import ApiMiddleware
from services.api.validation import file_payload
from services.common.blobs import OCTET_STREAM, object_content_type
from services.common.errors import BadRequest

BINARY = bytes(range(256)) * 3

FILES = [
    File(data=b"hello", mime_type="text/plain"),
    File(data=BINARY, mime_type="application/pdf", metadata={"pages": 3, "name": "é.pdf"}),
    File(data=b"", mime_type=None),
    File(data=b"x", mime_type="text/plain; charset=utf-8", metadata={}),
    File(data=b"{}", mime_type="application/json", metadata={"nested": {"a": [1, None]}}),
    File(data=b"y", sha_256="given-by-hand"),
]


# -- encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("file", FILES, ids=lambda f: str(f.mime_type))
@pytest.mark.parametrize("encoder", ["auto", "json", "cloudpickle"])
def test_a_file_is_stored_as_its_raw_bytes_and_decodes_back(file: File, encoder: str) -> None:
    payload = encode(file, File, encoder=encoder)
    assert payload.data == file.data, "the stored bytes are the file's, not base64 or a pickle"
    assert payload.content_type not in (JSON, PICKLE)
    assert is_file_content_type(payload.content_type)
    if file.mime_type:
        assert payload.content_type.startswith(file.mime_type + "; indexify-file=")
    for hint in (File, None, Any, int):  # a File decodes as a File whatever the hint
        decoded = decode(payload, hint)
        assert isinstance(decoded, File)
        assert decoded == file
        assert decoded.sha_256 == file.sha_256


def test_sha_256_is_computed_unless_given() -> None:
    assert File(data=b"abc").sha_256 == hashlib.sha256(b"abc").hexdigest()
    decoded = decode(Payload(content_type=file_content_type(File(data=b"abc")), data=b"abc"))
    assert decoded.sha_256 == hashlib.sha256(b"abc").hexdigest()
    assert "indexify-sha256" not in file_content_type(File(data=b"abc"))
    assert "indexify-sha256" in file_content_type(File(data=b"abc", sha_256="other"))


def test_the_content_type_carries_mime_type_and_metadata() -> None:
    file = File(data=b"%PDF", mime_type="application/pdf", metadata={"k": "v"})
    attributes = file_attributes(file_content_type(file))
    assert attributes is not None
    assert attributes.mime_type == "application/pdf"
    assert attributes.metadata == {"k": "v"}
    assert file_attributes(JSON) is None and file_attributes(PICKLE) is None
    untyped = file_content_type(File(data=b""))
    assert untyped.startswith("application/octet-stream;")
    assert file_attributes(untyped) == (None, None, None)


@pytest.mark.parametrize(
    ("file", "words"),
    [
        (File(data=b"x", mime_type="text/plain\r\nX-Evil: 1"), "not a media type"),
        (File(data=b"x", mime_type="a" * 300), "not a media type"),
        (File(data=b"x", mime_type="text/plain; indexify-file=1"), "not a media type"),
        (File(data=b"x", mime_type=""), "not a media type"),
        (File(data=b"x", metadata={"big": "m" * MAX_METADATA_BYTES}), "byte limit"),
        (File(data=b"x", metadata={"when": object()}), "must be JSON"),
        (File(data=b"x", metadata={"nan": float("nan")}), "must be JSON"),
    ],
)
def test_what_cannot_be_stored_is_refused_saying_why(file: File, words: str) -> None:
    with pytest.raises(EncodingError, match=words):
        encode(file)


class Document(BaseModel):
    title: str
    attachment: File


def test_a_file_argument_is_json_with_base64_data_not_a_pickle() -> None:
    file = File(data=BINARY, mime_type="image/png", metadata={"w": 2})
    for hints in ({"doc": File}, None):  # typed by the start function, or by the value
        payload = encode_arguments({"doc": file}, hints)
        assert payload.content_type == JSON
        raw = json.loads(payload.data)["doc"]
        assert base64.urlsafe_b64decode(raw["data"]) == BINARY
        assert coerce(raw, File) == file
    nested = Document(title="t", attachment=file)
    stored = encode(nested, Document)
    assert stored.content_type == JSON
    assert decode(stored, Document) == nested


def test_python_code_may_still_give_data_as_a_str() -> None:
    assert File(data="plain text").data == b"plain text"  # type: ignore[arg-type]


def test_a_single_file_object_is_stored_under_its_mime_type() -> None:
    pdf = encode(File(data=b"%PDF", mime_type="application/pdf"))
    assert object_content_type([pdf]) == "application/pdf"
    assert object_content_type([encode(File(data=b""))]) == OCTET_STREAM
    assert object_content_type([pdf, pdf]) == OCTET_STREAM
    assert object_content_type([encode(1)]) == OCTET_STREAM


# -- graphs: in-process ---------------------------------------------------------------------


@indexify_function()
def split_pages(doc: File) -> list[File]:
    pages = doc.data.split(b"\f")
    source = (doc.metadata or {}).get("source", "?")
    return [
        File(data=page, mime_type=doc.mime_type, metadata={"source": source, "page": n})
        for n, page in enumerate(pages)
    ]


@indexify_function()
def extract_text(page: File) -> File:
    text = page.data.decode("utf-8", "replace").upper()
    return File(data=text.encode(), mime_type="text/plain", metadata=page.metadata)


@indexify_function()
def count_bytes(page: File) -> int:
    return len(page.data)


@indexify_function()
def takes_a_number(n: int) -> int:
    return n


@indexify_function()
def takes_two(doc: File, other: int) -> int:
    return other


def file_graph(name: str = "files") -> Graph:
    graph = Graph(name=name, start_node=split_pages)
    graph.add_edge(split_pages, extract_text)
    graph.add_edge(split_pages, count_bytes)
    return graph


def _expected() -> tuple[list[File], list[int]]:
    pages = [b"page one", b"p\xe4ge two", b""]
    texts = [
        File(
            data=p.decode("utf-8", "replace").upper().encode(),
            mime_type="text/plain",
            metadata={"source": "scan", "page": n},
        )
        for n, p in enumerate(pages)
    ]
    return texts, [len(p) for p in pages]


def test_in_process_a_file_invocation_passes_the_file_to_the_start_function(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scan.txt"
    path.write_bytes(b"page one\fp\xe4ge two\f")
    client = LocalClient(echo_output=False)
    client.register_compute_graph(file_graph())
    by_path = client.invoke_graph_with_file("files", path, metadata={"source": "scan"})
    texts, sizes = _expected()
    assert client.graph_outputs("files", by_path, "extract_text") == texts
    assert client.graph_outputs("files", by_path, "count_bytes") == sizes
    pages = client.graph_outputs("files", by_path, "split_pages")
    assert [p.mime_type for p in pages] == ["text/plain"] * 3  # guessed from the name

    document = File(data=path.read_bytes(), mime_type="text/plain", metadata={"source": "scan"})
    by_object = client.invoke_graph_with_object("files", doc=document)
    assert client.graph_outputs("files", by_object, "extract_text") == texts
    assert client.graph_outputs("files", by_object, "count_bytes") == sizes
    rerun = client.rerun_invocation("files", by_path)
    assert client.graph_outputs("files", rerun, "extract_text") == texts


def test_a_start_function_that_cannot_take_a_file_is_refused_at_invoke_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"\x00")
    client = LocalClient(echo_output=False)
    client.register_compute_graph(Graph(name="numbers", start_node=takes_a_number))
    client.register_compute_graph(Graph(name="two", start_node=takes_two))
    with pytest.raises(InvalidInputError, match="takes integer, not a File"):
        client.invoke_graph_with_file("numbers", path)
    with pytest.raises(InvalidInputError, match=r"also requires \['other'\]"):
        client.invoke_graph_with_file("two", path)
    assert file_input_problem(file_graph().definition()) is None


# -- the API boundary -----------------------------------------------------------------------


def test_the_api_builds_the_file_from_body_content_type_and_metadata_header() -> None:
    definition = file_graph().definition()
    payload = file_payload(definition, BINARY, "application/pdf", '{"source": "upload"}')
    assert payload.data == BINARY
    assert decode(payload) == File(
        data=BINARY, mime_type="application/pdf", metadata={"source": "upload"}
    )
    assert decode(file_payload(definition, b"", None, None)) == File(data=b"")


@pytest.mark.parametrize(
    ("content_type", "metadata", "words"),
    [
        ("text/plain", "{not json", "not valid JSON"),
        ("text/plain", "[1, 2]", "must be a JSON object"),
        ("text/plain", json.dumps({"m": "x" * MAX_METADATA_BYTES}), "byte limit"),
        ("text/plain", '{"x": NaN}', "not valid JSON"),
        ("text/plain; indexify-file=1", None, "not a media type"),
    ],
)
def test_the_api_refuses_bad_file_requests_with_a_400(
    content_type: str, metadata: str | None, words: str
) -> None:
    with pytest.raises(BadRequest, match=words):
        file_payload(file_graph().definition(), b"x", content_type, metadata)


def test_the_api_refuses_a_file_for_a_start_function_that_takes_none() -> None:
    definition = Graph(name="numbers", start_node=takes_a_number).definition()
    with pytest.raises(BadRequest, match="parameter 'n' of start function"):
        file_payload(definition, b"x", "text/plain", None)


def _guarded_app() -> ApiMiddleware:
    app = FastAPI()

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    app.add_api_route("/namespaces/{ns}/compute_graphs/{g}/invoke_file", echo, methods=["POST"])
    app.add_api_route("/namespaces/{ns}/compute_graphs/{g}/invoke_object", echo, methods=["POST"])
    return ApiMiddleware(app, max_body_bytes=1024 * 1024, max_json_depth=3, body_timeout_sec=5.0)


def _post(path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=_guarded_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            request = c.build_request("POST", path, content=content, headers=headers)
            if "Content-Type" not in headers:
                request.headers.pop("Content-Type", None)
            return await c.send(request)

    return asyncio.run(run())


def test_invoke_file_takes_any_media_type_and_other_routes_still_do_not() -> None:
    upload = "/namespaces/default/compute_graphs/g/invoke_file"
    for headers in ({"Content-Type": "image/png"}, {"Content-Type": "text/plain"}, {}):
        answer = _post(upload, BINARY, headers)
        assert answer.status_code == 200, (headers, answer.text)
        assert answer.json() == {"bytes": len(BINARY)}
    deep = b"[" * 10 + b"]" * 10  # a JSON file is a file: its nesting is not checked
    assert _post(upload, deep, {"Content-Type": "application/json"}).status_code == 200
    other = "/namespaces/default/compute_graphs/g/invoke_object"
    assert _post(other, b"x", {"Content-Type": "text/plain"}).status_code == 415
    cross = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    assert _post(upload, b"x", cross).status_code == 403


# -- the remote client's HTTP layer ---------------------------------------------------------


class _FakeServer:
    """Answers ``invoke_file`` and the outputs page from what a real API would hold."""

    def __init__(self) -> None:
        self.seen: list[HttpRequest] = []
        self.outputs: list[Payload] = []

    def send(self, request: HttpRequest, *, timeout: float, stream: bool) -> HttpResponse:
        self.seen.append(request)
        path = urlsplit(request.path).path
        if path.endswith("/invoke_file"):
            return HttpResponse.of_json(200, {"id": "inv1"})
        if path.endswith("/outputs"):
            items = [
                {
                    "id": f"t:{i}",
                    "content_type": p.content_type,
                    "data": base64.b64encode(p.data).decode(),
                }
                for i, p in enumerate(self.outputs)
            ]
            body = {"status": "succeeded", "function": "f", "outputs": items}
            return HttpResponse.of_json(200, body)
        return HttpResponse.of_json(404, {"detail": f"no route {path}"})


def test_the_remote_client_sends_the_file_as_the_body_and_decodes_file_outputs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(BINARY)
    server = _FakeServer()
    client = RemoteClient("http://indexify.test", transport=server, api_key="k")
    assert client.invoke_graph_with_file("files", path, metadata={"source": "é"}) == "inv1"
    (sent,) = server.seen
    assert sent.method == "POST"
    assert sent.path == "/namespaces/default/compute_graphs/files/invoke_file"
    assert sent.body == BINARY
    assert sent.headers["Content-Type"] == "application/pdf"
    assert json.loads(sent.headers["X-Indexify-File-Metadata"]) == {"source": "é"}
    assert sent.headers["X-Indexify-File-Metadata"].isascii()

    path.rename(tmp_path / "no-extension")
    client.invoke_graph_with_file("files", tmp_path / "no-extension")
    assert "Content-Type" not in server.seen[-1].headers
    assert "X-Indexify-File-Metadata" not in server.seen[-1].headers

    texts, _ = _expected()
    server.outputs = [encode(t) for t in texts]
    assert client.graph_outputs("files", "inv1", "extract_text") == texts
