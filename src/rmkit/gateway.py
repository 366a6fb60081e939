"""Gateway: the ASGI layer in front of every route (bearer auth, body-size limit, one log line per request without its
body, request metrics) and Metrics, the few Prometheus series the server exports, written by hand.

Knows ASGI messages, the Prometheus text format and the error body (rmkit.contract.error_body); knows nothing of
models, routes or request schemas.
"""

from __future__ import annotations

import bisect
import hmac
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from rmkit.contract import error_body

log = logging.getLogger("rmkit.server")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """Cumulative Prometheus histogram: observe(0.3) with buckets (0.1, 0.5) counts in le=0.5 and le=+Inf."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # last slot: above every bucket
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, total = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {total}')
        braces = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{braces} {self.sum:.6f}", f"{name}_count{braces} {total}"]


class Metrics:
    """Request counts, errors, latency, batch sizes, forward time and queue depth; thread-safe; render() → text.

    Args:
        paths: the served routes; any other path is counted as "other", so label values stay bounded.
    """

    def __init__(self, paths: frozenset[str] = frozenset()) -> None:
        self.paths = paths
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.items = 0
        self.queue_depth: Callable[[], int] = lambda: 0

    def observe_request(self, path: str, status: int, seconds: float, items: int) -> None:
        path = path if path in self.paths else "other"  # bounded label values, whatever paths clients try
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)
            self.items += items

    def observe_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP rmkit_requests_total HTTP requests by path and status.",
                     "# TYPE rmkit_requests_total counter"]
            lines += [f'rmkit_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            errors: Counter[str] = Counter()
            for (p, s), n in self.requests.items():
                if s >= 400:
                    errors[p] += n
            lines += ["# HELP rmkit_errors_total Requests answered with status >= 400.",
                      "# TYPE rmkit_errors_total counter"]
            lines += [f'rmkit_errors_total{{path="{p}"}} {n}' for p, n in sorted(errors.items())]
            lines += ["# HELP rmkit_request_seconds Request latency.", "# TYPE rmkit_request_seconds histogram"]
            for p, h in sorted(self.latency.items()):
                lines += h.lines("rmkit_request_seconds", f'path="{p}"')
            lines += ["# HELP rmkit_items_total Items scored.", "# TYPE rmkit_items_total counter",
                      f"rmkit_items_total {self.items}"]
            lines += ["# HELP rmkit_batch_size Items per forward batch.", "# TYPE rmkit_batch_size histogram"]
            lines += self.batch_size.lines("rmkit_batch_size")
            lines += ["# HELP rmkit_batch_seconds Time of one batch's forward.", "# TYPE rmkit_batch_seconds histogram"]
            lines += self.batch_seconds.lines("rmkit_batch_seconds")
        lines += ["# HELP rmkit_queue_depth Items waiting for a forward.", "# TYPE rmkit_queue_depth gauge",
                  f"rmkit_queue_depth {self.queue_depth()}"]
        return "\n".join(lines) + "\n"


async def send_json(send: Callable, status: int, msg: str, type_: str,
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(msg, type_)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class Gateway:
    """ASGI middleware: 401 without the bearer token (GET /health and GET on `public_paths` exempt), 413 past max_body_bytes (Content-Length
    or streamed), then the app; afterwards one log line (method, path, status, items, ms) and the request metrics.

    The body is read here in full (it is parsed as JSON anyway) and replayed to the app, so a chunked upload cannot
    slip past the limit.
    """

    def __init__(self, app: Any, token: str | None, max_body_bytes: int, metrics: Metrics, public_paths: Sequence[str] = ()):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.public = frozenset({"/health", *public_paths})  # GET only: pages that hold no data
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, tracked_send)
        finally:
            seconds = time.perf_counter() - start
            items = int(scope.get("state", {}).get("items", 0))
            path = scope.get("path", "")
            log.info("%s %s %d items=%d %.1fms", scope.get("method"), path, status[0], items, seconds * 1000)
            self.metrics.observe_request(path, status[0] or 499, seconds, items)  # nothing sent: the client left

    async def _guarded(self, scope: dict, receive: Callable, send: Callable) -> None:
        headers = dict(scope.get("headers") or [])
        public = scope.get("method") == "GET" and scope.get("path") in self.public
        if self.expected and not public and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            return await send_json(send, 401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                                   "unauthorized", [(b"www-authenticate", b"Bearer")])
        too_large = f"request body over max_body_bytes={self.max_body_bytes}"
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await send_json(send, 413, too_large, "body_too_large")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await send_json(send, 413, too_large, "body_too_large")
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards: disconnect notices, as the app expects

        await self.app(scope, replay, send)
