"""Serve an ASGI app with uvicorn on a real loopback port, in a background thread."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn

from gateway.config import ServerConfig
from gateway.http.server import uvicorn_config


class ServedApp:
    """``with ServedApp(app) as served: served.url`` -- stops the server on exit.

    ``server``: serve as ``switchyard serve`` does, under that config's
    connection limits and timeouts (its host and port are replaced by
    127.0.0.1 and a free port). Without it, plain uvicorn (the fake upstreams).
    ``config``: more of uvicorn's options.
    """

    def __init__(self, app: Any, server: ServerConfig | None = None, **config: Any) -> None:
        config.setdefault("log_level", "warning")
        config.setdefault("lifespan", "on")
        if server is None:
            uvicorn_settings = uvicorn.Config(app, host="127.0.0.1", port=0, **config)
        else:
            uvicorn_settings = uvicorn_config(app, server.model_copy(update={"host": "127.0.0.1", "port": 0}), **config)
        self._server = uvicorn.Server(uvicorn_settings)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def __enter__(self) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
