"""The FastAPI app of the search page: the page itself, a JSON API for it, and the gallery's image files."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from serve.config import UPLOADS_AT_ONCE
from serve.safety import QueryError, cross_site, host_allowed, host_names, image_type
from serve.service import SearchService

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}  # nothing else is served from static/
SECURITY_HEADERS = {
    # the page runs only its own script and shows only its own images (and the upload preview's blob:)
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# A gallery file opened on its own is a sandboxed document that may load nothing: should a browser ever render
# one as a page, it runs no script and has no access to the page's origin.
IMAGE_POLICY = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


def _error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_limited(request: Request, limit: int, *, timeout_s: float) -> bytes:
    """The request body, refused (413) as soon as it exceeds `limit` bytes, whatever Content-Length claims, and
    cut off (408) when it has not all arrived within `timeout_s` seconds (a trickling body holds no slot forever)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise QueryError(f"the upload is {int(length):,} bytes; the limit is {limit:,} (--max-upload-mb)", status=413)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise QueryError(f"the upload is larger than the limit of {limit:,} bytes (--max-upload-mb)",
                                     status=413)
                chunks.append(chunk)
    except TimeoutError:
        raise QueryError(f"the upload did not arrive within {timeout_s:g} s ({size:,} bytes came): send it again "
                         "over a faster connection", status=408) from None
    return b"".join(chunks)


def add_error_handlers(app: FastAPI) -> None:
    """Every error is {"error": message}; an unexpected one logs its traceback and tells the page only that."""

    @app.exception_handler(QueryError)
    async def query_error(request: Request, error: QueryError) -> JSONResponse:
        # a body cut off mid-way leaves the connection unusable for a next request
        return _error(str(error), error.status, {"Connection": "close"} if error.status in (408, 413) else None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error("not found" if error.status_code == 404 else str(error.detail), error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:  # the traceback goes to the log only
        logger.exception("request %s %s failed", request.method, request.url.path)
        return _error("the server could not answer this request; its log says why", 500)


def add_guard(app: FastAPI, bind_host: str) -> None:
    """Requests for another host name (DNS rebinding) and cross-site POSTs are refused (403) before any route;
    every answer carries the security headers (a route's own Content-Security-Policy is kept)."""
    names = host_names(bind_host)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.headers.get("host", "")
        port = (request.scope.get("server") or (None, None))[1]
        if not host_allowed(host, names=names, port=port):
            response = _error(f"this server answers only to {', '.join(sorted(names))} on its port, not to the host "
                              f"name {host[:80]!r}: open the page at the address `serve` printed", 403)
        elif request.method == "POST" and cross_site(dict(request.headers), host=host):
            response = _error("a page of another site may not send requests to this server", 403)
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def add_page_routes(app: FastAPI) -> None:
    """/ (the page), /static/{app.js,style.css}, /favicon.ico."""

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    def favicon() -> Response:  # browsers ask for one; no content rather than a 404 in their console
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404)
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])


def add_api_routes(app: FastAPI, service: SearchService) -> None:
    """/api/{info,search,gallery,similar} (GET) and /api/search-image (POST an image): JSON answers."""
    uploads = asyncio.Semaphore(UPLOADS_AT_ONCE)  # decoding an image takes memory: a few at a time, others wait

    @app.get("/api/info")
    def info() -> dict:
        return service.info()

    @app.get("/api/search")
    def search(q: str = "", k: str = "") -> dict:
        return service.text_search(q, k)

    @app.get("/api/gallery")
    def gallery(offset: str = "", limit: str = "") -> dict:
        return service.gallery_page(offset, limit)

    @app.get("/api/similar")
    def similar(image: str = "", k: str = "") -> dict:
        return service.similar(image, k)

    @app.post("/api/search-image")
    async def search_image(request: Request, k: str = "") -> dict:
        data = await read_limited(request, service.cfg.max_upload_bytes, timeout_s=service.cfg.upload_timeout_s)
        async with uploads:
            return await run_in_threadpool(service.upload_search, data, k)


def add_image_route(app: FastAPI, service: SearchService) -> None:
    """/images/{path}: a gallery file inside the image root (else 404), as the image type Pillow reads in it, or
    as a download when it is not one of IMAGE_TYPES; never as a page or a script, whatever its name says."""

    @app.get("/images/{path:path}")
    def image(path: str) -> Response:
        file = service.files.file(path)
        if file is None:
            raise HTTPException(404)
        headers = {"Content-Security-Policy": IMAGE_POLICY}
        media_type = image_type(file)
        if media_type is None:
            return FileResponse(file, media_type="application/octet-stream", filename=file.name, headers=headers,
                                content_disposition_type="attachment")
        return FileResponse(file, media_type=media_type, headers=headers)


def build_app(service: SearchService) -> FastAPI:
    """The page's app: guard, error handlers, the page, the JSON API (errors are {"error": message}) and the
    gallery's images."""
    app = FastAPI(title="VSE++ search", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)
    add_guard(app, service.cfg.host)
    add_page_routes(app)
    add_api_routes(app, service)
    add_image_route(app, service)
    return app
