"""Settings, built once in each service's ``main()`` and passed down.

``InfraSettings`` (prefix ``INDEXIFY_``) says where Kafka, Redis and MinIO are and how our
topics, keys and objects are named; every service reads it. Each service has its own settings
class with its own prefix (``INDEXIFY_API_``, ``INDEXIFY_SCHEDULER_``, ``INDEXIFY_EXECUTOR_``).
"""

from __future__ import annotations

import re
import socket
import uuid

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class InfraSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXIFY_", extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    minio_endpoint: str = "127.0.0.1:9000"
    minio_access_key: str = "minioadmin"
    minio_secret_key: str = "minioadmin"
    minio_secure: bool = False
    bucket: str = "indexify"
    prefix: str = Field(
        default="indexify",
        description="names topics (<prefix>.events), Redis keys and object keys; tests use "
        "a fresh prefix each",
    )
    events_partitions: int = Field(default=8, ge=1)
    task_partitions: int = Field(default=4, ge=1)
    inline_limit_bytes: int = Field(
        default=64 * 1024, ge=0, description="outputs up to this size travel inline"
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=20,
        ge=1,
        description="how long the broker holds a busy consumer's fetch that found nothing (one "
        "with a paused partition or records in the last second; an idle one waits 3 s, which "
        "a record ends at once): a partition that becomes fetchable meanwhile waits for it, "
        "so this bounds a hop's worst-case delay under load",
    )
    log_level: str = "INFO"
    log_format: str = Field(default="console", pattern="^(console|json)$")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _PREFIX.match(value):
            raise ValueError("prefix must be 1-40 letters, digits, '_' or '-'")
        return value


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXIFY_API_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8900
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    sse_keepalive_sec: float = 10.0
    access_log: bool = Field(
        default=False,
        description="log every HTTP request (one line each: about 5 % of the API's CPU under "
        "load); errors are logged either way",
    )


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXIFY_SCHEDULER_", extra="ignore", frozen=True)

    group_id: str = "indexify-scheduler"
    max_batch: int = Field(default=500, ge=1, description="events handled per poll")
    max_reduce_batch: int = Field(default=2000, ge=1)
    max_fanout_slice: int = Field(
        default=2000,
        ge=1,
        description="tasks of one fan-out created per event; the rest follow in later "
        "batches, behind other invocations' events",
    )
    session_timeout_ms: int = 10_000
    commit_interval_sec: float = Field(
        default=0.2,
        ge=0,
        description="offsets of handled events are committed at most this often while events "
        "flow (and whenever a poll is empty); a crash replays up to this much, as duplicates",
    )


def _default_executor_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXIFY_EXECUTOR_", extra="ignore", frozen=True)

    id: str = Field(default_factory=_default_executor_id)
    image: str = "indexify-executor-default"
    labels: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(default=2, ge=1, le=256)
    group_id: str = "indexify-executors"
    refresh_interval_sec: float = Field(default=1.0, gt=0)
    heartbeat_interval_sec: float = Field(default=2.0, gt=0)
    session_timeout_ms: int = 10_000
    max_poll_records: int = 200
    max_outputs_per_task: int = Field(
        default=100_000,
        ge=1,
        description="a function returning more values fails with an error saying so (a "
        "fan-out of millions would not fit in one task result)",
    )
    lease_ttl_sec: float | None = Field(
        default=None,
        gt=0,
        description="how long a running task's lease outlives its executor's last renewal "
        "(default: the session timeout, at least 3 s); another executor that is handed the "
        "same task waits for the lease instead of running it twice",
    )
    chain_hold_sec: float = Field(
        default=0.5,
        ge=0,
        description="an executor runs the next step of a chain itself while the chain's first "
        "result waited less than this (services/executor/chains.py); 0: every step goes "
        "through the scheduler",
    )
    failpoint: str = Field(
        default="",
        description="TEST HOOK, never set in production: 'exit_before_finish:<function>' makes "
        "the executor process os._exit(1) after a task of <function> stored its outputs and "
        "its result record, before its task.finished event is published",
    )
