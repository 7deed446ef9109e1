"""``python -m examples.pdf_index``: generate PDFs, index them, answer a question.

    python -m examples.pdf_index --documents 4 --index /tmp/pdf-index \\
        --ask "how do bees turn nectar into honey"
    python -m examples.pdf_index --service-url http://127.0.0.1:8900 ...  # on a service
    python -m examples.pdf_index --service-url http://127.0.0.1:8900 --register-only
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from examples.pdf_index.documents import generate
from examples.pdf_index.graph import INDEX_GRAPH, QUERY_GRAPH
from examples.pdf_index.run import ask, index_documents, register
from indexify import create_client


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.pdf_index", description=__doc__)
    parser.add_argument("--documents", type=int, default=4, help="PDFs to generate (default 4)")
    parser.add_argument("--folder", type=Path, help="where to write them (default: a temp dir)")
    parser.add_argument("--index", default="", help="the LanceDB directory to write")
    parser.add_argument("--ask", action="append", default=[], help="a question (repeatable)")
    parser.add_argument("--service-url", help="run on this service (default: in-process)")
    parser.add_argument(
        "--register-only", action="store_true", help="register the graphs, index nothing"
    )
    args = parser.parse_args()
    if not args.index and not args.register_only:
        parser.error("--index is needed (the LanceDB directory)")

    client = (
        create_client(service_url=args.service_url)
        if args.service_url
        else create_client(in_process=True)
    )
    register(client)
    if args.register_only:
        print(f"registered {INDEX_GRAPH} and {QUERY_GRAPH}")
        client.close()
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        paths = generate(args.folder or Path(scratch), args.documents)
        for name, stats in index_documents(client, paths, args.index).items():
            print(f"{name}: {stats.pages} pages, {stats.chunks} chunks, {stats.words} words")
    for question in args.ask:
        print(f"\n{question}?")
        for hit in ask(client, args.index, question):
            print(f"  {hit.document} page {hit.page} ({hit.distance:.2f}): {hit.text[:70]}...")
    client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
