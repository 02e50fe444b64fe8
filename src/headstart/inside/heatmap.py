"""Heat maps of where a network looks: Grad-CAM and relatives from the ``grad-cam`` library (pytorch-grad-cam).

The photo is shown whole, resized so its shorter side is the network's input size (nothing cropped, aspect kept),
so the heat map covers the entire photo. Works for a backbone with its ImageNet head and for a trained headstart
model (the map then explains the breed the linear head picks).

Example:
    >>> e = explain("pets.safetensors", "cat.jpg", "cat-cam.png")
    >>> e.target_name, round(e.probability, 2), e.heatmap.shape      # heat map at the photo's aspect
    ('Siamese', 0.97, (224, 298))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import headstart._display as show
from headstart._names import literal_figure
from headstart._validation import check_choice
from headstart.errors import HeadstartError
from headstart.inside._common import check_output_file, load_target_network, say_if_replacing

#: What the probability of an explanation is measured on, said wherever it is shown: the whole photo, which the map
#: covers, not the centre crop ``predict`` scores, so the two probabilities of one photo can differ.
SCORED_ON = "the whole, uncropped photo (predict scores its centre crop, so its probability can differ)"

#: ``method`` names → pytorch_grad_cam classes.
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
}


@dataclass
class Explanation:
    """A heat map for one photo and one class.

    Attributes:
        image: the view the network saw, ``(H, W, 3)`` float in [0, 1] (whole photo, shorter side = input size).
        heatmap: ``(H, W)`` in [0, 1], same size as ``image``; high = supports the class.
        target, target_name, probability: the explained class and its probability on ``image``.
        top: the network's top 5 ``(name, probability)`` on ``image``.
        layer, method, network: how the map was made.
    """

    image: np.ndarray = field(repr=False)
    heatmap: np.ndarray = field(repr=False)
    target: int
    target_name: str
    probability: float
    top: list[tuple[str, float]]
    layer: str
    method: str
    network: str
    out: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "target_name": self.target_name,
            "probability": round(self.probability, 6),
            "scored_on": SCORED_ON,
            "top": [{"class": n, "probability": round(p, 6)} for n, p in self.top],
            "layer": self.layer,
            "method": self.method,
            "network": self.network,
            "heatmap_shape": list(self.heatmap.shape),
            "out": None if self.out is None else str(self.out),
        }

    def figure(self) -> Any:
        """The photo and the heat map over it (a matplotlib figure)."""
        return explanation_figure(self)

    def _repr_png_(self) -> bytes:
        return show.figure_png(self.figure())


def _timm_model(module: Any) -> Any:
    for m in module.modules():
        if getattr(m, "feature_info", None):
            return m
    return None


def _target_layer(module: Any, layer: str | None) -> tuple[str, Any]:
    """The module to explain: ``layer`` (a timm name such as ``"blocks.6"``) or the last feature stage."""
    names = dict(module.named_modules())
    if layer is None:
        timm_model = _timm_model(module)
        if timm_model is None:
            raise HeadstartError(
                "This network reports no feature stages (timm feature_info): pass layer=... / --layer."
            )
        layer = timm_model.feature_info[-1]["module"]
    matches = sorted((n for n in names if n == layer or n.endswith("." + layer)), key=len)
    if not layer or not matches:
        raise HeadstartError(
            f"The network has no layer {layer!r}: use a name from `headstart featuremaps --list-layers`."
        )
    return layer, names[matches[0]]


def whole_view(photo: Any, data_config: dict[str, Any]) -> np.ndarray:
    """The whole photo resized so its shorter side is the input size (weights' interpolation), ``(H, W, 3)`` in [0, 1]."""
    from PIL import Image

    side = int(min(data_config["input_size"][-2:]))
    w, h = photo.size
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}.get(
        data_config.get("interpolation", "bicubic"), Image.Resampling.BICUBIC
    )
    return np.asarray(photo.resize(size, resample), dtype=np.float32) / 255.0


