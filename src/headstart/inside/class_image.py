"""The one-call class image: "how a network sees a Siamese cat", saved as a PNG whose probability is measured.

Two methods:

* ``"lucid"`` (default): Lucid/Lucent feature visualisation. Fourier-space, colour-decorrelated parameterisation
  (:func:`~headstart.inside.param.fft_image`), random pad/jitter/scale/rotation every step
  (:func:`~headstart.inside.transforms.standard_transforms`), objective ``logit + log p(target)`` minus a
  little total variation and L2, Adam.
* ``"lesson"``: the lesson's loop. Pixels start as ``0.5 + 0.5·N(0, 1)`` noise (the lesson's N(0, 1) in the
  normalised space of mean = std = 0.5 weights), clipped to valid pixels; plain gradient steps (SGD, no momentum)
  on the cross-entropy to the target plus ``tv`` × total variation.

Either way the image is rendered on the canvas the weights' eval preprocessing expects (``input_size / crop_pct``,
256 px for a 224 px network with ``crop_pct`` 0.875) and the network is shown its centre crop, so the saved PNG
goes through the ordinary preprocessing (resize to the same size, centre crop) unchanged. The reported probability
is measured on the saved 8-bit PNG read back from disk and classified again, never on the float tensor.

Example:
    >>> result = dream("tf_efficientnet_lite0", "Siamese cat", "siamese.png")
    >>> result.probability          # on siamese.png as read back from disk
    0.99...
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import headstart._display as show
from headstart._io import write_bytes_atomic, write_json
from headstart._validation import check_choice, check_int, check_number
from headstart.inside import objectives as obj
from headstart.inside._common import check_output_file, load_target_network, say_if_replacing
from headstart.inside.param import fft_image, pixel_image
from headstart.inside.render import render
from headstart.inside.transforms import center_crop, standard_transforms

if TYPE_CHECKING:
    import torch

METHODS = ("lucid", "lesson")
DEFAULT_STEPS = {"lucid": 256, "lesson": 300}
DEFAULT_TV = {"lucid": 0.25, "lesson": 100.0}
LUCID_L2 = 0.5
LUCID_LR = 0.05
LESSON_LR = 2.5
_CHECK_EVERY = 5


@dataclass
class DreamResult:
    """What :func:`dream` made and measured.

    Attributes:
        image: the saved image, ``(H, W, 3)`` uint8.
        target: class index; ``target_name``: its name.
        probability: target probability on the saved PNG read back from disk (see ``measured_on``).
        top_class, top_probability: the network's top answer for the saved PNG.
        start_probability: target probability of the starting image (same preprocessing).
        steps: optimisation steps run; ``seconds``: wall time of the optimisation.
        high_frequency_energy: share of the grey image's spectral power above half the Nyquist frequency.
        png, json, strip: files written (``None`` when not written).
    """

    image: np.ndarray = field(repr=False)
    target: int
    target_name: str
    method: str
    probability: float
    top_class: str
    top_probability: float
    start_probability: float
    steps: int
    seconds: float
    high_frequency_energy: float
    settings: dict[str, Any]
    measured_on: str
    network: str
    png: Path | None = None
    json: Path | None = None
    strip: Path | None = None

    def _repr_png_(self) -> bytes:
        """The image itself (what was saved and measured)."""
        return show.array_png(self.image)

    def _repr_html_(self) -> str:
        """The image beside what the network says about it."""
        facts = show.fields(
            [
                ("target", f"{self.target} {self.target_name}"),
                ("target probability", f"{self.start_probability:.3f} at the start → {self.probability:.3f}"),
                ("network's top answer", f"{self.top_class} ({self.top_probability:.3f})"),
                ("method", self.method),
                ("steps", self.steps),
                ("seconds", round(self.seconds, 1)),
                ("high-frequency energy", self.high_frequency_energy),
                ("network", self.network),
            ]
        )
        picture = show.image(self._repr_png_(), f"what {self.network} calls {self.target_name}")
        return show.card("dream", f"The ideal {self.target_name.split(',')[0]}", picture, facts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["image"]
        for k in ("png", "json", "strip"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def canvas_size(data_config: dict[str, Any]) -> tuple[int, int]:
    """The image size the eval preprocessing resizes to before its centre crop (``input_size / crop_pct``).

    A PNG of this size passes the resize unchanged, and its centre crop is exactly what the network sees.
    """
    h, w = (int(v) for v in data_config["input_size"][-2:])
    crop_pct = data_config.get("crop_pct") or 1.0
    if data_config.get("crop_mode", "center") not in (None, "center") or crop_pct >= 1.0:
        return h, w
    return math.floor(h / crop_pct), math.floor(w / crop_pct)


def eval_transform(data_config: dict[str, Any]):
    """The weights' own eval preprocessing, giving uint8 ``(3, H, W)`` tensors (the network normalises itself)."""
    from timm.data import create_transform

    cfg = {k: data_config[k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode") if k in data_config}
    return create_transform(**cfg, is_training=False, normalize=False)


def probabilities_of_file(net: Any, path: str | os.PathLike[str]) -> torch.Tensor:
    """Class probabilities for an image file read from disk through the weights' eval preprocessing."""
    from headstart.data.images import load_image
    from headstart.features.preprocess import decode_size_for

    photo = load_image(path, draft_size=decode_size_for(net.spec.data_config))  # (decoded as extraction decodes it)
    x = eval_transform(net.spec.data_config)(photo).float().div(255).unsqueeze(0)
    return net.probabilities(x)[0]


def high_frequency_energy(image: np.ndarray | torch.Tensor) -> float:
    """Share of spectral power above half the Nyquist frequency (0.25 cycles/pixel) in the grey image.

    Args:
        image: ``(H, W, 3)`` uint8 or float array, or a ``(1, 3, H, W)``/``(3, H, W)`` tensor in [0, 1].

    Returns:
        A number in [0, 1]: 0 for a smooth picture, about 0.8 for white noise. The mean (DC) is excluded.
    """
    if hasattr(image, "detach"):  # a torch tensor
        a = image.detach().float().cpu().numpy()
        a = a.reshape(a.shape[-3:]).transpose(1, 2, 0)
    else:
        a = np.asarray(image, dtype=np.float64)
        if np.asarray(image).dtype == np.uint8:
            a = a / 255.0
    grey = a.mean(axis=-1) if a.ndim == 3 else a
    grey = grey - grey.mean()
    power = np.abs(np.fft.fft2(grey)) ** 2
    fy = np.fft.fftfreq(grey.shape[0])[:, None]
    fx = np.fft.fftfreq(grey.shape[1])[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    total = power[radius > 0].sum()
    return float(power[radius > 0.25].sum() / total) if total > 0 else 0.0


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _strip_png(frames: list[tuple[int, np.ndarray]], height: int = 128) -> bytes:
    """The snapshots side by side, each captioned with its step."""
    from PIL import Image, ImageDraw

    tiles = []
    for step, arr in frames:
        im = Image.fromarray(arr)
        im = im.resize((round(im.width * height / im.height), height), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (im.width, height + 16), "white")
        canvas.paste(im, (0, 16))
        ImageDraw.Draw(canvas).text((3, 2), f"step {step}", fill="black")
        tiles.append(canvas)
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), height + 16), "white")
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + 4
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def dream(
    model: Any,
    target: str | int,
    out: str | os.PathLike[str] | None = None,
    *,
    method: str = "lucid",
    steps: int | None = None,
    tv: float | None = None,
    seed: int = 0,
    stop_at: float | None = None,
    strip: bool = False,
) -> DreamResult:
    """Optimise an image until the network sees ``target`` in it; save it and measure it as a photo.

    Args:
        model: a backbone name with an ImageNet head (``"tf_efficientnet_lite0"``), a headstart model file, or a
            loaded :class:`~headstart.models.target.TargetNetwork`.
        target: class index or name (``284``, ``"Siamese cat"``; a breed name for a headstart model).
        out: PNG to write; a JSON report is written beside it (``<stem>.json``). ``None`` writes nothing and
            measures the PNG encoding in memory.
        method: ``"lucid"`` (default) or ``"lesson"`` (see the module docstring).
        steps: maximum number of steps (default 256 for lucid, 300 for lesson).
        tv: weight of total variation (mean ``|Δx|+|Δy|`` of the 0–1 image); default 0.25 (lucid), 100 (lesson).
        seed: seed of the starting image and the random transforms.
        stop_at: stop once the target probability of the 8-bit image, checked every 5 steps, reached this
            twice in a row; ``None`` (default) runs all steps.
        strip: also write ``<stem>-strip.png``, snapshots of the image during the optimisation.

    Returns:
        A :class:`DreamResult`; ``probability`` is measured on the PNG read back from disk.

    Raises:
        HeadstartError: unknown class or model. ParameterError (a ValueError): a bad parameter, or ``out`` is a
        folder or not a ``.png`` (checked before any work).

    Example:
        >>> result = dream("tf_efficientnet_lite0", "zebra", "zebra.png", steps=30)
        >>> result.target, result.probability > 0.5, result.json.name
        (340, True, 'zebra.json')
    """
    import torch

    check_choice(method, "method", "dream", METHODS)
    steps = DEFAULT_STEPS[method] if steps is None else steps
    tv = DEFAULT_TV[method] if tv is None else tv
    check_int(steps, "steps", "dream", low=1)
    check_number(tv, "tv", "dream", low=0)
    if stop_at is not None:
        check_number(stop_at, "stop_at", "dream", low=0, low_open=True, high=1)
    path = None if out is None else check_output_file(out, "out", "dream", suffix=".png")
    net = load_target_network(model)
    c = net.class_index(target)
    h, w = canvas_size(net.spec.data_config)
    crop = center_crop(net.input_size)

    def probability_8bit(image: torch.Tensor) -> float:
        quantised = (image.clamp(0, 1) * 255).round() / 255
        return float(net.probabilities(crop(quantised))[0, c])

    if method == "lucid":
        objective = obj.class_logit(c) + obj.class_log_prob(c) - tv * obj.total_variation() - LUCID_L2 * obj.l2()
        param_f = lambda: fft_image((1, 3, h, w), seed=seed)  # noqa: E731
        optimizer = lambda p: torch.optim.Adam(p, lr=LUCID_LR)  # noqa: E731
        transforms = [*standard_transforms(), crop]
        settings = {
            "parameterisation": "fft, decorrelated colour",
            "transforms": "pad 12, jitter 8, scale 0.9-1.1, rotate ±10°, jitter 4, centre crop",
            "optimizer": f"Adam lr {LUCID_LR}",
            "tv": tv,
            "l2": LUCID_L2,
        }
    else:
        objective = obj.class_log_prob(c) - tv * obj.total_variation()
        param_f = lambda: pixel_image((1, 3, h, w), seed=seed)  # noqa: E731
        optimizer = lambda p: torch.optim.SGD(p, lr=LESSON_LR)  # noqa: E731
        transforms = [crop]
        settings = {
            "parameterisation": "pixels from 0.5 + 0.5·N(0,1), clipped to [0, 1]",
            "transforms": "centre crop",
            "optimizer": f"SGD lr {LESSON_LR} (plain gradient steps)",
            "tv": tv,
        }
    settings.update({"steps": steps, "stop_at": stop_at, "seed": seed, "objective": objective.name})

    frames: list[tuple[int, np.ndarray]] = []
    snap_every = max(1, steps // 6)
    state = {"hits": 0, "step": 0, "start": None}

    def callback(step: int, image: torch.Tensor, value: float) -> bool:
        state["step"] = step
        if strip and (step == 1 or step % snap_every == 0):
            frames.append((step, _to_uint8(image)))
        if stop_at is None or step % _CHECK_EVERY:
            return False
        state["hits"] = state["hits"] + 1 if probability_8bit(image) >= stop_at else 0
        return state["hits"] >= 2

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, start_f = param_f()
        with torch.no_grad():
            start_probability = probability_8bit(start_f())
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        final = render(net, objective, param_f, optimizer, transforms, steps, callback=callback)[-1]
        seconds = time.perf_counter() - t0

    array = _to_uint8(final)
    data = _png_bytes(array)
    if path is not None:
        say_if_replacing(path)
        write_bytes_atomic(path, data)
        probs = probabilities_of_file(net, path)
        measured_on = f"{path.name} read back from disk"
    else:
        from PIL import Image

        x = eval_transform(net.spec.data_config)(Image.open(io.BytesIO(data)).convert("RGB")).float().div(255)
        probs = net.probabilities(x.unsqueeze(0))[0]
        measured_on = "the PNG encoding decoded in memory (no file written)"
    cfg = net.spec.data_config
    measured_on += (
        f", through the weights' eval preprocessing (resize to {h}×{w} {cfg.get('interpolation')}, "
        f"centre crop {net.input_size[0]}×{net.input_size[1]}), the same as for any photo"
    )
    top = int(probs.argmax())
    result = DreamResult(
        image=array,
        target=c,
        target_name=net.class_names[c],
        method=method,
        probability=round(float(probs[c]), 6),
        top_class=net.class_names[top],
        top_probability=round(float(probs[top]), 6),
        start_probability=round(start_probability, 6),
        steps=state["step"],
        seconds=round(seconds, 2),
        high_frequency_energy=round(high_frequency_energy(array), 6),
        settings=settings,
        measured_on=measured_on,
        network=net.name,
        png=path,
    )
    if path is not None:
        if strip and frames:
            frames.append((state["step"], array))
            result.strip = write_bytes_atomic(path.with_name(f"{path.stem}-strip.png"), _strip_png(frames))
        result.json = path.with_suffix(".json")
        write_json(result.json, result.to_dict())
    return result


__all__ = ["METHODS", "DreamResult", "canvas_size", "dream", "high_frequency_energy", "probabilities_of_file"]
