"""The self-contained headstart model file: one ``.safetensors`` file holding weights and everything needed to use them.

Layout:
    * tensors: the backbone's weights under the ``backbone.`` prefix, the classifier head as ``head.weight``
      ``(n_classes, n_features)`` and ``head.bias`` ``(n_classes,)``;
    * safetensors' ``__metadata__`` (str -> str) holds one key, ``"headstart"``, whose value is a JSON document:
      ``format_version``, ``headstart_version`` and whatever the caller passes (backbone arch name, weight source,
      preprocessing config, class names, metrics, method, ...), less what describes one run rather than the model
      (:data:`RUN_ONLY_KEYS`: times, durations, cache hits): the same inputs give a bit-identical file.

Reading never executes code: safetensors files hold only raw arrays and a JSON header. It never trusts the file
either: the header's declared length, JSON size and nesting, every tensor's dtype, shape and byte range are checked
against the file before anything is allocated (the byte level: :mod:`headstart._safetensors`), and a classifier's
metadata against its tensors before it is used (:func:`validate_classifier`; the trunk against its architecture:
:func:`headstart.models.trunk.trunk_network`). A damaged or hostile file ends in
one :class:`~headstart.errors.ModelFileError` that names it, says what is wrong and what to do.

Example:
    >>> save_model_file("pets.safetensors", {"head.weight": w, "head.bias": b}, {"class_names": ["cat", "dog"]})
    >>> tensors, metadata = read_model_file("pets.safetensors")
    >>> metadata["class_names"]
    ['cat', 'dog']
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from headstart._safetensors import MAX_HEADER_BYTES, MAX_JSON_DEPTH, is_int, parse_json, read_file, write_file
from headstart._version import __version__
from headstart.errors import ModelFileError
from headstart.features.spec import ENSEMBLE_PREFIX

__all__ = [
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_INPUT_SIDE",
    "MAX_JSON_DEPTH",
    "METADATA_KEY",
    "RUN_ONLY_KEYS",
    "looks_like_model_file",
    "model_only",
    "read_model_file",
    "read_model_metadata",
    "save_model_file",
    "validate_classifier",
]

#: Metadata keys that describe one run, not the model (when, how long, what the feature cache or a shared
#: activation bank already held, whether a progress bar showed): never written into a model file, at any depth, so
#: that training again on the same inputs writes a bit-identical file; the run folder's ``metrics.json`` keeps them.
RUN_ONLY_KEYS = frozenset(
    {
        "created",
        "seconds",
        "seconds_per_step",
        "progress",
        "features",
        "computed",
        "photo_views",
        "read_from_cache",  # (fine-tuning's frozen stages: computed, read from the cache folder, or kept in memory)
        "read_seconds",
        "reused",
    }
)
#: Version of the file layout; readers refuse files with a larger number.
FORMAT_VERSION = 1
#: The key of safetensors' ``__metadata__`` that holds headstart's JSON document.
METADATA_KEY = "headstart"
#: Input sides a model's preprocessing may ask for (timm's largest pretrained input is 800 px).
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 8, 1024
#: The most backbones an ensemble's model file may hold (each is built to read the file).
MAX_MEMBERS = 8
#: Photos are resized to ``side / crop_pct`` before the crop; no more than this.
MAX_RESIZE_SIDE = 2048

_ARCH_NAME = re.compile(r"[A-Za-z0-9_\-]{1,160}(\.[A-Za-z0-9_\-]{1,80})?")  # timm names; no hub prefix, no path
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's str_to_interp_mode
_CROP_MODES = ("center", "squash", "border")


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
            ``format_version`` and ``headstart_version`` are always set by this function; keys of
            :data:`RUN_ONLY_KEYS` are left out at any depth (they belong in a run folder).

    Returns:
        The path written.

    Raises:
        ValueError: A tensor is not a numeric array, or a metadata value is not JSON-serialisable (names the key).
    """
    document = model_only(dict(metadata))
    document.update(format_version=FORMAT_VERSION, headstart_version=__version__)
    header = {METADATA_KEY: _to_json(document)}

    return write_file(path, tensors, header)


