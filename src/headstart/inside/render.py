"""The optimisation loop: change an image's parameters so that an objective grows. Nothing is shown or saved here.

Example:
    >>> from headstart.models.target import load_target
    >>> from headstart.inside import render, objectives as obj
    >>> net = load_target("tf_efficientnet_lite0")
    >>> images = render(net, obj.class_logit(284) - 0.05 * obj.total_variation(), steps=200)
    >>> images[-1].shape            # (1, 3, 224, 224), values in [0, 1]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from headstart._validation import check_int
from headstart.inside.objectives import Objective, as_objective
from headstart.inside.param import ImageF, fft_image
from headstart.inside.transforms import Transform, compose, standard_transforms

if TYPE_CHECKING:
    import torch

ParamF = Callable[[], "tuple[list[torch.Tensor], ImageF]"]
OptimizerF = Callable[["list[torch.Tensor]"], "torch.optim.Optimizer"]
Callback = Callable[[int, "torch.Tensor", float], Any]


class ModelHook:
    """Records every submodule's output during a forward pass and serves them to objectives as ``T(name)``.

    Names are those of ``module.named_modules()``; a name may also be given by its last dotted parts
    (``"blocks.5"`` finds ``"inner.blocks.5"``), so objectives work whether or not the network is wrapped.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.names = [name for name, _ in module.named_modules() if name]
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._store(name)) for name, m in module.named_modules() if name]
        self._special: dict[str, torch.Tensor] = {}

    def _store(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            self._outputs[name] = output

        return hook

    def resolve(self, layer: str) -> str:
        """The full module name for ``layer`` (exact, else the shortest name ending in ``.layer``)."""
        if layer in self.names:
            return layer
        matches = sorted((n for n in self.names if n.endswith("." + layer)), key=len)
        if not matches:
            close = [n for n in self.names if layer.split(".")[0] in n][:5]
            hint = f" Close: {', '.join(close)}." if close else ""
            raise ValueError(f"The network has no layer {layer!r}.{hint}")
        return matches[0]

    def __call__(self, name: str) -> torch.Tensor:
        if name in self._special:
            return self._special[name]
        full = self.resolve(name)
        if full not in self._outputs:
            raise ValueError(f"Layer {name!r} produced no output in the last forward pass.")
        out = self._outputs[full]
        return out[0] if isinstance(out, (tuple, list)) else out

    def set(self, **special: torch.Tensor) -> None:
        self._special = special

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._outputs.clear()
        self._special = {}


def _module_and_size(net: Any) -> tuple[torch.nn.Module, tuple[int, int]]:
    import torch

    if isinstance(net, torch.nn.Module):
        return net, (224, 224)
    module = getattr(net, "module", None)
    if isinstance(module, torch.nn.Module):
        return module, tuple(getattr(net, "input_size", (224, 224)))  # type: ignore[return-value]
    raise TypeError(f"render needs a torch.nn.Module over 0–1 images or a TargetNetwork; got {type(net).__name__}.")


def render(
    net: Any,
    objective: Objective | str,
    param_f: ParamF | None = None,
    optimizer: OptimizerF | None = None,
    transforms: Sequence[Transform] | Transform | None = None,
    steps: int = 256,
    thresholds: Iterable[int] = (),
    *,
    callback: Callback | None = None,
) -> list[torch.Tensor]:
    """Maximise ``objective`` over an image by gradient steps, and return the image at chosen steps.

    Args:
        net: a :class:`~headstart.models.target.TargetNetwork` or any ``torch.nn.Module`` taking 0–1 images.
        objective: what to maximise (an :class:`Objective`, or ``"layer:channel"``).
        param_f: ``() -> (params, image_f)``; default :func:`fft_image` at the network's input size.
        optimizer: ``params -> torch.optim.Optimizer``; default Adam with lr 0.05.
        transforms: list of image→image functions applied before each forward pass (default
            :func:`standard_transforms`; ``[]`` for none).
        steps: number of optimisation steps.
        thresholds: steps after which to keep a copy of the image.
        callback: ``callback(step, image, objective_value)`` after each step (1-based); a true result stops early.

    Returns:
        The images (``(batch, 3, H, W)`` tensors in [0, 1], detached) at each threshold reached, then the final
        image. Ctrl-C stops the loop and returns what there is so far.
    """
    import torch

    check_int(steps, "steps", "render", low=0)
    objective = as_objective(objective)
    module, (h, w) = _module_and_size(net)
    params, image_f = (param_f or (lambda: fft_image((1, 3, h, w))))()
    opt = (optimizer or (lambda p: torch.optim.Adam(p, lr=0.05)))(params)
    if transforms is None:
        transforms = standard_transforms()
    transform = transforms if callable(transforms) else compose(transforms)
    keep = set(thresholds)
    images: list[torch.Tensor] = []
    hook = ModelHook(module)
    was_training = module.training
    module.eval()
    try:
        for step in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            image = image_f()
            x = transform(image)
            hook.set(image=image, input=x)
            logits = module(x)
            hook.set(image=image, input=x, logits=logits)
            value = objective(hook)
            (-value).backward()
            opt.step()
            if step in keep:
                images.append(image_f().detach().clone())
            if callback is not None and callback(step, image.detach(), float(value.detach())):
                break
    except KeyboardInterrupt:
        warnings.warn("render interrupted: returning the image as it is now.", stacklevel=2)
    finally:
        hook.remove()
        module.train(was_training)
    with torch.no_grad():
        images.append(image_f().detach().clone())
    return images


__all__ = ["ModelHook", "render"]
