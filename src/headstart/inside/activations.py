"""Feature maps: what a backbone's stages compute for one photo.

``feature_maps(model, image)`` runs the photo through the weights' own preprocessing and records one stage's
activations plus the trunk's final feature map; ``plot_feature_maps`` draws the photo, the most active channels of
the stage overlaid on it, and the lesson's "positions × channels" strip of the final feature map (VGG-16 turns a
224×224 cat into 512×7×7, shown as a 49×512 strip; EfficientNet-Lite0 gives 1280×7×7).

Example:
    >>> fm = feature_maps("tf_efficientnet_lite0", "cat.jpg", layer="blocks.4")
    >>> fm.activations.shape, fm.final.shape
    ((112, 14, 14), (1280, 7, 7))
    >>> plot_feature_maps(fm, "cat-features.png")
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import headstart._display as show
from headstart._names import literal_figure
from headstart._validation import check_int
from headstart.inside._common import check_output_file, feature_layers, find_module, load_trunk, say_if_replacing


@dataclass
class FeatureMaps:
    """One photo's activations.

    Attributes:
        image: the preprocessed photo the network saw, ``(H, W, 3)`` float in [0, 1].
        layer: the stage shown; ``activations``: its output ``(channels, h, w)``.
        final: the trunk's final feature map (``forward_features``), ``(channels, h, w)``.
        backbone: the backbone's name.
    """

    image: np.ndarray = field(repr=False)
    layer: str
    activations: np.ndarray = field(repr=False)
    final: np.ndarray = field(repr=False)
    backbone: str

    def top_channels(self, n: int = 16) -> list[int]:
        """The ``n`` channels with the highest mean activation, most active first."""
        means = self.activations.reshape(self.activations.shape[0], -1).mean(axis=1)
        return [int(i) for i in np.argsort(-means, kind="stable")[:n]]

    def figure(self, n_channels: int = 16) -> Any:
        """The photo, its ``n_channels`` most active channels overlaid on it and the positions × channels strip
        of the final map (a matplotlib figure; :func:`plot_feature_maps` writes the same picture)."""
        return feature_maps_figure(self, n_channels)

    def _repr_png_(self) -> bytes:
        return show.figure_png(self.figure())


def list_layers(model: Any) -> list[dict[str, Any]]:
    """Every stage feature maps can show, in the order the network runs them: timm's feature stages plus each block
    of the stage lists between them (``blocks.3`` and ``blocks.5`` of an EfficientNet keep their resolution, so
    timm's ``feature_info`` leaves them out), with channels and resolution measured by one forward pass; then the
    final map (``forward_features``). An ensemble's are its members' in turn, named ``"<i>.<module>"``."""
    backbone = load_trunk(model)
    if backbone.spec.members:
        return [
            {**layer, "module": f"{i}.{layer['module']}"}
            for i in range(len(backbone.spec.members))
            for layer in _stages(_member(backbone, f"{i}.")[0])
        ]
    return _stages(backbone)


def _member(backbone: Any, layer: str | None) -> tuple[Any, str | None]:
    """The network a layer name points into: an ensemble's member ``i`` for ``"<i>.<module>"`` (its first member
    for a name without one), with the name inside it; a single backbone and the name as they are."""
    if not backbone.spec.members:
        return backbone, layer
    from headstart.features.backbones import Backbone

    index, _, rest = (layer or "").partition(".")
    i = int(index) if index.isdigit() and int(index) < len(backbone.spec.members) else 0
    inner = (rest or None) if index.isdigit() else layer
    return Backbone(backbone.model.member(i), backbone.spec.members[i]), inner


def _stages(backbone: Any) -> list[dict[str, Any]]:
    import torch

    net = backbone.model
    names = [f["module"] for f in feature_layers(net)]
    for container in ("blocks", "stages", "layers", "features"):
        children = getattr(net, container, None)
        if isinstance(children, torch.nn.Sequential | torch.nn.ModuleList):
            names += [f"{container}.{i}" for i in range(len(children))]
    modules = dict(net.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:  # (returning None keeps the output as it is)
            if isinstance(output, torch.Tensor):
                shapes.setdefault(name, tuple(output.shape))

        return hook

    hooks = [modules[n].register_forward_hook(record(n)) for n in dict.fromkeys(names) if n in modules]
    size = backbone.spec.data_config["input_size"]
    try:
        with torch.no_grad():
            net.forward_features(torch.zeros(1, *size))
    finally:
        for h in hooks:
            h.remove()
    layers = [
        {"module": n, "num_chs": int(shape[1]), "reduction": int(round(size[1] / shape[2]))}
        for n, shape in shapes.items()
        if len(shape) == 4
    ]  # (in the order the forward pass reached them)
    last = layers[-1]["reduction"] if layers else None
    layers.append({"module": "forward_features", "num_chs": int(backbone.spec.num_features), "reduction": last})
    return layers


def _default_layer(model: Any) -> str:
    stages = feature_layers(model)
    if not stages:
        from headstart.errors import HeadstartError

        raise HeadstartError("This backbone reports no feature stages: pass --layer with a module name.")
    return stages[-2]["module"] if len(stages) > 1 else stages[-1]["module"]


def feature_maps(model: Any, image: str | os.PathLike[str], layer: str | None = None) -> FeatureMaps:
    """Activations of ``layer`` (default: the second-to-last feature stage) and of the whole trunk for one photo.

    Args:
        model: backbone name, headstart model file, or a loaded Backbone/Classifier.
        image: path of a photo (any format :func:`~headstart.data.images.load_image` reads).
        layer: a module name as timm reports it (``"blocks.4"``, ``"layer3"``); see :func:`list_layers`.
    """
    import torch

    from headstart.data.images import load_image
    from headstart.features.preprocess import decode_size_for

    backbone, layer = _member(load_trunk(model), layer)  # (an ensemble's: the member the layer names)
    photo = load_image(image, draft_size=decode_size_for(backbone.spec.data_config))  # (as extraction decodes it)
    net = backbone.model.eval()
    layer = layer or _default_layer(net)
    module = find_module(net, layer)
    x = backbone.transform()(photo).unsqueeze(0)
    seen: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(
        lambda m, i, o: seen.__setitem__("out", o[0] if isinstance(o, (tuple, list)) else o)
    )
    try:
        with torch.no_grad():
            final = net.forward_features(x)
    finally:
        handle.remove()
    acts = seen.get("out")
    if acts is None or acts.dim() != 4:
        from headstart.errors import HeadstartError

        raise HeadstartError(
            f"Layer {layer!r} gives no (batch, channels, h, w) map: pick a convolutional stage from --list-layers."
        )
    mean = torch.tensor(backbone.spec.data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(backbone.spec.data_config["std"]).view(3, 1, 1)
    shown = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    final_map = final[0] if final.dim() == 4 else final[0].T.reshape(final.shape[-1], 1, -1)
    return FeatureMaps(shown, layer, acts[0].float().numpy(), final_map.float().numpy(), backbone.spec.name)


def plot_feature_maps(fm: FeatureMaps, path: str | os.PathLike[str], n_channels: int = 16) -> Path:
    """Write a PNG: the photo, the ``n_channels`` most active channels overlaid on it, and the positions × channels strip."""
    from headstart._io import save_figure

    check_int(n_channels, "n_channels", "plot_feature_maps", low=1)
    return save_figure(feature_maps_figure(fm, n_channels), path)


def feature_maps_figure(fm: FeatureMaps, n_channels: int = 16) -> Any:
    """What :func:`plot_feature_maps` draws, as a matplotlib figure (``FeatureMaps.figure()``)."""
    from matplotlib.figure import Figure

    check_int(n_channels, "n_channels", "feature_maps_figure", low=1)
    channels = fm.top_channels(n_channels)
    cols = math.ceil(math.sqrt(len(channels)))
    rows = math.ceil(len(channels) / cols)
    fig = Figure(figsize=(3 + 1.6 * cols + 0.5, 1.6 * rows + 2.6))
    grid = fig.add_gridspec(rows + 1, cols + 2, height_ratios=[1] * rows + [1.3], width_ratios=[1.5, 0.1] + [1] * cols)
    ax = fig.add_subplot(grid[:rows, 0])
    ax.imshow(fm.image)
    ax.set_title(f"input ({fm.backbone})", fontsize=8)
    ax.axis("off")
    grey = fm.image.mean(axis=2)
    h, w = grey.shape
    for k, c in enumerate(channels):
        a = fig.add_subplot(grid[k // cols, 2 + k % cols])
        a.imshow(grey, cmap="gray", vmin=0, vmax=1)
        a.imshow(
            fm.activations[c],
            cmap="inferno",
            alpha=0.65,
            extent=(-0.5, w - 0.5, h - 0.5, -0.5),
            interpolation="bilinear",
        )
        a.set_title(f"{fm.layer} #{c}", fontsize=6)
        a.axis("off")
    c_f, h_f, w_f = fm.final.shape
    strip = fm.final.reshape(c_f, h_f * w_f).T
    a = fig.add_subplot(grid[rows, :])
    image = a.imshow(strip, aspect="auto", cmap="viridis", interpolation="nearest")
    a.set_xlabel(f"channel (0–{c_f - 1})", fontsize=7)
    a.set_ylabel(f"position ({h_f}×{w_f})", fontsize=7)
    a.set_title(f"final feature map as positions × channels: {h_f * w_f} × {c_f}", fontsize=8)
    a.tick_params(labelsize=6)
    fig.colorbar(image, ax=a, fraction=0.02, pad=0.01)
    fig.suptitle(
        f"{len(channels)} most active channels of {fm.layer} ({fm.activations.shape[0]} channels, "
        f"{fm.activations.shape[1]}×{fm.activations.shape[2]})",
        fontsize=9,
    )
    return literal_figure(fig)


def featuremaps(
    model: Any,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    layer: str | None = None,
    n_channels: int = 16,
) -> FeatureMaps:
    """One call: compute :func:`feature_maps` and write :func:`plot_feature_maps` to ``out`` (replacing a file there).

    Example:
        >>> fm = featuremaps("tf_efficientnet_lite0", "cat.jpg", "cat-features.png", layer="blocks.4")
        >>> fm.activations.shape
        (112, 14, 14)
    """
    path = check_output_file(out, "out", "featuremaps")
    check_int(n_channels, "n_channels", "featuremaps", low=1)
    fm = feature_maps(model, image, layer)
    say_if_replacing(path)
    plot_feature_maps(fm, path, n_channels)
    return fm


__all__ = ["FeatureMaps", "feature_maps", "featuremaps", "list_layers", "plot_feature_maps"]
