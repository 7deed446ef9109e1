"""A lean Redis client for the services' hot calls: one pipelining connection per process.

redis-py's asyncio client spends about 80 µs of CPU on each pipeline it runs (a pool
checkout and release, a ``Pipeline`` object, commands packed in Python, a timeout per read,
retry wrappers, response callbacks), and a service makes several per invocation.
:class:`RedisLink` packs each batch of commands with hiredis, writes it in one write to one
connection shared by every caller of the process, and matches the replies (parsed by
hiredis) to the callers first in, first out: about 12 µs a call.

What goes on it: short commands that answer at once (EVALSHA, HMGET, HSCAN, LRANGE, HGET,
PUBLISH, SCRIPT LOAD...). Never a blocking command (BLPOP, WAIT, ...): it would hold every
other caller's replies behind it; never SUBSCRIBE: pub/sub changes what the connection
answers. Those, and everything that is not on a hot path, stay on redis-py
(``StateStore.redis``).

Replies are raw (RESP2 as hiredis parses it: bytes, ints, lists, None): no response
callbacks, so e.g. HSCAN answers ``[b"cursor", [field, value, ...]]``.

Failures are :mod:`redis.exceptions` types, so :data:`~.redis_calls.REDIS_DOWN` still
turns them into ``PlatformUnavailable``::

    ResponseError (NoScriptError, ...)   an error reply: returned in its command's place,
                                         the batch's other replies stand (as redis-py's
                                         ``execute(raise_on_error=False)``)
    TimeoutError                         no reply within ``reply_timeout`` (the connection
                                         is dropped: every pending batch fails), or no
                                         connection within ``connect_timeout``
    ConnectionError                      the connection was lost or could not be opened
      AuthenticationError                Redis refused the credentials (not retried)

A batch that failed with TimeoutError or ConnectionError is sent again on a new connection
after a backoff, up to ``retries`` times, as the redis-py pool's ``Retry`` does: every call
of the repositories is idempotent or guarded by a compare-and-set
(:mod:`.state_store`), so a batch Redis may have run already can run again.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import parse_url
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.exceptions import AuthenticationError, DataError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .logging import get_logger

__all__ = ["LinkTarget", "RedisLink", "encode_arg", "pack_command", "pack_commands"]

_log = get_logger("services.common.redis_link")
_NOT_YET = object()  # what hiredis.Reader.gets() answers until a whole reply is in
_TIMER_SLACK = 0.001  # the event loop may run a timer this much before its time
_URL_TLS_OPTIONS = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname", "connection_class"}


# -- encoding -------------------------------------------------------------------------------


def encode_arg(value: Any) -> bytes | memoryview:
    """One command argument as redis-py's ``Encoder`` encodes it: bytes and memoryviews as
    they are, ``int`` and ``float`` as their ``repr``, ``str`` in UTF-8; ``bool`` and other
    types are refused (:class:`redis.exceptions.DataError`)."""
    if isinstance(value, bytes | memoryview):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, bool):
        raise DataError(
            "Invalid input of type: 'bool'. Convert to a bytes, string, int or float first."
        )
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, str):
        return value.encode()
    raise DataError(
        f"Invalid input of type: '{type(value).__name__}'. "
        "Convert to a bytes, string, int or float first."
    )


def pack_command(command: Sequence[Any]) -> bytes:
    """``command`` in RESP. hiredis packs str (UTF-8), int, float (as ``repr``), bytes and
    memoryview in C; anything else (bytearray, bool, an ``IntEnum``...) goes through
    :func:`encode_arg` first, so the bytes on the wire are redis-py's."""
    args = tuple(command)
    try:
        return hiredis.pack_command(args)
    except TypeError:
        encoded: tuple[Any, ...] = tuple(encode_arg(arg) for arg in args)
        return hiredis.pack_command(encoded)


def pack_commands(commands: Sequence[Sequence[Any]]) -> bytes:
    return b"".join([pack_command(command) for command in commands])


