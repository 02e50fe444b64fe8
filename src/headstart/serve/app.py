"""The HTTP API of ``headstart serve`` on FastAPI: predict, explain, model cards, health, metrics, the page.

Routes (``/docs`` has them all, with a form to try each):

- ``POST /v1/predict?top_k=5[&model=NAME]``: images as multipart field ``file`` (repeatable) or a raw body;
  answers ``{"model", "results": [{"filename", "predictions": [{"label", "probability"}]}], "latency_ms"}``.
- ``POST /v1/explain?[model=NAME&target=CLASS&method=gradcam]``: one image → PNG of its Grad-CAM overlay.
- ``GET /v1/models``: each model's classes, backbone, preprocessing, training metrics.
- ``GET /healthz`` (alive), ``GET /readyz`` (200 once loaded and warmed up), ``GET /metrics`` (Prometheus).
- ``/v2/...``: the Open Inference Protocol (KServe v2), see :mod:`headstart.serve.kserve`.
- ``GET /``: a drag-and-drop page (``static/``, plain HTML/CSS/JS, works offline).

Every refusal is JSON with a 4xx status (:mod:`headstart.serve.uploads`); unexpected failures are a JSON 500,
logged with their traceback, and the server keeps serving.
"""

from __future__ import annotations

import hmac
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from headstart._version import __version__
from headstart.serve.batching import ShuttingDownError
from headstart.serve.limits import RequestLimits, shutting_down, trusted_hosts
from headstart.serve.metrics import CONTENT_TYPE
from headstart.serve.state import ServerState
from headstart.serve.uploads import ApiError, error_payload, read_uploads, redact_paths

STATIC = Path(__file__).parent / "static"

_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "One or more photos (repeat the field).",
                    }
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}, "description": "One photo as the raw body."},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_ERROR = {
    "description": "A refused request",
    "content": {
        "application/json": {
            "example": {
                "detail": "notes.txt: not an image: Pillow cannot identify the format (it is text starting 'hello')",
                "code": "not_an_image",
                "filename": "notes.txt",
            }
        }
    },
}
_PREDICT_EXAMPLE = {
    "model": "pets",
    "results": [
        {
            "filename": "cat.jpg",
            "predictions": [{"label": "Bengal", "probability": 0.912}, {"label": "Abyssinian", "probability": 0.051}],
        }
    ],
    "latency_ms": 41.2,
}

#: Paths whose requests are counted under their own name even when no route matched (413 before routing).
_KNOWN = ("/v1/predict", "/v1/explain", "/v1/models", "/healthz", "/readyz", "/metrics", "/")


