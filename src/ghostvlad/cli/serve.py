"""The ``serve`` command: the HTTP service and its web page (:mod:`ghostvlad.serve`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOpt, MinDurOpt, ModelOpt, PrecisionOpt, app, err, fail, finite, open_model


@app.command()
def serve(
    model_path: Path = ModelOpt,
    db: Optional[Path] = typer.Option(None, "--db", help="Speaker gallery file for enrol / identify (created by the "
                                                         "first enrolment)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Any address but loopback needs --token."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    token: Optional[str] = typer.Option(
        None, envvar="GHOSTVLAD_TOKEN", show_envvar=True,
        help="Bearer token: required for every request when listening beyond loopback, for enrol/delete always. "
             "Prefer the environment variable: other users can read a command line."),
    max_upload_mb: float = typer.Option(25.0, min=0.001, callback=finite, help="Largest request body, in MiB."),
    max_duration: float = typer.Option(60.0, min=0.1, callback=finite, help="Longest recording accepted, in seconds."),
    read_timeout: float = typer.Option(30.0, min=0.1, callback=finite,
                                       help="Seconds within which a request head, and then its body, must arrive."),
    max_wait_ms: float = typer.Option(5.0, min=0.0, callback=finite, help="How long a request waits for others to share its batch."),
    max_queue: int = typer.Option(256, min=1, help="Recordings waiting for the model beyond which requests get 503."),
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
) -> None:
    """Serve the model over HTTP: /v1/embed, /v1/verify, /v1/identify, /v1/enroll, /v1/speakers, /healthz,
    OpenAPI docs at /docs, and a web page at /."""
    from ..gallery import GalleryError
    from ..serve import ServeConfig, bind_socket, create_app, make_server

    config = ServeConfig(host=host, port=port, token=token or None, max_upload_bytes=int(max_upload_mb * 2**20),
                         max_duration=max_duration, read_timeout=read_timeout, max_wait=max_wait_ms / 1000,
                         max_queue=max_queue)
    if config.exposed and not config.token:
        fail(f"listening on {host} (not loopback) needs a bearer token: --token or GHOSTVLAD_TOKEN")
    try:
        sock = bind_socket(config)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    with sock:
        model = open_model(model_path, precision, device, min_duration)
        try:
            service = create_app(model, db, config)
        except GalleryError as exc:
            fail(str(exc))
        err.print(f"serving {model_path} on http://{host}:{sock.getsockname()[1]}/ (docs at /docs)"
                  + (f", gallery {db}" if db else "") + (", bearer token required" if token else ""),
                  highlight=False, markup=False)
        make_server(service, config).run(sockets=[sock])
