"""The upstream client: HTTP/1.1 requests to providers over pooled keep-alive connections.

``aiohttp.ClientSession.request`` is general: cookies, redirects, proxies, auth, middlewares,
trace hooks, a request object, a writer task and a timer per call. A provider call needs none
of it, and on the proxy's hot path it cost ~340k instructions a request, a third of all the
proxy did (see docs/performance.md). This client keeps what a provider call does need and
leaves the parsing to aiohttp's own pieces:

* the connection is aiohttp's ``ResponseHandler`` protocol with its llhttp response parser:
  chunked and length-delimited bodies, gzip/deflate decoding, informational answers, the same
  header and line bounds, ``ClientPayloadError`` for a body cut short, the same exceptions
  for a connection lost;
* connections are opened as aiohttp's connector opens them (``aiohappyeyeballs``: RFC 8305
  Happy Eyeballs over the resolved addresses; TLS verified against the system's CAs unless a
  provider passes its own ``ssl`` context or ``False``), its exceptions raised for a failure
  (``ClientConnectorCertificateError``, ``ClientConnectorSSLError``,
  ``ClientConnectorDNSError``, ``ClientConnectorError``, ``ConnectionTimeoutError``);
* a connection is reused while the upstream keeps it alive (an answer read to its end, no
  ``Connection: close``) and closed after ``keepalive`` idle seconds (``0``: kept until the
  upstream closes it);
* the request carries the headers ``aiohttp`` would have sent (``Host``, ``Accept``,
  ``Accept-Encoding``, its ``User-Agent``, ``Content-Length``; ``Content-Type:
  application/octet-stream`` for a body without one). Redirects are never followed (nor
  were they by :meth:`aiproxy.provider.Provider.send`); no cookie is kept between calls (the
  session's cookie jar would have sent one client's upstream cookies with everyone's calls).

A call that needs more (a body that is not ``bytes``, query parameters, any other
``ClientSession.request`` option, credentials in the URL) goes through the provider's
``aiohttp.ClientSession`` as before: ``Provider.send`` decides (:func:`handles`).

:class:`PooledResponse` offers what providers read of an ``UpstreamResponse``
(:class:`UpstreamResponse`, the type ``Provider.send`` returns, names that surface):
``status``, ``reason``, ``headers``, ``content`` (aiohttp's ``StreamReader``), ``read()``,
``text()``, ``json()``, ``release()``, ``close()``, ``content_type``, ``charset``,
``content_length``, ``ok``, ``raise_for_status()``, ``url``, ``method``, ``request_info``,
and ``async with``.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Protocol

import aiohappyeyeballs
import aiohttp
import orjson
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["PooledResponse", "UpstreamClient", "UpstreamResponse", "handles"]

# What ``aiohttp`` sends unless told otherwise (its ClientRequest's defaults), so an upstream
# sees the same request whichever client made it.
_ACCEPT_ENCODING = "gzip, deflate"  # what the parser decodes without optional libraries
_READ_BUFSIZE = 2**18  # the StreamReader's high-water mark, as the core's session has it
_HAPPY_EYEBALLS_DELAY = 0.25  # aiohttp's default (RFC 8305 recommends 250 ms)
_DNS_TTL = 10.0  # seconds a resolution is reused (aiohttp's default ttl_dns_cache)
_DEFAULT_CONNECT_TIMEOUT = 10.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_URL_CACHE_MAX = 1024
_OWN_HEADERS = frozenset({"content-length", "transfer-encoding"})  # always ours
_DNS_ERROR: type[aiohttp.ClientConnectorError] = getattr(
    aiohttp, "ClientConnectorDNSError", aiohttp.ClientConnectorError)

#: What ``Provider.send`` may pass to :meth:`UpstreamClient.request` besides method, URL,
#: body and headers; any other keyword goes through the aiohttp session.
HANDLED_OPTIONS = frozenset({"ssl"})


class UpstreamResponse(Protocol):
    """What ``Provider.send`` returns, whichever client made the call: the surface that a
    :class:`PooledResponse` and an ``UpstreamResponse`` share."""

    status: int
    reason: str | None
    method: str
    content: StreamReader
    _body: Any  # the body once read whole (the core's bounded read leaves it there)

    @property
    def url(self) -> URL: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def content_type(self) -> str: ...
    @property
    def charset(self) -> str | None: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def ok(self) -> bool: ...
    @property
    def request_info(self) -> aiohttp.RequestInfo: ...
    async def read(self) -> bytes: ...
    async def text(self, encoding: str | None = None, errors: str = "strict") -> str: ...
    async def json(self, *, content_type: str | None = "application/json") -> Any: ...
    def release(self) -> Any: ...
    def close(self) -> None: ...
    def raise_for_status(self) -> None: ...


def _tls_context(verified: bool) -> ssl.SSLContext:
    """The context of ``ssl=True`` (verified against the system's CAs) or ``ssl=False`` (no
    verification), as aiohttp builds its defaults; ALPN offers HTTP/1.1 only."""
    if verified:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.options |= ssl.OP_NO_COMPRESSION
        context.set_default_verify_paths()
    context.set_alpn_protocols(("http/1.1",))
    return context


# Built at import, before any event loop runs: loading the CA store reads files (~30 ms).
_VERIFIED = _tls_context(True)
_UNVERIFIED = _tls_context(False)


def handles(data: object, options: Mapping[str, Any]) -> bool:
    """Whether a call with this body and these extra options can go through the client."""
    if data is not None and type(data) is not bytes:
        return False
    if not options:
        return True
    if not HANDLED_OPTIONS.issuperset(options):
        return False
    tls = options.get("ssl", True)
    return tls is True or tls is False or isinstance(tls, ssl.SSLContext)


class _Target:
    """A URL, parsed once: where to connect and what the request line and ``Host`` say."""

    __slots__ = ("host", "host_header", "port", "secure", "server_hostname", "target", "url")

    def __init__(self, url: URL) -> None:
        self.url = url
        self.secure = url.scheme == "https"
        host = url.raw_host or ""
        self.host = host
        port = url.port
        self.port = port if port is not None else (443 if self.secure else 80)
        header = f"[{host}]" if ":" in host else host
        if url.explicit_port is not None and not url.is_default_port():
            header = f"{header}:{self.port}"
        self.host_header = header
        self.server_hostname = host.rstrip(".") if self.secure else None
        self.target = url.raw_path_qs or "/"


class _Done:
    """What ``release()`` returns: awaitable, for code written against aiohttp, where
    ``await resp.release()`` is allowed."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_DONE = _Done()


