"""Look inside a network: class images (``dream``), feature maps and heat maps (``explain``), as composable pieces.

Lucid/Lucent-style pipeline for class images: a parameterisation (:mod:`~headstart.inside.param`) makes an
image, random transforms (:mod:`~headstart.inside.transforms`) perturb it, objectives
(:mod:`~headstart.inside.objectives`) score the network's response, and :func:`render` runs the optimisation
(it only optimises and returns tensors). :func:`dream` is the one-call path that also saves and measures.

Example (a custom objective in a few lines)::

    from headstart.models.target import load_target
    from headstart.inside import render, objectives as obj, param

    net = load_target("tf_efficientnet_lite0")
    objective = obj.channel("blocks.5", 17) + obj.class_logit(340) - 0.25 * obj.total_variation()
    image = render(net, objective, param_f=lambda: param.fft_image((1, 3, 224, 224)), steps=200)[-1]
"""

from __future__ import annotations

from headstart.inside import objectives, param, transforms
from headstart.inside.activations import FeatureMaps, feature_maps, featuremaps, list_layers, plot_feature_maps
from headstart.inside.class_image import DreamResult, dream, high_frequency_energy
from headstart.inside.heatmap import Explanation, explain, plot_explanation
from headstart.inside.render import ModelHook, render

__all__ = [
    "DreamResult",
    "Explanation",
    "FeatureMaps",
    "ModelHook",
    "dream",
    "explain",
    "feature_maps",
    "featuremaps",
    "high_frequency_energy",
    "list_layers",
    "objectives",
    "param",
    "plot_explanation",
    "plot_feature_maps",
    "render",
    "transforms",
]
