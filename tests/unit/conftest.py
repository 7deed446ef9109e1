"""Fixtures shared by the unit tests: everything here runs without any server."""

import pytest

from indexify import IndexifyClient, create_client


@pytest.fixture
def client() -> IndexifyClient:
    """A fresh in-process client (its own graphs, invocations and outputs)."""
    return create_client(in_process=True)
