"""Schemathesis over every route of the live API: generated requests (valid and not) never
get a 5xx, and every answer matches the OpenAPI document (status and body).

The number of examples per operation is bounded (``INDEXIFY_SCHEMA_EXAMPLES``, 25 by
default) so CI stays fast; raise it locally to search harder. Requests carry the stack's
admin key, so every route is exercised past its key check.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from indexify import Graph, indexify_function
from services.devstack import DevStack

pytestmark = pytest.mark.timeout(900)

EXAMPLES = int(os.environ.get("INDEXIFY_SCHEMA_EXAMPLES", "25"))
CHECKS = [not_a_server_error, response_schema_conformance]


@indexify_function()
def schema_double(x: int) -> int:
    return 2 * x


@pytest.fixture(scope="module")
def auth_headers(stack: DevStack) -> dict[str, str]:
    """The stack's admin key as a header (none when the stack runs without keys)."""
    return dict(getattr(stack, "auth_headers", {}))


@pytest.fixture(scope="module")
def api_schema(stack: DevStack, auth_headers: dict[str, str]) -> Any:
    """The live OpenAPI document, with one registered graph and one invocation, so that
    some generated paths meet real data instead of only 404s."""
    from indexify import create_client

    client = create_client(service_url=stack.url)
    try:
        client.register_compute_graph(Graph(name="schema_graph", start_node=schema_double))
        client.invoke_graph_with_object("schema_graph", block_until_done=True, x=1)
    finally:
        client.close()
    document = httpx.get(f"{stack.url}/openapi.json", headers=auth_headers, timeout=10)
    document.raise_for_status()
    return schemathesis.openapi.from_dict(document.json())


def test_every_route_answers_as_documented(
    api_schema: Any, stack: DevStack, auth_headers: dict[str, str]
) -> None:
    """Each operation gets ``EXAMPLES`` generated valid requests and as many invalid ones;
    the failures of all operations are reported together (one minimal example each)."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, "the document lists the API's routes"
    modes = list(schemathesis.GenerationMode)  # valid requests, and invalid ones
    for operation, mode in ((op, mode) for op in operations for mode in modes):

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=stack.url, headers=auth_headers, checks=CHECKS, timeout=30
            )

        try:
            run()
        except Unsatisfiable:  # nothing invalid to generate (e.g. only free-form strings)
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # every check failure, with its request and answer
            failures.append(f"{operation.label} ({mode.value} examples): {exc}")
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)
