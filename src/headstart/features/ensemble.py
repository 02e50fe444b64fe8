"""Several backbones as one: their features side by side, under one :class:`BackboneSpec` with ``members``.

Why: on every data set measured (docs/TRAINING.md, ``benchmarks/backbone_choice.py``), the probes of the three
offline backbones averaged were at least as accurate as the best single backbone within noise, and far ahead on a
domain unlike ImageNet; no rule that picks one backbone from a few photos a class does that. A linear head over the
members' features side by side is such an average (:func:`~headstart.models.probe_fit.fit_probe` with ``blocks``),
so an ensemble is one model: a spec, a trunk, a head.

It runs two ways, one for each kind of consumer:

* **photos -> features** (extraction, ``predict``, ``evaluate``, ``serve``, the audit): each member runs its own
  :class:`~headstart.features.pipeline.Pipeline` with its own preprocessing and engine, and its features are cached
  under its own key, so what ``auto`` computed while scoring the members is reused. A photo's row is there when every
  member could use it (:func:`combine_members`, :class:`EnsemblePipeline`).
* **one torch network** (export, attacks, heat maps, the class image): :func:`ensemble_network` takes the largest
  member's input (the ensemble spec's preprocessing) and gives every other member the same centre region resized to
  its own input size, so gradients reach the pixels through all members. Its features agree with the first way's up
  to the resampling (a region resized twice).

A member's trunk tensors are stored as ``"<i>.<name>"`` (:func:`member_trunks`), its spec under ``members``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.features.spec import ENSEMBLE_PREFIX, BackboneSpec, ensemble_sha256, member_trunks

if TYPE_CHECKING:
    import torch

__all__ = [
    "EnsemblePipeline",
    "EnsembleSource",
    "combine_members",
    "ensemble_name",
    "ensemble_network",
    "ensemble_spec",
    "join_trunks",
    "member_sources",
    "member_trunks",
    "pipeline_for",
    "source_name",
]


def ensemble_name(names: Sequence[str]) -> str:
    """``ensemble:NAME+NAME+…``: what an ensemble of these backbones is called."""
    return ENSEMBLE_PREFIX + "+".join(names)


def ensemble_spec(members: Sequence[BackboneSpec]) -> BackboneSpec:
    """The spec of ``members`` side by side: their features concatenated in order, the largest member's input as the
    one network's preprocessing (:func:`ensemble_network`), a content hash of theirs.

    Example:
        >>> spec = ensemble_spec([resolve_backbone("tf_efficientnet_lite0"), resolve_backbone("tf_efficientnet_lite2")])
        >>> spec.num_features, spec.data_config["input_size"]
        (2560, [3, 260, 260])
    """
    members = tuple(members)
    if len(members) < 2 or any(m.members for m in members):
        raise ValueError(f"An ensemble needs at least two single backbones; got {[m.name for m in members]}.")
    widest = max(members, key=lambda m: m.data_config["input_size"][-2] * m.data_config["input_size"][-1])
    return BackboneSpec(
        name=ensemble_name([m.name for m in members]),
        source="ensemble of " + "; ".join(f"{m.name} ({m.source})" for m in members),
        weights_id="ensemble",
        data_config=dict(widest.data_config),
        num_features=sum(m.num_features for m in members),
        flip_average=all(m.flip_average for m in members),
        trunk_sha256=ensemble_sha256(members) if all(m.trunk_sha256 for m in members) else "",
        members=members,
    )


def join_trunks(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The members' trunk tensors as one ensemble trunk (:func:`member_trunks` undone)."""
    return {f"{i}.{k}": v for i, part in enumerate(parts) for k, v in part.items()}


class EnsembleSource:
    """Backbone sources (timm names resolved once, e.g. :class:`~headstart.models.inputs.ResolvedBackbone`) as one
    ensemble, for :func:`~headstart.features.extract.extract_features` and a model file: each member's spec resolved
    on first use, a network built only when one is needed.

    Example:
        >>> source = EnsembleSource([ResolvedBackbone("tf_efficientnet_lite1"), ResolvedBackbone("tf_efficientnet_lite0")])
        >>> source.name, source.spec.num_features
        ('ensemble:tf_efficientnet_lite1+tf_efficientnet_lite0', 2560)
    """

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = list(members)
        self._spec: BackboneSpec | None = None
        self._loaded: Any = None

    @property
    def name(self) -> str:
        return ensemble_name([source_name(m) for m in self.members])

    @property
    def spec(self) -> BackboneSpec:
        if self._spec is None:
            self._spec = ensemble_spec([m.spec for m in self.members])
        return self._spec

    def load(self) -> Any:
        """The ensemble as one :class:`~headstart.features.backbones.Backbone` (:func:`ensemble_network`)."""
        if self._loaded is None:
            from headstart.features.backbones import Backbone

            loaded = [m.load() if hasattr(m, "load") else m for m in self.members]
            spec = ensemble_spec([b.spec for b in loaded])
            self._loaded = Backbone(ensemble_network([b.model for b in loaded], spec), spec)
        return self._loaded

    def trunk(self) -> dict[str, np.ndarray]:
        """The members' trunk weights as one ensemble trunk (``"<i>.<name>"``)."""
        return join_trunks([m.trunk() for m in self.members])

    def __repr__(self) -> str:
        return f"EnsembleSource({self.members!r})"