_CONTENT_TYPES: dict[str, tuple[str, str | None]] = {}
_CACHED_CONTENT_TYPE_MAX = 256  # longer values (no real upstream sends one) are not kept


def _content_type_of(raw: str) -> tuple[str, str | None]:
    """A ``Content-Type`` value's media type (lower case) and charset."""
    kind, _, params = raw.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return kind.strip().lower(), charset


class ResumeWhenPaused(BaseProtocol):
    """aiohttp's base protocol, but a body's reader taking data does not re-feed the parser
    and resume the transport each time (aiohttp's base does, paused or not): only a
    connection that flow control paused has anything to resume (~100 bytecodes a call, two
    calls a body). The upstream connections here and the proxy's client connections
    (``aiproxy/http/protocol.py``) both use it."""

    __slots__ = ()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._reading_paused:
            super().resume_reading(resume_parser)


class _Connection(ResumeWhenPaused, ResponseHandler):
    """aiohttp's client protocol, resumed only when paused (:class:`ResumeWhenPaused`)."""


class PooledResponse:
    """An upstream's answer: its status line and headers, and its body as it arrives
    (``content``). Read it whole (``read()``, ``text()``, ``json()``) or as it comes, then
    ``release()`` it (or leave an ``async with`` block): a connection whose answer was read to
    the end goes back to the pool, any other is closed. ``close()`` drops the connection."""

    __slots__ = ("_body", "_client", "_conn", "_content_type", "_key", "_request_headers",
                 "content", "headers", "method", "raw_headers", "reason", "status", "url",
                 "version")

    def __init__(self, client: UpstreamClient, key: tuple[Any, ...], conn: ResponseHandler,
                 method: str, url: URL, request_headers: Mapping[str, str],
                 message: Any, payload: StreamReader) -> None:
        self._client = client
        self._key = key
        self._conn: ResponseHandler | None = conn
        self._body: bytes | None = None
        self._content_type: tuple[str, str | None] | None = None
        self._request_headers = request_headers
        self.method = method
        self.url = url
        self.status: int = message.code
        self.reason: str | None = message.reason
        self.version = message.version
        self.headers: CIMultiDictProxy[str] = message.headers
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        self.content: StreamReader = payload
        payload.on_eof(self._eof)  # at once when there is no body

    # --- the body ---------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body (read once; later calls return it again)."""
        if self._body is None:
            try:
                self._body = await self.content.read()
            except BaseException:
                self.close()
                raise
        return self._body

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        body = await self.read()
        return body.decode(encoding or self.charset or "utf-8", errors)

    async def json(self, *, loads: Callable[[bytes], Any] = orjson.loads,
                   content_type: str | None = "application/json") -> Any:
        """The body as JSON; like aiohttp's, it refuses an answer of another content type
        (``content_type=None`` accepts any) with ``aiohttp.ContentTypeError``."""
        body = await self.read()
        if content_type is not None and not _is_json(content_type, self.content_type):
            raise aiohttp.ContentTypeError(
                self.request_info, (), status=self.status, headers=self.headers,
                message=f"Attempt to decode JSON with unexpected mimetype: {self.content_type}")
        return loads(body) if body.strip() else None

    # --- the connection ---------------------------------------------------------------------

    def _eof(self) -> None:
        """The body arrived whole: the connection is free for the next call (the body waits
        in ``content`` for whoever reads it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._put(self._key, conn)

    def release(self) -> _Done:
        """Done with the answer: its connection back to the pool if the body arrived whole,
        closed otherwise (an unread rest cannot be skipped on a kept-alive connection)."""
        self.close()
        return _DONE

    def close(self) -> None:
        """Drop the connection, whatever is left unread; a reader still waiting on the body,
        or reading it later, gets ``ClientConnectionError`` (as from aiohttp)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._drop(conn)
            content = self.content
            if content.exception() is None:
                content.set_exception(aiohttp.ClientConnectionError("Connection closed"))

    @property
    def closed(self) -> bool:
        return self._conn is None

    async def __aenter__(self) -> PooledResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    # --- what the headers say ---------------------------------------------------------------

    def _parse_content_type(self) -> tuple[str, str | None]:
        parsed = self._content_type
        if parsed is None:
            raw = self.headers.get("Content-Type")
            if raw is None:
                parsed = ("application/octet-stream", None)
            else:
                # An upstream sends the same few values: each is parsed once.
                parsed = _CONTENT_TYPES.get(raw)
                if parsed is None:
                    parsed = _content_type_of(raw)
                    if len(raw) <= _CACHED_CONTENT_TYPE_MAX:  # a hostile upstream's 8 KiB
                        if len(_CONTENT_TYPES) >= _URL_CACHE_MAX:  # values are not hoarded
                            _CONTENT_TYPES.clear()  # (nor values that vary)
                        _CONTENT_TYPES[raw] = parsed
            self._content_type = parsed
        return parsed

    @property
    def content_type(self) -> str:
        return self._parse_content_type()[0]

    @property
    def charset(self) -> str | None:
        return self._parse_content_type()[1]

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        return int(raw) if raw is not None and raw.isdigit() else None

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def request_info(self) -> aiohttp.RequestInfo:
        return _request_info(self.method, self.url, self._request_headers)

    def raise_for_status(self) -> None:
        if self.status >= 400:
            self.release()
            raise aiohttp.ClientResponseError(self.request_info, (), status=self.status,
                                              message=self.reason or "", headers=self.headers)

    def __repr__(self) -> str:
        return f"<PooledResponse({self.url}) [{self.status} {self.reason}]>"


