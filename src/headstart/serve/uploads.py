"""What a request may carry, and the JSON 4xx for everything it should not: size, file count, undecodable images.

Every refusal is an :class:`ApiError` (status, machine-readable ``code``, a sentence naming the problem and the
fix), answered as ``{"detail": ..., "code": ...}``: FastAPI's ``detail`` convention plus a stable code. The body
limit is enforced in :class:`BodyLimit`, an ASGI middleware, before any route reads a byte: a declared
``Content-Length`` over the limit is refused at once, a chunked body as soon as it crosses it. The rest of the
body is then read and dropped (up to a bound), so a client that sends its whole upload before reading the
answer still gets the 413 instead of a reset connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from headstart.errors import UnusableImageError

MB = 1024 * 1024

#: Raw-body uploads may name themselves with this header (multipart parts carry their own filename).
FILENAME_HEADER = "x-filename"


class ApiError(Exception):
    """A request the server refuses: answered as JSON with ``status``, ``code`` and ``detail``."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "code": self.code, **self.extra}


def image_error(exc: UnusableImageError, filename: str) -> ApiError:
    """The 400 for an upload the decoder refused, with a code saying which kind of refusal."""
    reason = exc.reason
    if reason.startswith("empty file"):
        code = "empty_file"
    elif reason.startswith("not an image"):
        code = "not_an_image"
    elif "decompression bomb" in reason:
        code = "too_many_pixels"
        reason = reason.replace(
            "raise the limit with --max-pixels N", "the server's limit is set by `headstart serve --max-pixels`"
        )
    elif reason.startswith("truncated"):
        code = "corrupt_image"
    else:
        code = "unusable_image"
    return ApiError(400, code, f"{filename}: {reason}", filename=filename)


@dataclass
class Upload:
    """One image sent by a client: its bytes and the name errors and results call it by."""

    filename: str
    data: bytes


def too_large(limit_bytes: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"The request body is larger than this server's upload limit of {limit_bytes / MB:g} MB; send smaller "
        "or fewer photos per request, or start the server with a higher --max-upload-mb.",
        limit_bytes=limit_bytes,
    )


def too_many_files(sent: int | None, limit: int) -> ApiError:
    count = f"{sent} files" if sent is not None else "more files"
    return ApiError(
        413,
        "too_many_files",
        f"The request carries {count} than the {limit} this server takes at once; split it into several requests "
        "(or start the server with a higher --max-files).",
        limit=limit,
    )


async def read_uploads(request: Any, *, max_files: int) -> list[Upload]:
    """The images of a request: every file part of a multipart form (field ``file``, or any other name), or
    the raw body (named by an ``X-Filename`` header, else ``upload``). Raises :class:`ApiError` for none or too
    many."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_files, max_fields=100)
        except HTTPException as exc:
            if "Too many files" in str(exc.detail):
                raise too_many_files(None, max_files) from None
            raise ApiError(400, "bad_multipart", f"The multipart form could not be read: {exc.detail}") from None
        parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        uploads = []
        for i, part in enumerate(parts):
            uploads.append(Upload(part.filename or f"file{i + 1}", await part.read()))
            await part.close()
        if not uploads:
            raise ApiError(
                400,
                "no_file",
                "The multipart form has no file part: send each photo as field 'file' (curl -F file=@photo.jpg).",
            )
        return uploads
    # Any other body is the image itself, whatever its type says (curl --data-binary sends a form's type).
    data = await request.body()
    return [Upload(request.headers.get(FILENAME_HEADER) or "upload", data)]


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit_bytes`` with a JSON 413 (see the module docstring).

    Args:
        app: the ASGI app.
        limit_bytes: the largest body accepted.
        drain_bytes: how much of a refused body is read and dropped so the client can read the answer (past that,
            the connection is simply closed).
    """

    def __init__(self, app: Any, limit_bytes: int, drain_bytes: int | None = None) -> None:
        self.app = app
        self.limit = int(limit_bytes)
        self.drain_limit = int(drain_bytes if drain_bytes is not None else max(4 * self.limit, 256 * MB))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._drain(receive, 0)
            await _send_json(send, too_large(self.limit))
            return
        state = {"received": 0, "done": False}

        async def limited_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    state["done"] = True
                if state["received"] > self.limit:
                    raise BodyTooLargeError(self.limit)  # answered by the app's ApiError handler
            return message

        await self.app(scope, limited_receive, send)
        if state["received"] > self.limit and not state["done"]:
            await self._drain(receive, state["received"])

    async def _drain(self, receive: Any, already: int) -> None:
        seen = already
        while seen <= self.drain_limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


class BodyTooLargeError(ApiError):
    """Raised inside ``receive`` when a streamed body crosses the limit: the app answers it like any ApiError."""

    def __init__(self, limit_bytes: int) -> None:
        error = too_large(limit_bytes)
        super().__init__(error.status, error.code, error.detail, **error.extra)


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = [
    "MB",
    "ApiError",
    "BodyLimit",
    "BodyTooLargeError",
    "Upload",
    "image_error",
    "read_uploads",
    "too_large",
    "too_many_files",
]
