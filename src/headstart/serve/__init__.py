"""``headstart serve``: trained models over HTTP — a REST API, the Open Inference Protocol, and a web page.

FastAPI + uvicorn (the ``serve`` extra: ``pip install 'headstart[serve]'``). Concurrent requests share forward
passes (:mod:`~headstart.serve.batching`), bad requests get JSON 4xx (:mod:`~headstart.serve.uploads`), and what
a photo gets is what ``headstart predict`` gives for the same file (:mod:`~headstart.serve.model`).

Example:
    >>> from headstart.serve import ServeConfig, open_models, serve
    >>> config = ServeConfig(port=8000, max_batch_size=16, max_wait_ms=5)
    >>> serve(open_models(["pets.safetensors"], config), config)  # doctest: +SKIP
"""

from __future__ import annotations

from headstart.serve.config import ServeConfig
from headstart.serve.server import model_arguments, open_models, serve

__all__ = ["ServeConfig", "model_arguments", "open_models", "serve"]