class UpstreamClient:
    """Pooled keep-alive connections to the upstreams, and requests over them; one per
    keep-alive setting, closed with the provider pool. Not thread-safe (one event loop)."""

    def __init__(self, keepalive: float = 15.0) -> None:
        self.keepalive = keepalive  # idle seconds before a pooled connection closes; 0: never
        self._idle: dict[tuple[Any, ...], list[tuple[ResponseHandler, float]]] = {}
        self._open: set[ResponseHandler] = set()
        self._targets: dict[str, _Target] = {}
        self._heads: dict[tuple[Any, ...], bytes] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    # --- a request ----------------------------------------------------------------------

    async def request(self, method: str, url: str, *, data: bytes | None = None,
                      headers: Mapping[str, str] | None = None,
                      tls: ssl.SSLContext | bool = True,
                      connect_timeout: float | None = None) -> PooledResponse:
        """Send one request and return the answer once its status line and headers arrived
        (the body follows in ``content``). Raises what ``aiohttp`` raises: a
        ``ClientConnectorError`` (or its DNS, TLS, certificate forms), a
        ``ConnectionTimeoutError`` when no connection opened within ``connect_timeout``,
        ``ServerDisconnectedError``/``ClientOSError`` when the connection drops before the
        answer, ``ClientResponseError`` for an answer that is not HTTP."""
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        target = self._targets.get(url)
        if target is None:
            target = self._target(url)
        method = method.upper()
        # The head up to the body's length, built once per method, URL and header set (a
        # provider sends the same few headers on every call).
        shape = (method, url, tuple(headers.items()) if headers else None, bool(data))
        head = self._heads.get(shape)
        if head is None:
            head = _head(method, target, bool(data), headers)
            if len(self._heads) >= _URL_CACHE_MAX:
                self._heads.clear()  # per-call header values (fresh tokens): no hoarding
            self._heads[shape] = head
        if data:
            head += b"Content-Length: %d\r\n\r\n" % len(data)
        context: ssl.SSLContext | None = None
        if target.secure:
            context = (tls if isinstance(tls, ssl.SSLContext) else _VERIFIED if tls
                       else _UNVERIFIED)
        key = (target.host, target.port, target.secure, context)
        retry = method in _IDEMPOTENT  # a stale kept-alive connection is retried once
        while True:
            conn, reused = self._get(key), True
            if conn is None:
                conn, reused = await self._connect(target, context, connect_timeout), False
            conn.set_response_params(read_until_eof=True, auto_decompress=True,
                                     read_bufsize=_READ_BUFSIZE,
                                     skip_payload=method == "HEAD")
            transport = conn.transport
            assert transport is not None
            if data:
                transport.writelines((head, data))
            else:
                transport.write(head)
            try:
                message, payload = await conn.read()
                while 100 <= message.code < 200 and message.code != 101:
                    message, payload = await conn.read()  # informational: the answer follows
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # Closed or reset: on a pooled connection, most likely the upstream closed it
                # while idle, before reading this request (RFC 9112 section 9.3.1).
                self._drop(conn)
                if reused and retry:
                    retry = False
                    continue
                raise
            except HttpProcessingError as exc:
                self._drop(conn)
                raise aiohttp.ClientResponseError(
                    _request_info(method, target.url, headers), (), status=exc.code,
                    message=exc.message, headers=exc.headers) from exc
            except BaseException:
                self._drop(conn)
                raise
            return PooledResponse(self, key, conn, method, target.url, headers or {},
                                    message, payload)

    def _target(self, url: str) -> _Target:
        try:
            target = _Target(URL(url))
        except ValueError as exc:
            raise aiohttp.InvalidUrlClientError(url) from exc
        if not target.host or target.url.scheme not in ("http", "https"):
            raise aiohttp.InvalidUrlClientError(url)
        if len(self._targets) >= _URL_CACHE_MAX:
            self._targets.clear()  # a provider building URLs per request (ids in paths)
        self._targets[url] = target
        return target

    # --- connections --------------------------------------------------------------------

    def _get(self, key: tuple[Any, ...]) -> ResponseHandler | None:
        """A pooled connection that is still open and not past its keep-alive, newest first."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn, expires = idle.pop()
            if conn.is_connected() and not conn.should_close and (not expires or expires > now):
                return conn
            self._drop(conn)
        return None

    def _put(self, key: tuple[Any, ...], conn: ResponseHandler) -> None:
        """An answer ended on ``conn``: pool it if it may carry another request."""
        if self._closed or conn.should_close or not conn.is_connected():
            self._drop(conn)
            return
        keepalive = self.keepalive
        self._idle.setdefault(key, []).append(
            (conn, time.monotonic() + keepalive if keepalive else 0.0))
        if keepalive and self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(keepalive, self._expire)

    def _drop(self, conn: ResponseHandler) -> None:
        self._open.discard(conn)
        conn.close()

    def _expire(self) -> None:
        """Close the connections idle past their keep-alive; come back for the rest."""
        self._sweep = None
        now = time.monotonic()
        soonest = 0.0
        for key, idle in list(self._idle.items()):
            keep = []
            for conn, expires in idle:
                if expires > now and conn.is_connected():
                    keep.append((conn, expires))
                else:
                    self._drop(conn)
            if keep:
                self._idle[key] = keep
                first = min(expires for _, expires in keep)
                soonest = first if not soonest else min(soonest, first)
            else:
                del self._idle[key]
        if soonest and not self._closed:
            self._sweep = asyncio.get_running_loop().call_later(max(soonest - now, 0.01),
                                                                self._expire)

    async def _connect(self, target: _Target, tls: ssl.SSLContext | None,
                       within: float | None) -> ResponseHandler:
        """A new connection, as aiohttp's connector opens one: resolved (cached for a few
        seconds), Happy Eyeballs over the addresses, then TLS, all within ``within`` s."""
        loop = asyncio.get_running_loop()
        key = ConnectionKey(target.host, target.port, target.secure,
                            tls if tls is not None else True, None, None, None)
        try:
            async with asyncio.timeout(within or _DEFAULT_CONNECT_TIMEOUT):
                infos = await self._resolve(loop, target.host, target.port, key)
                sock = await aiohappyeyeballs.start_connection(
                    infos, happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY, loop=loop)
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop), sock=sock, ssl=tls,
                        server_hostname=target.server_hostname)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(
                f"Connection timeout to host {target.url}") from exc
        except aiohttp.ClientConnectorError:
            raise  # the resolver's own (DNS) form, already wrapped
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(key, exc) from exc
        except OSError as exc:
            raise aiohttp.ClientConnectorError(key, exc) from exc
        if self._closed:
            conn.close()
            raise RuntimeError("the upstream client is closed")
        self._open.add(conn)
        return conn

    async def _resolve(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                       key: ConnectionKey) -> list[Any]:
        cached = self._dns.get((host, port))
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _DNS_ERROR(key, exc) from exc
        if not infos:
            raise _DNS_ERROR(key, OSError(f"no address for {host}"))
        if len(self._dns) >= _URL_CACHE_MAX:
            self._dns.clear()
        self._dns[(host, port)] = (now + _DNS_TTL, infos)
        return infos

    async def close(self) -> None:
        """Close every connection, pooled or in use; requests after this are refused."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn, _ in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run

    @property
    def pooled(self) -> int:
        """Idle connections in the pool (for tests and the operations docs)."""
        return sum(len(idle) for idle in self._idle.values())



