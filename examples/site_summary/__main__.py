"""``python -m examples.site_summary``: serve the demo site on loopback and summarise it.

python -m examples.site_summary                      # in-process
python -m examples.site_summary --service-url http://127.0.0.1:8900   # on a service
python -m examples.site_summary --url https://...    # another site (the network permitting)
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from examples.corpus import TOPICS
from examples.site_summary.graph import GRAPH, SiteRequest, graph
from examples.site_summary.site import Site, serve
from indexify import create_client


@contextlib.contextmanager
def _site(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with serve(Site(TOPICS[:6])) as base:
            yield base + "/"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.site_summary", description=__doc__)
    parser.add_argument("--url", help="the home page to start from (default: the demo site)")
    parser.add_argument("--sentences", type=int, default=2, help="sentences per page summary")
    parser.add_argument("--service-url", help="run on this service (default: in-process)")
    args = parser.parse_args()

    client = (
        create_client(service_url=args.service_url)
        if args.service_url
        else create_client(in_process=True)
    )
    client.register_compute_graph(graph())
    with _site(args.url) as url:
        invocation = client.invoke_graph_with_object(
            GRAPH, block_until_done=True, site=SiteRequest(url=url, sentences=args.sentences)
        )
        for error in client.graph_outputs(GRAPH, invocation, "record_error"):
            print(f"error page: {error.url} ({error.status})")
        for summary in client.graph_outputs(GRAPH, invocation, "site_summary"):
            print(summary.markdown)
    client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
