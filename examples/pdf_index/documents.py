"""A folder of PDFs for the example: several pages each, some pages with a table.

Document ``n`` has :data:`PAGES_PER_DOCUMENT` pages; page ``p`` (0-based) is about topic
``(n * PAGES_PER_DOCUMENT + p) % len(TOPICS)``, so the first four documents cover twelve
different topics and :func:`page_topics` tells which page of which document talks about what.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fpdf import FPDF

from examples.corpus import TOPICS, Topic

__all__ = ["PAGES_PER_DOCUMENT", "document_name", "generate", "page_topics", "render"]

PAGES_PER_DOCUMENT = 3
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def document_name(n: int) -> str:
    return f"report-{n:03d}.pdf"


def page_topics(n: int) -> list[Topic]:
    """The topic of each page of document ``n``, in page order."""
    return [TOPICS[(n * PAGES_PER_DOCUMENT + p) % len(TOPICS)] for p in range(PAGES_PER_DOCUMENT)]


def render(n: int) -> bytes:
    """Document ``n`` as PDF bytes: a heading and a paragraph per page, a table on every other
    page, a footer with the page number."""
    pdf = FPDF(format="A4")
    pdf.set_creation_date(_EPOCH)  # the same bytes each time
    pdf.set_title(f"Field notes {n}")
    pdf.set_auto_page_break(auto=False)  # one page per topic; the footer sits in the margin
    for p, topic in enumerate(page_topics(n)):
        pdf.add_page()
        pdf.set_font("Helvetica", style="B", size=16)
        pdf.cell(text=topic.title, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(w=0, text=" ".join(topic.sentences), new_x="LMARGIN", new_y="NEXT")
        if (n + p) % 2 == 0:
            pdf.ln(6)
            with pdf.table(col_widths=(60, 60), width=120, align="LEFT") as table:
                table.row(("Measure", "Typical value"))
                for key, value in topic.table:
                    table.row((key, value))
        pdf.set_y(-20)
        pdf.set_font("Helvetica", size=8)
        pdf.cell(text=f"{document_name(n)} - page {p + 1} of {PAGES_PER_DOCUMENT}")
    return bytes(pdf.output())


def generate(folder: Path, count: int) -> list[Path]:
    """Write documents ``0 .. count-1`` into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / document_name(n)
        path.write_bytes(render(n))
        paths.append(path)
    return paths
