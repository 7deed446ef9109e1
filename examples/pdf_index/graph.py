"""PDF extraction and indexing: two graphs, ``pdf_index`` (one invocation per document) and
``pdf_query`` (which document and page talks about X).

``pdf_index``::

    split_pages (File: the PDF) --> extract_page --> embed_page --> index_page --> document_stats
        one File per page          text, chunks    vectors         LanceDB        accumulate=

* ``split_pages`` cuts the document into one-page PDFs: the pages fan out, one task each.
* ``extract_page`` extracts the page's text with pypdf (tables come out as rows of text) and
  chunks it by sentences.
* ``embed_page`` embeds the chunks of up to 16 pages in one model call with all-MiniLM-L6-v2
  on the CPU (:mod:`examples.minilm`): it is a batched function (``batch=Batch(...)``), so the
  engine hands it the pages ready at once, from one document or several, and maps each result
  back to its own task. It carries ``placement_constraints``: only executors labelled
  ``model=minilm`` (the machines with the model installed) run it.
* ``index_page`` upserts the chunks into the LanceDB table at the document's ``index`` (a
  directory, from the File's metadata), keyed by document, page and chunk, so a retried task
  or a document indexed again replaces its rows.
* ``document_stats`` is a reducer: pages, chunks, words and characters of the document.

``pdf_query``: ``search`` embeds the question (same placement) and returns the nearest chunks.
"""

from __future__ import annotations

import io
import re
from typing import Any

from pydantic import BaseModel

from examples import minilm
from examples.pdf_index import store
from indexify import Batch, File, Graph, IndexifyFunction, indexify_function

__all__ = [
    "EMBED_PLACEMENT",
    "INDEX_GRAPH",
    "QUERY_GRAPH",
    "Chunk",
    "DocumentStats",
    "EmbedPage",
    "Hit",
    "IndexedPage",
    "PageChunks",
    "Question",
    "Search",
    "index_graph",
    "query_graph",
]

INDEX_GRAPH = "pdf_index"
QUERY_GRAPH = "pdf_query"
#: the executor label of the machines that can run the embedding model
EMBED_PLACEMENT = {"model": "minilm"}
CHUNK_WORDS = 60
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Chunk(BaseModel):
    document: str
    page: int  # 1-based, as a reader counts
    chunk: int
    text: str


class PageChunks(BaseModel):
    index: str  # the LanceDB directory
    document: str
    page: int
    characters: int
    chunks: list[Chunk]


class EmbeddedPage(BaseModel):
    page: PageChunks
    vectors: list[list[float]]


class IndexedPage(BaseModel):
    document: str
    page: int
    chunks: int
    words: int
    characters: int


class DocumentStats(BaseModel):
    document: str = ""
    pages: int = 0
    chunks: int = 0
    words: int = 0
    characters: int = 0


class Hit(BaseModel):
    document: str
    page: int
    text: str
    distance: float


class Question(BaseModel):
    index: str
    text: str
    limit: int = 3


def chunk_text(text: str, max_words: int = CHUNK_WORDS) -> list[str]:
    """Whole sentences grouped into chunks of at most ``max_words`` words (a longer sentence is
    a chunk of its own); line breaks of the PDF's layout become spaces."""
    flat = " ".join(text.split())
    chunks: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in _SENTENCE_END.split(flat):
        n = len(sentence.split())
        if current and words + n > max_words:
            chunks.append(" ".join(current))
            current, words = [], 0
        if sentence:
            current.append(sentence)
            words += n
    if current:
        chunks.append(" ".join(current))
    return chunks


def _metadata(doc: File) -> dict[str, Any]:
    metadata = dict(doc.metadata or {})
    for key in ("name", "index"):
        if not isinstance(metadata.get(key), str):
            raise ValueError(f"the PDF's metadata needs {key!r} (a string), got {metadata}")
    return metadata


