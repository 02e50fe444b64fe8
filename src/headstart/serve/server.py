"""Running the app: bind the socket, start uvicorn, load the models behind it, stop cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from headstart._console import say
from headstart.errors import HeadstartError
from headstart.serve.config import ServeConfig
from headstart.serve.model import ServedModel, model_name


def _uvicorn_server(config: Any, on_stop: Any, on_signals_caught: Any) -> Any:
    """uvicorn's Server, except that a stop signal is not raised again once it has shut down gracefully: for a
    server, Ctrl-C or SIGTERM is the normal end (exit 0), not an interruption of work (the CLI's 130). The signal
    also calls ``on_stop`` at once, so work not yet started is refused (JSON 503) instead of waited for.

    ``on_signals_caught`` runs once the stop signals are the server's: whatever tells a person (or a script) that
    the server is up must come from there, or a Ctrl-C right after it would still meet the CLI's handler (130)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            on_stop()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                on_signals_caught()
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                on_signals_caught()
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)


def model_arguments(args: Sequence[str | os.PathLike[str]]) -> list[tuple[str, Path]]:
    """``[NAME=]PATH`` arguments as ``(name, path)``: the name defaults to the file's stem."""
    out = []
    for arg in args:
        text = str(arg)
        name, sep, path = text.partition("=")
        if sep and name and "/" not in name and not Path(text).exists():
            out.append((name, Path(path)))
        else:
            out.append((model_name(text), Path(text)))
    return out


def open_models(args: Sequence[str | os.PathLike[str]], config: ServeConfig) -> list[ServedModel]:
    """Read every model file now (fast, no torch), so a wrong path fails before the server binds."""
    models = []
    for name, path in model_arguments(args):
        if not path.is_file():
            raise HeadstartError(f"{path}: no such model file (a .safetensors file written by `headstart train`).")
        models.append(
            ServedModel.open(path, name, precision=config.precision, engine=config.engine, max_pixels=config.max_pixels)
        )
    return models


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or a :class:`HeadstartError` that says what to change."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise HeadstartError(
                f"Port {port} on {host} is in use (another server?): pick another with --port, "
                "or --port 0 for any free one."
            ) from None
        raise HeadstartError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}).") from None
    sock.listen(2048)
    return sock


def url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(models: Sequence[ServedModel], config: ServeConfig) -> int:
    """Serve ``models`` until Ctrl-C or SIGTERM; returns the exit status (0 after a clean stop, 2 when a model
    could not be loaded).

    The socket is bound first (a busy port is a one-line error), the server listens at once and loads the
    networks behind it (``/readyz`` turns 200 when they are warm), and on a signal uvicorn stops accepting,
    finishes the requests in flight and the batchers finish what is queued.

    Example:
        >>> serve(open_models(["pets.safetensors"], ServeConfig()), ServeConfig())  # doctest: +SKIP
    """
    import uvicorn

    from headstart.serve.app import create_app
    from headstart.serve.limits import open_files_for, protocol_class
    from headstart.serve.state import ServerState

    state = ServerState(models, config)
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    address = url(config.host, port)
    app = create_app(state)
    limits = config.limits
    uv_config = uvicorn.Config(
        app,
        http=protocol_class(limits, open_files_for(limits.max_connections)),
        log_level="warning",
        access_log=config.access_log,
        lifespan="on",
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=limits.shutdown_grace_s,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        server_header=False,
    )
    if config.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    status = {"code": 0}

    def listening() -> None:
        say(f"listening on {address} (loading {', '.join(m.name for m in models)} …)")
        if not config.loopback and not config.api_key:
            say(
                f"warning: {config.host} lets other machines call this server and no API key is set (HEADSTART_API_KEY or --api-key-file)."
            )

    server = _uvicorn_server(uv_config, state.begin_shutdown, listening)

    def ready() -> None:
        say(
            f"ready: {len(models)} model(s) ({', '.join(m.name for m in models)}) at {address}  "
            f"(page {address}/, API docs {address}/docs; Ctrl-C stops)"
        )

    def failed(message: str) -> None:
        say(f"error: {message}")
        status["code"] = 2  # the CLI's "bad input": a model file that does not load
        server.should_exit = True

    state.on_ready, state.on_failure = ready, failed
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if state.loading:
            say("stopping: letting the model load that is under way finish first …")
        state.finish_loading()
        state.close()
    say("stopped" if status["code"] == 0 else "stopped after an error")
    return status["code"]


__all__ = ["bind", "model_arguments", "open_models", "serve", "url"]
