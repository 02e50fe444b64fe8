"""Shared machinery of the packages' ``__init__``: public names re-exported lazily, so importing a package is cheap."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], modules: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``: each name in ``modules[m]`` imports ``package.m`` on
    first use and is then kept in the package's ``namespace``."""
    exports = {name: module for module, names in modules.items() for name in names}
    public = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(import_module(f"{package}.{exports[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *public})

    return public, __getattr__, __dir__
