"""The reward server: ServeConfig (YAML), create_app(load_backend, cfg) → FastAPI, serve(cfg). One process speaks
rmkit's /score, OpenRLHF /get_reward, NeMo Gym /verify (+ companions), vLLM /pooling, /classify and /v1/models,
SGLang /classify (`text`) and LLaMA-Factory /v1/score/evaluation, plus /health and Prometheus /metrics.

Requests are rendered and tokenised in a worker thread, gathered across requests by the MicroBatcher and scored in
its single forward thread: the event loop never runs a forward. Request bodies are never logged. The routes live in
rmkit.routes, the encode → batch → shape path in rmkit.service, wire formats in rmkit.protocols, auth/limits/metrics
in rmkit.gateway; this module wires them together at start-up and knows no model internals.

FastAPI is imported inside create_app, so that reading a ServeConfig needs no web framework.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from rmkit.config import ConfigError, Strict, merge_mappings, parse_overrides
from rmkit.protocols import MAX_CHARS, MAX_ITEMS
from rmkit.shaping import ShapingConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rmkit.service import RewardBackend

log = logging.getLogger(__name__)


class ServeConfig(Strict):
    """`rmkit serve` settings; YAML mirrors the fields, `shaping:` is a ShapingConfig section."""

    model_dirs: list[str] = Field(min_length=1)
    """rmkit model directories; several form an ensemble (combined by shaping.ensemble)."""
    host: str = "127.0.0.1"
    """Interface to bind; 127.0.0.1 keeps the server local. Use 0.0.0.0 only with a token or a trusted network."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    token: str | None = Field(None, min_length=1)
    """Bearer token every request but GET /health must send; unset: $RMKIT_TOKEN, else no auth."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads for the forward (None: torch's default, one per core). On a small CPU, fewer threads
    than cores leaves one for the event loop that parses and tokenises the next requests."""
    max_length: int | None = Field(None, gt=0)
    """Override every model's max_length (tokens; longer texts lose tokens from the left)."""
    batch_tokens: int = Field(16384, gt=0)
    """Token budget of one batch: requests are gathered up to it, and each forward's padded size stays within it."""
    batch_size: int = Field(64, ge=1)
    """Most rows in one forward (and in one gathered batch)."""
    max_wait_ms: float = Field(5.0, ge=0)
    """How long the first request of a batch waits for others to join it."""
    queue_size: int = Field(4096, ge=1)
    """Most items waiting for a forward; beyond it requests get 503 with Retry-After."""
    request_timeout_s: float = Field(60.0, gt=0)
    """Deadline of one request from arrival to answer; past it, 504 (OpenRLHF's client gives up at 180 s)."""
    max_body_bytes: int = Field(16 * 2**20, ge=1024)
    """Largest request body in bytes; larger bodies get 413."""
    max_items: int = Field(1024, ge=1, le=MAX_ITEMS)
    """Most items (texts or pairs) in one request; more get 422."""
    max_text_chars: int = Field(100_000, ge=1, le=MAX_CHARS)
    """Most characters in one item (prompt and response together); longer items get 422."""
    shutdown_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM/SIGINT, how long in-flight requests may take to finish before the process exits."""
    shaping: ShapingConfig = ShapingConfig()
    """How raw scores become rewards: normalisation, clipping, length penalty, threshold, ensemble rule."""

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServeConfig:
        if self.queue_size < self.max_items:
            raise ValueError(f"queue_size={self.queue_size} < max_items={self.max_items}: a full-size request could "
                             "never be queued; raise queue_size or lower max_items")
        return self


def load_serve_config(source: str | Path, overrides: Sequence[str] = ()) -> ServeConfig:
    """A ServeConfig from a YAML file or a bare model directory, plus dotted key=value overrides.

    Example: load_serve_config("runs/x/model", ["port=9000", "shaping.clip=null"]). The token falls back to
    $RMKIT_TOKEN when neither the file nor an override sets it.
    """
    path = Path(source)
    if path.is_dir():
        raw: Any = {"model_dirs": [str(path)]}
    else:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{source}: neither a model directory nor a readable YAML config: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a serve config is a YAML mapping (model_dirs, host, port, shaping, ...)")
    raw = merge_mappings(raw, parse_overrides(list(overrides)))
    if raw.get("token") is None and os.environ.get("RMKIT_TOKEN"):
        raw["token"] = os.environ["RMKIT_TOKEN"]
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}  {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"{source} is not a valid serve config:\n" + "\n".join(lines)) from None


def create_app(load_backend: Callable[[], RewardBackend], cfg: ServeConfig) -> FastAPI:
    """The HTTP app. `load_backend` runs once at start-up and returns an ensemble.RewardPath (tests may pass a fake
    with the same shape, service.RewardBackend)."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    from rmkit.batcher import MicroBatcher
    from rmkit.gateway import Gateway, Metrics
    from rmkit.routes import ROUTERS
    from rmkit.service import Limits, RewardService

    metrics = Metrics(frozenset(route.path for router in ROUTERS for route in router.routes))
    limits = Limits(cfg.max_items, cfg.max_text_chars, cfg.request_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = await run_in_threadpool(load_backend)  # once, before the first request; never at import
        batcher = MicroBatcher(backend.forward, max_tokens=cfg.batch_tokens, max_batch=cfg.batch_size,
                               max_wait_s=cfg.max_wait_ms / 1000, max_queue=cfg.queue_size,
                               on_batch=metrics.observe_batch)
        metrics.queue_depth = lambda: batcher.depth
        app.state.service = RewardService(backend, batcher, limits)
        batcher.start()
        log.info("serving %s on %s:%s", backend.name, cfg.host, cfg.port)
        yield
        await batcher.stop()  # uvicorn has already let in-flight requests finish

    app = FastAPI(title="rmkit reward server", lifespan=lifespan)
    app.state.metrics = metrics
    app.add_middleware(Gateway, token=cfg.token, max_body_bytes=cfg.max_body_bytes, metrics=metrics)
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Bad JSON → 400, invalid fields → 422 (never echoing the body), a full queue → 503 + Retry-After, else 500."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from rmkit.batcher import QueueFull

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]  # no "input": bodies are never echoed into errors or logs
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        return JSONResponse({"detail": errors}, status_code=status)

    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))}
        return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_exception_handler(Exception, crashed)


def serve(cfg: ServeConfig) -> None:
    """Load the model(s) and serve until SIGINT/SIGTERM; in-flight requests get shutdown_timeout_s to finish."""
    import uvicorn

    from rmkit.ensemble import RewardPath

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.token:
        log.warning("binding %s without a token: anyone who can reach this port can use the server", cfg.host)

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)

    def load() -> RewardPath:
        return RewardPath.load(cfg.model_dirs, cfg.shaping, device=cfg.device, max_length=cfg.max_length,
                               max_tokens=cfg.batch_tokens, max_batch=cfg.batch_size)

    uvicorn.run(create_app(load, cfg), host=cfg.host, port=cfg.port, access_log=False, log_level="info",
                timeout_graceful_shutdown=cfg.shutdown_timeout_s)
