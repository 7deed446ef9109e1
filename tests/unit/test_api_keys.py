"""API keys without servers: the token format, hashing, and who may do what."""

from __future__ import annotations

import pytest

from services.common.api_keys import (
    ALL_NAMESPACES,
    Principal,
    Role,
    denial,
    hash_token,
    key_id_of,
    new_token,
    provision_dev_key,
    same_hash,
)


def test_tokens_carry_their_id_and_are_unique() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        key_id = key_id_of(token)
        assert key_id is not None and token.startswith(f"ifx_{key_id}_")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ifx_",
        "Bearer ifx_0123456789ab_" + "a" * 43,
        "ifx_0123456789AB_" + "a" * 43,  # the id is lower-case hex
        "ifx_0123456789ab_" + "a" * 42,
        "ifx_0123456789ab_" + "a" * 43 + "\n",
        "xyz_0123456789ab_" + "a" * 43,
        "ifx_0123456789ab_" + "a" * 42 + "!",
    ],
)
def test_malformed_tokens_have_no_id(token: str) -> None:
    assert key_id_of(token) is None


def test_only_the_hash_is_compared() -> None:
    token = new_token()
    digest = hash_token(token)
    assert len(digest) == 64 and token not in digest
    assert same_hash(token, digest) and same_hash(token, digest.upper())
    assert not same_hash(new_token(), digest)


@pytest.mark.parametrize(
    ("role", "includes"),
    [
        (Role.read, {Role.read}),
        (Role.invoke, {Role.read, Role.invoke}),
        (Role.deploy, {Role.read, Role.invoke, Role.deploy}),
        (Role.admin, set(Role)),
    ],
)
def test_each_role_includes_the_ones_below(role: Role, includes: set[Role]) -> None:
    assert {other for other in Role if role.includes(other)} == includes


def _p(namespace: str, role: Role) -> Principal:
    return Principal(key_id="0123456789ab", namespace=namespace, role=role)


@pytest.mark.parametrize(
    ("principal", "role", "namespace", "allowed", "reason_names"),
    [
        (_p("a", Role.read), Role.read, "a", True, ""),
        (_p("a", Role.read), Role.invoke, "a", False, "'invoke'"),
        (_p("a", Role.invoke), Role.deploy, "a", False, "'deploy'"),
        (_p("a", Role.deploy), Role.invoke, "a", True, ""),
        (_p("a", Role.admin), Role.read, "b", False, "namespace 'b'"),
        (_p("a", Role.admin), Role.admin, None, False, "all namespaces"),
        (_p(ALL_NAMESPACES, Role.read), Role.read, "b", True, ""),
        (_p(ALL_NAMESPACES, Role.read), Role.deploy, "b", False, "'deploy'"),
        (_p(ALL_NAMESPACES, Role.admin), Role.admin, None, True, ""),
        (_p(ALL_NAMESPACES, Role.deploy), Role.admin, None, False, "'admin'"),
    ],
)
def test_denial(
    principal: Principal, role: Role, namespace: str | None, allowed: bool, reason_names: str
) -> None:
    reason = denial(principal, role, namespace)
    assert (reason is None) is allowed
    assert principal.has(role, namespace) is allowed
    if reason is not None:
        assert reason_names in reason


def test_a_dev_stack_gets_an_admin_key_saved_for_its_url(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from indexify.credentials import load_api_key

    path = Path(str(tmp_path)) / "credentials.json"
    monkeypatch.setenv("INDEXIFY_CREDENTIALS_FILE", str(path))
    env: dict[str, str] = {}
    token = provision_dev_key(env, "http://127.0.0.1:8901")
    assert token is not None and key_id_of(token) is not None
    assert env["INDEXIFY_API_ADMIN_KEY_SHA256"] == hash_token(token)
    assert load_api_key("http://localhost:8901/") == token
    # authentication turned off, or an admin key already chosen: nothing is generated
    assert provision_dev_key({"INDEXIFY_API_INSECURE_NO_AUTH": "true"}, "http://x:1") is None
    chosen = {"INDEXIFY_API_ADMIN_KEY_SHA256": "ab" * 32}
    assert provision_dev_key(chosen, "http://x:1") is None
    assert chosen == {"INDEXIFY_API_ADMIN_KEY_SHA256": "ab" * 32}
