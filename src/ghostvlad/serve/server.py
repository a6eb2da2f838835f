"""Running the service under uvicorn with the limits of a :class:`~ghostvlad.serve.service.ServeConfig`."""
from __future__ import annotations

import asyncio
import socket

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .service import ServeConfig

WS_MAX_BYTES = 2**20
"""Largest WebSocket message accepted."""


def _protocol(head_seconds: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with two limits of its own.

    - A deadline for each request's head: a connection that has not sent a whole request head within
      ``head_seconds`` of opening (or of its previous response) is closed, so clients that trickle headers cannot
      hold the connection slots (uvicorn itself only times out idle keep-alive connections).
    - At most ``max_connections`` open connections and requests in flight: beyond, a request gets 503 with
      ``Retry-After`` and the same JSON ``{"detail": ...}`` body as every other error (uvicorn's own
      ``limit_concurrency`` answers in plain text, so it is off here).
    """

    class Protocol(H11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # this class applies the limit, answering in JSON
            self.app = self._limited(self.app)

        def _limited(self, app: ASGIApp) -> ASGIApp:
            async def limited(scope: Scope, receive: Receive, send: Send) -> None:
                # the connection and this request's task are counted already: beyond the limit means > it
                if len(self.connections) > max_connections or len(self.tasks) > max_connections:
                    self.logger.warning("Exceeded concurrency limit.")
                    busy = JSONResponse({"detail": f"the server is at its limit of {max_connections} connections; "
                                         "retry later"}, status_code=503, headers={"Retry-After": "1",
                                                                                    "Connection": "close"})
                    await busy(scope, receive, send)
                else:
                    await app(scope, receive, send)

            return limited

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline = self.loop.call_later(head_seconds, self._head_overdue)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._deadline.cancel()
            self._deadline = self.loop.call_later(head_seconds, self._head_overdue)

        def handle_websocket_upgrade(self, event) -> None:  # the connection becomes a WebSocket's
            self._deadline.cancel()
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

        def _head_overdue(self) -> None:
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return Protocol


def make_server(app: FastAPI, config: ServeConfig, *, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app`` on ``config.host:config.port``: idle connections closed after 5 s, request
    heads due within ``config.read_timeout`` (bodies too: :class:`~ghostvlad.serve.limits.BodyLimits`),
    ``config.max_connections`` at once (503 in JSON beyond), WebSocket messages of at most 1 MiB, no proxy headers
    trusted. ``server.run()`` serves until ``server.should_exit`` is set or SIGINT/SIGTERM."""
    return uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, timeout_keep_alive=5,
        http=_protocol(config.read_timeout, config.max_connections), ws_max_size=WS_MAX_BYTES, proxy_headers=False,
        server_header=False, timeout_graceful_shutdown=5))


def bind_socket(config: ServeConfig) -> socket.socket:
    """A socket bound to ``config.host:config.port`` for ``server.run(sockets=[...])``; raises :class:`OSError`
    (address in use, no such address, ...) before anything else starts."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
    except OSError:
        sock.close()
        raise
    return sock
