"""User code in a worker process finds none of the executor's keys (real MinIO and Redis).

A graph function plays the attacker: it reads its environment and the executor's
(``/proc/<ppid>/environ``), and tries Redis and MinIO at the executor's addresses with
whatever credentials it can find (none: it falls back to the servers' defaults). The
executor's secrets are planted in its environment as canaries.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from indexify import Graph, indexify_function
from indexify.encoding import decode, encode
from indexify.engine import Task, ValueRange
from services.common.blobs import BlobStore, load_values_sync
from services.common.events import StoredValues, TaskMessage
from services.common.names import Names
from services.common.settings import InfraSettings
from services.executor.worker_pool import WorkerPool

_CANARY = f"canary-{uuid.uuid4().hex}"
_DEFAULT_MINIO = "minioadmin"


class Target(BaseModel):
    redis_host: str
    redis_port: int
    minio_endpoint: str


@indexify_function()
def snoop(target: Target) -> dict[str, Any]:
    import redis
    from minio import Minio

    found: dict[str, Any] = {"environ": dict(os.environ), "uid": os.getuid()}
    # the standard library still loads after the switch (C extensions too), even where the
    # Python installation sits in a directory the worker user cannot enter
    import decimal
    import xml.dom.minidom

    found["stdlib"] = (
        str(decimal.Decimal("1.5") * 2)
        + xml.dom.minidom.parseString("<a/>").documentElement.tagName
    )
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as file:
            found["parent_environ"] = file.read().decode(errors="replace")
    except OSError as exc:
        found["parent_environ"] = f"refused: {type(exc).__name__}"
    client = redis.Redis(
        host=target.redis_host,
        port=target.redis_port,
        password=os.environ.get("INDEXIFY_REDIS_PASSWORD"),
        socket_connect_timeout=2,
    )
    try:
        client.set("worker-was-here", "1")
        found["redis"] = "wrote a key"
    except redis.RedisError as exc:
        found["redis"] = f"refused: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    minio = Minio(
        target.minio_endpoint,
        access_key=os.environ.get("INDEXIFY_MINIO_ACCESS_KEY", _DEFAULT_MINIO),
        secret_key=os.environ.get("INDEXIFY_MINIO_SECRET_KEY", _DEFAULT_MINIO),
        secure=False,
    )
    try:
        found["minio"] = f"listed {len(minio.list_buckets())} buckets"
    except Exception as exc:
        found["minio"] = f"refused: {type(exc).__name__}"
    return found


def _message(infra: InfraSettings, blobs: BlobStore) -> TaskMessage:
    graph = Graph(name=f"snoop{uuid.uuid4().hex[:6]}", start_node=snoop)
    version = graph.definition().version
    blobs.put_sync(
        Names(infra.prefix).code_object("default", graph.name, version), graph.serialize()
    )
    host, _, rest = infra.redis_url.removeprefix("redis://").rpartition("@")[2].partition(":")
    target = Target(
        redis_host=host, redis_port=int(rest.split("/")[0]), minio_endpoint=infra.minio_endpoint
    )
    invocation_id = uuid.uuid4().hex
    return TaskMessage(
        namespace="default",
        graph=graph.name,
        invocation_id=invocation_id,
        task_id="snoop-1",
        graph_version=version,
        task=Task(
            id="snoop-1",
            invocation_id=invocation_id,
            function="snoop",
            kind="call",
            inputs=(ValueRange(task_id="input", function="snoop", start=0, stop=1),),
        ),
        inputs=(StoredValues.from_payloads([encode(target)]),),
    )


async def test_a_worker_finds_no_credentials_and_cannot_use_the_backends(
    infra_settings: InfraSettings, blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("INDEXIFY_MINIO_SECRET_KEY", "INDEXIFY_REDIS_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, _CANARY)
    async with WorkerPool(infra_settings, "exec-snoop", size=1, start_timeout_sec=120) as pool:
        event = await pool.run(_message(infra_settings, blob_store))
        dropped = pool.identity.uid is not None
    assert event is not None and event.finished.error is None, event
    assert event.outputs is not None
    (found,) = [decode(p) for p in load_values_sync(blob_store, event.outputs)]

    assert found["stdlib"] == "3.0a"
    environ: dict[str, str] = found["environ"]
    assert [name for name in environ if name.startswith("INDEXIFY_")] == []
    assert _CANARY not in str(environ)
    assert set(environ) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "HOME"} | {
        "TMPDIR",
        "PYTHONDONTWRITEBYTECODE",
    }
    if os.geteuid() == 0 and dropped:  # an unprivileged worker cannot read its executor
        assert found["uid"] != 0
        assert found["parent_environ"].startswith("refused: PermissionError")
    # With per-installation credentials (infra/up.sh), the defaults a worker can fall back
    # to open nothing; a stack without them (the old shared one) is not protected this way.
    if infra_settings.redis_password:
        assert found["redis"].startswith("refused: AuthenticationError"), found["redis"]
    if infra_settings.minio_secret_key != _DEFAULT_MINIO:
        assert found["minio"].startswith("refused:"), found["minio"]
