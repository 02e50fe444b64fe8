"""The ``serve`` command: trained models over HTTP (REST + KServe v2 + a drag-and-drop page)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer

from headstart.cli._common import (
    CacheDirOpt,
    EngineOpt,
    MaxPixelsOpt,
    PrecisionOpt,
    app,
    handles_errors,
    max_pixels_or_none,
    use_cache_dir,
)
from headstart.errors import HeadstartError

_NEEDS = ("fastapi", "uvicorn", "multipart")


@app.command()
@handles_errors
def serve(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Model files written by `headstart train`, as PATH or NAME=PATH (the name clients use; default: the file name)."
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 lets others in (set an API key: HEADSTART_API_KEY or --api-key-file)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 = any free port; the one chosen is printed).")] = 8000,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            help="Most images per forward pass when requests arrive together (1 = no batching). Default: 16, or 1 for the OpenVINO engine, whose one-photo pass is as cheap per photo as a batch.",
            show_default=False,
        ),
    ] = None,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long the first image of a batch waits for others, in ms.")
    ] = 5.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MB; bigger ones get 413.")] = 20.0,
    max_files: Annotated[int, typer.Option(help="Most images in one request; more get 413.")] = 16,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="HEADSTART_API_KEY",
            show_envvar=True,
            help="Require this key on every API route (header X-API-Key or Authorization: Bearer). Set it in the "
            "environment variable (export HEADSTART_API_KEY=...) or use --api-key-file: a key written on the command "
            "line is readable by every user of the machine in the process list.",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="Read the API key from the first line of this file (chmod 600); see --api-key."),
    ] = None,
    precision: PrecisionOpt = "auto",
    engine: EngineOpt = "auto",
    max_pixels: MaxPixelsOpt = 89_478_485,
    access_log: Annotated[bool, typer.Option(help="One line per request on stderr.")] = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Serve models over HTTP: /v1/predict, /v1/explain, /v1/models, KServe v2, /metrics, /docs, and a page at /.

    Ctrl-C or SIGTERM stops it: requests in flight are answered first, then it exits 0.
    """
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise HeadstartError(
            f"headstart serve needs {', '.join(missing)}: install the serve extra, pip install 'headstart[serve]'."
        )
    use_cache_dir(cache_dir)
    from headstart._console import say
    from headstart.serve import ServeConfig, open_models
    from headstart.serve import serve as run_server
    from headstart.serve.config import api_key_from_file

    if api_key_file is not None:
        if api_key is not None and _on_command_line("--api-key"):
            raise HeadstartError("Give the API key one way: --api-key-file or --api-key, not both.")
        api_key = api_key_from_file(api_key_file)
    elif api_key is not None and _on_command_line("--api-key"):
        say(
            "warning: --api-key on the command line is readable by every user of this machine (ps, /proc/PID/cmdline);"
            " set HEADSTART_API_KEY or use --api-key-file instead."
        )

    config = ServeConfig(
        host=host,
        port=port,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_upload_mb=max_upload_mb,
        max_files=max_files,
        api_key=api_key,
        precision=precision,
        engine=engine,
        max_pixels=max_pixels_or_none(max_pixels),
        access_log=access_log,
    )
    status = run_server(open_models(models, config), config)
    if status:
        raise typer.Exit(status)


def _on_command_line(option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in sys.argv[1:])