def model_only(value: Any) -> Any:
    """``value`` without the keys of :data:`RUN_ONLY_KEYS` at any depth (a mapping they empty goes too)."""
    if isinstance(value, Mapping):
        kept = {}
        for key, item in value.items():
            if key in RUN_ONLY_KEYS:
                continue
            item = model_only(item)
            if isinstance(item, dict) and not item and isinstance(value[key], Mapping) and value[key]:
                continue
            kept[key] = item
        return kept
    if isinstance(value, (list, tuple)):
        return [model_only(item) for item in value]
    return value


def read_model_file(path: str | Path, *, load_tensors: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a headstart model file; never executes code, and allocates nothing the file does not hold.

    The safetensors header is read by hand: its declared length must fit the file and :data:`MAX_HEADER_BYTES`,
    its JSON nesting :data:`MAX_JSON_DEPTH` (checked before parsing), and every tensor's dtype, shape and byte
    range must agree with each other and with the file's size before a byte of tensor data is read.

    Args:
        path: The ``.safetensors`` model file.
        load_tensors: False to read only the header (fast; the tensors dict comes back empty).

    Returns:
        ``(tensors, metadata)``: name -> numpy array, and the decoded JSON document.

    Raises:
        ModelFileError: The file is missing, damaged, not a headstart model, or from a newer headstart.

    Example:
        >>> tensors, metadata = read_model_file("pets.safetensors")
        >>> tensors["head.weight"].shape, metadata["format_version"]
        ((12, 1280), 1)
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no model file at {path}: train one with `headstart train DATA --out {path}`.")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; pass the .safetensors file inside it.")
    if not path.is_file():  # a device or a pipe: reading it could block or never end
        raise ModelFileError(f"{path} is not a regular file (a device or a pipe); pass a .safetensors model file.")
    try:
        tensors, header = read_file(path, load_tensors=load_tensors)
    except OSError as error:
        raise ModelFileError(f"cannot read the model file {path} ({error.strerror or error}).") from error
    return tensors, _decode_document(path, header)


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON document of a model file, read from the header only (no tensors); raises like `read_model_file`."""
    return read_model_file(path, load_tensors=False)[1]


def _decode_document(path: Path, header: Mapping[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in header:
        raise ModelFileError(
            f"{path} is a safetensors file but not a headstart model (no {METADATA_KEY!r} metadata); "
            "if it holds backbone weights, pass it with --weights."
        )
    try:
        document = parse_json(header[METADATA_KEY].encode("utf-8", "surrogatepass"))
    except ValueError as error:  # (JSONDecodeError, numbers of more than 4,300 digits, nesting)
        raise ModelFileError(
            f"{path} has damaged headstart metadata (invalid JSON: {str(error)[:200]}). Re-train or re-download it."
        ) from None
    version = document.get("format_version") if isinstance(document, dict) else None
    if not is_int(version) or version < 1:
        raise ModelFileError(
            f"{path} has damaged headstart metadata (no valid format_version). Re-train or re-download it."
        )
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer headstart (format {version}; this headstart {__version__} reads up to "
            f"format {FORMAT_VERSION}); upgrade headstart."
        )
    return document


# ------------------------------------------------------------------------------------- a classifier's metadata
def validate_classifier(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], document: Mapping[str, Any]
) -> None:
    """Check a classifier's metadata against its tensors before anything uses them: one place, every rule.

    - ``classes``: a list of unique, non-empty strings, one per row of ``head.weight``;
    - ``head.weight`` ``(n_classes, num_features)`` and ``head.bias`` ``(n_classes,)``: float32, finite;
    - ``backbone``: a timm architecture name (no hub prefix, no path), ``num_features`` the head's width, and a
      preprocessing a photo can go through in bounded memory: ``input_size`` ``[3, H, W]`` with H, W in
      [:data:`MIN_INPUT_SIDE`, :data:`MAX_INPUT_SIDE`], ``crop_pct`` in (0, 1] resizing to at most
      :data:`MAX_RESIZE_SIDE`, ``mean``/``std`` three finite numbers (std > 0), a known interpolation and crop mode;
    - every floating trunk tensor finite; the optional ``data``/``metrics``/``estimator``/``finetune`` tables are
      tables and ``method`` is text (what the code reads from them).

    That the trunk fits the architecture is checked when the network is built (:func:`trunk_network`).

    Raises:
        ModelFileError: naming the file, what is wrong, and to re-train or re-download it.

    Example:
        >>> tensors, document = read_model_file("pets.safetensors")
        >>> validate_classifier("pets.safetensors", tensors, document)   # silent when the file is sound
    """

    def bad(problem: str) -> ModelFileError:
        return ModelFileError(f"{path} is a damaged headstart model: {problem}. Re-train or re-download it.")

    backbone, classes = document.get("backbone"), document.get("classes")
    missing = [k for k in ("backbone", "classes") if k not in document] + [
        k for k in ("head.weight", "head.bias") if k not in tensors
    ]
    if missing:
        raise ModelFileError(
            f"{path} is a headstart file without a classifier ({', '.join(map(repr, missing))} "
            "missing); pass a model written by `headstart train` or ImageClassifier.save."
        )
    weight, bias = tensors["head.weight"], tensors["head.bias"]
    if weight.dtype != np.float32 or weight.ndim != 2 or bias.dtype != np.float32 or bias.shape != (len(weight),):
        raise bad(
            f"the head must be float32 head.weight (n_classes, num_features) and head.bias (n_classes,); "
            f"it is {weight.dtype} {weight.shape} and {bias.dtype} {bias.shape}"
        )
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c.strip() and len(c) <= 1000 for c in classes)
    ):
        raise bad(f"its class list is {_brief(classes)}; it must be a list of non-empty class names (text)")
    if len(set(classes)) != len(classes):
        twice = sorted(c for c, n in Counter(classes).items() if n > 1)[:5]
        raise bad(f"its class list names {', '.join(map(repr, twice))} more than once; class names must be unique")
    if len(classes) != len(weight):
        raise bad(f"it names {len(classes)} classes but its head has {len(weight)} rows; they must match")
    _check_backbone(backbone, weight.shape[1], bad)
    for name, array in tensors.items():
        if array.dtype.kind == "f" and (name.startswith(("head.", "backbone.")) and not np.isfinite(array).all()):
            raise bad(f"tensor {name!r} holds NaN or infinite values")
    for key in ("data", "metrics", "estimator", "finetune"):
        if document.get(key) is not None and not isinstance(document[key], dict):
            raise bad(f"its {key!r} entry is {_brief(document[key])}, not a table")
    if not isinstance((document.get("data") or {}).get("source", ""), (str, type(None))):
        raise bad("its training data's 'source' is not a path")
    if document.get("method") is not None and not isinstance(document["method"], str):
        raise bad(f"its 'method' is {_brief(document['method'])}, not text")


def _check_backbone(backbone: Any, width: int, bad: Any) -> None:
    """The ``backbone`` table of a model file (a :class:`~headstart.features.BackboneSpec` as a dict)."""
    if not isinstance(backbone, dict):
        raise bad(f"its backbone is {_brief(backbone)}, not a table")
    members = backbone.get("members")
    if members is not None:  # an ensemble: every member a sound backbone, their widths adding up to its own
        if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
            raise bad(f"its ensemble's members are {_brief(members)}; they must be a list of 2 to {MAX_MEMBERS}")
        for member in members:
            if not isinstance(member, dict) or member.get("members") is not None:
                raise bad(f"its ensemble member {_brief(member)} is not a single backbone's table")
            _check_backbone(member, member.get("num_features"), bad)
        if sum(m["num_features"] for m in members) != backbone.get("num_features"):
            raise bad("its ensemble's num_features is not the sum of its members'")
        names = "+".join(m["name"] for m in members)
        if backbone.get("name") != ENSEMBLE_PREFIX + names:
            raise bad(f"its ensemble is named {_brief(backbone.get('name'))}, not after its members ({names})")
        backbone = {**backbone, "name": members[0]["name"]}  # (the rest of its table is checked as a backbone's)
    name = backbone.get("name")
    if not isinstance(name, str) or not _ARCH_NAME.fullmatch(name):
        raise bad(
            f"its backbone name {_brief(name)} is not a timm architecture name (letters, digits, _ and -, "
            "an optional .tag; no hub prefix or path)"
        )
    for key in ("source", "weights_id"):
        if not isinstance(backbone.get(key), str):
            raise bad(f"its backbone's {key!r} is {_brief(backbone.get(key))}, not text")
    if backbone.get("num_features") != width or not is_int(backbone.get("num_features")):
        raise bad(
            f"its backbone gives {_brief(backbone.get('num_features'))}-d features but its head reads "
            f"{width}-d ones; they must match"
        )
    if not (is_int(backbone.get("num_classes", 0)) and backbone.get("num_classes", 0) >= 0):
        raise bad(f"its backbone's num_classes is {_brief(backbone.get('num_classes'))}, not a count")
    labels = backbone.get("label_names") or []
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise bad(f"its backbone's label_names are {_brief(labels)}, not a list of names")
    if not isinstance(backbone.get("flip_average", False), bool):
        raise bad(f"its backbone's flip_average is {_brief(backbone.get('flip_average'))}, not true or false")
    config = backbone.get("data_config")
    if not isinstance(config, dict):
        raise bad(f"its preprocessing (data_config) is {_brief(config)}, not a table")
    config = {k: v for k, v in config.items() if v is not None}  # (None: timm's default, as BackboneSpec reads it)
    size = config.get("input_size")
    if not (
        isinstance(size, list)
        and len(size) == 3
        and all(is_int(v) for v in size)
        and size[0] == 3
        and all(MIN_INPUT_SIDE <= v <= MAX_INPUT_SIDE for v in size[1:])
    ):
        raise bad(
            f"its input size is {_brief(size)}; it must be [3, height, width] with sides from "
            f"{MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} pixels"
        )
    crop = config.get("crop_pct", 0.875)
    if not (_is_number(crop) and 0 < crop <= 1 and max(size[1:]) / crop <= MAX_RESIZE_SIDE):
        raise bad(
            f"its crop_pct is {_brief(crop)}; it must be in (0, 1], and photos resized to at most "
            f"{MAX_RESIZE_SIDE} px before the crop (side / crop_pct)"
        )
    for key, low in (("mean", -1e3), ("std", 1e-3)):
        values = config.get(key)  # (no default: every engine normalises by the file's own mean and std)
        if not (
            isinstance(values, list) and len(values) == 3 and all(_is_number(v) and low <= v <= 1e3 for v in values)
        ):
            raise bad(
                f"its preprocessing {key} is {_brief(values)}; it must be 3 finite numbers"
                + (" from 0.001 to 1000" if key == "std" else "")
            )
    if config.get("interpolation", "bilinear") not in _INTERPOLATIONS:
        raise bad(
            f"its interpolation is {_brief(config.get('interpolation'))}, not one of {', '.join(_INTERPOLATIONS)}"
        )
    if config.get("crop_mode", "center") not in _CROP_MODES:
        raise bad(f"its crop mode is {_brief(config.get('crop_mode'))}, not one of {', '.join(_CROP_MODES)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _brief(value: Any) -> str:
    """A value as the message shows it: JSON, cut to 60 characters."""
    text = json.dumps(value, ensure_ascii=False, default=repr)  # (values of a parsed JSON document)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------------------ writing
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
