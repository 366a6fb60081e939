"""The reward server: ServeConfig (YAML), create_app(load_backend, cfg) → FastAPI, serve(cfg). One process speaks
rmkit's /score, OpenRLHF /get_reward, NeMo Gym /verify (+ companions), vLLM /pooling, /classify and /v1/models,
SGLang /classify (`text`) and LLaMA-Factory /v1/score/evaluation, plus /health and Prometheus /metrics.

Requests are rendered and tokenised in a worker thread, gathered across requests by the MicroBatcher and scored in
its single forward thread: the event loop never runs a forward. Request bodies are never logged. The routes live in
rmkit.routes, the encode → batch → shape path in rmkit.service, wire formats in rmkit.protocols, the shared contract
(request limits, the one error body, the served OpenAPI document) in rmkit.contract, auth/body size/metrics in
rmkit.gateway; this module wires them together at start-up, turns every error into that one body, and knows no model
internals.

ServeConfig lives in rmkit.serveconfig (re-exported here), so that reading one needs no web framework.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rmkit import playground
from rmkit.batcher import MicroBatcher, QueueFull
from rmkit.contract import MAX_TOKEN_ID, ApiError, Limits, document_errors, documented, error_body, served_schema, use_limits
from rmkit.ensemble import RewardPath
from rmkit.gateway import Gateway, Metrics
from rmkit.moments import load_moments, save_moments
from rmkit.routes import ROUTERS
from rmkit.serveconfig import ServeConfig as ServeConfig  # re-exported: callers import it from here
from rmkit.serveconfig import load_serve_config as load_serve_config
from rmkit.service import ClientGone, RewardBackend, RewardService

log = logging.getLogger(__name__)


def create_app(load_backend: Callable[[], RewardBackend], cfg: ServeConfig) -> FastAPI:
    """The HTTP app. `load_backend` runs once at start-up and returns an ensemble.RewardPath (tests may pass a fake
    with the same shape, service.RewardBackend)."""
    routers = [*ROUTERS, playground.router(cfg.model_dirs, cfg.playground_examples)] if cfg.playground else ROUTERS
    metrics = Metrics(frozenset(route.path for router in routers for route in router.routes))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = await run_in_threadpool(load_backend)  # once, before the first request; never at import
        batcher = MicroBatcher(backend.forward, max_tokens=cfg.batch_tokens, max_batch=cfg.max_batch,
                               max_wait_s=cfg.max_wait_ms / 1000, max_queue=cfg.queue_size,
                               on_batch=metrics.observe_batch)
        metrics.queue_depth = lambda: batcher.depth
        if cfg.stats_path is not None:
            backend.running = load_moments(cfg.stats_path, backend.running)
        app.state.service = service = RewardService(backend, batcher, cfg.request_timeout_s,
                                                    stats_path=cfg.stats_path,
                                                    stats_save_interval_s=cfg.stats_save_interval_s)
        batcher.start()
        log.info("serving %s on %s:%s%s", backend.name, cfg.host, cfg.port,
                 f"; playground at http://{cfg.host}:{cfg.port}/" if cfg.playground else "")
        yield
        await batcher.stop()  # uvicorn has already let in-flight requests finish
        service.close()
        if cfg.stats_path is not None:
            save_moments(backend.running, cfg.stats_path)

    app = FastAPI(title="rmkit reward server", lifespan=lifespan, responses=documented(413))
    app.state.metrics = metrics
    app.add_middleware(Gateway, token=cfg.token, max_body_bytes=cfg.max_body_bytes, metrics=metrics,
                       public_paths=playground.PAGE_PATHS if cfg.playground else ())
    app.add_middleware(Limited, limits=Limits(cfg.max_items, cfg.max_text_chars))
    add_error_handlers(app)
    for router in routers:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        """FastAPI's document with the enforced limits (and the model's vocabulary, once loaded) and every error."""
        if app.openapi_schema is None:
            vocab = getattr(getattr(app.state, "service", None), "backend", None)
            vocab = getattr(vocab, "vocab_size", None)
            ceiling = vocab - 1 if isinstance(vocab, int) else MAX_TOKEN_ID
            schema = served_schema(FastAPI.openapi(app), Limits(cfg.max_items, cfg.max_text_chars, ceiling))
            app.openapi_schema = document_errors(schema, token=cfg.token is not None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class Limited:
    """ASGI middleware: every request is validated against the server's limits (max_items, max_text_chars)."""

    def __init__(self, app: Any, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        with use_limits(self.limits):
            await self.app(scope, receive, send)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as the one body (contract.ErrorBody): bad JSON → 400, invalid fields → 422 (never echoing the
    body), ApiError as raised, unknown route or method → 404/405, a full queue → 503 + Retry-After, else 500."""
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]  # no "input": bodies are never echoed into errors or logs
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        return JSONResponse({"detail": errors}, status_code=status)

    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.msg, exc.type), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)

    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))}
        return JSONResponse(error_body(str(exc), "queue_full"), status_code=503, headers=headers)

    async def client_gone(request: Request, exc: ClientGone) -> JSONResponse:  # sent nowhere; counted as 499
        return JSONResponse(error_body("the client closed the connection", "client_gone"), status_code=499)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse(error_body("internal error", "internal_error"), status_code=500)

    for kind, handler in ((RequestValidationError, invalid), (ApiError, refused), (HTTPException, http_error),
                          (QueueFull, queue_full), (ClientGone, client_gone), (Exception, crashed)):
        app.add_exception_handler(kind, handler)


def load_reward_path(cfg: ServeConfig) -> RewardPath:
    """The RewardPath a ServeConfig describes (what `rmkit serve` loads at start-up)."""
    return RewardPath.load(cfg.model_dirs, cfg.shaping, device=cfg.device, max_length=cfg.max_length,
                           max_tokens=cfg.batch_tokens, max_batch=cfg.max_batch, dtype=cfg.dtype,
                           tokenizer=cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)


def serve(cfg: ServeConfig) -> None:
    """Load the model(s) and serve until SIGINT/SIGTERM; in-flight requests get shutdown_timeout_s to finish."""
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.token:
        log.warning("binding %s without a token: anyone who can reach this port can use the server", cfg.host)

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)

    uvicorn.run(create_app(lambda: load_reward_path(cfg), cfg), host=cfg.host, port=cfg.port, access_log=False, log_level="info",
                timeout_graceful_shutdown=cfg.shutdown_timeout_s)
