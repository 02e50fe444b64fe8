"""Embedding engines: how one batch of preprocessed photos becomes feature vectors, in PyTorch or ONNX Runtime.

:func:`~headstart.features.extract.extract_features` decodes, batches and caches; an engine only turns a stacked
batch into numpy features. The torch engine runs the backbone in eval mode (channels-last on CPUs, bf16 autocast
when asked) and halves a batch that runs the device out of memory; the ONNX engine exports the backbone's
embedding once into the per-machine store (:func:`~headstart._io.engine_dir`) and runs it through ONNX Runtime in fp32.

Extraction asks for *views*: ``orig`` (the photo) and ``mirror`` (its mirror image), each a single-view embedding
that the cache stores on its own (:func:`view_embedder`); mirror-averaged features are the mean of the two
(:func:`~headstart.features.pipeline.average_views`, the one place that averages them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._io import atomic_path, engine_dir
from headstart.features.backbones import Backbone

if TYPE_CHECKING:
    import torch

#: The precision name under which ONNX Runtime features are cached (their own key: they differ from PyTorch's).
ONNX_PRECISION = "onnx-fp32"

#: The views a photo's features are computed in: the photo as it is, and its mirror image (left-right flip).
VIEWS = ("orig", "mirror")

#: ``(batch, views) -> features``: row ``r`` is the single-view embedding of ``batch[r]`` in ``views[r]``.
ViewEmbedder = Callable[["torch.Tensor", "list[tuple[int, str]]"], np.ndarray]

__all__ = [
    "ONNX_PRECISION",
    "VIEWS",
    "ViewEmbedder",
    "onnx_embedder",
    "prepare_model",
    "view_embedder",
]


def view_embedder(backbone: Backbone, *, precision: str, device: str) -> ViewEmbedder:
    """The function that embeds the views of a stacked CPU batch asked for: ``embed(x, [(i, view), ...])`` gives
    one row per pair, the single-view features of photo ``x[i]`` as it is (``"orig"``) or mirrored (``"mirror"``).

    Every view asked for runs in one forward pass (a photo and its mirror image side by side, as
    :meth:`~headstart.features.backbones.Backbone.mirror_views` does), so a command that needs only the mirror
    views of photos whose own view is cached computes just those.

    Example:
        >>> embed = view_embedder(load_backbone("tf_efficientnet_lite0"), precision="fp32", device="cpu")
        >>> embed(torch.zeros(2, 3, 224, 224), [(0, "orig"), (0, "mirror"), (1, "mirror")]).shape
        (3, 1280)
    """
    import torch

    plain = backbone.with_flip_average(False)  # each view on its own; averaging is the cache's business
    prepare_model(plain.model, device)
    if precision == ONNX_PRECISION:
        run = onnx_embedder(plain)
    else:
        autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

        def single(chunk: torch.Tensor) -> np.ndarray:
            return plain.features(chunk).float().cpu().numpy()

    def embed(x: torch.Tensor, wanted: list[tuple[int, str]]) -> np.ndarray:
        unknown = {view for _, view in wanted} - set(VIEWS)
        if unknown:
            raise ValueError(f"Unknown view(s) {sorted(unknown)}: a view is one of {', '.join(VIEWS)}.")
        rows = torch.tensor([i for i, _ in wanted], dtype=torch.long)
        mirror = torch.tensor([view == "mirror" for _, view in wanted])
        views = x.index_select(0, rows)
        if bool(mirror.any()):
            views[mirror] = views[mirror].flip(-1)
        if precision == ONNX_PRECISION:
            return run(views.contiguous().numpy())
        return _embed_fitting_memory(single, _on_device(views, device), autocast)

    return embed


def _on_device(x: torch.Tensor, device: str) -> torch.Tensor:
    import torch

    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if device == "cpu" else x


def prepare_model(model: Any, device: str) -> None:
    """Eval mode on ``device``, channels-last on CPUs (faster there); moving and re-laying weights only when needed,
    since walking every parameter costs ~8 ms, a third of a one-photo `predict`.

    Example:
        >>> prepare_model(load_backbone("tf_efficientnet_lite0").model, "cpu")
    """
    import torch

    model.eval()
    first = next(model.parameters(), None)
    if first is None:
        return
    target = torch.device(device)
    if first.device.type != target.type or (target.index is not None and first.device.index != target.index):
        model.to(target)
    if target.type == "cpu":
        kernel = next((p for p in model.parameters() if p.dim() == 4), None)
        if kernel is not None and not kernel.is_contiguous(memory_format=torch.channels_last):
            model.to(memory_format=torch.channels_last)


def _embed_fitting_memory(embed: Callable[[Any], np.ndarray], x: Any, autocast: Any) -> np.ndarray:
    """Run ``embed`` on the batch; when the device runs out of memory, on halves of it (down to one photo)."""
    import torch

    try:
        with torch.inference_mode(), autocast:
            return embed(x)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if "out of memory" not in str(exc).lower() or len(x) == 1:
            raise
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(x) // 2
        return np.concatenate(
            [_embed_fitting_memory(embed, x[:half], autocast), _embed_fitting_memory(embed, x[half:], autocast)]
        )


def onnx_embedder(backbone: Backbone) -> Callable[[np.ndarray], np.ndarray]:
    """The backbone's embedding as an ONNX Runtime session, exported once into the per-machine store.

    Example:
        >>> run = onnx_embedder(load_backbone("tf_efficientnet_lite0"))
        >>> run(np.zeros((1, 3, 224, 224), np.float32)).shape
        (1, 1280)
    """
    import torch

    from headstart._onnx import require_onnx, session

    require_onnx()
    path = engine_dir() / f"{backbone.spec.fingerprint}.features.onnx"
    if not path.is_file():
        backbone.check_weights()  # (exported under the fingerprint: the network must hold the weights it names)
        size = backbone.spec.data_config["input_size"]
        model = backbone.embedding_module().eval().to(memory_format=torch.contiguous_format)
        with atomic_path(path) as tmp:
            torch.onnx.export(
                model,
                (torch.zeros(1, *size),),
                str(tmp),
                input_names=["image"],
                output_names=["features"],
                dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    onnx_session = session(path)
    return lambda images: onnx_session.run(None, {"image": images.astype(np.float32)})[0]
