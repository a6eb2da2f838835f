"""Running the service under uvicorn with the limits of a :class:`~ghostvlad.serve.service.ServeConfig`."""
from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from .service import ServeConfig

WS_MAX_BYTES = 2**20
"""Largest WebSocket message accepted."""


def make_server(app: FastAPI, config: ServeConfig, *, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app`` on ``config.host:config.port``: idle connections closed after 5 s,
    ``config.max_connections`` at once (503 beyond), WebSocket messages of at most 1 MiB, no proxy headers
    trusted. ``server.run()`` serves until ``server.should_exit`` is set or SIGINT/SIGTERM."""
    return uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, timeout_keep_alive=5,
        limit_concurrency=config.max_connections, ws_max_size=WS_MAX_BYTES, proxy_headers=False,
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
