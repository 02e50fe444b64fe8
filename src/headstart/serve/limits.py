"""What a connection and a request may cost before ``headstart serve`` refuses it: every limit, in one place.

The limits sit below the routes, so every route has them and none repeats them:

- :class:`Limits`: the numbers (timeouts, connection and request counts, body and JSON sizes).
- :func:`protocol_class`: uvicorn's HTTP/1.1 protocol (h11) with a deadline for the request head — a connection
  that has not sent a whole request line and headers within ``header_timeout_s`` of opening (or of its previous
  answer) is closed, however slowly it trickles bytes — and a cap on open connections: beyond
  ``max_connections`` the oldest connections still waiting for a request head are closed, so half-open
  connections cannot pin the server and a new client always gets in.
- :class:`RequestLimits`: an ASGI middleware in front of the app. It refuses, as JSON: a Host header that is not
  this server's name when it is bound to loopback (DNS rebinding), requests during shutdown (503), more than
  ``max_requests_in_flight`` requests with a body at once (503), a declared ``Content-Length`` over the upload
  limit (413, before ``100 Continue`` is sent), a streamed body as it crosses the limit (413), a body that stalls
  (408). An answer sent before its request's body was read closes the connection after reading at most
  ``drain_factor`` times the upload limit (for at most ``drain_timeout_s``): enough for a client that sends
  everything before it reads to get the answer, never a refused body read to its end.
- :func:`check_json_tokens`: an upper bound on a JSON body's elements and nesting, counted on the bytes, so a
  hostile body is refused before it is parsed (parsing millions of elements holds the GIL for seconds).
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headstart.serve.uploads import ApiError, error_payload, too_large

_CONNECTION = b"connection"


@dataclass(frozen=True)
class Limits:
    """The server's limits (``ServeConfig.limits``; the defaults suit a server behind nothing).

    Attributes:
        header_timeout_s: from a connection's opening (or its previous answer) to a whole request head.
        keep_alive_s: how long an idle kept-alive connection stays open.
        body_timeout_s: the longest wait for the next piece of a request body (then 408).
        body_deadline_s: the longest time for a whole request body (then 408).
        max_connections: open connections; beyond it the oldest idle ones are closed.
        max_requests_in_flight: requests with a body being read or computed at once; more get 503 at once.
        max_header_bytes: the request line and headers (h11's limit; more get 400).
        drain_timeout_s: how long a refused body is read (and dropped) so its client can read the answer.
        drain_factor: how much of a refused body is read, in upload limits (a declared longer one: none of it).
        shutdown_grace_s: after SIGTERM, how long requests already computing may take (then JSON 503).
        max_json_containers: arrays and objects in a JSON body (bounds its nesting).
        json_tokens_per_element: JSON separators (``,`` and ``:``) allowed per image a request may carry.
    """

    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    body_timeout_s: float = 10.0
    body_deadline_s: float = 120.0
    max_connections: int = 1000
    max_requests_in_flight: int = 64
    max_header_bytes: int = 16 * 1024
    drain_timeout_s: float = 5.0
    drain_factor: float = 4.0
    shutdown_grace_s: float = 5.0
    max_json_containers: int = 256
    json_tokens_per_element: int = 16


# ----------------------------------------------------------------------------------------------------- hosts
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def trusted_hosts(bound: str, loopback: bool) -> frozenset[str] | None:
    """The Host names a server bound to ``bound`` answers: on loopback, this machine's names and the bound one
    (``None`` — any — when other machines may connect: they reach it by names it cannot know)."""
    if not loopback:
        return None
    return frozenset({*LOOPBACK_NAMES, f"[{bound.lower()}]" if ":" in bound else bound.lower()})


def host_name(value: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` → ``[::1]``, ``Example.org.:80`` → ``example.org``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def untrusted_host(value: str, trusted: frozenset[str]) -> ApiError:
    return ApiError(
        400,
        "untrusted_host",
        f"Host {value!r} is not a name of this server ({', '.join(sorted(trusted))}): a server on loopback answers "
        "only its own names, so a web page cannot reach it by rebinding its domain to 127.0.0.1. Use one of these "
        "names (a proxy in front should pass Host: localhost).",
    )


# ------------------------------------------------------------------------------------------------------ json
def check_json_tokens(body: bytes | bytearray | memoryview, max_elements: int, limits: Limits) -> None:
    """Refuse a JSON body that could hold more than ``max_elements`` elements or nest deeper than the limit,
    counting its separators and brackets on the bytes (C speed, no objects made) before anything parses it.

    Base64 (images in KServe JSON) has no ``,``, ``:``, ``[`` or ``{``, so real requests pass with room to spare."""
    data = bytes(body) if isinstance(body, memoryview) else body
    containers = data.count(b"[") + data.count(b"{")
    if containers > limits.max_json_containers:
        raise ApiError(
            400,
            "bad_request",
            f"The JSON body has {containers} arrays and objects; an inference request needs a few and this server "
            f"takes at most {limits.max_json_containers}.",
        )
    separators = data.count(b",") + data.count(b":")
    allowed = 64 + limits.json_tokens_per_element * max_elements
    if separators > allowed:
        raise ApiError(
            413,
            "too_many_elements",
            f"The JSON body has {separators} separators, room for more than the {max_elements} images this server "
            "takes in one request; send fewer (or start the server with a higher --max-files).",
            limit=max_elements,
        )


def parse_json(data: bytes | bytearray | memoryview, what: str) -> Any:
    """``json.loads`` whose every failure (syntax, encoding, a number too long, nesting) is a 400."""
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "bad_request", f"The {what} is not valid JSON ({type(exc).__name__}: {exc}).") from None


# ----------------------------------------------------------------------------------------- connections (h11)
def open_files_for(connections: int) -> int:
    """Raise this process's open-file limit towards what ``connections`` sockets need; the connections it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256  # model files, the cache, log, the listening socket, threads' files
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return connections if soft == resource.RLIM_INFINITY else max(16, min(connections, soft - 256))


def protocol_class(limits: Limits, max_connections: int | None = None) -> type:
    """uvicorn's h11 protocol with the request-head deadline and the connection cap (see the module docstring)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    cap = max_connections or limits.max_connections

    class LimitedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_since = 0.0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()
            if len(self.connections) > cap:
                self._close_oldest_idle()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and self.conn.their_state is not h11.IDLE:  # a whole head arrived
                self._head_timer.cancel()
                self._head_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _await_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._waiting_since = time.monotonic()
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._close_waiting)

        def _idle(self) -> bool:
            return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

        def _close_waiting(self) -> None:
            self._head_timer = None
            if self._idle():
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
                self.transport.close()

        def _close_oldest_idle(self) -> None:
            """Close the connections that have waited longest for a request, down to 90% of the cap (in one go, so
            a flood sorts the connections once per tenth of the cap, not once per connection)."""
            open_now = [c for c in self.connections if not c.transport.is_closing()]
            excess = len(open_now) - int(cap * 0.9)
            if excess <= 0:
                return
            idle = [c for c in open_now if c is not self and isinstance(c, LimitedH11Protocol) and c._idle()]
            for connection in sorted(idle, key=lambda c: c._waiting_since)[:excess]:
                connection._close_waiting()

    return LimitedH11Protocol


# --------------------------------------------------------------------------------------------------- requests
class RequestLimits:
    """ASGI middleware: the per-request limits of the module docstring, for every route.

    Args:
        app: the ASGI app.
        limits: the numbers.
        max_body_bytes: the upload limit (``--max-upload-mb``).
        trusted: the Host names answered (:func:`trusted_hosts`; ``None``: any).
        stopping: whether the server is shutting down.
    """

    def __init__(
        self,
        app: Any,
        *,
        limits: Limits,
        max_body_bytes: int,
        trusted: frozenset[str] | None,
        stopping: Callable[[], bool],
    ) -> None:
        self.app = app
        self.limits = limits
        self.max_body = int(max_body_bytes)
        self.trusted = trusted
        self.stopping = stopping
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, self.limits, self.max_body)
        refusal = self._refusal(scope, exchange)
        if refusal is not None:
            await exchange.answer(refusal)
            return
        counted = exchange.has_body
        if counted:
            if self.in_flight >= self.limits.max_requests_in_flight:
                await exchange.answer(
                    ApiError(
                        503,
                        "busy",
                        f"The server is computing {self.in_flight} requests, its limit; retry in a moment.",
                    )
                )
                return
            self.in_flight += 1
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:
            if not self.stopping():
                raise
            # The shutdown's grace period is over: a JSON 503 instead of uvicorn's traceback and plain-text 500.
            if not exchange.started:
                exchange.stalled = True  # (no draining now: the process is about to end)
                await exchange.answer(shutting_down())
        finally:
            if counted:
                self.in_flight -= 1

    def _refusal(self, scope: dict[str, Any], exchange: _Exchange) -> ApiError | None:
        if self.trusted is not None and exchange.host is not None and host_name(exchange.host) not in self.trusted:
            return untrusted_host(exchange.host, self.trusted)
        if self.stopping():
            return shutting_down()
        if exchange.declared is not None and exchange.declared > self.max_body:
            return too_large(self.max_body)
        return None


def shutting_down() -> ApiError:
    return ApiError(503, "shutting_down", "The server is shutting down; send the request again to its successor.")


class BodyTooLargeError(ApiError):
    """Raised inside ``receive`` when a streamed body crosses the limit: the app answers it like any ApiError."""

    def __init__(self, limit_bytes: int) -> None:
        error = too_large(limit_bytes)
        super().__init__(error.status, error.code, error.detail, **error.extra)


class BodyTimeoutError(ApiError):
    """Raised inside ``receive`` when a body stalls or takes too long."""

    def __init__(self, seconds: float, received: int) -> None:
        super().__init__(
            408,
            "body_timeout",
            f"The request body stopped arriving ({received} bytes in, nothing more for {seconds:g} s, or the whole "
            "body took too long); send it at once.",
        )


class _Exchange:
    """One request's body and answer, as the limits see them."""

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any, limits: Limits, max_body: int) -> None:
        self.path = scope.get("path", "")
        self.host: str | None = None
        self.declared: int | None = None
        chunked = expect_continue = False
        for name, value in scope.get("headers", []):
            if name == b"host":
                self.host = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    self.declared = int(value)
                except ValueError:
                    self.declared = None
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"expect":
                expect_continue = value.lower() == b"100-continue"
        self.has_body = chunked or (self.declared or 0) > 0
        self.expect_continue = expect_continue
        self.limits = limits
        self.max_body = max_body
        self._receive, self._send = receive, send
        self.received = 0
        self.done = not self.has_body
        self.started = False
        self.stalled = False
        self._deadline: float | None = None

    async def receive(self) -> dict[str, Any]:
        if self.done:
            return await self._receive()
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.limits.body_deadline_s
        wait = max(0.0, min(self.limits.body_timeout_s, self._deadline - now))
        try:
            async with asyncio.timeout(wait):
                message = await self._receive()
        except TimeoutError:
            self.stalled = True  # (nothing to drain: the answer closes the connection at once)
            raise BodyTimeoutError(self.limits.body_timeout_s, self.received) from None
        self._count(message)
        if self.received > self.max_body:
            raise BodyTooLargeError(self.max_body)
        return message

    def _count(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.done = True
        else:  # http.disconnect: nothing more will come
            self.done = True

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and not self.started:
            self.started = True
            if not self.done:
                await self._drain()
            if not self.done:  # the rest of the body is never read: the connection ends with this answer
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _CONNECTION]
                message = {**message, "headers": [*headers, (_CONNECTION, b"close")]}
        await self._send(message)

    async def _drain(self) -> None:
        """Read and drop the rest of the body (bounded) so a client that sends it all before reading can read the
        answer; never when the client waits for ``100 Continue`` and sent nothing."""
        if self.stalled or (self.expect_continue and self.received == 0):
            return
        cap = int(self.limits.drain_factor * self.max_body)
        if self.declared is not None and self.declared > cap:
            return
        try:
            async with asyncio.timeout(self.limits.drain_timeout_s):
                while not self.done and self.received <= cap:
                    self._count(await self._receive())
        except TimeoutError:
            pass

    async def answer(self, error: ApiError) -> None:
        """Send ``error`` as this request's JSON answer."""
        body, headers = error_payload(self.path, error)
        data = json.dumps(body, separators=(",", ":")).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await self.send({"type": "http.response.start", "status": error.status, "headers": raw})
        await self.send({"type": "http.response.body", "body": data})


__all__ = [
    "LOOPBACK_NAMES",
    "BodyTimeoutError",
    "BodyTooLargeError",
    "Limits",
    "RequestLimits",
    "check_json_tokens",
    "host_name",
    "open_files_for",
    "parse_json",
    "protocol_class",
    "shutting_down",
    "trusted_hosts",
]
