"""PDF extraction and indexing (see :mod:`examples.pdf_index.graph` and the README)."""
