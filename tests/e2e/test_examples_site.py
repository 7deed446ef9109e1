"""The website example (examples/site_summary) end to end, in-process and on the real stack.

A site of six articles plus a 404 and a 500 link is served over loopback. Every article must
be summarised with sentences of that article only (in its order, as many as asked for), the
error branch must receive exactly the error pages, and the reducer's site summary must hold
every article's summary.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from examples.corpus import TOPICS
from examples.site_summary.graph import GRAPH, SiteRequest, graph
from examples.site_summary.site import ERROR_PATHS, Site, article_path, serve
from indexify import IndexifyClient, create_client
from services.devstack import DevStack

pytestmark = pytest.mark.timeout(300)

SITE = Site(TOPICS[:6])
SENTENCES = 2


@pytest.fixture(scope="module")
def site_url() -> Iterator[str]:
    with serve(SITE) as url:
        yield url


def _summarize_site(client: IndexifyClient, base: str) -> None:
    client.register_compute_graph(graph())
    invocation = client.invoke_graph_with_object(
        GRAPH, block_until_done=True, site=SiteRequest(url=base + "/", sentences=SENTENCES)
    )
    errors = client.graph_outputs(GRAPH, invocation, "record_error")
    assert {(e.url, e.status) for e in errors} == {
        (base + path, status) for path, status in ERROR_PATHS.items()
    }
    summaries = {s.url: s for s in client.graph_outputs(GRAPH, invocation, "summarize_page")}
    assert set(summaries) == {base + article_path(t) for t in SITE.topics}
    for topic in SITE.topics:
        summary = summaries[base + article_path(topic)]
        assert summary.title == topic.title
        assert summary.sentence_count == len(topic.sentences)
        assert len(summary.summary) == SENTENCES
        positions = [topic.sentences.index(s) for s in summary.summary]  # its page's sentences
        assert positions == sorted(positions)
    (site,) = client.graph_outputs(GRAPH, invocation, "site_summary")
    assert site.pages == sorted(summaries.values(), key=lambda s: s.url)
    for summary in summaries.values():
        assert f"## {summary.title}\n\n{' '.join(summary.summary)}" in site.markdown


def test_site_example_in_process(site_url: str) -> None:
    _summarize_site(create_client(in_process=True), site_url)


def test_site_example_on_the_stack(stack: DevStack, site_url: str) -> None:
    with create_client(service_url=stack.url) as client:
        _summarize_site(client, site_url)
