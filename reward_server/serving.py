"""Running the app under uvicorn: in the foreground (``psr serve``) or on a thread (demo, tests)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def make_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server whose start-up stops when the app's models fail to load."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    state = getattr(app.state, "psr", None)
    if state is not None:
        state.on_load_failure = lambda _message: setattr(server, "should_exit", True)
    return server


class BackgroundServer:
    """Serve an app on a thread; ``with BackgroundServer(app) as url: ...``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning"):
        self._log_level = logging.getLevelName(log_level.upper())
        self._server_log = logging.getLogger("reward_server")
        self._server_log_level = self._server_log.level
        self.host = host
        self.port = port or free_port(host)
        self.server = make_server(app, self.host, self.port, log_level)
        self._thread = threading.Thread(target=self.server.run, name="psr-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        # the server's own INFO lines (a line per reward loaded) follow log_level too: the command
        # that embeds the server says what it hosts; a failure to load still shows (WARNING and up)
        if not self._server_log.isEnabledFor(logging.DEBUG):
            self._server_log.setLevel(max(self._log_level, self._server_log.getEffectiveLevel()))
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server_log.setLevel(self._server_log_level)
                raise RuntimeError(f"the reward server did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._server_log.setLevel(self._server_log_level)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
