"""Website summaries: the ``site_summary`` graph.

::

    crawl (SiteRequest) --> fetch_page --> route_page --+--> SummarizePage --> site_summary
      links of the home   one task per    router         |    extractive      accumulate=
      page's <main>       page            by status      +--> record_error   (4xx / 5xx)

* ``crawl`` reads the home page and fans out the links of its main content (same site).
* ``fetch_page`` downloads a page and keeps its HTTP status.
* ``route_page`` sends error pages (status 400 and up) to ``record_error`` and the others to
  ``SummarizePage`` (the seed README's ``analyze_text`` pattern).
* ``SummarizePage`` extracts the main text with trafilatura (no navigation, sidebar or footer)
  and summarises it extractively: the sentences whose all-MiniLM-L6-v2 embeddings are closest
  to the page's centroid, in the page's order.
* ``site_summary`` is a reducer: the summaries of all pages, and the site summary as Markdown.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from html.parser import HTMLParser
from typing import List, Union  # noqa: UP035 - the seed's router annotation
from urllib.parse import urljoin, urlsplit

import numpy as np
from pydantic import BaseModel

from examples import minilm
from indexify import Graph, IndexifyFunction, indexify_function, indexify_router

__all__ = [
    "GRAPH",
    "ErrorPage",
    "FetchedPage",
    "PageRef",
    "PageSummary",
    "SiteRequest",
    "SiteSummary",
    "SummarizePage",
    "graph",
    "sentences_of",
    "summarize",
]

GRAPH = "site_summary"
FETCH_TIMEOUT_SEC = 10.0
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class SiteRequest(BaseModel):
    url: str  # the home page
    sentences: int = 2  # per page summary


class PageRef(BaseModel):
    url: str
    sentences: int


class FetchedPage(BaseModel):
    url: str
    status: int
    html: str
    sentences: int


class PageSummary(BaseModel):
    url: str
    title: str
    summary: list[str]  # sentences of the page, in the page's order
    sentence_count: int  # of the page's main text


class ErrorPage(BaseModel):
    url: str
    status: int


class SiteSummary(BaseModel):
    pages: list[PageSummary] = []
    markdown: str = ""


class _MainLinks(HTMLParser):
    """The ``href`` of every link inside ``<main>`` (the whole page when there is none)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.seen_main = False
        self.inside: list[str] = []
        self.everywhere: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "main":
            self.depth += 1
            self.seen_main = True
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.everywhere.append(href)
                if self.depth:
                    self.inside.append(href)

    def handle_endtag(self, tag: str) -> None:
        if tag == "main" and self.depth:
            self.depth -= 1

    def links(self) -> list[str]:
        return self.inside if self.seen_main else self.everywhere


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SEC) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:  # 4xx and 5xx come with a page too
        return int(error.code), error.read().decode("utf-8", "replace")


def sentences_of(text: str) -> list[str]:
    """The sentences of extracted text: each line split at sentence ends; lines that are not
    sentences (headings, captions without a full stop) are left out."""
    found = []
    for line in text.splitlines():
        for sentence in _SENTENCE_END.split(line.strip()):
            if sentence.endswith((".", "!", "?")):
                found.append(sentence)
    return found


def summarize(model: minilm.Embedder, sentences: list[str], count: int) -> list[str]:
    """The ``count`` sentences nearest to the centroid of all of them, in their order."""
    if len(sentences) <= count:
        return list(sentences)
    vectors = model.embed(sentences)
    centroid = vectors.mean(axis=0)
    nearest = np.argsort(-(vectors @ centroid), kind="stable")[:count]
    return [sentences[i] for i in sorted(nearest.tolist())]


@indexify_function()
def crawl(site: SiteRequest) -> list[PageRef]:
    """The site's pages linked from the home page's main content, each once."""
    status, home = _get(site.url)
    if status >= 400:
        raise RuntimeError(f"the home page {site.url} answered {status}")
    parser = _MainLinks()
    parser.feed(home)
    host = urlsplit(site.url).netloc
    urls = dict.fromkeys(urljoin(site.url, href).split("#")[0] for href in parser.links())
    return [
        PageRef(url=url, sentences=site.sentences)
        for url in urls
        if urlsplit(url).netloc == host and url.rstrip("/") != site.url.rstrip("/")
    ]


@indexify_function()
def fetch_page(ref: PageRef) -> FetchedPage:
    status, html = _get(ref.url)
    return FetchedPage(url=ref.url, status=status, html=html, sentences=ref.sentences)


class SummarizePage(IndexifyFunction):
    """Main text (trafilatura) and an extractive summary; the model is loaded once per worker."""

    name = "summarize_page"

    def __init__(self) -> None:
        self.model = minilm.load()

    def run(self, page: FetchedPage) -> PageSummary:
        import trafilatura

        text = trafilatura.extract(page.html, include_comments=False, include_tables=False) or ""
        metadata = trafilatura.extract_metadata(page.html)
        title = (metadata.title if metadata else None) or page.url
        sentences = sentences_of(text)
        return PageSummary(
            url=page.url,
            title=title,
            summary=summarize(self.model, sentences, page.sentences),
            sentence_count=len(sentences),
        )


@indexify_function()
def record_error(page: FetchedPage) -> ErrorPage:
    return ErrorPage(url=page.url, status=page.status)


# The seed's router annotation names the functions it may route to (the SDK checks the graph's
# routes against it); they are not types, hence the type: ignore comments.
@indexify_router()
def route_page(page: FetchedPage) -> List[Union[SummarizePage, record_error]]:  # type: ignore[valid-type]  # noqa: UP006, UP007
    """Error pages to ``record_error``, the others to ``SummarizePage``."""
    if page.status >= 400:
        return [record_error]  # type: ignore[list-item]
    return [SummarizePage]  # type: ignore[list-item]


@indexify_function(accumulate=SiteSummary)
def site_summary(summary: SiteSummary, page: PageSummary) -> SiteSummary:
    """The pages' summaries by URL, and the site summary as Markdown."""
    pages = sorted([*summary.pages, page], key=lambda p: p.url)
    markdown = "\n\n".join(f"## {p.title}\n\n{' '.join(p.summary)}\n\n<{p.url}>" for p in pages)
    return SiteSummary(pages=pages, markdown=markdown)


def graph() -> Graph:
    g = Graph(
        name=GRAPH,
        start_node=crawl,
        description="The pages of a website fetched, routed by status and summarised",
    )
    g.add_edge(crawl, fetch_page)
    g.add_edge(fetch_page, route_page)
    g.route(route_page, [SummarizePage, record_error])
    g.add_edge(SummarizePage, site_summary)
    return g
