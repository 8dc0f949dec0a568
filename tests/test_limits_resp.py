"""The Redis limiter's own connection (``aiproxy/limits/resp.py``): which URLs it takes, the
handshake against a real redis-server (password, ACL user, database, client name, unix
socket), and what it does with a server that answers in pieces, out of step or in garbage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import hiredis
import pytest
import redis.asyncio

from aiproxy.limits import LimiterUnavailable, Limits, RedisRateLimiter
from aiproxy.limits.resp import Target, pipe_target
from tests.redis_fixture import REDIS_SERVER, RedisServer, free_port


@pytest.mark.parametrize(("url", "target"), [
    ("redis://localhost", Target()),
    ("redis://127.0.0.1:6380/2", Target(host="127.0.0.1", port=6380, db=2)),
    ("redis://:s%40cret@h/0", Target(host="h", password="s@cret")),
    ("redis://alice:pw@h:1/3?client_name=proxy&socket_timeout=2&health_check_interval=5",
     Target(host="h", port=1, db=3, username="alice", password="pw", client_name="proxy")),
    ("unix:///run/redis.sock?db=4", Target(path="/run/redis.sock", db=4)),
    # Not the pipe's to carry: redis-py's connection does (TLS, RESP3, decoded replies...).
    ("rediss://h:6380/0", None),
    ("rediss://h/0?ssl_cert_reqs=none", None),
    ("redis://h/0?protocol=3", None),
    ("redis://h/0?decode_responses=true", None),
    ("redis://h/0?socket_keepalive=true", None),
    ("http://h/0", None),
])
def test_which_urls_the_pipe_takes(url: str, target: Target | None) -> None:
    assert pipe_target(url) == target


def _server(tmp_path: Path, *extra: str) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path, *extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with a password for the default user, and an ACL user of its own."""
    assert Path(REDIS_SERVER).is_file(), "install redis-server: these tests must run"
    yield from _server(tmp_path, "--requirepass", "sesame",
                       "--user", "alice", "on", ">wonderland", "~*", "&*", "+@all")


_PASSWORD = "sesame"  # the locked server's (a test's, not a secret)


async def _keys(port: int, db: int) -> list[str]:
    async with redis.asyncio.Redis(port=port, db=db, password=_PASSWORD,
                                   decode_responses=True) as client:
        return sorted(await client.keys("*"))


async def test_password_database_and_client_name(locked_server: RedisServer) -> None:
    url = f"redis://:sesame@127.0.0.1:{locked_server.port}/3?client_name=aiproxy-limits"
    lim = RedisRateLimiter(url, prefix="p:", timeout=5)
    assert lim._target is not None  # the pipe carries it
    first = await lim.acquire("m", Limits(requests_per_minute=2))
    second = await lim.acquire("m", Limits(requests_per_minute=2))
    third = await lim.acquire("m", Limits(requests_per_minute=2))
    assert [(d.allowed, d.degraded, d.requests_remaining) for d in (first, second, third)] == [
        (True, False, 1), (True, False, 0), (False, False, 0)]
    assert await _keys(locked_server.port, 3) == ["p:limit:{m}:req"]  # SELECT 3 was sent
    assert await _keys(locked_server.port, 0) == []
    async with redis.asyncio.Redis(port=locked_server.port, password="sesame",
                                   decode_responses=True) as client:
        names = [c["name"] for c in await client.client_list()]
    assert "aiproxy-limits" in names
    await lim.close()


async def test_acl_user(locked_server: RedisServer) -> None:
    lim = RedisRateLimiter(f"redis://alice:wonderland@127.0.0.1:{locked_server.port}/0",
                           timeout=5)
    decision = await lim.acquire("m", Limits(requests_per_minute=5))
    assert (decision.allowed, decision.degraded, decision.requests_remaining) == (True, False, 4)
    await lim.close()


@pytest.mark.parametrize("url_auth", [":wrong@", "", "alice:wrong@"])
async def test_a_refused_handshake_is_an_unreachable_backend(
        locked_server: RedisServer, url_auth: str) -> None:
    url = f"redis://{url_auth}127.0.0.1:{locked_server.port}/0"
    lim = RedisRateLimiter(url, timeout=5)
    decision = await lim.acquire("m", Limits(requests_per_minute=5))
    assert decision.allowed and decision.degraded  # open: admitted, counted as degraded
    await lim.close()
    closed = RedisRateLimiter(url, fail_mode="closed", timeout=5)
    with pytest.raises(LimiterUnavailable) as raised:
        await closed.acquire("m", Limits(requests_per_minute=5))
    assert "wrong" not in raised.value.message and "sesame" not in raised.value.message
    await closed.close()


