"""The shared backend: the same exact sliding logs, in Redis, applied by atomic Lua scripts.

Every replica on one Redis sees one set of windows, so N replicas admit L in total, not N*L.
Time comes from Redis ``TIME`` inside the script, so machines with skewed clocks still agree.
Times are integer microseconds (exact in a Lua double up to 2**53, i.e. for 285 years).
The decisions of one event-loop iteration travel together: one script call per subject, all
of them in one round trip (see :mod:`aiproxy.limits.batch`). Layout, fail modes, batching and
expiry are described in ``docs/limits.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from aiproxy.limits import redis_scripts, resp
from aiproxy.limits.base import (
    MAX_TOKENS,
    Decision,
    LimiterUnavailable,
    Limits,
    RateLimiter,
    Reservation,
    bounded_seconds,
    bounded_tokens,
    make_decision,
)
from aiproxy.limits.batch import Batches, Outcome

__all__ = ["RedisRateLimiter"]

log = structlog.get_logger("aiproxy.limits")

_US = 1_000_000
# Seconds between two "Redis unreachable" warnings: one per outage burst, not one per request.
_WARN_EVERY = 5.0
# Calls per script run: a burst of thousands in one iteration becomes several runs (in the
# same round trip), so no single run holds Redis for long.
_MAX_CALLS = 200
# Cached script groups (subject, limits); more than this many means reloads left stale ones.
_MAX_GROUPS = 4096


class _Script:
    """A Lua script, sent by SHA1 (``EVALSHA``) and loaded again on ``NOSCRIPT``."""

    def __init__(self, text: str, *, answers_each: bool) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        # True: the script returns one answer per call; else one for the whole run.
        self.answers_each = answers_each


_ACQUIRE = _Script(redis_scripts.ACQUIRE, answers_each=True)
_RECONCILE = _Script(redis_scripts.RECONCILE, answers_each=False)
_PARK = _Script(redis_scripts.PARK, answers_each=False)

# One script call: the script, its KEYS (one subject's, so one Cluster slot) and the ARGV
# that every call of the group shares; an item is one call's own ARGV.
_Group = tuple[_Script, tuple[str, ...], tuple[int, ...]]
_Item = tuple[str | int, ...]

# Reservation ids (sorted-set members shared by every process): a random per-process prefix
# and a counter, as unique as a uuid4 and much cheaper.
_RID_PREFIX = os.urandom(8).hex()
_RID_COUNTER = itertools.count(1)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an unawaited future's outcome as seen (its failure is logged where it happens)."""
    if not future.cancelled():
        future.exception()


