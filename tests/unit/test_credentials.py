"""The SDK's credentials file and the order in which a client finds its key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from indexify.credentials import (
    credentials_path,
    forget_api_key,
    load_api_key,
    resolve_api_key,
    save_api_key,
    server_id,
)
from indexify.http import HttpRequest, HttpResponse
from indexify.remote import RemoteClient


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config" / "credentials.json"
    monkeypatch.setenv("INDEXIFY_CREDENTIALS_FILE", str(path))
    monkeypatch.delenv("INDEXIFY_API_KEY", raising=False)
    return path


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("http://localhost:8900", "http://127.0.0.1:8900"),
        ("http://127.0.0.1:8900/", "http://127.0.0.1:8900"),
        ("HTTP://LocalHost:8900", "http://127.0.0.1:8900"),
        ("http://[::1]:8900", "http://127.0.0.1:8900"),
        ("https://indexify.example.com", "https://indexify.example.com:443"),
        ("http://indexify.example.com/api/", "http://indexify.example.com:80/api"),
    ],
)
def test_server_id(url: str, canonical: str) -> None:
    assert server_id(url) == canonical


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("INDEXIFY_CREDENTIALS_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert credentials_path() == tmp_path / "indexify" / "credentials.json"


def test_save_load_forget(creds: Path) -> None:
    assert load_api_key("http://127.0.0.1:8900") is None
    save_api_key("http://127.0.0.1:8900", "k1")
    save_api_key("http://127.0.0.1:8901", "k2")
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert load_api_key("http://localhost:8900/") == "k1"
    assert json.loads(creds.read_text())["servers"]["http://127.0.0.1:8901"] == {"api_key": "k2"}
    forget_api_key("http://127.0.0.1:8900", "not-k1")  # someone else's key now: kept
    assert load_api_key("http://127.0.0.1:8900") == "k1"
    forget_api_key("http://127.0.0.1:8900", "k1")
    assert load_api_key("http://127.0.0.1:8900") is None
    assert load_api_key("http://127.0.0.1:8901") == "k2"


def test_a_broken_file_says_what_to_do(creds: Path) -> None:
    creds.parent.mkdir(parents=True)
    creds.write_text("{not json")
    with pytest.raises(ValueError, match="fix or delete it"):
        load_api_key("http://127.0.0.1:8900")


def test_explicit_beats_environment_beats_file(
    creds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://127.0.0.1:8900"
    save_api_key(url, "from-file")
    assert resolve_api_key(url) == "from-file"
    monkeypatch.setenv("INDEXIFY_API_KEY", "from-env")
    assert resolve_api_key(url) == "from-env"
    assert resolve_api_key(url, "explicit") == "explicit"


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []

    def send(self, request: HttpRequest, *, timeout: float, stream: bool) -> HttpResponse:
        self.requests.append(request)
        return HttpResponse.of_json(200, {"compute_graphs": []})


@pytest.mark.parametrize(
    ("explicit", "expected"), [(None, "Bearer from-file"), ("mine", "Bearer mine")]
)
def test_the_remote_client_sends_its_key(creds: Path, explicit: str | None, expected: str) -> None:
    save_api_key("http://localhost:8900", "from-file")
    transport = _Recorder()
    client = RemoteClient("http://localhost:8900", transport=transport, api_key=explicit)
    client.graphs()
    assert transport.requests[0].headers["Authorization"] == expected


def test_no_key_no_header(creds: Path) -> None:
    transport = _Recorder()
    RemoteClient("http://localhost:8900", transport=transport).graphs()
    assert "Authorization" not in transport.requests[0].headers


def test_cli_generates_a_first_admin_key_with_its_hash(
    creds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from indexify.cli import main
    from services.common.api_keys import hash_token, key_id_of

    assert main(["keys", "generate", "--save", "--url", "http://localhost:8900"]) == 0
    out = capsys.readouterr().out
    token = next(line for line in out.splitlines() if line.startswith("ifx_"))
    assert key_id_of(token) is not None
    assert f"INDEXIFY_API_ADMIN_KEY_SHA256={hash_token(token)}" in out
    assert load_api_key("http://127.0.0.1:8900") == token
    assert main(["keys", "save", "--url", "http://example.com:8900", "other"]) == 0
    assert load_api_key("http://example.com:8900") == "other"
