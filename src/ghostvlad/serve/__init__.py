"""The HTTP service (``ghostvlad serve``): embeddings, verification, identification and enrolment over HTTP,
with dynamic batching, limits and bearer-token authentication; a web page at ``/``."""
from .app import create_app
from .server import bind_socket, make_server
from .service import ServeConfig, is_loopback

__all__ = ["ServeConfig", "bind_socket", "create_app", "is_loopback", "make_server"]
