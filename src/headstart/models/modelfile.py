"""The self-contained headstart model file: one ``.safetensors`` file holding weights and everything needed to use them.

Layout:
    * tensors: the backbone's weights under the ``backbone.`` prefix, the classifier head as ``head.weight``
      ``(n_classes, n_features)`` and ``head.bias`` ``(n_classes,)``;
    * safetensors' ``__metadata__`` (str -> str) holds one key, ``"headstart"``, whose value is a JSON document:
      ``format_version``, ``headstart_version``, ``created`` and whatever the caller passes (backbone arch name,
      weight source, preprocessing config, class names, metrics, method, ...).

Reading never executes code: safetensors files hold only raw arrays and a JSON header.

Example:
    >>> save_model_file("pets.safetensors", {"head.weight": w, "head.bias": b}, {"class_names": ["cat", "dog"]})
    >>> tensors, metadata = read_model_file("pets.safetensors")
    >>> metadata["class_names"]
    ['cat', 'dog']
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _serialise

from headstart._io import write_bytes_atomic
from headstart._version import __version__
from headstart.errors import ModelFileError

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "looks_like_model_file", "read_model_file", "read_model_metadata", "save_model_file"]

#: Version of the file layout; readers refuse files with a larger number.
FORMAT_VERSION = 1
#: The key of safetensors' ``__metadata__`` that holds headstart's JSON document.
METADATA_KEY = "headstart"

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; zip (torch.save since 1.6)


def looks_like_model_file(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` means a model file rather than a backbone name: a ``.safetensors`` name or an existing file."""
    path = Path(name)
    return path.suffix == ".safetensors" or path.is_file()


def save_model_file(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> Path:
    """Write a headstart model file atomically: readers see the old file or the new one, never half of one.

    Args:
        path: Where to write (conventionally ``*.safetensors``); parent folders are created.
        tensors: Name -> numpy array (convert torch tensors with ``.detach().cpu().numpy()``); made contiguous.
        metadata: JSON-serialisable values (numpy scalars and arrays and paths are converted; NaN is allowed).
            ``format_version`` and ``headstart_version`` are always set by this function; ``created`` (UTC,
            ISO 8601) is added unless given.

    Returns:
        The path written.

    Raises:
        ValueError: A tensor is not a numeric array, or a metadata value is not JSON-serialisable (names the key).
    """
    path = Path(path)
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be strings; got {name!r} ({type(name).__name__}).")
        array = np.asarray(value)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d arrays into shape (1,))
            array = array.copy(order="C")
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"tensor {name!r} has dtype {array.dtype}, which a model file cannot hold; pass a numeric numpy "
                "array (torch tensors: .detach().cpu().numpy())."
            )
        arrays[name] = array

    document = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    document.update(metadata)
    document.update(format_version=FORMAT_VERSION, headstart_version=__version__)
    header = {METADATA_KEY: _to_json(document)}

    data = _serialise(arrays, metadata=header)

    write_bytes_atomic(path, data)  # (not safetensors.save_file: the file gets the umask's permissions)
    return path


def read_model_file(path: str | Path, *, load_tensors: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a headstart model file; never executes code.

    Args:
        path: The ``.safetensors`` model file.
        load_tensors: False to read only the header (fast; the tensors dict comes back empty).

    Returns:
        ``(tensors, metadata)``: name -> numpy array, and the decoded JSON document.

    Raises:
        ModelFileError: The file is missing, damaged, not a headstart model, or from a newer headstart.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no model file at {path}: train one with `headstart train DATA --out {path}`.")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; pass the .safetensors file inside it.")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
            document = _decode_document(path, header)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()} if load_tensors else {}
    except SafetensorError as error:
        raise ModelFileError(
            f"{path} is not a headstart model file or is damaged ({_why_unreadable(path, error)}). "
            "Re-train or re-download it."
        ) from error
    except OSError as error:
        raise ModelFileError(f"cannot read the model file {path} ({error.strerror or error}).") from error
    return tensors, document


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON document of a model file, read from the header only (no tensors); raises like `read_model_file`."""
    return read_model_file(path, load_tensors=False)[1]


# ------------------------------------------------------------------------------------------------------- helpers
def _decode_document(path: Path, header: Mapping[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in header:
        raise ModelFileError(
            f"{path} is a safetensors file but not a headstart model (no {METADATA_KEY!r} metadata); "
            "if it holds backbone weights, pass it with --weights."
        )
    try:
        document = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ModelFileError(
            f"{path} has damaged headstart metadata (invalid JSON: {error}). Re-train or re-download it."
        ) from error
    version = document.get("format_version") if isinstance(document, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(
            f"{path} has damaged headstart metadata (no valid format_version). Re-train or re-download it."
        )
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer headstart (format {version}; this headstart {__version__} reads up to "
            f"format {FORMAT_VERSION}); upgrade headstart."
        )
    return document


def _why_unreadable(path: Path, error: Exception) -> str:
    """A short reason, in words, why safetensors could not parse the file."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError:
        start = b""
    if not start:
        return "the file is empty"
    if start.startswith(_PICKLE_MAGIC):
        return "it looks like a pickle or PyTorch checkpoint, which headstart never loads because it can run code"
    reason = str(error).removeprefix("Error while deserializing header: ")
    if "not fully covered" in reason or "invalid header length" in reason:
        return f"{reason}: the file looks truncated"
    return reason


def _to_json(document: Mapping[str, Any]) -> str:
    """JSON text of the metadata, or a ValueError naming the first key whose value cannot be written."""
    for key, value in document.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata keys must be strings; got {key!r} ({type(key).__name__}).")
        try:
            json.dumps(value, default=_json_default)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"metadata key {key!r} is not JSON-serialisable ({error}); pass plain str/int/float/bool/None, "
                "lists and dicts."
            ) from None
    return json.dumps(document, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    """Convert the non-JSON types callers commonly hold (numpy scalars and arrays, paths)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} {value!r:.60} is not JSON-serialisable")