async def test_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    for server in _server(tmp_path, "--unixsocket", str(socket_path), "--unixsocketperm", "700"):
        lim = RedisRateLimiter(f"unix://{socket_path}?db=2", prefix="u:", timeout=5)
        assert lim._target is not None and lim._target.path == str(socket_path)
        decisions = [await lim.acquire("m", Limits(requests_per_minute=1)) for _ in range(2)]
        assert [(d.allowed, d.degraded) for d in decisions] == [(True, False), (False, False)]
        async with redis.asyncio.Redis(port=server.port, db=2, decode_responses=True) as c:
            assert await c.keys("*") == ["u:limit:{m}:req"]
        await lim.close()


# --- a scripted server: what the pipe does with replies in pieces, out of step, garbage -----

# One ACQUIRE answer: admitted, no retry, now = 1000 s, one request window (5, 4 left, 60 s).
_ADMITTED = b"*1\r\n*5\r\n:1\r\n:0\r\n:1000000000\r\n*1\r\n*3\r\n:5\r\n:4\r\n:60000000\r\n*0\r\n"


class ScriptedRedis:
    """Answers each command with what ``answer(n)`` returns for the n-th command (0-based),
    written by ``write`` (all at once by default); counts the connections it accepted."""

    def __init__(self, answer: Callable[[int], bytes]) -> None:
        self.answer = answer
        self.connections = 0
        self.commands: list[list[bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self.piecewise = False

    async def __aenter__(self) -> ScriptedRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    self.commands.append(command)
                    reply = self.answer(len(self.commands) - 1)
                    if self.piecewise:  # one byte a write, each its own TCP segment
                        for i in range(len(reply)):
                            writer.write(reply[i:i + 1])
                            await writer.drain()
                            await asyncio.sleep(0.001)
                    else:
                        writer.write(reply)
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _url(server: ScriptedRedis) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


async def test_replies_in_pieces_are_put_together() -> None:
    async with ScriptedRedis(lambda n: _ADMITTED) as server:
        server.piecewise = True
        lim = RedisRateLimiter(_url(server), timeout=5)
        decision = await lim.acquire("m", Limits(requests_per_minute=5))
        assert (decision.allowed, decision.degraded, decision.requests_remaining,
                decision.requests_reset) == (True, False, 4, 60.0)
        assert server.commands[0][0] == b"EVALSHA"
        await lim.close()


@pytest.mark.parametrize(("bad", "sent"), [
    # Not RESP: the batch gets no answer it can read; it is sent once more on a fresh
    # connection (as after a Redis restart), and answered there.
    (b"xgarbage\r\n", 4),
    # A reply nobody asked for after the batch's own: the stream is out of step.
    (_ADMITTED + b":1\r\n", 3),
])
async def test_a_server_out_of_step_is_dropped_and_the_next_batch_reconnects(
        bad: bytes, sent: int) -> None:
    async with ScriptedRedis(lambda n: bad if n == 0 else _ADMITTED) as server:
        lim = RedisRateLimiter(_url(server), timeout=5)
        decisions = [await lim.acquire("m", Limits(requests_per_minute=5)) for _ in range(3)]
        assert [(d.allowed, d.degraded, d.requests_remaining) for d in decisions] == [
            (True, False, 4)] * 3
        assert server.connections == 2  # dropped once, then one connection again
        assert len(server.commands) == sent
        await lim.close()


async def test_an_error_reply_fails_only_its_subject() -> None:
    # Two subjects in one batch: the first run is refused, the second answered.
    def answer(n: int) -> bytes:
        return b"-BUSY Redis is busy running a script\r\n" if n == 0 else _ADMITTED

    async with ScriptedRedis(answer) as server:
        lim = RedisRateLimiter(_url(server), fail_mode="closed", timeout=5)
        busy, fine = await asyncio.gather(
            lim.acquire("a", Limits(requests_per_minute=5)),
            lim.acquire("b", Limits(requests_per_minute=5)), return_exceptions=True)
        assert isinstance(busy, LimiterUnavailable)
        assert not isinstance(fine, BaseException) and fine.allowed
        assert server.connections == 1  # an error reply leaves the connection in step
        await lim.close()


async def test_a_closed_limiter_closes_its_connection() -> None:
    async with ScriptedRedis(lambda n: _ADMITTED) as server:
        lim = RedisRateLimiter(_url(server), timeout=5)
        await lim.acquire("m", Limits(requests_per_minute=5))
        pipe = lim._pipe
        assert pipe is not None and not pipe.closed
        await lim.close()
        assert pipe.closed and lim._pipe is None



def test_without_hiredis_or_for_a_given_client_redis_py_carries_the_batches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import aiproxy.limits.resp as resp

    assert RedisRateLimiter("redis://127.0.0.1:1/0")._target is not None
    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0")
    assert RedisRateLimiter(client)._target is None
    monkeypatch.setattr(resp, "AVAILABLE", False)
    assert RedisRateLimiter("redis://127.0.0.1:1/0")._target is None
