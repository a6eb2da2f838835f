"""The HTTP service (``ghostvlad serve``): embeddings, verification, identification and enrolment over HTTP,
with dynamic batching, limits and bearer-token authentication; a web page at ``/``."""
from .app import ServeConfig, create_app, is_loopback
from .server import bind_socket, make_server

__all__ = ["ServeConfig", "bind_socket", "create_app", "is_loopback", "make_server"]
