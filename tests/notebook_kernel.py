"""Run a notebook in a real Jupyter kernel of this interpreter (nbclient + ipykernel), as the notebook tests do."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"


def execute_notebook(notebook: Any, folder: Path, timeout: int = 900) -> Any:
    """``notebook`` (an nbformat node) executed top to bottom with ``folder`` as its working directory, in a fresh
    ipykernel of this Python with this checkout's headstart first on its path; returns it with its outputs.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised (the message holds the cell and its traceback).
    """
    import nbclient

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(notebook, timeout=timeout, resources={"metadata": {"path": str(folder)}})
    client.km = client.create_kernel_manager()
    client.km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client.execute(env=env)
    return notebook
