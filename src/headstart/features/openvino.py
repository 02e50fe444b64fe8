"""The OpenVINO engine: the backbone's embedding converted once, run on the CPU at its fastest faithful precision.

Measured on 2 cores (tf_efficientnet_lite0, batch 32, model only): torch fp32 21 img/s, torch bf16 + channels-last
76, OpenVINO fp32 154, OpenVINO bf16 290 (features at cosine >= 0.998 to torch fp32), OpenVINO int8 (NNCF) 461 (>=
0.98 on photos unlike its calibration ones; :func:`_quantised`). docs/BENCHMARKS.md has the current figures. So
``engine="auto"`` is OpenVINO on a CPU where it is installed, and ``precision="auto"`` bf16 where the CPU computes
bf16 natively (AVX512-BF16 / AMX), fp32 elsewhere.

What is converted, and where: the pooled single-view embedding (``forward_head(forward_features(x),
pre_logits=True)``, :meth:`Backbone.features`) with a uint8 ``NHWC`` input and the ``/255``, mean/std normalisation
inside the graph, saved as OpenVINO IR in the per-machine store (:func:`~headstart._io.engine_dir`, shared by every
cache folder) as ``<fingerprint>.openvino-<kind>.xml`` (+ ``.bin``, written atomically, the ``.xml`` last); the
conversion is announced on stderr with its time. Running it (compiled once a process, synchronous for a few photos,
an async queue sized by measurement for many) is :mod:`headstart.features.openvino_runtime`. Its name holds the backbone's fingerprint (architecture, exact weights,
preprocessing), so a fine-tuned trunk gets its own. Once it is there, a run needs neither torch nor timm: photos are
decoded and cropped in PIL + numpy (:mod:`headstart.features.preprocess`, the same pixels as timm's transform) and
the compiled model is kept for the rest of the process.

Cache keys. Features are cached under the precision's name whatever the engine: OpenVINO fp32 and bf16 features are
within cosine 0.99 of PyTorch's at the same precision (measured >= 0.999 on the bundled sample), so a cache built
by one engine serves the other. int8 features are not (>= 0.97 to fp32): they have their own key,
:data:`INT8_PRECISION`, and their own calibration (the bundled sample's photos, so every machine gets the same
quantised model).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headstart._console import say
from headstart._io import engine_dir
from headstart._validation import ParameterError, check_choice
from headstart.features.backbones import Backbone, BackboneSpec
from headstart.features.openvino_runtime import OpenVinoRunner, rows_fitting_memory, save_ir
from headstart.features.preprocess import supports, uint8_crop

__all__ = ["INT8_PRECISION", "available", "converted_path", "openvino_embedder", "resolve_engine"]

#: The cache key's precision name for int8 features (beyond the 0.99 tolerance of fp32, so never mixed with them).
INT8_PRECISION = "openvino-int8-3"  # (-3: the recipe of _quantised; the features of earlier ones differ)

#: Precisions the OpenVINO engine computes in.
OPENVINO_PRECISIONS = ("auto", "fp32", "bf16", "int8")


def available() -> bool:
    """Whether the ``openvino`` package is installed (found without importing it: that costs ~0.3 s)."""
    return importlib.util.find_spec("openvino") is not None


def resolve_engine(engine: str, precision: str, device: str, spec: BackboneSpec | None = None) -> tuple[str, str]:
    """``(engine, precision)`` to run, for a ``precision`` already resolved (``auto`` -> bf16 on CPUs with native
    bf16, else fp32, by :func:`~headstart.features.extract.extract_features`): ``auto`` is OpenVINO on a CPU when it
    is installed and reproduces the spec's preprocessing, else torch (always torch on CUDA); ``int8`` (OpenVINO only)
    becomes :data:`INT8_PRECISION`.

    Example:
        >>> resolve_engine("auto", "bf16", "cpu")
        ('openvino', 'bf16')
    """
    if engine == "auto":
        usable = device == "cpu" and available() and (spec is None or supports(spec) is None)
        engine = "openvino" if usable or precision == "int8" else "torch"
    if engine != "openvino":
        if precision == "int8":
            raise ParameterError(
                "The 'precision' parameter 'int8' runs in the OpenVINO engine only: add --engine "
                "openvino (`pip install openvino nncf`), or use fp32 or bf16.",
                "precision",
            )
        return engine, precision
    if device != "cpu":
        raise ParameterError(
            f"The 'engine' parameter 'openvino' runs on the CPU only, not on {device!r}: use "
            "--engine torch (or auto) with --device cuda.",
            "engine",
        )
    check_choice(precision, "precision", "extract_features", OPENVINO_PRECISIONS)
    if not available():
        raise ParameterError(
            "The 'engine' parameter 'openvino' needs the openvino package: `pip install openvino`"
            " (or use --engine torch).",
            "engine",
        )
    if spec is not None and supports(spec) is not None:
        raise ParameterError(
            f"The OpenVINO engine does not reproduce {spec.name}'s preprocessing "
            f"({supports(spec)}): use --engine torch.",
            "engine",
        )
    return engine, INT8_PRECISION if precision == "int8" else precision


def converted_path(spec: BackboneSpec, precision: str) -> Path:
    """Where the converted embedding of ``spec`` lives: one float model (fp32 and bf16 are compile-time choices)
    and one int8 model a backbone (``int8-3``: the third recipe, :func:`_quantised`)."""
    kind = "int8-3" if precision == INT8_PRECISION else "u8"
    return engine_dir() / f"{spec.with_flip_average(False).fingerprint}.openvino-{kind}.xml"


def openvino_embedder(
    spec: BackboneSpec, precision: str, load: Callable[[], Backbone], *, throughput: bool = False
) -> OpenVinoRunner:
    """The converted embedding of ``spec`` ready to run: ``runner.embed(crops, [(i, view), ...])`` gives one row a
    pair, the single-view features of uint8 crop ``crops[i]`` (``(n, size, size, 3)``) as it is (``"orig"``) or
    mirrored (``"mirror"``); with ``throughput``, ``submit``/``ready``/``drain`` run many photos asynchronously
    (:class:`~headstart.features.openvino_runtime.OpenVinoRunner`). ``load`` builds the torch backbone, called only
    when the converted model is not in the per-machine store yet.

    Example:
        >>> runner = openvino_embedder(spec, "bf16", lambda: load_backbone("tf_efficientnet_lite0"))
        >>> runner.embed(np.zeros((2, 224, 224, 3), np.uint8), [(0, "orig"), (1, "mirror")]).shape
        (2, 1280)
    """
    path = converted_path(spec, precision)
    hint = "bf16" if precision == "bf16" else "f32"
    size = int(spec.data_config["input_size"][-1])
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        _convert_announced(load, path, spec, precision)
    options = {"throughput": throughput, "size": size, "rows_at_once": rows_fitting_memory(size)}
    try:
        return OpenVinoRunner(path, hint, **options)
    except RuntimeError:  # a damaged copy (a disk filled up, a hand edit): converted again
        _convert_announced(load, path, spec, precision)
        return OpenVinoRunner(path, hint, **options)


def _convert_announced(load: Callable[[], Backbone], path: Path, spec: BackboneSpec, precision: str) -> None:
    """Convert (once a machine), saying so on stderr with the time it took: the one slow step of a first run."""
    start = time.perf_counter()
    kind = "int8 (NNCF-quantised)" if precision == INT8_PRECISION else "uint8-input"
    say(f"Converting {spec.name} to OpenVINO, {kind} (once per machine, kept in {path.parent}) ...")
    # (only a network holding the weights the fingerprint names is converted under it)
    _convert(load().check_weights(spec.trunk_sha256), path, int8=precision == INT8_PRECISION)
    say(f"Converted {spec.name} in {time.perf_counter() - start:.1f} s")


def _convert(backbone: Backbone, path: Path, *, int8: bool) -> None:
    """Convert the backbone's single-view embedding to IR with uint8 NHWC input (normalised in the graph), int8
    quantised by NNCF when asked, and save it atomically (the weights first, the ``.xml`` that names them last)."""
    import warnings

    import openvino
    import torch

    spec = backbone.spec
    size = int(spec.data_config["input_size"][-1])
    module = (
        backbone.with_flip_average(False).embedding_module().eval().float().to(memory_format=torch.contiguous_format)
    )
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.jit.trace's deprecation notes: nothing a user can act on)
        model = openvino.convert_model(module, example_input=torch.zeros(1, 3, size, size))
    model.reshape({model.inputs[0]: openvino.PartialShape([-1, 3, size, size])})
    ppp = openvino.preprocess.PrePostProcessor(model)
    ppp.input().tensor().set_element_type(openvino.Type.u8).set_layout(openvino.Layout("NHWC"))
    ppp.input().model().set_layout(openvino.Layout("NCHW"))
    mean = [255.0 * float(m) for m in spec.data_config["mean"]]
    std = [255.0 * float(s) for s in spec.data_config["std"]]
    ppp.input().preprocess().convert_element_type(openvino.Type.f32).mean(mean).scale(std)
    model = ppp.build()
    if int8:
        model = _quantised(model, spec)
    save_ir(model, path)


def _quantised(model: Any, spec: BackboneSpec) -> Any:
    """NNCF post-training int8 quantisation, calibrated on the bundled sample's photos and their mirror images
    (fixed, so the int8 features of a photo are the same on every machine)."""
    try:
        import nncf
    except ImportError as exc:
        raise ParameterError(
            "The 'precision' parameter 'int8' needs the nncf package: `pip install nncf`.", "precision"
        ) from exc
    from headstart.data.images import list_image_files, load_image

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "pets"
    crops = [uint8_crop(load_image(p), spec) for p in list_image_files(sample)[0]]
    crops += [c[:, ::-1] for c in crops]
    dataset = nncf.Dataset([np.ascontiguousarray(c[None]) for c in crops])
    # The first convolution stays in floating point: it sees the raw pixels, and quantising it costs the most; and
    # NNCF's full bias correction, not its fast one. Measured on 287 photos unlike the calibration ones (200 full-size
    # cats and dogs, 87 pets), cosine to fp32 features: everything int8 mean 0.9936, min 0.9545 (3 below 0.97); the
    # first convolution kept mean 0.9962, min 0.9827, at the same speed (it is 3% of the FLOPs); with full bias
    # correction too mean 0.9977, min 0.9913 (the conversion, once a backbone, takes 1.5x as long: about a minute).
    first = next(op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution")
    with contextlib.redirect_stdout(sys.stderr):  # (NNCF's progress bars: never into a command's JSON output)
        return nncf.quantize(
            model,
            dataset,
            subset_size=len(crops),
            fast_bias_correction=False,
            ignored_scope=nncf.IgnoredScope(names=[first]),
        )