# -- where Redis is -------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkTarget:
    """Where the link connects and how it logs in (from the services' ``redis_url``)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket (unix://)
    tls: ssl.SSLContext | None = None  # rediss://
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> LinkTarget:
        """``redis://``, ``rediss://`` (TLS: ``ssl_cert_reqs``, ``ssl_ca_certs`` and
        ``ssl_check_hostname`` are read from the query) and ``unix://`` URLs, as redis-py
        reads them."""
        options: dict[str, Any] = dict(parse_url(url))
        unknown = sorted(set(options) - {"host", "port", "path", "username", "password", "db"})
        unknown = [name for name in unknown if name not in _URL_TLS_OPTIONS]
        if unknown:
            raise ValueError(
                f"INDEXIFY_REDIS_URL has options the services' Redis link does not read "
                f"({', '.join(unknown)}): remove them (services/common/redis_link.py reads "
                f"host, port, db, username, password and, for rediss://, "
                f"ssl_cert_reqs, ssl_ca_certs and ssl_check_hostname)"
            )
        tls = None
        if url.startswith("rediss://"):
            tls = _tls_context(options)
        return cls(
            host=options.get("host") or "127.0.0.1",
            port=int(options.get("port") or 6379),
            path=options.get("path"),
            tls=tls,
            username=options.get("username"),
            password=options.get("password"),
            db=int(options.get("db") or 0),
        )

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The context redis-py's ``SSLConnection`` would use for these URL options."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    reqs = str(options.get("ssl_cert_reqs") or "required").lower()
    check = str(options.get("ssl_check_hostname", "true")).lower() not in ("false", "0", "no")
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = check
        context.verify_mode = ssl.CERT_OPTIONAL if reqs == "optional" else ssl.CERT_REQUIRED
    return context


# -- one connection -------------------------------------------------------------------------


class _Batch:
    __slots__ = ("count", "deadline", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.count = count
        self.deadline = deadline
        self.replies: list[Any] = []


class _Connection(asyncio.Protocol):
    """One connection: the batches sent in one turn of the event loop written together at its
    end, replies handed out in order. One timer watches the oldest pending batch's deadline
    (not one per call)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reply_timeout: float) -> None:
        self._loop = loop
        self._reply_timeout = reply_timeout
        self._reader = hiredis.Reader(replyError=BaseParser.parse_error, notEnoughData=_NOT_YET)
        self._pending: deque[_Batch] = deque()
        self._outbox: list[bytes] = []  # batches sent this turn of the loop, written at its end
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.error: tuple[type[Exception], str] | None = None  # why it is closed

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # as redis-py's connections: a peer that vanished is noticed while idle
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        reader, pending = self._reader, self._pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError, f"Redis sent a malformed reply ({exc})")
                return
            if reply is _NOT_YET:
                return
            if not pending:
                self.fail(RedisConnectionError, "Redis sent a reply no command asked for")
                return
            batch = pending[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.count:
                pending.popleft()
                if not batch.future.done():  # else its caller was cancelled
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError, f"Redis closed the connection ({exc or 'end of stream'})")

    # calls

    def send(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write ``count`` packed commands; the future gets their ``count`` replies."""
        if self.error is not None:
            kind, message = self.error
            raise kind(message)
        assert self._transport is not None
        future = self._loop.create_future()
        deadline = self._loop.time() + self._reply_timeout
        self._pending.append(_Batch(future, count, deadline))
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(payload)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        """Write the batches of this turn of the loop in one system call: callers that send
        together (a burst of requests, the tasks of a frame) wake Redis once."""
        outbox, self._outbox = self._outbox, []
        if self.error is None and self._transport is not None and outbox:
            self._transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._pending:
            return
        deadline = self._pending[0].deadline
        if deadline <= self._loop.time() + _TIMER_SLACK:
            self.fail(
                RedisTimeoutError,
                f"Redis did not answer within {self._reply_timeout:g} s (reply timeout)",
            )
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def fail(self, kind: type[Exception], message: str) -> None:
        """Close the connection: every pending batch fails with ``kind(message)``."""
        if self.error is None:
            self.error = (kind, message)
            if self._pending:
                _log.warning("redis link lost", error=message, pending=len(self._pending))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._outbox = []
        if self._transport is not None:
            self._transport.abort()
        while self._pending:
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(kind(message))


# -- the link -------------------------------------------------------------------------------


class RedisLink:
    """Commands of every caller of a process on one pipelining connection (see the module
    docstring); connects on first use."""

    def __init__(
        self,
        target: LinkTarget,
        *,
        name: str = "indexify-link",
        connect_timeout: float = 5.0,
        reply_timeout: float = 10.0,
        retries: int = 2,
        backoff: AbstractBackoff | None = None,
    ) -> None:
        if " " in name or not name:
            raise ValueError(f"RedisLink(name={name!r}): a client name has no spaces")
        self.target = target
        self.name = name
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._retries = retries
        self._backoff = backoff or ExponentialBackoff(cap=0.2, base=0.02)
        self._conn: _Connection | None = None
        self._opening: asyncio.Future[_Connection] | None = None
        self._closed = False
        self.client_id: int | None = None  # CLIENT ID of the current connection

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisLink:
        return cls(LinkTarget.from_url(url), **options)

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write; their replies in order, an error reply as the
        exception instance in its place. Raises :class:`redis.exceptions.DataError` for an
        argument that cannot be encoded (nothing is sent), ``ConnectionError`` or
        ``TimeoutError`` when Redis still cannot be reached after the retries."""
        if not commands:
            return []
        payload = pack_commands(commands)
        failures = 0
        while True:
            try:
                conn = self._conn
                if conn is None or conn.error is not None:
                    conn = await self._connection()
                return await conn.send(payload, len(commands))
            except AuthenticationError:
                raise  # another try would be refused the same way
            except (RedisConnectionError, RedisTimeoutError):
                failures += 1
                if self._closed or failures > self._retries:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))

    async def close(self) -> None:
        """Drop the connection: pending calls fail with ConnectionError, later calls too."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
        if self._conn is not None:
            self._conn.fail(RedisConnectionError, "the Redis link was closed")
            self._conn = None

    # -- connecting ----------------------------------------------------------------------

    async def _connection(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError("the Redis link is closed (its StateStore was closed)")
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[_Connection]) -> None:
        self._opening = None
        if opening.cancelled():
            return
        if opening.exception() is None:  # retrieved here even if every caller went away
            self._conn = opening.result()

    async def _open(self) -> _Connection:
        target = self.target
        try:
            async with asyncio.timeout(self._connect_timeout):
                conn = await self._dial()
                try:
                    await self._handshake(conn)
                except BaseException:
                    conn.fail(RedisConnectionError, "the connection's handshake failed")
                    raise
        except TimeoutError:
            raise RedisTimeoutError(
                f"Timeout connecting to Redis at {target} ({self._connect_timeout:g} s)"
            ) from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis at {target}: {exc}") from None
        _log.info("redis link connected", redis=str(target), client_id=self.client_id)
        return conn

    async def _dial(self) -> _Connection:
        loop = asyncio.get_running_loop()
        target = self.target

        def factory() -> _Connection:
            return _Connection(loop, self._reply_timeout)

        if target.path is not None:
            _, conn = await loop.create_unix_connection(factory, target.path)
        else:
            _, conn = await loop.create_connection(
                factory,
                target.host,
                target.port,
                ssl=target.tls,
                server_hostname=target.host if target.tls is not None else None,
            )
        return conn

    async def _handshake(self, conn: _Connection) -> None:
        """AUTH, SELECT, CLIENT SETNAME (so an operator sees it in CLIENT LIST) and CLIENT ID
        in one round trip; a refusal says what to fix."""
        target = self.target
        commands: list[tuple[Any, ...]] = []
        if target.password:
            if target.username:
                commands.append(("AUTH", target.username, target.password))
            else:
                commands.append(("AUTH", target.password))
        if target.db:
            commands.append(("SELECT", target.db))
        commands += [("CLIENT", "SETNAME", self.name), ("CLIENT", "ID")]
        replies = await conn.send(pack_commands(commands), len(commands))
        for command, reply in zip(commands, replies, strict=True):
            if not isinstance(reply, Exception):
                continue
            if command[0] == "AUTH" or isinstance(reply, AuthenticationError):
                raise AuthenticationError(
                    f"Redis at {target} refused the link's credentials ({reply}): set "
                    "INDEXIFY_REDIS_PASSWORD (or the password in INDEXIFY_REDIS_URL) to the "
                    "server's password (infra/up.sh writes it to $INDEXIFY_DATA_DIR/"
                    "credentials.env)"
                )
            raise RedisConnectionError(
                f"Redis at {target} refused {command[0]} {command[1]} ({reply}): check "
                "INDEXIFY_REDIS_URL"
            )
        self.client_id = int(replies[-1])
