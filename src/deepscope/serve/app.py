"""The explorer's web application: a JSON API over an :class:`~deepscope.serve.explorer.Explorer` and the page.

Endpoints (all answers JSON except the page, its two static files and the photos' JPEGs):

==========================================  ====================================================================
``GET /``                                   the page (``static/index.html``; ``app.js`` and ``app.css`` beside it)
``GET /api/info``                           model, methods with their settings, layers, colour scales, limits
``GET /api/status``                         model loading, each worker's running job and queue, memory
``GET /api/classes``                        every class name; ``/api/classes/resolve?name=`` one class by name
``GET /api/photos``                         the photos by id; ``POST /api/photos`` adds one (raw image body)
``GET /api/photos/{id}/image``, ``/thumb``  the model's view of a photo (JPEG), a thumbnail
``GET /api/photos/{id}/predictions``        top-k classes
``GET /api/photos/{id}/maps/{method}``      one method's map (``?target=`` class index or name, ``&layer=``)
``GET /api/neurons?layer=&channel=``        top-activating crops with guided backprop; ``/api/neurons/optimised``
``GET /api/features?space=&projection=``    the photos in 2-D; ``/api/features/neighbours?photo=&k=``
``GET|POST /api/trust``                     the trust table's state; start it
==========================================  ====================================================================

Security: every response carries a Content-Security-Policy that allows only this server's own script and
style files (no inline script); the page writes every name with ``textContent``. Photos are named by id only,
so no request reads a file outside the served folder; static files come from a fixed list. On the loopback
interface the ``Host`` header must name a loopback address (no DNS rebinding); on any other interface every
request must carry the server's token (``?token=`` once, then a ``SameSite=Strict`` cookie, or the
``X-Deepscope-Token`` header). A state-changing request from another origin is refused. Every error is a
4xx (or 503 while the model loads) with ``{"error": "one line"}``.
"""

from __future__ import annotations

import contextlib
import secrets
from importlib import resources
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from deepscope.errors import DeepscopeError
from deepscope.serve.explorer import Explorer
from deepscope.serve.photos import UnknownPhotoError, UploadError
from deepscope.serve.worker import QueueFullError, wait

#: the page's files, the only static files served
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
                "index.html": "text/html; charset=utf-8", "favicon.svg": "image/svg+xml"}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "deepscope_token"


def status_of(error: Exception) -> int:
    """The HTTP status of a refused request."""
    if isinstance(error, UploadError):
        return error.status
    if isinstance(error, UnknownPhotoError):
        return 404
    if isinstance(error, QueueFullError):
        return 503
    return 422


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line[:limit]


