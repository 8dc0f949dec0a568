"""The limiter's own connection to Redis: its batches written whole, their replies parsed by
hiredis in the connection's ``data_received``.

redis-py's asyncio connection reads through a ``StreamReader`` and wraps every reply in its
``read_response`` (timeouts, health checks, push handling, disconnect bookkeeping): about as
much CPU per batch as the batch's script calls themselves. The limiter needs none of it: one
pipelined write a batch, the replies in order, and the connection dropped on any failure so
that no reply can reach the wrong batch. :class:`Pipe` is that, on an ``asyncio.Protocol``.

It speaks RESP2 to what a ``redis://`` or ``unix://`` URL names, with the URL's password (and
ACL username), database and client name (https://redis.io/docs/latest/develop/reference/protocol-spec/;
``AUTH``: https://redis.io/docs/latest/commands/auth/). :func:`pipe_target` says whether a
URL is one of those; anything else (TLS, RESP3, a given client) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable, Sequence
from typing import Any, cast

import attrs
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

try:
    import hiredis

    AVAILABLE = True
except ImportError:  # redis-py runs without it: the limiter then stays on redis-py's connection
    AVAILABLE = False

__all__ = ["AVAILABLE", "Pipe", "Target", "bulks", "pack", "pipe_target"]

# URL options that do not change what is said on the wire or how the socket is opened: the
# limiter sets its own timeouts and holds one connection.
_IGNORED = frozenset({"socket_timeout", "socket_connect_timeout", "health_check_interval",
                      "retry_on_timeout", "max_connections", "timeout"})


@attrs.frozen
class Target:
    """Where a :class:`Pipe` connects and what it says first."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None
    client_name: str | None = None

    def handshake(self) -> list[bytes]:
        """The commands a fresh connection sends before anything else (each answers OK)."""
        commands: list[bytes] = []
        if self.password is not None:
            user = () if self.username is None else (self.username,)
            commands.append(pack("AUTH", *user, self.password))
        if self.db:
            commands.append(pack("SELECT", self.db))
        if self.client_name:
            commands.append(pack("CLIENT", "SETNAME", self.client_name))
        return commands


def pipe_target(url: str) -> Target | None:
    """The :class:`Target` of a ``redis://`` or ``unix://`` URL; ``None`` for any other (TLS,
    RESP3, options that change the connection), which redis-py's connection then carries."""
    try:
        options: dict[str, Any] = dict(parse_url(url))
    except ValueError:
        return None
    kind = options.pop("connection_class", None)
    if kind not in (None, UnixDomainSocketConnection):
        return None
    for name in _IGNORED:
        options.pop(name, None)
    known = {"host", "port", "path", "db", "username", "password", "client_name"}
    if not set(options) <= known or (kind is None) == ("path" in options):
        return None
    try:
        return Target(host=options.get("host", "localhost"), port=int(options.get("port", 6379)),
                      path=options.get("path"), db=int(options.get("db", 0)),
                      username=options.get("username"), password=options.get("password"),
                      client_name=options.get("client_name"))
    except (TypeError, ValueError):
        return None


def bulks(values: Iterable[str | int]) -> list[bytes]:
    """Each value as an argument in the Redis protocol (a RESP bulk string). One loop, no
    call a value: a batch packs thousands."""
    out: list[bytes] = []
    for value in values:
        data = value.encode() if isinstance(value, str) else b"%d" % value
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return out


def pack(*args: str | int) -> bytes:
    """One command in the Redis protocol."""
    return b"*%d\r\n" % len(args) + b"".join(bulks(args))


def _error(reply: hiredis.ReplyError) -> ResponseError:
    """An error reply as redis-py's exception, as its parser names them (the limiter tells a
    missing script from any other refusal)."""
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Ask:
    """One write's commands, waiting for as many replies."""

    __slots__ = ("future", "replies", "wanted")

    def __init__(self, future: asyncio.Future[list[Any]], wanted: int) -> None:
        self.future, self.wanted = future, wanted
        self.replies: list[Any] = []


class Pipe(asyncio.Protocol):
    """One connection; :meth:`ask` writes commands and gets their replies, in order.

    Any failure (the connection lost, garbage from the server, the caller giving up on an
    answer) closes the connection and fails every ask still waiting on it: a reply is never
    read by an ask it does not belong to. A closed pipe is never used again (:attr:`closed`).
    """

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._asks: collections.deque[_Ask] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(cls, target: Target) -> Pipe:
        """Connect and run the handshake (the caller bounds the time)."""
        loop = asyncio.get_running_loop()
        pipe: Pipe
        try:
            if target.path is not None:
                _, pipe = await loop.create_unix_connection(cls, target.path)
            else:
                _, pipe = await loop.create_connection(cls, target.host, target.port)
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect ({type(exc).__name__})") from exc
        handshake = target.handshake()
        if handshake:
            try:
                for reply in await pipe.ask(handshake):
                    if isinstance(reply, ResponseError):  # WRONGPASS, NOAUTH, a bad db...
                        raise AuthenticationError(str(reply))
            except BaseException:
                pipe.close()
                raise
        return pipe

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        asks = self._asks
        try:
            while asks:
                ask = asks[0]
                replies = ask.replies
                while len(replies) < ask.wanted:
                    reply = reader.gets()
                    if reply is False:
                        return
                    replies.append(_error(reply) if isinstance(reply, hiredis.ReplyError)
                                   else reply)
                asks.popleft()
                if not ask.future.done():
                    ask.future.set_result(replies)
            if reader.has_data():  # a reply nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("unexpected reply from redis"))
        except hiredis.ProtocolError as exc:
            self._fail(RedisConnectionError(f"protocol error ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError("connection to redis lost"))

    # --- use ------------------------------------------------------------------------------

    def ask(self, commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        """Send ``commands`` in one write; the future gets one reply each (an error reply as
        its ``ResponseError``), or fails with ``ConnectionError`` if the connection does."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self.closed or self._transport is None:
            future.set_exception(RedisConnectionError("connection to redis closed"))
            return future
        self._asks.append(_Ask(future, len(commands)))
        self._transport.write(b"".join(commands))
        return future

    def close(self) -> None:
        """Close the connection; whatever still waits on it fails."""
        self._fail(RedisConnectionError("connection to redis closed"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        while self._asks:
            future = self._asks.popleft().future
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: the asker may have stopped waiting
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()