class RedisRateLimiter(RateLimiter):
    """Exact sliding-window limits shared by every process on one Redis.

    ``url_or_client``: a ``redis://`` URL (the limiter then owns a connection pool with short
    timeouts and no retries) or a ready ``redis.asyncio.Redis``. ``fail_mode``: ``"open"``
    admits with ``Decision.degraded`` while Redis is unreachable, ``"closed"`` raises
    :class:`LimiterUnavailable`. ``clock``: tests only; replaces Redis ``TIME``.
    ``timeout``: the bound on connecting, and on a round trip once connected; a caller's
    answer is abandoned ``2 * timeout + 0.5`` seconds after it asked, in all.
    ``max_connections``: size of the owned pool (the batches hold one of its connections,
    ``ping`` takes the others).
    """

    def __init__(self, url_or_client: str | Redis, *, prefix: str = "aiproxy:",
                 fail_mode: str = "open", clock: Callable[[], float] | None = None,
                 timeout: float = 0.5, max_connections: int = 64) -> None:
        if fail_mode not in ("open", "closed"):
            raise ValueError(f"fail_mode must be 'open' or 'closed', not {fail_mode!r}")
        # Hard ceiling per round trip (a pooled connection, connect, send, read), also for a
        # caller's client that may retry. Once a connection is in hand the round trip gets
        # `timeout` (twice that when it must connect first), on the same single timer: one
        # bound per round trip instead of redis-py's socket timeouts, which cost a Task
        # (wait_for) on every send and a second timer on every read.
        self._timeout = timeout
        self._deadline = 2 * timeout + 0.5
        self._owns_client = isinstance(url_or_client, str)
        if isinstance(url_or_client, str):
            # Blocking pool: a burst queues for a connection (bounded by the deadline) instead of
            # failing "too many connections". No retries: a dead Redis must answer at once.
            pool = BlockingConnectionPool.from_url(
                url_or_client, max_connections=max_connections, timeout=self._deadline,
                socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
            self._client: Redis = Redis(connection_pool=pool)
        else:
            self._client = url_or_client
        self.prefix, self.fail_mode = prefix, fail_mode
        self._clock = clock
        self.degraded_decisions = 0
        # Outage logging: one warning per _WARN_EVERY, one "reachable again" per outage.
        self._last_warning = float("-inf")
        self._down = False
        # One batch in flight at a time (see batch.py), so one connection carries them all,
        # held rather than taken from the pool per round trip: the pool's condition, timer,
        # health probe and observability hooks cost more than the round trip's own work.
        self._batches: Batches[_Group, _Item, Any] = Batches(self._send, orphan=self._orphan,
                                                             max_in_flight=1)
        self._conn: AbstractConnection | None = None
        # The limiter's own connection, for a URL it can speak to directly (see resp.py).
        self._target = (resp.pipe_target(url_or_client)
                        if isinstance(url_or_client, str) and resp.AVAILABLE else None)
        self._pipe: resp.Pipe | None = None
        self._groups: dict[tuple[str, Limits], _Group] = {}
        # Per group: its argument count and the packed arguments its calls share.
        self._prefixes: dict[_Group, tuple[int, bytes]] = {}

    @property
    def round_trips(self) -> int:
        """Batches sent to Redis so far (each one round trip, retries aside)."""
        return self._batches.batches_sent

    def _key(self, key: str, suffix: str) -> str:
        # The {hash tag} keeps all keys of one subject in one Redis Cluster slot.
        return f"{self.prefix}limit:{{{key}}}:{suffix}"

    def _token_keys(self, key: str, limits: Limits) -> tuple[str, ...]:
        keys: list[str] = []
        for window, _ in limits.token_windows:
            keys += [self._key(key, f"tok:{int(window)}"), self._key(key, f"tok:{int(window)}:amt")]
        return tuple(keys)

    def _acquire_group(self, key: str, limits: Limits) -> _Group:
        """The script call of ``key`` under ``limits``, built once: keys and window ARGV."""
        group = self._groups.get((key, limits))
        if group is None:
            head: list[int] = [len(limits.request_windows)]
            for window, limit in limits.request_windows:
                head += [round(window * _US), limit]
            head.append(len(limits.token_windows))
            for window, limit in limits.token_windows:
                head += [round(window * _US), limit]
            keys = (self._key(key, "park"), self._key(key, "req"),
                    *self._token_keys(key, limits))
            if len(self._groups) >= _MAX_GROUPS:
                self._groups.clear()
            group = self._groups[key, limits] = (_ACQUIRE, keys, tuple(head))
        return group

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(round(self._clock() * _US))

    async def acquire(self, key: str, limits: Limits, tokens: int = 0) -> Decision:
        if type(tokens) is not int or not 0 <= tokens <= MAX_TOKENS:
            tokens = bounded_tokens(tokens)
        rid = f"{_RID_PREFIX}{next(_RID_COUNTER):x}"
        call = self._batches.submit(self._acquire_group(key, limits),
                                    (self._now_arg(), rid, tokens))
        try:
            result = await call
        except LimiterUnavailable as exc:
            if self.fail_mode == "closed":
                # A fresh exception each: the batch's one is shared by all of its callers.
                raise LimiterUnavailable(exc.message) from exc
            self.degraded_decisions += 1
            # With token windows, a real reservation keeps the caller's reconcile path
            # uniform (a no-op); without, there is nothing to reconcile.
            return Decision(allowed=True, degraded=True,
                            reservation=Reservation(key=key, id=rid, tokens=tokens,
                                                    at=time.time())
                            if limits.token_windows else None)
        allowed, retry_us, now_us, req, tok = result
        if not tok and len(req) == 1:
            # One request window and no token window (the common limited subject): nothing to
            # reconcile, so nothing reserved, and one window to report.
            limit, remaining, reset = req[0]
            return Decision(allowed=allowed == 1, retry_after=retry_us / _US,
                            requests_limit=limit, requests_remaining=max(0, remaining),
                            requests_reset=reset / _US)
        # Only token windows are reconciled: a subject without one (or without limits: only
        # its park is checked) gets no reservation.
        reservation = (Reservation(key=key, id=rid, tokens=tokens, at=now_us / _US)
                       if allowed and limits.token_windows else None)
        return make_decision(bool(allowed), retry_us / _US, reservation,
                             [(int(lim), int(rem), reset / _US) for lim, rem, reset in req],
                             [(int(lim), int(rem), reset / _US) for lim, rem, reset in tok])

    def _orphan(self, group: _Group, item: _Item, result: Any) -> None:
        """An acquisition applied in Redis whose caller was cancelled while it was in flight.

        Its request slot stays taken (as for any request admitted and then cancelled); its
        token reservation is given back, as the router does for an admitted request that
        never reached its upstream.
        """
        script, keys, _ = group
        if script is _ACQUIRE and result[0] and len(keys) > 2:
            _, rid, _ = item
            self._batches.submit((_RECONCILE, keys[2:], ()), (rid, 0)).add_done_callback(
                _retrieve)

    async def reconcile(self, reservation: Reservation, limits: Limits, actual_tokens: int) -> None:
        keys = self._token_keys(reservation.key, limits)
        if not keys:
            return
        call = self._batches.submit((_RECONCILE, keys, ()),
                                    (reservation.id, bounded_tokens(actual_tokens)))
        # Never raises: a lost reconcile only costs accuracy, and the response is already out.
        # Shielded: a caller cancelled now still has its usage recorded.
        with contextlib.suppress(LimiterUnavailable):
            await asyncio.shield(call)

    async def park(self, key: str, seconds: float) -> None:
        seconds = bounded_seconds(seconds)
        if seconds <= 0:
            return
        call = self._batches.submit((_PARK, (self._key(key, "park"),), ()),
                                    (self._now_arg(), round(seconds * _US)))
        # As for reconcile: if lost, the upstream says so again with its next 429.
        with contextlib.suppress(LimiterUnavailable):
            await asyncio.shield(call)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._deadline):
                await self._client.ping()
        except (RedisError, OSError):  # TimeoutError is an OSError
            return False
        return True

    async def close(self) -> None:
        await self._batches.drain()
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._client.connection_pool.release(conn)
        if self._owns_client:
            await self._client.aclose(close_connection_pool=True)

    # --- one round trip per batch ----------------------------------------------------------

    async def _send(self, batch: list[tuple[_Group, list[_Item]]],
                    since: float) -> list[Outcome[Any]]:
        """Every group's calls as script runs of at most ``_MAX_CALLS``, in one round trip.

        ``since``: when the batch's first caller asked; the ceiling counts from then, so a
        caller that waited for the previous batch is not given a second ceiling.
        """
        commands: list[bytes] = []
        runs: list[tuple[int, _Script, int]] = []  # (group index, script, calls) per command
        for index, (group, items) in enumerate(batch):
            shared, prefix = self._prefix(group)
            for start in range(0, len(items), _MAX_CALLS):
                chunk = items[start:start + _MAX_CALLS]
                args = resp.bulks(arg for item in chunk for arg in item)
                commands.append(b"*%d\r\n" % (shared + len(args)) + prefix + b"".join(args))
                runs.append((index, group[0], len(chunk)))
        try:
            replies = await self._run(commands, [script for _, script, _ in runs], since)
        except LimiterUnavailable as exc:
            return [exc] * len(batch)
        outcomes: list[list[Any] | LimiterUnavailable] = [[] for _ in batch]
        failed: RedisError | None = None
        for (index, script, count), reply in zip(runs, replies, strict=True):
            done = outcomes[index]
            if isinstance(reply, RedisError):  # this script run failed (OOM, BUSY, ...)
                failed = reply
                outcomes[index] = self._unavailable(reply)
            elif isinstance(done, list):
                done.extend(reply if script.answers_each else [None] * count)
        if failed is not None:
            self._warn(failed)
        elif self._down:
            self._down = False
            log.info("rate limiter backend reachable again",
                     degraded_decisions=self.degraded_decisions)
        return list[Outcome[Any]](outcomes)

    def _prefix(self, group: _Group) -> tuple[int, bytes]:
        """``EVALSHA sha numkeys KEYS... shared ARGV...`` of a group, packed once."""
        found = self._prefixes.get(group)
        if found is None:
            script, keys, head = group
            args: tuple[str | int, ...] = ("EVALSHA", script.sha, len(keys), *keys, *head)
            if len(self._prefixes) >= _MAX_GROUPS:
                self._prefixes.clear()
            found = self._prefixes[group] = (len(args), b"".join(resp.bulks(args)))
        return found

    async def _run(self, commands: Sequence[bytes],
                   scripts: Sequence[_Script], since: float) -> list[Any]:
        """Send the script runs; the reply (or ``ResponseError``) of each, in order.

        Failing to get answers at all (connection, timeout) becomes :class:`LimiterUnavailable`.
        """
        try:
            async with asyncio.timeout_at(since + self._deadline) as bound:
                try:
                    replies = await self._execute(commands, bound)
                except RedisConnectionError:
                    # A pooled connection from before a Redis restart fails once, on first use;
                    # a fresh one answers (or fails at once when Redis is still down).
                    replies = await self._execute(commands, bound)
                missing = [i for i, reply in enumerate(replies)
                           if isinstance(reply, NoScriptError)]
                if missing:  # a fresh or flushed Redis: load, then run just those again
                    loads = [resp.pack("SCRIPT", "LOAD", script.text)
                             for script in {scripts[i]: None for i in missing}]
                    again = await self._execute([*loads, *(commands[i] for i in missing)],
                                                bound)
                    for i, reply in zip(missing, again[len(loads):], strict=True):
                        replies[i] = reply
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            self._warn(exc)
            raise self._unavailable(exc) from exc
        return replies

    async def _execute(self, commands: Sequence[bytes], bound: asyncio.Timeout) -> list[Any]:
        """One write of every (packed) command on the limiter's connection, then every reply.

        On the limiter's own :class:`~aiproxy.limits.resp.Pipe` when the URL allows it, else
        on one connection of redis-py's pool: its ``execute_command`` and pipelines wrap this
        in retries, observability hooks and per-command callbacks, none of which a script
        call needs. Either connection connects (with the handshake), parses with hiredis and
        is dropped on any failure mid-way (the next round trip then connects afresh), so a
        reply can never be read by the wrong round trip.
        """
        if self._target is not None:
            return await self._execute_on_pipe(self._target, commands, bound)
        conn = self._conn
        if conn is None:
            pool = self._client.connection_pool
            conn = self._conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        self._bound(bound, self._timeout if conn.is_connected else 2 * self._timeout)
        await conn.send_packed_command(list(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # this command failed; the connection is fine
                replies.append(exc)
        return replies

    async def _execute_on_pipe(self, target: resp.Target, commands: Sequence[bytes],
                               bound: asyncio.Timeout) -> list[Any]:
        pipe = self._pipe
        if pipe is None or pipe.closed:
            self._bound(bound, 2 * self._timeout)  # connect and handshake, then the write
            pipe = self._pipe = await resp.Pipe.open(target)
        else:
            self._bound(bound, self._timeout)
        try:
            return await pipe.ask(commands)
        except BaseException:
            # Timed out or cancelled: the replies still owed must never reach the next batch.
            pipe.close()
            raise

    @staticmethod
    def _bound(bound: asyncio.Timeout, seconds: float) -> None:
        """Bring the round trip's timer forward to ``seconds`` from now (never back)."""
        when = bound.when()
        limit = asyncio.get_running_loop().time() + seconds
        if when is None or limit < when:
            bound.reschedule(limit)

    @staticmethod
    def _unavailable(exc: BaseException) -> LimiterUnavailable:
        # The message may reach clients (a 503): the class name only, no host or port.
        return LimiterUnavailable(f"redis unreachable ({type(exc).__name__})")

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            self._down = True  # only a warned outage gets its "reachable again"
            log.warning("rate limiter backend unreachable", error=repr(exc),
                        fail_mode=self.fail_mode, degraded_decisions=self.degraded_decisions)
