"""A small website for the example, served over loopback from a thread.

The home page links to one article per topic (a page with navigation, a sidebar and a footer
around the article, as real pages have), to a page that does not exist (404) and to one whose
handler fails (500); the navigation's links lead out of the site's articles and are not
followed by the example's crawler, which reads the home page's ``<main>``. :class:`Site` says
which paths are which, so a test knows what to expect.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from examples.corpus import Topic

__all__ = ["ERROR_PATHS", "Site", "article_path", "serve"]

#: linked from the home page, answered with these statuses
ERROR_PATHS = {"/articles/retired-topic.html": 404, "/articles/broken.html": 500}

_CHROME = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body>
<header><nav><a href="/">Home</a> | <a href="/about.html">About us</a> |
<a href="/contact.html">Contact</a> | Subscribe to our newsletter</nav></header>
<main>{main}</main>
<aside><h3>Popular this week</h3><ul><li>Ten tips for better sleep</li>
<li>Our favourite hiking trails</li></ul></aside>
<footer><p>Copyright 2024 Field Notes Magazine. All rights reserved.</p>
<p>Privacy policy | Cookie settings | Terms of use</p></footer>
</body></html>
"""


def article_path(topic: Topic) -> str:
    return f"/articles/{topic.key}.html"


def _article(topic: Topic) -> str:
    half = len(topic.sentences) // 2
    paragraphs = [topic.sentences[:half], topic.sentences[half:]]
    body = "".join(f"<p>{html.escape(' '.join(p))}</p>" for p in paragraphs)
    main = f"<article><h1>{html.escape(topic.title)}</h1>{body}</article>"
    return _CHROME.format(title=html.escape(topic.title), main=main)


@dataclass(frozen=True)
class Site:
    """The pages of a site of ``topics`` articles: path -> HTML, and the error paths."""

    topics: tuple[Topic, ...]
    pages: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        links = [(article_path(t), t.title) for t in self.topics]
        links += [(path, path.rsplit("/", 1)[-1]) for path in ERROR_PATHS]
        items = "".join(f'<li><a href="{p}">{html.escape(t)}</a></li>' for p, t in links)
        home = _CHROME.format(title="Field Notes", main=f"<h1>Field Notes</h1><ul>{items}</ul>")
        pages = {"/": home} | {article_path(t): _article(t) for t in self.topics}
        object.__setattr__(self, "pages", pages)

    def sentences(self, path: str) -> tuple[str, ...]:
        """The sentences of the article at ``path``."""
        (topic,) = (t for t in self.topics if article_path(t) == path)
        return topic.sentences


@contextmanager
def serve(site: Site, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``site`` on a free port of ``host`` until the block ends; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = ERROR_PATHS.get(self.path)
            page = site.pages.get(self.path)
            if status is None and page is None:
                status = 404
            if status is not None:
                body = f"<html><body><h1>{status} {HTTPStatus(status).phrase}</h1></body></html>"
                self._send(status, body)
                return
            assert page is not None
            self._send(200, page)

        def _send(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the example's output is the graph's."""

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="example-site", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
