"""Reading and writing safetensors files without trusting them: the byte-level layer under the model file.

A safetensors file is 8 bytes (the JSON header's length, little-endian), the JSON header (each tensor's dtype,
shape and byte range; ``__metadata__``, a table of texts) and the tensor bytes. :func:`read_file` checks the
declared length against the file and :data:`MAX_HEADER_BYTES`, the JSON nesting against :data:`MAX_JSON_DEPTH`
(before parsing), and every tensor's dtype, shape and byte range against each other and the file's size before a
byte of tensor data is read; a pickle or a PyTorch checkpoint is refused by its first bytes. Nothing is executed.
A damaged file ends in one :class:`~headstart.errors.ModelFileError` naming it and the problem.

:mod:`headstart.models.modelfile` builds the headstart model file (its JSON document, its classifier checks) on
top of this.

Example:
    >>> write_file("t.safetensors", {"w": np.zeros((2, 3), np.float32)}, {"note": "hi"})
    >>> tensors, metadata = read_file(Path("t.safetensors"))
    >>> tensors["w"].shape, metadata
    ((2, 3), {'note': 'hi'})
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from headstart._io import write_bytes_atomic
from headstart.errors import ModelFileError

__all__ = ["DTYPES", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "is_int", "parse_json", "read_file", "write_file"]

#: The largest JSON header a model file may declare (a real one is 10-50 KB; 16 MB holds 100,000 class names).
MAX_HEADER_BYTES = 16 << 20
#: The deepest nesting of ``[`` and ``{`` the header or the metadata may have (real files: 5), checked before parsing.
MAX_JSON_DEPTH = 64
#: safetensors' dtype names -> numpy's (the ones headstart reads).
DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; zip (torch.save since 1.6)
_Entry = tuple  # (numpy dtype, shape, begin, end) of one tensor in the file


def write_file(path: str | os.PathLike[str], tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """Write numeric arrays and a table of texts as a safetensors file, atomically (``_io.write_bytes_atomic``).

    Raises:
        ValueError: a tensor name is not text, or a tensor is not a numeric array (names it).
    """
    from safetensors.numpy import save

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
    path = Path(path)
    write_bytes_atomic(path, save(arrays, metadata=dict(metadata)))  # (not save_file: the umask's permissions)
    return path


def read_file(path: Path, *, load_tensors: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file: name -> numpy array (empty unless ``load_tensors``), and
    the header's ``__metadata__``; everything checked against the file before it is allocated.

    Raises:
        ModelFileError: the file is damaged, truncated, or a pickle (names it and the problem).
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        entries, metadata, start = _read_header(path, handle, os.fstat(handle.fileno()).st_size)
        tensors = (
            {name: _read_tensor(path, handle, start, *entry) for name, entry in entries.items()} if load_tensors else {}
        )
    return tensors, metadata


# ------------------------------------------------------------------------------------------------ reading bytes
def _damaged(path: Path, reason: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a headstart model file or is damaged ({reason}). Re-train or re-download it.")


def _read_header(path: Path, handle: IO[bytes], size: int) -> tuple[dict[str, _Entry], dict[str, str], int]:
    """``(tensors, metadata, data start)``: name -> (dtype, shape, begin, end), the header's ``__metadata__``, and
    where the tensor data starts; everything checked against the file's ``size``."""
    start = handle.read(8)
    if not start:
        raise _damaged(path, "the file is empty")
    # The first 8 bytes are the header's length, little-endian: its low byte can be 0x80 like a pickle's first byte,
    # so a file is called a pickle only when it does not also read as a safetensors file (a length that fits, '{').
    fits = len(start) == 8 and 8 + struct.unpack("<Q", start)[0] <= size
    if start.startswith(_PICKLE_MAGIC) and not (fits and handle.read(1) == b"{"):
        raise _damaged(
            path, "it looks like a pickle or PyTorch checkpoint, which headstart never loads because it can run code"
        )
    handle.seek(8 if len(start) == 8 else len(start))
    if len(start) < 8:
        raise _damaged(
            path, f"it has only {size} bytes, fewer than a safetensors header's length field: the file looks truncated"
        )
    (length,) = struct.unpack("<Q", start)
    if length > MAX_HEADER_BYTES:
        raise _damaged(
            path,
            f"header too large: it declares {length:,} bytes of header, a model file has at most {MAX_HEADER_BYTES:,}",
        )
    if 8 + length > size:
        raise _damaged(
            path, f"its header declares {length:,} bytes but only {size - 8:,} follow: the file looks truncated"
        )
    raw = handle.read(length)
    if len(raw) != length:
        raise _damaged(path, "the file changed while it was read")
    try:
        header = parse_json(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise _damaged(path, f"invalid JSON header: {error}") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _damaged(path, "its __metadata__ is not a table of texts")
    entries, spans = {}, []
    for name, entry in header.items():
        entries[name] = _tensor_entry(path, name, entry)
        spans.append((entries[name][2], entries[name][3], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise _damaged(
                path,
                f"tensor {name!r} starts at byte {begin:,} of the data, not at {end:,}: its byte "
                "ranges overlap or leave gaps",
            )
        end = stop
    held = size - 8 - length
    if end > held:
        raise _damaged(
            path, f"its tensors need {end:,} bytes of data but the file holds {held:,}: the file looks truncated"
        )
    if end < held:
        raise _damaged(
            path, f"{held - end:,} bytes follow the last tensor: the file is damaged or two files were joined"
        )
    return entries, metadata, 8 + length


def _tensor_entry(path: Path, name: str, entry: Any) -> _Entry:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _damaged(path, f"tensor {name!r} is not described by dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise _damaged(path, f"tensor {name!r} has dtype {str(dtype)[:20]!r}; headstart reads {', '.join(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(is_int(d) and d >= 0 for d in shape):
        raise _damaged(path, f"tensor {name!r} has shape {str(shape)[:60]}, not a list of at most 8 sizes >= 0")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _damaged(
            path, f"tensor {name!r} has data_offsets {str(offsets)[:60]}, not [begin, end] with 0 <= begin <= end"
        )
    numpy_dtype = np.dtype(DTYPES[dtype])
    needed = math.prod(shape) * numpy_dtype.itemsize
    if offsets[1] - offsets[0] != needed:
        raise _damaged(
            path,
            f"tensor {name!r} of shape {shape} ({dtype}) needs {needed:,} bytes but its byte range "
            f"holds {offsets[1] - offsets[0]:,}",
        )
    return numpy_dtype, tuple(shape), offsets[0], offsets[1]


def _read_tensor(
    path: Path, handle: IO[bytes], start: int, dtype: np.dtype, shape: tuple[int, ...], begin: int, end: int
) -> np.ndarray:
    buffer = bytearray(end - begin)  # (the header was checked against the file size: this many bytes are there)
    handle.seek(start + begin)
    if handle.readinto(buffer) != len(buffer):
        raise _damaged(path, "the file changed while it was read")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_depth(data: bytes) -> int:
    """How deep ``[``/``{`` nest in the JSON ``data`` (brackets inside strings skipped), found without parsing it:
    linear numpy passes over the bytes (a quote is a string's edge unless an odd run of backslashes precedes it)."""
    codes = np.frombuffer(data, dtype=np.uint8)
    if not codes.size:
        return 0
    index = np.arange(codes.size, dtype=np.int32)
    last_plain = np.maximum.accumulate(np.where(codes == 92, -1, index))  # the last byte <= i that is not "\\"
    del index
    quotes = np.flatnonzero(codes == 34)
    escapes = quotes - 1 - np.where(quotes > 0, last_plain[np.maximum(quotes - 1, 0)], -1)
    del last_plain
    edges = np.zeros(codes.size, dtype=np.int8)
    edges[quotes[escapes % 2 == 0]] = 1
    outside = (np.cumsum(edges, dtype=np.int32) & 1) == 0
    del edges
    steps = ((codes == 91) | (codes == 123)).astype(np.int8) - ((codes == 93) | (codes == 125))
    return int(np.cumsum(np.where(outside, steps, 0), dtype=np.int32).max(initial=0))


def parse_json(data: bytes) -> Any:
    """``json.loads`` once the nesting is known to be shallow (deep nesting is a RecursionError, or worse)."""
    depth = _json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested {depth:,} deep, more than the {MAX_JSON_DEPTH} a model file may have")
    return json.loads(data.decode("utf-8", "surrogatepass"))  # (64 levels: far from a RecursionError)
