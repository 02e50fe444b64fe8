"""The Open Inference Protocol (KServe v2, also Triton's HTTP API), so KServe and Triton clients can call headstart.

Each model takes one input, ``image``: a BYTES tensor of shape ``[n]`` whose elements are encoded image files,
sent either base64-encoded in the JSON ``data`` (KServe's convention for binary BYTES) or raw with the binary
tensor data extension (``Inference-Header-Content-Length``; each element a 4-byte little-endian length and its
bytes), which is what ``tritonclient`` sends. Outputs: ``probabilities`` (FP32 ``[n, n_classes]``, class order as
in ``GET /v1/models``), ``labels`` (BYTES ``[n, k]``) and ``scores`` (FP32 ``[n, k]``), the top ``k`` (request
parameter ``top_k``, default 5); answered as JSON. Errors are ``{"error": "..."}`` with a 4xx status.

Example request::

    POST /v2/models/pets/infer
    {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["/9j/4AAQSkZJRg..."]}],
     "parameters": {"top_k": 3}}
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from headstart._version import __version__
from headstart.serve.limits import Limits, check_json_tokens, parse_json
from headstart.serve.state import ServerState
from headstart.serve.uploads import ApiError, Upload, too_many_files

INPUT = "image"
OUTPUTS = ("probabilities", "labels", "scores")
VERSION = "1"
HEADER_LENGTH = "inference-header-content-length"


def parse_bytes_tensor(raw: bytes, max_elements: int | None = None) -> list[bytes]:
    """Elements of a BYTES tensor in the binary extension's layout (``<uint32 LE length><bytes>`` each); more than
    ``max_elements`` is refused as soon as the next one starts (a body of millions of empty elements is not walked).
    """
    out, offset = [], 0
    while offset < len(raw):
        if max_elements is not None and len(out) >= max_elements:
            raise ApiError(
                400,
                "bad_tensor",
                f"The binary BYTES tensor holds more elements than the {max_elements} its shape says.",
            )
        if offset + 4 > len(raw):
            raise ApiError(400, "bad_tensor", "The binary BYTES tensor ends inside an element's 4-byte length.")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ApiError(
                400, "bad_tensor", f"A BYTES element claims {size} bytes but only {len(raw) - offset} remain."
            )
        out.append(raw[offset : offset + size])
        offset += size
    return out


def _leaves(data: Any, limit: int) -> list[Any]:
    """The elements of a (possibly nested) JSON ``data`` array, row-major, without recursion; stops past ``limit``."""
    out: list[Any] = []
    stack = [iter(data if isinstance(data, list) else [data])]
    while stack and len(out) <= limit:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


_END = object()


def _decode_base64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(
            400, "bad_tensor", f"{where} must be a base64 string of an image file; got {type(value).__name__}."
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400,
            "bad_tensor",
            f"{where} is not valid base64: send each image file base64-encoded (or use the binary tensor extension).",
        ) from None


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    """``obj[key]`` when present and of ``kind`` (never a bool for an int), ``None`` when absent; else a 400."""
    value = obj.get(key)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(400, "bad_request", f"{where}'{key}' must be {what}; got {type(value).__name__} {value!r:.60}.")
    return value


def _shape(tensor: dict[str, Any], max_elements: int) -> int:
    shape = tensor.get("shape")
    ok = isinstance(shape, list) and 1 <= len(shape) <= 8
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ApiError(
            400, "bad_tensor", f"The input's 'shape' must be a list of 1 to 8 non-negative ints; got {shape!r:.80}."
        )
    n = math.prod(shape)
    if n > max_elements:
        raise too_many_files(n, max_elements)
    return n


def read_request(
    body: bytes, header_length: str | None, *, max_elements: int = 16, limits: Limits | None = None
) -> tuple[dict[str, Any], list[bytes]]:
    """The JSON header of an inference request and the image files of its one ``image`` input.

    Every check that bounds the work comes before the work: the JSON's elements and nesting counted on its bytes
    before it is parsed, the shape's element count (at most ``max_elements``) before any element is read.
    Malformed fields are 400s, never a server error."""
    limits = limits or Limits()
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise ApiError(
                400, "bad_request", f"{HEADER_LENGTH} is {header_length!r:.40} but the body has {len(body)} bytes."
            )
        text, binary = memoryview(body)[:n], memoryview(body)[n:]
    else:
        text = body
    check_json_tokens(text, max_elements, limits)
    head = parse_json(text, "inference request")
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list) or not head["inputs"]:
        raise ApiError(
            400,
            "bad_request",
            f"An inference request needs 'inputs': [{{'name': '{INPUT}', 'datatype': "
            "'BYTES', 'shape': [n], 'data': [...]}}].",
        )
    _field(head, "id", str, "", "a string")
    _field(head, "parameters", dict, "", "an object")
    _field(head, "outputs", list, "", "a list of {'name': ...} objects")
    if len(head["inputs"]) != 1:
        raise ApiError(
            400, "bad_request", f"This model takes one input ({INPUT!r}); the request has {len(head['inputs'])}."
        )
    tensor = head["inputs"][0]
    if not isinstance(tensor, dict):
        raise ApiError(400, "bad_request", "Each entry of 'inputs' must be an object.")
    name = _field(tensor, "name", str, "inputs[0].", "a string") or INPUT
    if tensor.get("datatype") != "BYTES":
        raise ApiError(
            400,
            "bad_tensor",
            f"The input must be datatype BYTES (encoded image files); got {tensor.get('datatype')!r:.40}.",
        )
    count = _shape(tensor, max_elements)
    parameters = _field(tensor, "parameters", dict, "inputs[0].", "an object") or {}
    if "binary_data_size" in parameters:
        size = _field(parameters, "binary_data_size", int, "inputs[0].parameters.", "an int")
        if size is None or size < 0 or size > len(binary):
            raise ApiError(
                400, "bad_tensor", f"binary_data_size {size!r} does not fit the {len(binary)} binary bytes sent."
            )
        images = parse_bytes_tensor(bytes(binary[:size]), max_elements=count)
    elif "data" in tensor:
        values = _leaves(tensor["data"], count)
        if len(values) > count:
            raise ApiError(
                400, "bad_tensor", f"The input's shape {tensor['shape']} holds {count} elements but more were sent."
            )
        images = [_decode_base64(v, f"inputs[0] ({name}) element {i}") for i, v in enumerate(values)]
    else:
        raise ApiError(400, "bad_tensor", "The input has neither 'data' nor binary data (parameters.binary_data_size).")
    if len(images) != count:
        raise ApiError(
            400,
            "bad_tensor",
            f"The input's shape {tensor['shape']} holds {count} elements but {len(images)} were sent.",
        )
    return head, images


def _top_k(head: dict[str, Any], n_classes: int, max_top_k: int) -> int:
    value = (head.get("parameters") or {}).get("top_k", 5)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_top_k:
        raise ApiError(400, "bad_parameter", f"parameters.top_k must be an int in [1, {max_top_k}]; got {value!r:.40}.")
    return min(value, n_classes)


def _requested(head: dict[str, Any]) -> list[str]:
    wanted = head.get("outputs")
    if not wanted:
        return list(OUTPUTS)
    names = [o.get("name") if isinstance(o, dict) else None for o in wanted]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise ApiError(400, "bad_request", f"Unknown output {unknown[0]!r:.60}: this model has {', '.join(OUTPUTS)}.")
    return names


#: The inference request this server reads (the Open Inference Protocol's, for its one BYTES input), as JSON Schema:
#: /openapi.json shows it, and schema-driven clients (schemathesis, in the tests) generate requests from it.
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {"top_k": {"type": "integer", "minimum": 1, "description": "labels per image (default 5)"}},
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string", "enum": [INPUT]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                    "datatype": {"type": "string", "enum": ["BYTES"]},
                    "data": {
                        "type": "array",
                        "items": {"type": "string", "format": "byte"},
                        "description": "the image files, base64",
                    },
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "enum": list(OUTPUTS)}},
            },
        },
    },
}


def add_kserve_routes(api: Any, state: ServerState, secured: list[Any]) -> None:
    """Register the v2 routes on the FastAPI app."""
    tags = ["Open Inference Protocol (KServe v2)"]

    def versioned(name: str, version: str | None) -> Any:
        model = state.model(name)
        if version is not None and version != VERSION:
            raise ApiError(404, "unknown_version", f"Model {name!r} has version {VERSION} only; got {version!r}.")
        return model

    @api.get("/v2", tags=tags, summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "headstart", "version": __version__, "extensions": ["binary_tensor_data"]}

    @api.get("/v2/health/live", tags=tags, summary="Server live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @api.get("/v2/health/ready", tags=tags, summary="Server ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        model = versioned(name, version)
        ok = state.ready and model.loaded
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        model = versioned(name, version)
        n = len(model.classes)
        return {
            "name": model.name,
            "versions": [VERSION],
            "platform": "headstart_pytorch",
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            ],
        }

    async def infer(name: str, request: Request, version: str | None = None) -> JSONResponse:
        model = versioned(name, version)
        state.require_ready()
        body = await request.body()
        head, images = await run_in_threadpool(  # parsing and base64 decoding off the event loop
            partial(read_request, max_elements=state.config.max_files, limits=state.config.limits),
            body,
            request.headers.get(HEADER_LENGTH),
        )
        del body
        k = _top_k(head, len(model.classes), state.config.max_top_k)
        outputs = _requested(head)
        uploads = [Upload(f"{INPUT}[{i}]", data) for i, data in enumerate(images)]
        rows = await state.classify(model, uploads) if uploads else []
        tops = [model.top(row, k) for row in rows]
        n = len(rows)
        tensors = {
            "probabilities": {
                "datatype": "FP32",
                "shape": [n, len(model.classes)],
                "data": [float(p) for row in rows for p in row],
            },
            "labels": {"datatype": "BYTES", "shape": [n, k], "data": [t["label"] for top in tops for t in top]},
            "scores": {"datatype": "FP32", "shape": [n, k], "data": [t["probability"] for top in tops for t in top]},
        }
        body: dict[str, Any] = {
            "model_name": model.name,
            "model_version": VERSION,
            "outputs": [{"name": o, **tensors[o]} for o in outputs],
        }
        if "id" in head:
            body["id"] = head["id"]
        return JSONResponse(body)

    for path, version in (("/v2/models/{name}", False), ("/v2/models/{name}/versions/{version}", True)):
        hidden = {"include_in_schema": not version}
        api.add_api_route(
            path, metadata, methods=["GET"], tags=tags, summary="Model metadata", dependencies=secured, **hidden
        )
        api.add_api_route(  # secured: without the key, probing names would list the models
            path + "/ready",
            model_ready,
            methods=["GET"],
            tags=tags,
            summary="Model ready",
            dependencies=secured,
            **hidden,
        )
        api.add_api_route(
            path + "/infer",
            infer,
            methods=["POST"],
            tags=tags,
            dependencies=secured,
            **hidden,
            summary="Inference (BYTES images: base64 in JSON, or the binary tensor extension)",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": INFER_REQUEST_SCHEMA,
                            "example": {
                                "inputs": [
                                    {"name": INPUT, "shape": [1], "datatype": "BYTES", "data": ["<base64 JPEG>"]}
                                ],
                                "parameters": {"top_k": 3},
                            },
                        }
                    },
                }
            },
        )


__all__ = ["INPUT", "OUTPUTS", "add_kserve_routes", "parse_bytes_tensor", "read_request"]