def create_app(state: ServerState) -> Any:
    """The ASGI app serving ``state``'s models (FastAPI wrapped in the body limit and the request metrics).

    Example:
        >>> state = ServerState([ServedModel.open("pets.safetensors")], ServeConfig())
        >>> app = create_app(state)          # then: uvicorn.run(app) — or `headstart serve pets.safetensors`
    """
    config = state.config

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.start_loading()
        yield
        state.close()

    api = _fastapi(lifespan)
    api.state.headstart = state
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's --api-key.")
    bearer = HTTPBearer(auto_error=False, description="The server's --api-key as a bearer token.")

    def given_key(key: str | None, credentials: HTTPAuthorizationCredentials | None) -> str | None:
        return key or (credentials.credentials if credentials is not None else None)

    def key_matches(given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), (config.api_key or "").encode())

    def check_key(
        key: str | None = Security(key_header),
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> None:
        given = given_key(key, credentials)
        if not key_matches(given):
            raise ApiError(
                401,
                "unauthorized",
                "This server wants an API key: send it as header 'X-API-Key: KEY' or 'Authorization: Bearer KEY'."
                if given is None
                else "The API key is wrong.",
            )

    secured = [Security(check_key)] if config.api_key else []
    _add_error_handlers(api)

    # --------------------------------------------------------------------------------------------- health
    @api.get("/healthz", tags=["health"], summary="Alive (the process answers)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - state.started, 1)}

    @api.get(
        "/readyz",
        tags=["health"],
        summary="Ready (models loaded and warmed up)",
        responses={503: {"description": "Still loading, or loading failed"}},
    )
    async def readyz(
        key: str | None = Security(key_header),
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> JSONResponse:
        body: dict[str, Any] = {"status": "ready" if state.ready else ("failed" if state.error else "loading")}
        if config.api_key is None or key_matches(given_key(key, credentials)):  # names only for who may use them
            body["models"] = {name: m.loaded for name, m in state.models.items()}
            if state.error:
                body["error"] = redact_paths(state.error)
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @api.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        dependencies=secured,
    )
    async def metrics() -> Response:
        text = state.metrics.render(queue_depth=state.queue_depth(), ready=state.ready)
        return Response(text, media_type=CONTENT_TYPE)

    # ---------------------------------------------------------------------------------------------- models
    @api.get(
        "/v1/models",
        tags=["v1"],
        summary="The served models: classes, backbone, preprocessing, metrics",
        dependencies=secured,
    )
    async def list_models() -> dict[str, Any]:
        return {"models": [m.card() for m in state.models.values()]}

    @api.get(
        "/v1/models/{name}", tags=["v1"], summary="One model's card", dependencies=secured, responses={404: _ERROR}
    )
    async def model_card(name: str) -> dict[str, Any]:
        return state.model(name).card()

    # --------------------------------------------------------------------------------------------- predict
    @api.post(
        "/v1/predict",
        tags=["v1"],
        summary="Top-k labels for one or more photos",
        dependencies=secured,
        openapi_extra={"requestBody": _IMAGE_BODY},
        responses={
            200: {"content": {"application/json": {"example": _PREDICT_EXAMPLE}}},
            400: _ERROR,
            404: _ERROR,
            413: _ERROR,
            503: _ERROR,
        },
    )
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, le=config.max_top_k, description="How many labels per photo."),
        model: str | None = Query(None, description="Which model, when several are served."),
    ) -> JSONResponse:
        start = time.perf_counter()
        served = state.model(model)
        state.require_ready()
        uploads = await read_uploads(request, max_files=config.max_files)
        rows = await state.classify(served, uploads)
        results = [{"filename": u.filename, "predictions": served.top(row, top_k)} for u, row in zip(uploads, rows)]
        return JSONResponse(
            {"model": served.name, "results": results, "latency_ms": round((time.perf_counter() - start) * 1000, 2)}
        )

    @api.post(
        "/v1/explain",
        tags=["v1"],
        summary="Grad-CAM overlay of one photo (PNG)",
        dependencies=secured,
        openapi_extra={"requestBody": _IMAGE_BODY},
        response_class=Response,
        responses={
            200: {
                "content": {"image/png": {}},
                "description": "The photo with its heat map; "
                "headers X-Explained-Label (URL-encoded), X-Explained-Probability",
            },
            400: _ERROR,
            404: _ERROR,
            413: _ERROR,
            503: _ERROR,
        },
    )
    async def explain(
        request: Request,
        model: str | None = Query(None, description="Which model, when several are served."),
        target: str | None = Query(None, description="Class name or index to explain (default: the top class)."),
        method: str = Query("gradcam", pattern="^(gradcam|gradcam\\+\\+|hirescam|xgradcam|layercam)$"),
    ) -> Response:
        served = state.model(model)
        state.require_ready()
        uploads = await read_uploads(request, max_files=config.max_files)
        if len(uploads) != 1:
            raise ApiError(
                400, "one_image", f"/v1/explain explains one photo per request; this one has {len(uploads)}."
            )
        png, info = await state.explain(served, uploads[0], target=target, method=method)
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Explained-Label": quote(info["label"]),
                "X-Explained-Probability": str(info["probability"]),
                "X-Explained-Method": info["method"],
                "Cache-Control": "no-store",
            },
        )

    # ------------------------------------------------------------------------------------------------ page
    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    api.mount("/static", StaticFiles(directory=STATIC), name="static")

    from headstart.serve.kserve import add_kserve_routes

    add_kserve_routes(api, state, secured)
    limited = RequestLimits(
        api,
        limits=config.limits,
        max_body_bytes=config.max_upload_bytes,
        trusted=trusted_hosts(config.host, config.loopback),
        stopping=lambda: state.stopping,
    )
    return _Metered(limited, state)


def _fastapi(lifespan: Any) -> FastAPI:
    """FastAPI whose /docs loads Swagger UI from the installed fastapi-offline package (no CDN) when it is there."""
    options: dict[str, Any] = {
        "title": "headstart serve",
        "version": __version__,
        "lifespan": lifespan,
        "description": "Image classifiers trained with headstart, over HTTP. The page at / tries them in a browser.",
    }
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:  # the plain docs page still works wherever a browser can reach the CDN
        return FastAPI(**options)
    return FastAPIOffline(**options, redoc_url=None)


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    body, headers = error_payload(request.url.path, error)
    return JSONResponse(body, error.status, headers=headers)


def _add_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(request, exc)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        errors = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
        return _error_response(request, ApiError(422, "invalid_parameter", "; ".join(parts), errors=errors))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(request, ApiError(exc.status_code, code, str(exc.detail)))

    @api.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:  # no one reads it; no traceback either
        return _error_response(request, ApiError(400, "client_disconnected", "The client left before its body ended."))

    @api.exception_handler(ShuttingDownError)
    async def stopping(request: Request, exc: ShuttingDownError) -> JSONResponse:
        return _error_response(request, shutting_down())

    @api.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:  # (Starlette logs the traceback)
        return _error_response(
            request,
            ApiError(
                500,
                "internal_error",
                f"The server failed on this request ({type(exc).__name__}: {exc}); it keeps serving.",
            ),
        )


class _Metered:
    """ASGI middleware: count every answer by route template and status, with its latency."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        self.state.metrics.request_started()

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or (scope["path"] if scope["path"] in _KNOWN else "other")
            self.state.metrics.observe_request(path, status["code"], time.perf_counter() - start)


__all__ = ["STATIC", "create_app"]
