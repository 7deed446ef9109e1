"""One worker process, from the executor's side: how it is started, talked to and stopped.

A worker runs user code, so it gets none of the executor's keys:

* **environment**: a scrubbed one (:func:`worker_environment`): ``PATH``, locale and time
  zone, ``PYTHONPATH`` (so it imports what the executor imports), a ``HOME`` and ``TMPDIR``.
  No ``INDEXIFY_*`` setting, no secret, nothing else the executor was started with.
* **user**: when the executor runs as root, the process switches to an unprivileged user
  (``ExecutorSettings.worker_user``, default ``nobody``; :func:`worker_identity`) first
  thing, before it reads any request (:mod:`.privileges`), so it cannot read
  ``/proc/<executor>/environ``, the executor's memory or the data directory. When the
  executor is not root it cannot switch users: the worker then runs as the executor's user,
  with only the scrubbed environment between them (run the executor as root, or in a
  container of its own, for the full separation).
* **channel**: one end of a Unix socket pair, inherited as a file descriptor; the worker
  never opens a network connection for us (:mod:`.worker_wire` says what crosses it).

It is started with ``subprocess`` (fork + exec of a fresh interpreter, as ``spawn`` did), in
a session of its own: a Ctrl-C in the executor's terminal does not reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from .task_data import CodeSlots
from .worker_wire import (
    REPLY_HEADER,
    WorkReply,
    WorkRequest,
    check_reply_sizes,
    decode_reply,
    encode_request,
)

__all__ = [
    "WorkerDied",
    "WorkerIdentity",
    "WorkerProcess",
    "worker_environment",
    "worker_identity",
]

_BUFFER = 8 * 1024 * 1024
#: Variables a worker inherits from the executor (nothing that could hold a secret).
_PASSED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")

#: A request up to this size is joined and written at once (copying it costs less than the
#: system calls of writing its pieces one by one).
_JOINED_BYTES = 64 * 1024


class WorkerDied(Exception):
    def __init__(self, exitcode: int | None):
        super().__init__(f"exit code {exitcode}")
        self.exitcode = exitcode


@dataclass(frozen=True)
class WorkerIdentity:
    """Who a worker runs as: ``None`` fields keep the executor's own."""

    uid: int | None = None
    gid: int | None = None

    @property
    def home(self) -> str:
        return tempfile.gettempdir()


def worker_identity(user: str, group: str = "", *, euid: int | None = None) -> WorkerIdentity:
    """The identity workers take: ``user`` (a name or uid) and ``group`` (a name or gid,
    default the user's primary group) when the executor runs as root (``euid`` 0); the
    executor's own otherwise, or when ``user`` is empty. An unknown user or group is a
    ``ValueError`` naming the setting to fix."""
    if (os.geteuid() if euid is None else euid) != 0 or not user:
        return WorkerIdentity()
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise ValueError(
                f"worker user {user!r} does not exist; set INDEXIFY_EXECUTOR_WORKER_USER to an "
                "existing unprivileged user (or a numeric uid)"
            ) from None
        uid, gid = int(user), None
    else:
        uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(
                f"worker group {group!r} does not exist; set INDEXIFY_EXECUTOR_WORKER_GROUP to "
                "an existing group (or a numeric gid)"
            ) from None
    if gid is None:
        raise ValueError(
            f"worker uid {uid} has no user entry: set INDEXIFY_EXECUTOR_WORKER_GROUP too"
        )
    if uid == 0:
        raise ValueError(
            "INDEXIFY_EXECUTOR_WORKER_USER names root: workers must run as an unprivileged "
            "user (or set it to '' to keep the executor's user, knowingly)"
        )
    return WorkerIdentity(uid=uid, gid=gid)