def source_name(source: Any) -> str:
    """A backbone source's timm name: itself (a name), or its ``name`` (its spec's for a loaded backbone)."""
    if isinstance(source, str):
        return source
    return str(getattr(source, "name", None) or source.spec.name)


class _Member:
    """Member ``index`` of an ensemble source that only knows how to build the whole ensemble (a model file's
    trunk): its spec at once, its network (part of the ensemble's) only when its features are missing."""

    def __init__(self, source: Any, index: int, spec: BackboneSpec) -> None:
        self._source, self._index = source, index
        self.spec = spec

    def load(self) -> Any:
        from headstart.features.backbones import Backbone

        whole = self._source.load() if hasattr(self._source, "load") else self._source()
        return Backbone(whole.model.member(self._index), self.spec)


def member_sources(source: Any, spec: BackboneSpec | None = None) -> list[Any]:
    """What each member's features are computed from: an :class:`EnsembleSource`'s members, the member networks of
    a loaded ensemble :class:`~headstart.features.backbones.Backbone`, or a lazy view of each member of anything
    else with a ``load()`` (its ensemble ``spec``: given, or the source's)."""
    from headstart.features.backbones import Backbone

    if isinstance(source, EnsembleSource):
        return list(source.members)
    spec = spec if spec is not None else source.spec
    if isinstance(source, Backbone):
        return [Backbone(source.model.member(i), m) for i, m in enumerate(spec.members)]
    return [_Member(source, i, m) for i, m in enumerate(spec.members)]


def combine_members(paths: Sequence[os.PathLike[str] | str], parts: Sequence[Any], spec: BackboneSpec) -> Any:
    """An ensemble's :class:`~headstart.features.extract.Features` from its members' (each extracted by its own
    pipeline and cache key: :func:`~headstart.features.extract.extract_features` runs them): their features side by
    side, for the photos every member could use; a photo unusable for any member is skipped with the first reason
    given."""
    from dataclasses import replace

    from headstart.data.scanning import UnusableFile

    common = parts[0].indices
    for part in parts[1:]:
        common = np.intersect1d(common, part.indices)
    rows = [part.features[np.searchsorted(part.indices, common)] for part in parts]
    first = parts[0]
    reasons: dict[str, Any] = {}
    for part in parts:
        for u in part.unusable:
            reasons.setdefault(str(u.path), u)
    kept, named, unusable = set(common.tolist()), set(), []
    for i, p in enumerate(paths):  # (in the order given; a photo usable by one member only is skipped, with why)
        if i not in kept and str(p) not in named:
            unusable.append(reasons.get(str(p)) or UnusableFile(p, "not usable by every backbone of the ensemble"))
            named.add(str(p))
    seconds = sum(part.seconds for part in parts)
    n_computed = max(part.n_computed for part in parts)
    return replace(
        first,
        features=np.hstack(rows).astype(np.float32, copy=False),
        indices=np.asarray(common, dtype=np.int64),
        hashes=[first.hashes[i] for i in np.searchsorted(first.indices, common)],
        unusable=unusable,
        n_cached=min(part.n_cached for part in parts),
        n_computed=n_computed,
        seconds=seconds,
        images_per_second=n_computed / seconds if n_computed and seconds else 0.0,
        spec=spec,
        cache_key="+".join(part.cache_key for part in parts),
        n_views_computed=sum(part.n_views_computed for part in parts),
        setup_seconds=sum(part.setup_seconds for part in parts),
    )


class EnsemblePipeline:
    """:class:`~headstart.features.pipeline.Pipeline`'s interface over an ensemble: a photo decoded by each
    member's own pipeline, its features side by side (so a served photo gets exactly what extraction gives)."""

    def __init__(self, spec: BackboneSpec, source: Any, **options: Any) -> None:
        from headstart.features.pipeline import Pipeline

        self.spec = spec
        self.members = [
            Pipeline(m_spec, member, **options) for m_spec, member in zip(spec.members, member_sources(source, spec))
        ]
        self.engine, self.precision = self.members[0].engine, self.members[0].precision
        self.max_pixels = self.members[0].max_pixels

    def decode(self, path: str | os.PathLike[str]) -> tuple[Any, ...]:
        return tuple(p.decode(path) for p in self.members)

    def decode_bytes(self, data: bytes, name: str) -> tuple[Any, ...]:
        return tuple(p.decode_bytes(data, name) for p in self.members)

    def blank(self) -> tuple[Any, ...]:
        return tuple(p.blank() for p in self.members)

    def runner(self, *, throughput: bool = False) -> list[Any]:
        return [p.runner(throughput=throughput) for p in self.members]

    def features(self, inputs: Sequence[tuple[Any, ...]]) -> np.ndarray:
        return np.hstack([p.features([x[i] for x in inputs]) for i, p in enumerate(self.members)])


