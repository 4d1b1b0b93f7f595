"""A FastAPI app served by uvicorn in a thread of the test process, on a loopback port the OS picks:
the fake servers' (fake OpenAI endpoint, fake LDA pair) one way to start and stop."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


class AppThread:
    """`start(app)` serves `app` and returns its port once uvicorn is up; `stop()` ends it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, app) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # bound here and handed over: no other process can take the port meanwhile
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        return sock.getsockname()[1]

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
