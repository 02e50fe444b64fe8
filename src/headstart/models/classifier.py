"""A trained headstart classifier: a backbone, a linear head over its features, and the class names.

Linear probes and fine-tuned networks are the same object: the probe keeps the pretrained trunk (so its features
come from the shared cache), fine-tuning stores changed trunk weights. Both live in one self-contained
safetensors file (:mod:`headstart.models.modelfile`) that loads without a network and never executes code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._math import linear_probabilities
from headstart._validation import check_int
from headstart.data import DEFAULT_MAX_PIXELS, UnusableFile, walk_images
from headstart.errors import ModelFileError
from headstart.features import Backbone, BackboneSpec
from headstart.models.modelfile import read_model_file, save_model_file, validate_classifier
from headstart.models.trunk import trunk_network

if TYPE_CHECKING:
    import torch

    from headstart.features import FeatureCache, Features


@dataclass(frozen=True)
class Prediction:
    """Top-k labels for one image."""

    path: Path
    labels: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "predictions": _ranked(self.labels, self.probabilities),
        }


def _ranked(labels: list[str], probabilities: list[float]) -> list[dict[str, Any]]:
    from headstart.features.pipeline import ranked  # (the pipeline's module: imported when something is predicted)

    return ranked(labels, probabilities)


@dataclass
class Predictions:
    """What :meth:`Classifier.predict` returns: one :class:`Prediction` per usable image, and the skipped files."""

    predictions: list[Prediction]
    unusable: list[UnusableFile] = field(default_factory=list)

    def to_list(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.predictions]


class Classifier:
    """Backbone + linear head (``softmax(features @ head_weight.T + head_bias)``) + class names.

    Args:
        spec: the backbone whose features the head reads (architecture, weights identity, preprocessing).
        classes: class names, in the order of the head's rows.
        head_weight: ``(n_classes, num_features)``.
        head_bias: ``(n_classes,)``.
        trunk: the backbone's weights (no pretrained head) as numpy arrays, so the file is self-contained.
        metadata: anything else worth keeping (method, metrics, training data).

    Example:
        >>> model = Classifier.load("pets.safetensors")
        >>> model.classes[:2], model.predict(["my_cat.jpg"], top_k=1).predictions[0].labels
        (['Abyssinian', 'Bengal'], ['Bengal'])
    """

    def __init__(
        self,
        spec: BackboneSpec,
        classes: Sequence[str],
        head_weight: np.ndarray,
        head_bias: np.ndarray,
        trunk: Mapping[str, np.ndarray],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.classes = list(classes)
        self.head_weight = np.asarray(head_weight, dtype=np.float32)
        self.head_bias = np.asarray(head_bias, dtype=np.float32)
        self.trunk = dict(trunk)
        # The cache key is the trunk's content, hashed here from the tensors themselves: whatever the spec claims.
        try:  # (an ensemble's members each by their own part of the trunk)
            self.spec = spec.with_trunk(self.trunk)
        except ValueError as exc:
            raise ModelFileError(f"{(metadata and dict(metadata).get('path')) or 'This model'}: {exc}") from None
        self.metadata = dict(metadata or {})
        self._backbone: Backbone | None = None
        if self.head_weight.shape != (len(self.classes), spec.num_features) or self.head_bias.shape != (
            len(self.classes),
        ):
            raise ValueError(
                f"The head must be ({len(self.classes)}, {spec.num_features}) + ({len(self.classes)},) for "
                f"{len(self.classes)} classes over {spec.num_features}-d features; got {self.head_weight.shape} "
                f"and {self.head_bias.shape}."
            )

    # ------------------------------------------------------------------------------------------------ file I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained model file (atomic)."""
        tensors = {f"backbone.{k}": v for k, v in self.trunk.items()}
        tensors["head.weight"] = self.head_weight
        tensors["head.bias"] = self.head_bias
        meta = {**self.metadata, "backbone": self.spec.to_dict(), "classes": self.classes}
        return save_model_file(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Classifier:
        """Read a model file written by :meth:`save` (no network, no code execution): the model object only, what
        ``serve``, ``export`` and the attacks run. To use a model from Python, :func:`headstart.load` is the loader:
        it gives the fitted estimator (``.model_`` is this object)."""
        tensors, meta = read_model_file(path)
        validate_classifier(path, tensors, meta)  # (every malformed file ends here, as one ModelFileError)
        try:
            spec = BackboneSpec.from_dict(meta["backbone"])
            classes = meta["classes"]
            weight, bias = tensors["head.weight"], tensors["head.bias"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path} is a headstart file without a classifier ({exc} missing).") from exc
        trunk = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
        rest = {k: v for k, v in meta.items() if k not in ("backbone", "classes")}
        model = cls(spec, classes, weight, bias, trunk, {**rest, "path": str(path)})
        check_trunk_claims(path, meta["backbone"], model.spec, trunk)
        model.metadata["path"] = str(path)
        return model

    # -------------------------------------------------------------------------------------------- the network
    @property
    def backbone(self) -> Backbone:
        """The trunk as a timm model (built on first use from the weights in the file)."""
        if self._backbone is None:
            model = trunk_network(self.spec, self.trunk, self.metadata.get("path"))  # (checked: ModelFileError)
            self._backbone = Backbone(model, self.spec)
        return self._backbone

    def torch_module(self):
        """The whole classifier as one ``torch.nn.Module`` mapping normalised images to logits (``.features(x)``
        gives the embedding, mirror-averaged when the model is; ``.head`` the linear layer), in eval mode."""
        return trunk_and_head(
            self.backbone, len(self.classes), head_weight=self.head_weight, head_bias=self.head_bias
        ).eval()

    @classmethod
    def from_network(
        cls, network: Any, spec: BackboneSpec, classes: Sequence[str], metadata: Mapping[str, Any] | None = None
    ) -> Classifier:
        """A trained :func:`trunk_and_head` network as a Classifier: its trunk weights go into the file, and the
        spec gets a fingerprint of them (features of a changed trunk never mix with the pretrained one's)."""
        trunk = {
            k: np.ascontiguousarray(v.detach().float().cpu().numpy())
            if v.is_floating_point()
            else v.detach().cpu().numpy()
            for k, v in network.trunk.state_dict().items()
        }
        spec_dict = spec.to_dict()
        spec_dict["weights_id"] = trunk_fingerprint(trunk)
        spec_dict["source"] = f"fine-tuned from {spec.source}"
        weight = network.head.weight.detach().float().cpu().numpy()
        bias = network.head.bias.detach().float().cpu().numpy()
        return cls(BackboneSpec.from_dict(spec_dict), classes, weight, bias, trunk, metadata)

    # ----------------------------------------------------------------------------------------------- inference
    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.head_weight.T + self.head_bias

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (float32) for precomputed features ``(n, num_features)`` → ``(n, n_classes)``.

        Nothing non-finite leaves here: NaN or infinite features are refused, and scores are computed where they
        fit (:meth:`logits`), so the probabilities are finite.

        Raises:
            ValueError: a row of ``features`` holds NaN or infinite values (:func:`extract_features` never gives one).
            ModelFileError: the head still gives non-finite scores (a damaged model file).
        """
        x = np.asarray(features, dtype=np.float32)
        broken = np.flatnonzero(~np.isfinite(x).all(axis=1)) if x.ndim == 2 else np.arange(len(x))
        if broken.size:
            raise ValueError(
                f"Feature rows {broken[:5].tolist()} hold NaN or infinite values: pass the features "
                "extract_features gives (it skips and reports photos whose features are not finite)."
            )
        probabilities = linear_probabilities(x, self.head_weight, self.head_bias)  # (float64 where float32 overflows)
        if not np.isfinite(probabilities).all():
            raise ModelFileError(
                f"{self.metadata.get('path', 'This model')}: its head gives NaN or infinite class scores (its weights "
                f"reach {np.abs(self.head_weight).max():.3g}): the file is damaged; re-train or re-download it."
            )
        return probabilities

    def features(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        cache: FeatureCache | None = None,
        precision: str = "auto",
        batch_size: int = 32,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        progress: bool = False,
        engine: str = "auto",
    ) -> Features:
        """Features of ``paths`` from this model's backbone (cached under its fingerprint)."""
        from headstart.features.extract import extract_features

        source: Any = self._backbone_source()
        return extract_features(
            paths,
            source,
            cache=cache,
            precision=precision,
            batch_size=batch_size,
            max_pixels=max_pixels,
            progress=progress,
            engine=engine,
        )

    def _backbone_source(self) -> Any:
        """Something :func:`extract_features` accepts: a lazy backbone that only builds when features are missing."""
        return _LazyBackbone(self)

    def predict(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        top_k: int = 5,
        cache: FeatureCache | None = None,
        precision: str = "auto",
        progress: bool = False,
        engine: str = "auto",
    ) -> Predictions:
        """Top-k labels with probabilities for images or folders of images, in the order given (for any number
        of photos without holding them all, :meth:`iter_predict`).

        Example:
            >>> model = Classifier.load("pets.safetensors")
            >>> model.predict(["my_cat.jpg"], top_k=3).to_list()[0]["predictions"][0]
            {'label': 'Bengal', 'probability': 0.91}
        """
        files = expand_paths(paths)
        order = {str(f): i for i, f in enumerate(files)}
        found: list[Prediction] = []
        unusable: list[UnusableFile] = []
        options = {"cache": cache, "precision": precision, "progress": progress, "engine": engine}
        for item in self.iter_predict(files, top_k=top_k, chunk=max(1, len(files)), **options):
            (found if isinstance(item, Prediction) else unusable).append(item)
        found.sort(key=lambda p: order[str(p.path)])
        unusable.sort(key=lambda u: order.get(str(u.path), 0))
        return Predictions(found, unusable)

    def iter_predict(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        top_k: int = 5,
        cache: FeatureCache | None = None,
        precision: str = "auto",
        progress: bool = False,
        engine: str = "auto",
        chunk: int = 1024,
    ) -> Iterator[Prediction | UnusableFile]:
        """Top-k labels of each photo (and each unusable file) as soon as it is known, in memory bounded by
        ``chunk`` photos: folders are walked lazily, photos the cache has come first in each chunk.

        Example:
            >>> for p in Classifier.load("pets.safetensors").iter_predict(["photos/"], top_k=1):
            ...     print(p.to_dict())
        """
        from headstart.features.pipeline import top_k as best

        check_int(top_k, "top_k", "predict", low=1)
        options = {"cache": cache, "precision": precision, "progress": progress, "engine": engine, "chunk": chunk}
        for part, indices, proba, unusable in self.iter_probabilities(iter_paths(paths), **options):
            for row, index in zip(proba, indices):
                labels = best(row, self.classes, top_k)
                yield Prediction(part[int(index)], [l for l, _ in labels], [p for _, p in labels])
            yield from unusable

    def iter_probabilities(
        self, paths: Iterable[str | os.PathLike[str]], *, chunk: int = 1024, **options: Any
    ) -> Iterator[tuple[list[Path], np.ndarray, np.ndarray, list[UnusableFile]]]:
        """``(a chunk's paths, indices into it, their probabilities, the chunk's unusable files)`` as they come:
        each chunk's cached photos first (:func:`~headstart.features.stream.iter_features`); ``options`` as for
        :meth:`features` (cache, precision, max_pixels, progress, engine)."""
        from headstart.features.stream import iter_features

        for part, feats in iter_features(paths, self._backbone_source(), chunk=chunk, **options):
            yield part, feats.indices, self.predict_proba_features(feats.features), feats.unusable
            del feats  # (before the next chunk is read: one chunk's features at a time)

    def __repr__(self) -> str:
        return (
            f"Classifier({len(self.classes)} classes on {self.spec.name}, method={self.metadata.get('method', '?')!r})"
        )


class _LazyBackbone:
    """Defers building the trunk until the feature cache misses."""

    def __init__(self, model: Classifier) -> None:
        self._model = model
        self.spec = model.spec

    def load(self) -> Backbone:
        return self._model.backbone


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Images given directly, plus the images inside any folders given (sorted, recursive).

    Example:
        >>> expand_paths(["cat.jpg", "test_photos/pug"])[:2]
        [PosixPath('cat.jpg'), PosixPath('test_photos/pug/pug_102.jpg')]
    """
    return list(iter_paths(paths))


def iter_paths(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """:func:`expand_paths` lazily: a folder is walked as it is read (in :func:`list_image_files`' order), so a
    folder of 300,000 photos is never listed whole (only the folder being read is).

    Example:
        >>> next(iter_paths(["test_photos/"]))
        PosixPath('test_photos/Bengal/Bengal_101.jpg')
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from walk_images(p, text_order=False)  # (one folder's names held at a time, packed)
        else:
            yield p


def check_trunk_claims(
    path: str | os.PathLike[str], claims: Mapping[str, Any], spec: BackboneSpec, trunk: Mapping[str, np.ndarray]
) -> None:
    """Check what a model file's metadata says its trunk is against the tensors it holds (``spec``: the spec with
    their :func:`~headstart.features.trunk_sha256`): the content hash it records, a fine-tuned trunk's own hash, or
    the pretrained weights it names (an offline package of the installed version, hub weights used here before);
    an ensemble's claims member by member.

    Features are keyed by ``actual`` whatever the outcome, so a file that lies never reads nor writes the genuine
    weights' cache entries; this check makes the lie one clear error instead of a silently different model.

    Raises:
        ModelFileError: the trunk is not what the metadata names (altered or damaged file).
    """
    from headstart.features import known_trunk_sha256
    from headstart.features.spec import member_trunks

    actual = spec.trunk_sha256
    if spec.members:
        listed = claims.get("members") or []
        for member, claimed, part in zip(spec.members, listed, member_trunks(trunk, len(spec.members))):
            check_trunk_claims(path, claimed, member, part)
        recorded = claims.get("trunk_sha256")
        if recorded is not None and recorded != actual:
            raise ModelFileError(
                f"{path}: its ensemble's recorded content hash {str(recorded)[:16]} is not its members' "
                f"({actual[:16]}): the file was altered or damaged; re-train or re-download it."
            )
        return
    name, weights_id = str(claims.get("name")), str(claims.get("weights_id"))
    recorded = claims.get("trunk_sha256")
    if weights_id.startswith("trunk-sha256:"):
        expected: str | None = weights_id if trunk_fingerprint(trunk) != weights_id else None
        same = expected is None
    else:
        expected = known_trunk_sha256(name, weights_id)
        same = expected is None or expected == actual
    if recorded is not None and recorded != actual:
        same, expected = False, str(recorded)
    if not same:
        raise ModelFileError(
            f"{path}: its backbone weights are not the ones its metadata names ({name}, {weights_id}): the trunk "
            f"tensors hash to {actual[:16]}, the weights named to {str(expected)[:16] or 'another architecture'}. "
            "The file was altered or damaged, and nothing was computed or cached with it; re-train or re-download it."
        )


def trunk_fingerprint(trunk: Mapping[str, np.ndarray]) -> str:
    """Identity of trunk weights changed by fine-tuning: a hash of every array's name and bytes."""
    h = hashlib.sha256()
    for k in sorted(trunk):
        h.update(k.encode())
        h.update(np.ascontiguousarray(trunk[k]).tobytes())
    return "trunk-sha256:" + h.hexdigest()


_NETWORK_CLASS: Any = None


def trunk_and_head(
    backbone: Backbone,
    n_classes: int,
    head_dropout: float = 0.0,
    *,
    head_weight: np.ndarray | None = None,
    head_bias: np.ndarray | None = None,
) -> torch.nn.Module:
    """The one network of headstart: a backbone's trunk, dropout and a linear head, mapping normalised images to
    logits. Fine-tuning trains it, :meth:`Classifier.torch_module` rebuilds it from a model file, export, attacks
    and heat maps run it.

    ``features(x)`` is the backbone's embedding (the mean over ``x`` and its mirror image when the backbone's spec
    says so), ``forward(x) = head(dropout(features(x)))``. The backbone's own (ImageNet) classifier is removed
    from its model, in place: the trunk's state dict is then exactly what a model file stores.

    Example:
        >>> from headstart.features.backbones import load_backbone
        >>> net = trunk_and_head(load_backbone("tf_efficientnet_lite0"), 3, 0.2)
        >>> net(torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 3])
    """
    global _NETWORK_CLASS
    import torch

    if _NETWORK_CLASS is None:

        class TrunkAndHead(torch.nn.Module):
            """Trunk + dropout + linear head (see :func:`trunk_and_head`)."""

            def __init__(self, backbone: Backbone, n_classes: int, head_dropout: float) -> None:
                super().__init__()
                self.trunk = backbone.model
                self.backbone = backbone  # (not a submodule: the same model, seen through the backbone's features)
                self.dropout = torch.nn.Dropout(head_dropout)
                self.head = torch.nn.Linear(backbone.spec.num_features, n_classes)

            def features(self, x: torch.Tensor) -> torch.Tensor:
                return self.backbone.features(x)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.dropout(self.features(x)))

        _NETWORK_CLASS = TrunkAndHead

    if getattr(backbone.model, "num_classes", 0):
        backbone.model.reset_classifier(0)
    network = _NETWORK_CLASS(backbone, n_classes, head_dropout)
    if head_weight is not None or head_bias is not None:
        set_head(network, head_weight, head_bias)
    return network


def set_head(network: Any, weight: np.ndarray | None, bias: np.ndarray | None) -> None:
    """Copy numpy weights ``(n_classes, num_features)`` and biases ``(n_classes,)`` into the network's head."""
    import torch

    with torch.no_grad():
        if weight is not None:
            network.head.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
        if bias is not None:
            network.head.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))


__all__ = [
    "Classifier",
    "Prediction",
    "Predictions",
    "check_trunk_claims",
    "expand_paths",
    "iter_paths",
    "set_head",
    "trunk_and_head",
    "trunk_fingerprint",
]
