"""Runnable examples of data-intensive graphs (see the README's "Examples" section)."""
