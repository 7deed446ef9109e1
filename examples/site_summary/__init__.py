"""Website summaries (see :mod:`examples.site_summary.graph` and the README)."""
