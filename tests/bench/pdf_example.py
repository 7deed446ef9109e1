"""``make bench``'s PDF workload: the PDF example (examples/pdf_index) on generated documents.

Documents per second from the first invocation to the last document indexed, in-process and
on the stack; on the stack also, per function, where its attempts' time went as the status API
reports it: queue (from the task message to the executor reading its inputs), blob I/O (the
executor reading the inputs and code, then storing outputs and logs) and execution (the
function on its worker).
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
    """Per function of ``pdf_index``: tasks, executors, and the mean queue, blob I/O and
    execution time of its attempts (plus the execution p95), from the status API."""
    runs: dict[str, list[tuple[float, float, float]]] = {}
    executors: dict[str, set[str]] = {}
    for invocation in client.invocations(INDEX_GRAPH):
        for task in client.invocation_tasks(INDEX_GRAPH, invocation.id):
            for attempt in task.attempts:
                read = attempt.input_read_sec or 0.0
                write = attempt.output_write_sec or 0.0
                queued = attempt.started_at - read - attempt.queued_at if attempt.queued_at else 0.0
                execution = attempt.finished_at - attempt.started_at
                runs.setdefault(task.function, []).append(
                    (max(queued, 0.0), read + write, execution)
                )
                executors.setdefault(task.function, set()).add(attempt.executor)
    rows = []
    for function, spans in runs.items():
        execution = [e for _, _, e in spans]
        p95 = statistics.quantiles(execution, n=20)[18] if len(execution) > 1 else execution[0]
        rows.append(
            {
                "function": function,
                "tasks": str(len(spans)),
                "executors": ",".join(sorted(executors[function])),
                "queue mean (ms)": f"{statistics.fmean(q for q, _, _ in spans) * 1e3:.0f}",
                "blob I/O mean (ms)": f"{statistics.fmean(b for _, b, _ in spans) * 1e3:.0f}",
                "execution mean (ms)": f"{statistics.fmean(execution) * 1e3:.0f}",
                "execution p95 (ms)": f"{p95 * 1e3:.0f}",
            }
        )
    return rows
