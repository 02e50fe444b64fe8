"""Any frozen part of a network on the fast CPU engine: converted to OpenVINO once a machine, then inference only.

Fine-tuning that trains only the last stages runs the stages before them as pure inference (the frozen prefix of
:mod:`headstart.models.finetune.frozen`). In torch on a CPU that is the slowest part of a fine-tune; OpenVINO runs the
same network several times faster (bf16 where the CPU computes it natively, as extraction does). The module is
converted with a dynamic batch and saved in the per-machine store (:func:`~headstart._io.engine_dir`) under a name
the caller keys by content (the backbone's fingerprint, which hashes the trunk tensors, and where the network is
cut), so a later run, another cache folder or another process reuses it.

Example:
    >>> run = frozen_runner(prefix, key=f"{spec.fingerprint}-blocks.6", input_shape=(3, 224, 224), precision="bf16")
    >>> run(np.zeros((8, 3, 224, 224), np.float32)).shape
    (8, 192, 7, 7)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headstart._console import say
from headstart._io import engine_dir
from headstart.features.openvino_runtime import compiled_model, save_ir

__all__ = ["frozen_module_path", "frozen_runner"]


def frozen_module_path(key: str) -> Path:
    """Where the module keyed ``key`` is kept (``.xml`` and ``.bin``) in the per-machine store."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return engine_dir() / "frozen" / f"{digest}.xml"


def frozen_runner(
    module: Any,
    *,
    key: str,
    input_shape: tuple[int, int, int],
    precision: str,
    progress: bool = True,
    threads: int | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """``run(x)``: ``module(x)`` for a float32 batch ``(n, *input_shape)``, on OpenVINO (converted on first use,
    announced with its time) with ``threads`` threads (None: one a core). ``precision``: ``bf16`` (where native;
    else fp32) or ``fp32``. Raises whatever the conversion raises (the caller falls back to torch)."""
    path = frozen_module_path(f"{key}|{tuple(input_shape)}")
    if not (path.is_file() and path.with_suffix(".bin").is_file()):
        started = time.perf_counter()
        _convert(module, path, input_shape)
        if progress:
            say(f"Converted the frozen stages to OpenVINO in {time.perf_counter() - started:.1f} s (once per machine)")
    compiled = compiled_model(str(path), "bf16" if precision == "bf16" else "f32", "LATENCY", threads)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()

    return run


def _convert(module: Any, path: Path, input_shape: tuple[int, int, int]) -> None:
    """Trace ``module`` (eval mode, fp32) into OpenVINO IR with a dynamic batch; save it atomically (the weights
    first, the ``.xml`` that names them last)."""
    import warnings

    import openvino
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.jit.trace's deprecation notes: nothing a user can act on)
        model = openvino.convert_model(module.eval(), example_input=torch.zeros(1, *input_shape))
    model.reshape({model.inputs[0]: openvino.PartialShape([-1, *input_shape])})
    save_ir(model, path)