def pipeline_for(spec: BackboneSpec, source: Any, **options: Any) -> Any:
    """The pipeline that runs ``spec`` on photos: a :class:`~headstart.features.pipeline.Pipeline`, or for an
    ensemble an :class:`EnsemblePipeline` of its members' (``options`` as the Pipeline's)."""
    from headstart.features.pipeline import Pipeline

    return EnsemblePipeline(spec, source, **options) if spec.members else Pipeline(spec, source, **options)


_NETWORK_CLASS: Any = None


def ensemble_network(models: Sequence[torch.nn.Module], spec: BackboneSpec) -> torch.nn.Module:
    """The members' networks as one timm-like trunk over the ensemble spec's input: ``forward_features(x)`` gives
    the members' pooled features side by side, each member seeing the centre region its own preprocessing crops,
    resized to its input (``forward_head(x, pre_logits=True)`` passes them on, as a timm trunk's does). Its state
    dict names member ``i``'s tensors ``"<i>.<name>"``, as a model file stores them."""
    global _NETWORK_CLASS
    import torch
    import torch.nn.functional as F

    if _NETWORK_CLASS is None:

        class EnsembleTrunk(torch.nn.Module):
            """Members side by side (see :func:`ensemble_network`)."""

            def __init__(self, models: Sequence[torch.nn.Module], spec: BackboneSpec) -> None:
                super().__init__()
                for i, model in enumerate(models):
                    self.add_module(str(i), model)
                self.n_members = len(models)
                self.num_features, self.num_classes = spec.num_features, 0
                heads = []
                for i, model in enumerate(models):
                    names = getattr(model, "pretrained_cfg", {}).get("classifier") or "classifier"
                    heads += [f"{i}.{n}" for n in ((names,) if isinstance(names, str) else names)]
                self.pretrained_cfg = {"classifier": tuple(heads)}
                self.views = [_view(spec.data_config, m.data_config) for m in spec.members]

            def member(self, index: int) -> torch.nn.Module:
                return getattr(self, str(index))

            def forward_features(self, x: torch.Tensor) -> torch.Tensor:
                outs = []
                for i in range(self.n_members):
                    crop, size, mode, scale, shift = self.views[i]
                    xi = x
                    if crop is not None:
                        top, left, height, width = crop
                        xi = xi[..., top : top + height, left : left + width]
                    if size is not None:
                        xi = F.interpolate(xi, size=size, mode=mode, align_corners=False)
                    if scale is not None:
                        xi = xi * scale.to(xi) + shift.to(xi)
                    net = self.member(i)
                    outs.append(net.forward_head(net.forward_features(xi), pre_logits=True))
                return torch.cat(outs, dim=1)

            def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
                return x

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.forward_features(x)

            def reset_classifier(self, num_classes: int = 0, *args: Any, **kwargs: Any) -> None:
                for i in range(self.n_members):
                    if getattr(self.member(i), "num_classes", 0):
                        self.member(i).reset_classifier(0)

        _NETWORK_CLASS = EnsembleTrunk

    return _NETWORK_CLASS(models, spec).eval()


def _view(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> tuple[Any, ...]:
    """How a member sees the ensemble's input: ``(crop box or None, resize or None, mode, scale, shift)``. Its
    preprocessing keeps the centre ``crop_pct`` of the photo's shorter side at its input size; the ensemble's input
    keeps the centre ``outer`` crop_pct at the ensemble's size, so the member's region is the centre
    ``inner/outer`` of it, resized to the member's size and renormalised from the ensemble's mean/std to its own."""
    import torch

    _, height, width = outer["input_size"]
    _, h, w = inner["input_size"]
    ratio = min(1.0, float(inner.get("crop_pct") or 1.0) / float(outer.get("crop_pct") or 1.0))
    ch, cw = max(1, round(height * ratio)), max(1, round(width * ratio))
    crop = None if (ch, cw) == (height, width) else ((height - ch) // 2, (width - cw) // 2, ch, cw)
    size = None if (h, w) == (ch, cw) else (h, w)
    mode = "bilinear"  # (whatever the member's own: LiteRT has no bicubic resize, and this one is a mild shrink)
    m_out, s_out = np.asarray(outer["mean"], np.float32), np.asarray(outer["std"], np.float32)
    m_in, s_in = np.asarray(inner["mean"], np.float32), np.asarray(inner["std"], np.float32)
    if np.allclose(m_out, m_in) and np.allclose(s_out, s_in):
        return crop, size, mode, None, None
    scale = torch.from_numpy(s_out / s_in).reshape(1, 3, 1, 1)  # x_in = (x_out * s_out + m_out - m_in) / s_in
    shift = torch.from_numpy((m_out - m_in) / s_in).reshape(1, 3, 1, 1)
    return crop, size, mode, scale, shift
