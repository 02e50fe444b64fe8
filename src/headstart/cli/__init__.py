"""The ``headstart`` command line: thin Typer wrappers over the public Python API.

Examples:
    headstart demo
    headstart backbones
    headstart scan photos/ --json
    headstart train photos/ --out pets.safetensors
    headstart evaluate pets.safetensors test_photos/ --json
    headstart predict pets.safetensors my_cat.jpg --top-k 3
    headstart attack tf_efficientnet_lite0 dog.jpg --target 284 --eps 4/255 --transfer-to tf_efficientnet_lite2
    headstart robustness pets.safetensors test_photos/ --eps 0,1/255,2/255,4/255 --json

Results go to stdout (``--json`` for machines); progress, warnings and errors go to stderr.

One module per command group; each registers its commands on the one ``app`` of :mod:`headstart.cli._common`.
Importing them here, in this order, is what makes the commands exist (and sets their order in ``--help``).
Optional groups (``serve``, ``audit``) register when their module is present.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from headstart.cli._common import app

COMMAND_MODULES = ("data", "training", "models", "attacks", "inside")  # the order of `headstart --help`
OPTIONAL_MODULES = ("serve", "audit")  # written by other parts of the project; skipped when absent

for _name in COMMAND_MODULES:
    importlib.import_module(f"headstart.cli.{_name}")
for _name in OPTIONAL_MODULES:
    if importlib.util.find_spec(f"headstart.cli.{_name}") is not None:
        importlib.import_module(f"headstart.cli.{_name}")

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