@indexify_function()
def split_pages(doc: File) -> list[File]:
    """One single-page PDF per page of ``doc``; each carries the document's name, its page
    number and the index directory in its metadata."""
    from pypdf import PdfReader, PdfWriter

    metadata = _metadata(doc)
    reader = PdfReader(io.BytesIO(doc.data))
    pages = []
    for number, page in enumerate(reader.pages, start=1):
        writer = PdfWriter()
        writer.add_page(page)
        out = io.BytesIO()
        writer.write(out)
        pages.append(
            File(
                data=out.getvalue(),
                mime_type="application/pdf",
                metadata={**metadata, "page": number},
            )
        )
    return pages


@indexify_function()
def extract_page(page: File) -> PageChunks:
    """The page's text (pypdf) in chunks of whole sentences."""
    from pypdf import PdfReader

    metadata = _metadata(page)
    (only,) = PdfReader(io.BytesIO(page.data)).pages
    text = only.extract_text() or ""
    name, number = metadata["name"], int(metadata["page"])
    return PageChunks(
        index=metadata["index"],
        document=name,
        page=number,
        characters=len(text),
        chunks=[
            Chunk(document=name, page=number, chunk=i, text=t)
            for i, t in enumerate(chunk_text(text))
        ],
    )


class EmbedPage(IndexifyFunction):
    """The chunks of a batch of pages embedded in one model call on the CPU, then split back
    per page; the model is loaded once per worker (the worker keeps this instance)."""

    name = "embed_page"
    placement_constraints = EMBED_PLACEMENT
    batch = Batch(max_size=16, max_wait=0.05)

    def __init__(self) -> None:
        self.model = minilm.load()

    def run(self, pages: list[PageChunks]) -> list[EmbeddedPage]:
        texts = [c.text for page in pages for c in page.chunks]
        vectors = self.model.embed(texts).tolist() if texts else []
        embedded, start = [], 0
        for page in pages:
            end = start + len(page.chunks)
            embedded.append(EmbeddedPage(page=page, vectors=vectors[start:end]))
            start = end
        return embedded


@indexify_function(retries=2)
def index_page(embedded: EmbeddedPage) -> IndexedPage:
    """The page's chunks upserted into the LanceDB table (idempotent, so a failed write, e.g.
    one that lost a commit race with another worker, is simply retried)."""
    page = embedded.page
    rows = [
        {
            "document": c.document,
            "page": c.page,
            "chunk": c.chunk,
            "text": c.text,
            "vector": vector,
        }
        for c, vector in zip(page.chunks, embedded.vectors, strict=True)
    ]
    store.add_chunks(page.index, rows)
    return IndexedPage(
        document=page.document,
        page=page.page,
        chunks=len(rows),
        words=sum(len(c.text.split()) for c in page.chunks),
        characters=page.characters,
    )


@indexify_function(accumulate=DocumentStats)
def document_stats(stats: DocumentStats, page: IndexedPage) -> DocumentStats:
    return DocumentStats(
        document=page.document,
        pages=stats.pages + 1,
        chunks=stats.chunks + page.chunks,
        words=stats.words + page.words,
        characters=stats.characters + page.characters,
    )


class Search(IndexifyFunction):
    """The chunks nearest to the question, nearest first: which document and page talk about
    it."""

    name = "search"
    placement_constraints = EMBED_PLACEMENT

    def __init__(self) -> None:
        self.model = minilm.load()

    def run(self, question: Question) -> list[Hit]:
        (vector,) = self.model.embed([question.text])
        return [
            Hit(document=r["document"], page=r["page"], text=r["text"], distance=r["_distance"])
            for r in store.search(question.index, vector.tolist(), question.limit)
        ]


def index_graph() -> Graph:
    graph = Graph(
        name=INDEX_GRAPH,
        start_node=split_pages,
        description="PDF pages extracted, chunked, embedded and indexed in LanceDB",
    )
    graph.add_edge(split_pages, extract_page)
    graph.add_edge(extract_page, EmbedPage)
    graph.add_edge(EmbedPage, index_page)
    graph.add_edge(index_page, document_stats)
    return graph


def query_graph() -> Graph:
    return Graph(
        name=QUERY_GRAPH,
        start_node=Search,
        description="Which document and page of the PDF index talk about a question",
    )
