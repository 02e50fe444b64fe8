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


def session(path: str | os.PathLike[str]) -> Any:
    """An ONNX Runtime CPU session for ``path`` with every graph optimisation on, built once per path."""
    _, ort = require_onnx()
    key = str(path)
    if key not in _SESSIONS:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        _SESSIONS[key] = ort.InferenceSession(key, options, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]
