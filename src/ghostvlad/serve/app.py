"""The HTTP service: a FastAPI app over a model, the dynamic batcher and an optional speaker gallery.

Audio arrives as uploaded file bytes and is decoded in memory (:func:`ghostvlad.audio.load_audio_bytes`): the
server never opens a path a request names. Bad audio is answered 400 with the :class:`~ghostvlad.audio.AudioError`
line the CLI prints. Gallery work runs on one thread of its own, one operation at a time, each enrolment or
removal one SQLite transaction, so concurrent enrolments leave the gallery consistent.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Security, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from .. import __version__
from ..audio import SAMPLE_RATE, AudioError
from ..embedding import Embedder
from ..errors import GhostvladError
from ..gallery import Gallery, GalleryError, check_name
from .batcher import QueueFull
from .limits import BodyLimits
from .service import ServeConfig, Service, upload_name
from .stream import serve_stream
from .schemas import (Candidate, Embedding, Enrolment, Error, Health, Identification, Point, Removal, Speaker,
                      Speakers, Verification)

log = logging.getLogger("ghostvlad.serve")
STATIC = files("ghostvlad.serve") / "static"


class _NotFound(GhostvladError):
    """No speaker of that name (answered with 404)."""


def create_app(model: Embedder, db: str | Path | None = None, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The service for ``model`` with the gallery file ``db`` (opened now: a :class:`GalleryError` is raised
    here for a file that is not a gallery or was made by another model)."""
    if config.token is not None and not config.token.strip():
        raise ValueError("the bearer token is empty")
    if config.exposed and not config.token:
        raise ValueError(f"listening on {config.host} (not loopback) needs a bearer token (--token or GHOSTVLAD_TOKEN)")
    service = Service(model, None if db is None else Path(db), config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.close()
            service.close()

    app = FastAPI(title="ghostvlad", version=__version__, lifespan=lifespan,
                  description="Speaker embeddings, verification and identification. Audio is sent as a file "
                              "(wav, flac, ogg, m4a, mp3, ...; any rate and channel count).")
    app.state.service = service
    app.add_middleware(BodyLimits, max_bytes=config.max_upload_bytes, timeout=config.read_timeout)
    _add_error_handlers(app)

    bearer = HTTPBearer(auto_error=False, description="Required for every endpoint when the server listens on a "
                                                      "non-loopback address, and for enrol/delete when it has a token.")

    def auth(always: bool):
        async def check(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
            if service.needs_token(always) and not service.token_matches(credentials and credentials.credentials):
                raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        return Depends(check)

    reader, writer = auth(always=False), auth(always=True)
    errors = {400: {"model": Error}, 401: {"model": Error}, 408: {"model": Error}, 413: {"model": Error},
              422: {"model": Error}, 503: {"model": Error}}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/healthz", dependencies=[reader], responses=errors)
    async def healthz() -> Health:
        """Liveness and load: the model, whether there is a gallery, the queue and batching counters."""
        stats = service.batcher.stats
        return Health(status="ok", model=service.description, embed_dim=model.embed_dim, sample_rate=SAMPLE_RATE,
                      gallery=service.gallery is not None, queued=service.batcher.queued, batches=stats.batches,
                      embedded=stats.embedded, largest_batch=stats.largest)

    @app.post("/v1/embed", dependencies=[reader], responses={**errors, 415: {"model": Error}})
    async def embed(request: Request, file: Annotated[UploadFile | None, File(
            description="The recording. Or send the file itself as the request body "
                        "(Content-Type: audio/* or application/octet-stream).")] = None) -> Embedding:
        """The embedding of one recording."""
        if file is not None:
            wave = await service.decode(file, upload_name(file, "file"))
        elif request.headers.get("content-type", "").startswith(("multipart/", "application/x-www-form-urlencoded")):
            raise HTTPException(422 if "multipart" in request.headers["content-type"] else 415,
                                "send the audio as multipart field 'file' or as the raw request body "
                                "(Content-Type: audio/* or application/octet-stream)")
        else:
            wave = await service.decode(await request.body(), "body")
        emb = (await service.batcher.embed([wave]))[0]
        return Embedding(embedding=emb.tolist(), duration=len(wave) / SAMPLE_RATE)

    @app.post("/v1/verify", dependencies=[reader], responses=errors)
    async def verify(
        a: Annotated[UploadFile, File(description="First recording.")],
        b: Annotated[UploadFile, File(description="Second recording.")],
        operating_point: Annotated[str | None, Form(description="eer, far@0.01, ... (calibrated models) or bayes; "
                                                                "default eer, else the model's threshold.")] = None,
        threshold: Annotated[float | None, Form(description="Accept threshold on the cosine score instead.")] = None,
        prior: Annotated[float, Form(gt=0, lt=1, description="Prior of 'same speaker', for P(same) and bayes.")] = 0.5,
    ) -> Verification:
        """Whether two recordings are of the same speaker: score, LLR and P(same) when calibrated, the decision."""
        rule = service.rule(operating_point, threshold, prior)
        ea, eb = await service.batcher.embed(await service.decode_all([a, b], ["a", "b"]))
        return Verification.of(rule(float(np.dot(ea, eb))))

    @app.post("/v1/identify", dependencies=[reader], responses={**errors, 409: {"model": Error}})
    async def identify(
        file: Annotated[UploadFile, File(description="Recording of the speaker to identify.")],
        top: Annotated[int, Form(ge=1, le=1000, description="How many candidates to return.")] = 5,
        operating_point: Annotated[str | None, Form()] = None,
        threshold: Annotated[float | None, Form()] = None,
        prior: Annotated[float, Form(gt=0, lt=1)] = 0.5,
    ) -> Identification:
        """The enrolled speakers closest to a recording, best first; `identified` is null for an unknown speaker."""
        rule = service.rule(operating_point, threshold, prior)
        if not await service.in_gallery(len):
            raise HTTPException(409, "the gallery is empty; enrol speakers first")
        emb = (await service.batcher.embed([await service.decode(file, upload_name(file, "file"))]))[0]
        matches = await service.in_gallery(lambda g: g.identify_embedding(
            emb, top, operating_point=operating_point, threshold=threshold, prior=prior))
        best = matches[0]
        return Identification(
            matches=[Candidate(name=m.name, score=m.score, utterances=m.utterances, accepted=m.decision.accept,
                               llr=m.decision.llr, p_same=m.decision.p_same) for m in matches],
            identified=best.name if best.decision.accept else None, operating_point=Point.of(rule.point))

    @app.post("/v1/enroll", dependencies=[writer], responses={**errors, 409: {"model": Error}})
    async def enroll(
        name: Annotated[str, Form(description="Speaker name; enrolling again adds recordings.")],
        file: Annotated[list[UploadFile], File(description="One or more recordings of the speaker.")],
    ) -> Enrolment:
        """Add recordings to a speaker (created if new). All are decoded and embedded first; one bad
        recording refuses the request and nothing is enrolled."""
        try:
            check_name(name)
        except GalleryError as exc:
            raise HTTPException(400, str(exc)) from None
        if len(file) > config.max_files:
            raise HTTPException(400, f"{len(file)} recordings in one enrolment; the limit is {config.max_files}")
        if service.gallery is None:
            raise HTTPException(409, "this server has no speaker gallery (start it with --db)")
        embeddings = await service.batcher.embed(await service.decode_all(file, ["file"] * len(file)))
        sources = [f"upload:{upload_name(u, 'file')}" for u in file]

        def add(gallery: Gallery) -> Enrolment:
            added = gallery.add_embeddings({name: embeddings}, {name: sources})
            return Enrolment(name=name, added=added, utterances=gallery.speaker(name).utterances,
                             speakers=len(gallery))

        return await service.in_gallery(add)

    @app.get("/v1/speakers", dependencies=[reader], responses={**errors, 409: {"model": Error}})
    async def speakers() -> Speakers:
        """Every enrolled speaker, by name."""
        found = await service.in_gallery(lambda g: g.speakers())
        return Speakers(speakers=[Speaker(name=s.name, utterances=s.utterances, created=s.created, updated=s.updated)
                                  for s in found])

    @app.delete("/v1/speakers/{name}", dependencies=[writer],
                responses={**errors, 404: {"model": Error}, 409: {"model": Error}})
    async def remove(name: str) -> Removal:
        """Remove a speaker and all their recordings."""
        def drop(gallery: Gallery) -> int:
            if gallery.speaker(name) is None:
                raise _NotFound
            return gallery.remove(name)

        try:
            return Removal(name=name, removed=await service.in_gallery(drop))
        except _NotFound:
            raise HTTPException(404, f"no speaker named {name!r}") from None

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        """Live PCM16 in, running embedding and best matches out (protocol: :mod:`ghostvlad.serve.stream`)."""
        await serve_stream(websocket, service)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"detail": "one line"}``; never a traceback."""

    def detail(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    @app.exception_handler(AudioError)
    async def bad_audio(request: Request, exc: AudioError) -> JSONResponse:
        return detail(400, str(exc))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull) -> JSONResponse:
        return detail(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            where = " ".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
            problems.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
        return detail(422, "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, MultiPartException):  # raised while parsing the form
            message = f"malformed multipart body: {cause.message}"
        return detail(exc.status_code, message, exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error in %s %s", request.method, request.url.path)
        return detail(500, f"internal error ({type(exc).__name__}); the server log has the details")