def explain_view(
    net: Any, view: np.ndarray, target: str | int | None = None, method: str = "gradcam", layer: str | None = None
) -> Explanation:
    """Heat map for an image already prepared as a ``(H, W, 3)`` array in [0, 1] (see :func:`whole_view`)."""
    import pytorch_grad_cam
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    check_choice(method, "method", "explain", METHODS)
    x = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))).unsqueeze(0).float()
    probs = net.probabilities(x)[0]
    c = int(probs.argmax()) if target is None else net.class_index(target)
    layer_name, module = _target_layer(net.module, layer)
    cam_class = getattr(pytorch_grad_cam, METHODS[method])
    # The weights are frozen (requires_grad False); gradients must still reach the layer's activations.
    with cam_class(model=net.module, target_layers=[module]) as cam:
        heat = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(c)])[0]
    top = torch.topk(probs, min(5, len(probs)))
    return Explanation(
        image=view,
        heatmap=np.asarray(heat, dtype=np.float32),
        target=c,
        target_name=net.class_names[c],
        probability=float(probs[c]),
        top=[(net.class_names[int(i)], float(p)) for p, i in zip(top.values, top.indices)],
        layer=layer_name,
        method=method,
        network=net.name,
    )


def plot_explanation(e: Explanation, path: str | os.PathLike[str]) -> Path:
    """Write a PNG: the photo, and the photo with the heat map overlaid."""
    from headstart._io import save_figure

    return save_figure(explanation_figure(e), path)


def explanation_figure(e: Explanation) -> Any:
    """The photo, and the photo with the heat map overlaid, as a matplotlib figure (a notebook shows it)."""
    from matplotlib.figure import Figure

    h, w = e.heatmap.shape
    fig = Figure(figsize=(2 * 3.2 * w / h + 0.8, 3.6))
    axes = fig.subplots(1, 2)
    axes[0].imshow(e.image)
    axes[0].set_title("photo", fontsize=8)
    axes[1].imshow(e.image)
    shown = axes[1].imshow(e.heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title(
        f"{e.method} for {e.target_name.split(',')[0]} (p={e.probability:.2f} on the whole photo), layer {e.layer}",
        fontsize=8,
    )
    for a in axes:
        a.axis("off")
    fig.colorbar(shown, ax=axes[1], fraction=0.04, pad=0.02)
    fig.suptitle(e.network, fontsize=8)
    return literal_figure(fig)


def explain(
    model: Any,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    target: str | int | None = None,
    method: str = "gradcam",
    layer: str | None = None,
) -> Explanation:
    """Heat map of the regions that drive the network towards a class, for one photo.

    Args:
        model: a backbone name (ImageNet head), a headstart model file, or a :class:`~headstart.models.target.TargetNetwork`.
        image: the photo.
        out: PNG to write (photo and overlay side by side); ``None`` writes nothing.
        target: class index or name to explain; default: the network's top class.
        method: one of ``gradcam`` (default), ``gradcam++``, ``hirescam``, ``xgradcam``, ``layercam``.
        layer: the layer whose activations and gradients are used; default: the last feature stage timm reports.

    Returns:
        An :class:`Explanation` (heat map at the photo's aspect, class probability, top 5); ``out`` is the path
        written. An existing file there is replaced (a re-run), and a line on stderr says so.

    Raises:
        ParameterError (a ValueError): a bad ``method``, or ``out`` is a folder or not a ``.png`` (before any work).
        UnusableImageError: the photo cannot be read. HeadstartError: unknown class, model or layer.

    Example:
        >>> e = explain("tf_efficientnet_lite0", "cat.jpg", "cat-cam.png", target="Siamese cat")
        >>> e.out, e.target, e.heatmap.max() <= 1
        (PosixPath('cat-cam.png'), 284, True)
    """
    from headstart.data.images import load_image
    from headstart.features.preprocess import decode_size_for

    check_choice(method, "method", "explain", METHODS)
    path = None if out is None else check_output_file(out, "out", "explain", suffix=".png")
    net = load_target_network(model)
    photo = load_image(image, draft_size=decode_size_for(net.spec.data_config, shown=True))  # (a phone photo: draft)
    e = explain_view(net, whole_view(photo, net.spec.data_config), target, method, layer)
    if path is not None:
        say_if_replacing(path)
        e.out = plot_explanation(e, path)
    return e


__all__ = ["METHODS", "Explanation", "explain", "explain_view", "plot_explanation", "whole_view"]