def _host_name(host_header: str) -> str:
    """``127.0.0.1`` from ``127.0.0.1:8000``, ``::1`` from ``[::1]:8000``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def create_app(explorer: Explorer, *, token: str | None = None, allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS):
    """The ASGI application serving ``explorer``.

    Parameters
    ----------
    token : str, optional
        Required on every request when given (servers bound to a non-loopback interface).
    allowed_hosts : tuple of str or None
        Host names a request's ``Host`` header may carry (None: any; use it only with a token).
    """
    @contextlib.asynccontextmanager
    async def lifespan(app):
        explorer.start()
        try:
            yield
        finally:
            explorer.stop()

    app = FastAPI(title="deepscope explorer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": one_line(message)}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = _host_name(request.headers.get("host", ""))
        if allowed_hosts is not None and host not in allowed_hosts:
            response = refuse(403, f"host {host[:60]!r} is not served here; open the address the server printed.")
        elif token is not None and not _has_token(request, token):
            response = refuse(403, "this server needs its access token: open the address with ?token= that it "
                                   "printed when it started.")
        elif request.method not in ("GET", "HEAD") and not _same_origin(request):
            response = refuse(403, "a request from another site was refused.")
        else:
            response = await call_next(request)
            if token is not None and request.query_params.get("token") == token:
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(DeepscopeError)
    async def deepscope_error(request: Request, error: DeepscopeError):
        return refuse(status_of(error), str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        message = error.detail if error.status_code != 404 else "no such page or endpoint."
        return refuse(error.status_code, str(message))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return refuse(422, f"{where}: {first.get('msg', 'invalid value')}.")

    async def ready():
        """The loaded model; 503 while it loads (the page polls /api/status)."""
        future = explorer.ready()
        if not future.done():
            try:
                await wait(future)
            except Exception as error:
                raise DeepscopeError(f"the model could not be loaded: {error}") from None
        if future.exception() is not None:
            raise DeepscopeError(f"the model could not be loaded: {future.exception()}")
        return future.result()

    # ------------------------------------------------------------------------------------ page
    @app.get("/")
    async def page():
        return static("index.html")

    @app.get("/static/{name}")
    async def static_file(name: str):
        return static(name)

    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return refuse(404, "no such file.")
        body = resources.files("deepscope.serve").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------------------------ model
    @app.get("/api/status")
    async def status():
        return explorer.status()

    @app.get("/api/info")
    async def info():
        await ready()
        return explorer.info()

    @app.get("/api/classes")
    async def classes():
        loaded = await ready()
        return {"names": list(loaded.classes.names)}

    @app.get("/api/classes/resolve")
    async def resolve_class(name: str):
        loaded = await ready()
        index = explorer.resolve_class(name)
        if index is None:
            raise DeepscopeError("name a class, e.g. ?name=golden retriever or ?name=207.")
        return {"index": index, "name": loaded.classes.names[index]}

    # ------------------------------------------------------------------------------------ photos
    @app.get("/api/photos")
    async def photos():
        return {"photos": [photo.describe() for photo in explorer.photos.list()]}

    @app.post("/api/photos")
    async def upload(request: Request):
        limits = explorer.settings.uploads
        name = unquote(request.headers.get("x-filename", "upload"))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise UploadError(f"upload: {int(declared) / 1e6:.1f} MB is over the limit of "
                              f"{limits.max_bytes / 1e6:.0f} MB.", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_bytes:
                raise UploadError(f"upload: over the limit of {limits.max_bytes / 1e6:.0f} MB.", 413)
        photo = await run_in_threadpool(explorer.photos.add_upload, bytes(body), name, content_type)
        return {"photo": photo.describe()}

    async def photo_bytes(photo_id: str, thumbnail: bool) -> Response:
        photo = explorer.photos.get(photo_id)
        if not thumbnail:
            await ready()
        data = await run_in_threadpool(explorer.photo_jpeg, photo, thumbnail)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/photos/{photo_id}/image")
    async def photo_image(photo_id: str):
        return await photo_bytes(photo_id, thumbnail=False)

    @app.get("/api/photos/{photo_id}/thumb")
    async def photo_thumb(photo_id: str):
        return await photo_bytes(photo_id, thumbnail=True)

    @app.get("/api/photos/{photo_id}/predictions")
    async def predictions(photo_id: str):
        photo = explorer.photos.get(photo_id)
        await ready()
        return {"photo": photo.id, "predictions": await wait(explorer.predictions_job(photo))}

    @app.get("/api/photos/{photo_id}/maps/{method}")
    async def attribution_map(photo_id: str, method: str, target: str | None = None, layer: str | None = None):
        photo = explorer.photos.get(photo_id)
        await ready()
        return await wait(explorer.map_job(photo, method, explorer.resolve_class(target), layer))

    # ------------------------------------------------------------------------------------ neurons
    @app.get("/api/neurons")
    async def neurons(layer: str, channel: int):
        await ready()
        return await wait(explorer.neuron_job(layer, channel))

    @app.get("/api/neurons/optimised")
    async def optimised(layer: str, channel: int):
        await ready()
        return await wait(explorer.optimised_job(layer, channel))

    # ------------------------------------------------------------------------------------ feature space
    @app.get("/api/features")
    async def features(space: str = "features", projection: str = "pca"):
        await ready()
        return await wait(explorer.projection_job(space, projection))

    @app.get("/api/features/neighbours")
    async def neighbours(photo: str, k: int = 5):
        chosen = explorer.photos.get(photo)
        await ready()
        return await wait(explorer.neighbours_job(chosen, k))

    # ------------------------------------------------------------------------------------ trust table
    @app.get("/api/trust")
    async def trust():
        await ready()
        return explorer.trust_status()

    @app.post("/api/trust")
    async def start_trust():
        await ready()
        return explorer.trust_job()

    return app


def _has_token(request, token: str) -> bool:
    offered = (request.query_params.get("token") or request.headers.get("x-deepscope-token")
               or request.cookies.get(TOKEN_COOKIE) or "")
    return secrets.compare_digest(offered.encode(), token.encode())


def _same_origin(request) -> bool:
    """No ``Origin`` header (not a browser's cross-site request), or one that names this server."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin.split("://", 1)[-1].lower() == request.headers.get("host", "").lower()


def new_token() -> str:
    """A fresh access token (URL-safe, 192 random bits)."""
    return secrets.token_urlsafe(24)
