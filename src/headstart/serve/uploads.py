"""What a request may carry, and the JSON 4xx for everything it should not: size, file count, undecodable images.

Every refusal is an :class:`ApiError` (status, machine-readable ``code``, a sentence naming the problem and the
fix), answered as ``{"detail": ..., "code": ...}`` (FastAPI's ``detail`` convention plus a stable code), or as
``{"error": ...}`` on the Open Inference Protocol's ``/v2`` routes: :func:`error_payload` is the one place that
words an answer, and it takes the server's own file paths out of it (:func:`redact_paths`). The body's size and
time limits are enforced below the routes (:mod:`headstart.serve.limits`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
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


#: Paths the server knows to be its own (the model files as given); absolute paths that exist are found by looking.
_PRIVATE: set[str] = set()
_PATH = re.compile(r"(?<![\w.~-])(?:~|\.{1,2})?/[^\s'\"`(),;]*[^\s'\"`(),;.:]")
HIDDEN_PATH = "<server path>"


def keep_private(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Never show these paths (and their absolute forms) to clients."""
    for path in paths:
        text = os.fspath(path)
        _PRIVATE.update({text, os.path.abspath(text)} - {""})


def _on_this_machine(text: str) -> bool:
    path = os.path.expanduser(text)
    parent = os.path.dirname(path.rstrip("/"))
    return os.path.exists(path) or (parent not in ("", "/", ".") and os.path.isdir(parent))


def redact_paths(text: str) -> str:
    """``text`` without the server's file paths: the registered ones (:func:`keep_private`) and every path-like
    word that names something on this machine (or in a folder that exists), replaced by ``<server path>``. URL
    paths (``/v1/explain``) name nothing on disk and stay."""
    for private in sorted(_PRIVATE, key=len, reverse=True):
        text = text.replace(private, HIDDEN_PATH)
    return _PATH.sub(lambda m: HIDDEN_PATH if _on_this_machine(m.group(0)) else m.group(0), text)


def error_payload(path: str, error: ApiError) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and headers answering ``error`` on a request for ``path``: the Open Inference Protocol's
    ``{"error": ...}`` under ``/v2``, else ``{"detail", "code", ...}``; the server's paths never in either."""
    detail = redact_paths(error.detail)
    headers = {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if error.status in (503, 429):
        headers["Retry-After"] = "1"
    if path.startswith("/v2"):
        return {"error": detail}, headers
    return {"detail": detail, "code": error.code, **error.extra}, headers


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
    count = f"{sent:,} files, more" if sent is not None else "more files"
    return ApiError(
        413,
        "too_many_files",
        f"The request carries {count} than the {limit:,} this server takes at once; split it into several requests "
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
        items = form.multi_items()
        parts = [v for _, v in items if isinstance(v, UploadFile)]
        uploads = []
        for i, part in enumerate(parts):
            uploads.append(Upload(part.filename or f"file{i + 1}", await part.read()))
            await part.close()
        if not uploads:
            fields = [name for name, v in items if not isinstance(v, UploadFile)]
            if fields:
                raise ApiError(
                    400,
                    "no_filename",
                    f"The multipart part {fields[0]!r} has no filename in its Content-Disposition, so it is a text "
                    "field, not a file: send each photo as a file part with a filename "
                    "(curl -F file=@photo.jpg, not -F file=<photo.jpg).",
                )
            raise ApiError(
                400,
                "no_file",
                "The multipart form has no file part: send each photo as field 'file' (curl -F file=@photo.jpg).",
            )
        return uploads
    # Any other body is the image itself, whatever its type says (curl --data-binary sends a form's type).
    data = await request.body()
    return [Upload(request.headers.get(FILENAME_HEADER) or "upload", data)]


__all__ = [
    "MB",
    "ApiError",
    "Upload",
    "error_payload",
    "image_error",
    "keep_private",
    "read_uploads",
    "redact_paths",
    "too_large",
    "too_many_files",
]
