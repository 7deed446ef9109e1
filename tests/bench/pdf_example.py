"""``make bench``'s PDF workload: the PDF example (examples/pdf_index) on generated documents.

Documents per second from the first invocation to the last document indexed, in-process and
on the stack; on the stack also each function's tasks and their execution time as the status
API reports it (each attempt's start and finish on its executor). The status API records no
enqueue time and no blob transfer time, so queueing and blob I/O are not split out.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: examples/

from examples.pdf_index.documents import generate
from examples.pdf_index.graph import EMBED_PLACEMENT, INDEX_GRAPH
from examples.pdf_index.run import index_documents, register
from indexify import IndexifyClient

__all__ = ["EXECUTOR_LABELS", "function_split", "measure_pdf"]

#: the labels an executor needs to run the example's embedding function (JSON, for the env)
EXECUTOR_LABELS = "{" + ",".join(f'"{k}":"{v}"' for k, v in EMBED_PLACEMENT.items()) + "}"


def measure_pdf(label: str, client: IndexifyClient, documents: int) -> dict[str, str]:
    """Index ``documents`` generated PDFs into a fresh index; the row of the PDF table."""
    register(client)
    with tempfile.TemporaryDirectory(prefix="bench-pdf-") as scratch:
        index = Path(scratch) / "index"
        index.mkdir()
        os.chmod(scratch, 0o755)
        os.chmod(index, 0o777)  # the stack's workers run as an unprivileged user
        paths = generate(Path(scratch) / "pdfs", documents)
        start = time.perf_counter()
        stats = index_documents(client, paths, str(index))
        wall = time.perf_counter() - start
    pages = sum(s.pages for s in stats.values())
    chunks = sum(s.chunks for s in stats.values())
    return {
        "mode": label,
        "documents": str(len(stats)),
        "pages / chunks": f"{pages} / {chunks}",
        "wall (s)": f"{wall:.1f}",
        "docs/s": f"{len(stats) / wall:.2f}",
    }


def function_split(client: IndexifyClient) -> list[dict[str, str]]:
    """Per function of ``pdf_index``: tasks, executors, and the execution time of its attempts
    (sum, mean, p95), from the status API."""
    runs: dict[str, list[float]] = {}
    executors: dict[str, set[str]] = {}
    for invocation in client.invocations(INDEX_GRAPH):
        for task in client.invocation_tasks(INDEX_GRAPH, invocation.id):
            for attempt in task.attempts:
                runs.setdefault(task.function, []).append(attempt.finished_at - attempt.started_at)
                executors.setdefault(task.function, set()).add(attempt.executor)
    rows = []
    for function, seconds in runs.items():
        p95 = statistics.quantiles(seconds, n=20)[18] if len(seconds) > 1 else seconds[0]
        rows.append(
            {
                "function": function,
                "tasks": str(len(seconds)),
                "executors": ",".join(sorted(executors[function])),
                "execution sum (s)": f"{sum(seconds):.1f}",
                "mean (ms)": f"{statistics.fmean(seconds) * 1e3:.0f}",
                "p95 (ms)": f"{p95 * 1e3:.0f}",
            }
        )
    return rows
