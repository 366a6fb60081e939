"""Test helpers for the reward server: a real uvicorn on 127.0.0.1 (ephemeral port) in a thread, and slow or
counting wrappers around a real Ensemble. Imported by the server, client and load tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from rmkit.ensemble import Ensemble


class SlowEnsemble(Ensemble):
    """A real Ensemble whose every forward first sleeps `delay` seconds, and records the batch sizes and threads."""

    def __init__(self, scorers: Any, shaping: Any = None, delay: float = 0.2):
        super().__init__(scorers, shaping)
        self.delay, self.batches, self.threads = delay, [], set()

    def forward(self, encoded):
        self.batches.append(len(encoded))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return super().forward(encoded)


class LiveServer:
    def __init__(self, server: uvicorn.Server, thread: threading.Thread):
        self.server, self.thread = server, thread

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


@contextmanager
def live_server(app: Any, graceful: float = 10.0) -> Iterator[LiveServer]:
    """Serve `app` with uvicorn on 127.0.0.1:0 until the block ends (then a graceful shutdown)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=graceful, lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # not the main thread
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    live = LiveServer(server, thread)
    try:
        yield live
    finally:
        live.stop()