def worker_environment(
    environ: dict[str, str], path: list[str], identity: WorkerIdentity
) -> dict[str, str]:
    """The whole environment of a worker: see the module docstring."""
    env = {name: environ[name] for name in _PASSED if name in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    entries = [os.path.abspath(p or os.getcwd()) for p in path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(e for e in entries if os.path.isdir(e)))
    env["HOME"] = identity.home
    env["TMPDIR"] = tempfile.gettempdir()
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the worker may not own the source tree
    return env


@dataclass(eq=False)
class WorkerProcess:
    """A started worker: its process and the executor's end of its socket."""

    process: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    #: which graphs' code the process holds (the executor's mirror of its cache)
    codes: CodeSlots = field(default_factory=CodeSlots)

    @classmethod
    async def start(
        cls,
        identity: WorkerIdentity,
        log_level: str,
        log_format: str,
        *,
        malloc_retain_mb: int = 0,
    ) -> WorkerProcess:
        parent_sock, child_sock = socket.socketpair()
        for sock in (parent_sock, child_sock):  # fewer wake-ups for values of megabytes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        command = [
            sys.executable,
            "-m",
            "services.executor.task_runner",
            f"--fd={child_sock.fileno()}",
            f"--log-level={log_level}",
            f"--log-format={log_format}",
            f"--malloc-retain-mb={malloc_retain_mb}",
        ]
        if identity.uid is not None:
            command += [f"--uid={identity.uid}", f"--gid={identity.gid}"]
        env = worker_environment(dict(os.environ), sys.path, identity)

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                command,
                env=env,
                cwd=identity.home,
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        # Popen runs on in its thread when this start is cancelled (the pool closing): the
        # process it starts is then stopped and reaped here, never left to the garbage
        # collector.
        starting = asyncio.ensure_future(asyncio.to_thread(popen))
        try:
            process = await asyncio.shield(starting)
        except BaseException:
            parent_sock.close()
            with contextlib.suppress(Exception):
                await _reap(await starting)
            raise
        finally:
            child_sock.close()  # the child has its copy: the end of stream now means it died
        try:
            # A large buffer: values of megabytes arrive without pausing the socket every 128 KB.
            reader, writer = await asyncio.open_unix_connection(sock=parent_sock, limit=_BUFFER)
        except BaseException:
            parent_sock.close()
            await asyncio.shield(_reap(process))
            raise
        return cls(process=process, reader=reader, writer=writer)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()

    async def join(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to end; its exit code, or None."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.process.wait, timeout)
        return self.process.poll()

    async def send(self, request: WorkRequest | list[WorkRequest] | None) -> None:
        try:
            pieces = encode_request(request)
            if sum(len(piece) for piece in pieces) <= _JOINED_BYTES:
                self.writer.write(b"".join(pieces))  # one write: one system call, one wake-up
            else:
                for piece in pieces:  # not writelines: it joins (copies) them
                    self.writer.write(piece)
            await self.writer.drain()  # a large message waits here, not in a blocked loop
        except (ConnectionError, RuntimeError) as exc:  # RuntimeError: transport closed
            raise WorkerDied(None) from exc

    async def receive(self, timeout: float | None) -> tuple[WorkReply, bytes]:
        """The next reply and the bytes after it; ``TimeoutError`` after ``timeout`` s,
        ``WorkerDied`` when the stream ended (the process is gone), ``WireError`` when it
        sent something that is not a reply."""

        async def read() -> tuple[WorkReply, bytes]:
            header = await self.reader.readexactly(REPLY_HEADER.size)
            json_size, data_size = REPLY_HEADER.unpack(header)
            check_reply_sizes(json_size, data_size)
            reply = decode_reply(await self.reader.readexactly(json_size))
            data = await self.reader.readexactly(data_size) if data_size else b""
            return reply, data

        try:
            return await asyncio.wait_for(read(), timeout)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise WorkerDied(None) from exc

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


async def _reap(process: subprocess.Popen[bytes]) -> None:
    """Kill a worker process that will never be used, and wait for it (no zombie)."""
    with contextlib.suppress(OSError):
        process.kill()
    await asyncio.to_thread(process.wait)
