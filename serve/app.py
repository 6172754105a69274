"""The FastAPI app of the search page: the page itself, a JSON API for it, and the gallery's image files."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from serve.safety import QueryError
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


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds `limit` bytes, whatever Content-Length claims."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise QueryError(f"the upload is {int(length):,} bytes; the limit is {limit:,} (--max-upload-mb)", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise QueryError(f"the upload is larger than the limit of {limit:,} bytes (--max-upload-mb)", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(service: SearchService) -> FastAPI:
    """Routes: / (the page), /static/{app.js,style.css}, /api/{info,search,gallery,similar,search-image} (JSON;
    errors are {"error": message}), /images/{path} (gallery images inside the image root, else 404)."""
    app = FastAPI(title="VSE++ search", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(QueryError)
    async def query_error(request: Request, error: QueryError) -> JSONResponse:
        return _error(str(error), error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error("not found" if error.status_code == 404 else str(error.detail), error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:  # the traceback goes to the log only
        logger.exception("request %s %s failed", request.method, request.url.path)
        return _error("the server could not answer this request; its log says why", 500)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

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
        data = await read_limited(request, service.cfg.max_upload_bytes)
        return await run_in_threadpool(service.upload_search, data, k)

    @app.get("/images/{path:path}")
    def image(path: str) -> Response:
        file = service.files.file(path)
        if file is None:
            raise HTTPException(404)
        return FileResponse(file)

    return app