def _head(method: str, target: _Target, body: bool,
          headers: Mapping[str, str] | None) -> bytes:
    """The request line and headers, up to the ``Content-Length`` of a body (``body``): the
    caller's, then the defaults it did not set. A name or value with CR, LF or NUL is refused
    (it would split the request), as aiohttp does."""
    lines = [f"{method} {target.target} HTTP/1.1\r\n"]
    given: set[str] = set()
    if headers:
        for name, value in headers.items():
            if ("\r" in name or "\n" in name or "\r" in value or "\n" in value
                    or "\x00" in name or "\x00" in value or ":" in name or not name):
                raise ValueError(f"invalid HTTP header {name!r}: newline, NUL or colon")
            lower = name.lower()
            if lower in _OWN_HEADERS:
                continue
            given.add(lower)
            lines.append(f"{name}: {value}\r\n")
    if "host" not in given:
        lines.insert(1, f"Host: {target.host_header}\r\n")
    if "accept" not in given:
        lines.append("Accept: */*\r\n")
    if "accept-encoding" not in given:
        lines.append(f"Accept-Encoding: {_ACCEPT_ENCODING}\r\n")
    if "user-agent" not in given:
        lines.append(f"User-Agent: {SERVER_SOFTWARE}\r\n")
    if body:
        if "content-type" not in given:
            lines.append("Content-Type: application/octet-stream\r\n")
    elif method in _BODY_METHODS:
        lines.append("Content-Length: 0\r\n\r\n")
    else:
        lines.append("\r\n")
    return "".join(lines).encode("utf-8")


_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+?\+)?json")


def _is_json(expected: str, actual: str) -> bool:
    """Whether ``actual`` is the content type ``json()`` was told to expect: for
    ``application/json``, also the structured ``application/*+json`` types (RFC 6839), as
    aiohttp accepts them."""
    if expected == "application/json":
        return _JSON_TYPE.match(actual) is not None
    return expected in actual


def _request_info(method: str, url: URL, headers: Mapping[str, str] | None
                  ) -> aiohttp.RequestInfo:
    return aiohttp.RequestInfo(url, method, CIMultiDictProxy(CIMultiDict(headers or {})), url)

