"""API keys on the real stack: ``indexify-cli keys`` against a running API, and SDK clients
holding keys of different roles and namespaces."""

from __future__ import annotations

import re

import pytest

from indexify import ApiError, Graph, create_client, indexify_function
from indexify.cli import main
from services.devstack import DevStack


@indexify_function()
def shout(text: str) -> str:
    return text.upper()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _create(capsys: pytest.CaptureFixture[str], stack: DevStack, namespace: str, role: str) -> str:
    out = _cli(
        capsys, "keys", "create", "--url", stack.url, "--namespace", namespace, "--role", role
    )
    tokens = re.findall(r"ifx_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", out)
    assert len(tokens) == 1, out
    return tokens[0]


def test_keys_from_the_cli_scope_what_clients_may_do(
    stack: DevStack, capsys: pytest.CaptureFixture[str]
) -> None:
    deployer = _create(capsys, stack, "team-k", "deploy")
    reader = _create(capsys, stack, "team-k", "read")
    listed = _cli(capsys, "keys", "list", "--url", stack.url, "--namespace", "team-k")
    assert listed.count("team-k") == 2 and "deploy" in listed and "read" in listed

    graph = Graph(name="shouter", start_node=shout)
    with create_client(service_url=stack.url, namespace="team-k", api_key=deployer) as deploy:
        deploy.register_compute_graph(graph)
        invocation = deploy.invoke_graph_with_object("shouter", block_until_done=True, text="hi")
        assert deploy.namespaces() == ["team-k"]
    with create_client(service_url=stack.url, namespace="team-k", api_key=reader) as read:
        assert read.graph_outputs("shouter", invocation, "shout") == ["HI"]
        with pytest.raises(ApiError) as refused:
            read.invoke_graph_with_object("shouter", text="no")
        assert refused.value.status_code == 403 and "'invoke'" in refused.value.message
    # another namespace's key sees nothing of team-k; the stack's own admin key sees it all
    with create_client(service_url=stack.url, api_key=reader) as elsewhere:
        with pytest.raises(ApiError) as other:
            elsewhere.graphs()
        assert other.value.status_code == 403
    with create_client(service_url=stack.url, namespace="team-k") as admin:
        assert "shouter" in admin.graphs()

    reader_id = reader.split("_")[1]
    _cli(capsys, "keys", "revoke", "--url", stack.url, reader_id)
    with create_client(service_url=stack.url, namespace="team-k", api_key=reader) as revoked:
        with pytest.raises(ApiError) as gone:
            revoked.graphs()
        assert gone.value.status_code == 401 and "Authorization: Bearer" in gone.value.message


def test_a_client_without_a_key_is_told_how_to_pass_one(
    stack: DevStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INDEXIFY_CREDENTIALS_FILE", "/nonexistent/credentials.json")
    with create_client(service_url=stack.url) as anonymous, pytest.raises(ApiError) as refused:
        anonymous.graphs()
    assert refused.value.status_code == 401
    assert "INDEXIFY_API_KEY" in refused.value.message
    assert main(["keys", "list", "--url", stack.url]) == 1
    assert "401" in capsys.readouterr().err
