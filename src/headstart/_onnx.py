"""Shared ONNX machinery: the optional dependency check and reusable ONNX Runtime sessions."""

from __future__ import annotations

import os
from typing import Any

from headstart.errors import HeadstartError

_SESSIONS: dict[str, Any] = {}


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a clear message saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise HeadstartError(
            "ONNX export needs the onnx and onnxruntime packages: pip install 'headstart[onnx]' "
            "(or pip install onnx onnxruntime onnxscript)."
        ) from exc
    return onnx, onnxruntime


def session(path: str | os.PathLike[str], *, cached: bool = True) -> Any:
    """An ONNX Runtime CPU session for ``path`` with every graph optimisation on, built once per version of the file
    (a file rewritten since is loaded again); ``cached=False`` builds one that is not kept (a temporary file)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not cached:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    st = os.stat(path)
    version = (st.st_size, st.st_mtime_ns, st.st_ino)
    known = _SESSIONS.get(str(path))
    if known is None or known[0] != version:
        _SESSIONS[str(path)] = (version, ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    return _SESSIONS[str(path)][1]
