"""The reward server: ServeConfig (YAML), create_app(load_backend, cfg) → FastAPI, serve(cfg). One process speaks
rmkit's /score, OpenRLHF /get_reward, NeMo Gym /verify (+ companions), vLLM /pooling, /classify and /v1/models,
SGLang /classify (`text`) and LLaMA-Factory /v1/score/evaluation, plus /health and Prometheus /metrics.

Which number each route returns: the RL-trainer routes (/score, /get_reward, /verify, /v1/score/evaluation) return
shaped rewards (ServeConfig.shaping); the inference-engine routes (vLLM, SGLang) return the model's raw score, as
those engines do (vLLM: sigmoid unless use_activation is false).

Requests are rendered and tokenised in a worker thread, gathered across requests by the MicroBatcher and scored in
its single forward thread: the event loop never runs a forward. Request bodies are never logged. The wire schemas
live in rmkit.protocols, auth/limits/metrics in rmkit.gateway; this module knows no model internals.

No `from __future__ import annotations` here: FastAPI must resolve the route annotations, which name classes
imported inside create_app.
"""

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from rmkit.config import ConfigError, Strict, merge_mappings, parse_overrides
from rmkit.protocols import MAX_CHARS, MAX_ITEMS
from rmkit.shaping import ShapingConfig, dapo_length_penalty, linear_length_penalty

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
    def _queue_holds_a_request(self) -> "ServeConfig":
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


def text_chars(x: Any) -> int:
    """Characters of a text or of a message list's contents."""
    if isinstance(x, str):
        return len(x)
    return sum(len(str(m.get("content") or "")) for m in x) if isinstance(x, list) else 0


def length_penalties(cfg: ShapingConfig, lengths: Sequence[int]) -> np.ndarray | None:
    """The length-penalty part of each shaped reward (the /verify reward component), None when off."""
    if cfg.length_penalty == "linear":
        return linear_length_penalty(np.asarray(lengths), cfg.length_threshold, cfg.length_coef)
    if cfg.length_penalty == "dapo":
        return dapo_length_penalty(np.asarray(lengths), cfg.dapo_max_length, cfg.dapo_cache)
    return None


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))  # no overflow either side


def aggregate(verify_responses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """NeMo Gym /aggregate_metrics: mean/max/min/median/std of every numeric field, overall and per task."""
    def stats(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        keys = sorted({k for r in rows for k, v in r.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_ng_")})
        out = {}
        with np.errstate(all="ignore"):
            for k in keys:
                v = np.array([r[k] for r in rows if isinstance(r.get(k), (int, float))], dtype=np.float64)
                v = v[np.isfinite(v)]
                if v.size:
                    out.update({f"mean/{k}": v.mean(), f"max/{k}": v.max(), f"min/{k}": v.min(),
                                f"median/{k}": np.median(v), f"std/{k}": v.std()})
        return {k: float(x) for k, x in out.items() if np.isfinite(x)}  # JSON has no inf (huge inputs overflow)

    if not verify_responses:
        return {"group_level_metrics": [], "agent_metrics": {}, "key_metrics": {}}
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in verify_responses:
        groups.setdefault(r.get("_ng_task_index"), []).append(r)
    agent = stats(verify_responses)
    return {
        "group_level_metrics": [{"_ng_task_index": k, **stats(rows)} for k, rows in groups.items()],
        "agent_metrics": agent,
        "key_metrics": {k: v for k, v in agent.items() if k.startswith("mean/")},
    }


def create_app(load_backend: Callable[[], Any], cfg: ServeConfig):
    """The HTTP app. `load_backend` runs once at start-up and returns an rmkit.ensemble.Ensemble (tests may pass a
    fake with the same encode_pairs / encode_texts / forward / shape / name / member_names / max_length / shaping)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse

    from rmkit import protocols as P
    from rmkit.batcher import MicroBatcher, QueueFull
    from rmkit.ensemble import Encoded
    from rmkit.gateway import Gateway, Metrics
    from rmkit.scoring import _content_text, gym_prompt, gym_response

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = await run_in_threadpool(load_backend)  # once, before the first request; never at import
        batcher = MicroBatcher(lambda items: backend.forward(items).T, max_tokens=cfg.batch_tokens,
                               max_batch=cfg.batch_size, max_wait_s=cfg.max_wait_ms / 1000, max_queue=cfg.queue_size,
                               on_batch=metrics.observe_batch)
        metrics.queue_depth = lambda: batcher.depth
        app.state.backend, app.state.batcher = backend, batcher
        batcher.start()
        log.info("serving %s on %s:%s", backend.name, cfg.host, cfg.port)
        yield
        await batcher.stop()  # uvicorn has already let in-flight requests finish

    app = FastAPI(title="rmkit reward server", lifespan=lifespan)
    app.add_middleware(Gateway, token=cfg.token, max_body_bytes=cfg.max_body_bytes, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]  # no "input": bodies are never echoed into errors or logs
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        return JSONResponse({"detail": errors}, status_code=status)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))}
        return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    def check_limits(sizes: Sequence[int]) -> None:
        if len(sizes) > cfg.max_items:
            raise HTTPException(422, f"too many items: {len(sizes)} > max_items={cfg.max_items}; split the request")
        for i, n in enumerate(sizes):
            if n > cfg.max_text_chars:
                raise HTTPException(422, f"item {i} has {n} characters > max_text_chars={cfg.max_text_chars}")

    def encode(fn: Callable[[], list[Encoded]]) -> list[Encoded]:
        try:
            return fn()
        except Exception as exc:  # a chat template or tokenizer refusing this input is the input's fault
            raise HTTPException(422, f"cannot render or tokenise the input: {type(exc).__name__}: {exc}") from None

    async def run(request: Request, fn: Callable[[], list[Encoded]]) -> tuple[list[Encoded], Any]:
        """Encode off the loop, score through the batcher within the deadline, shape; (encoded, ShapedRewards)."""
        backend, batcher, started = request.app.state.backend, request.app.state.batcher, time.perf_counter()
        batcher.incoming += 1  # the batcher may hold a batch open for this request while it is tokenised
        try:
            encoded = await run_in_threadpool(encode, fn)
        finally:
            batcher.incoming -= 1
        request.state.items = len(encoded)
        if not encoded:
            return encoded, backend.shape(np.zeros((len(backend.member_names), 0)), encoded)
        future = batcher.put(encoded, sum(e.tokens for e in encoded))  # no await since `incoming -= 1`
        left = cfg.request_timeout_s - (time.perf_counter() - started)
        try:
            cols = await asyncio.wait_for(future, max(left, 0.001))
        except asyncio.TimeoutError:
            raise HTTPException(504, f"not scored within request_timeout_s={cfg.request_timeout_s}") from None
        raw = np.array(cols, dtype=np.float64).reshape(len(encoded), -1).T  # (M, N)
        return encoded, backend.shape(raw, encoded)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return {"status": "ok", "model": request.app.state.backend.name, "queue_depth": request.app.state.batcher.depth}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        return metrics.render()

    @app.post("/score")
    async def score(body: P.ScoreRequest, request: Request) -> P.ScoreResponse:
        """rmkit's own API: shaped and raw rewards of prompt + response items (or chat messages)."""
        pairs = [item.split() for item in body.items]
        check_limits([text_chars(p) + text_chars(r) for p, r in pairs])
        backend = request.app.state.backend
        _, out = await run(request, lambda: backend.encode_pairs([p for p, _ in pairs], [r for _, r in pairs]))
        ensemble = out.members is not None
        return P.ScoreResponse(
            model=backend.name, rewards=out.shaped.tolist(), raw_rewards=out.raw.tolist(),
            passed=None if out.passed is None else out.passed.tolist(),
            member_names=backend.member_names if ensemble else None,
            member_rewards=out.members.T.tolist() if ensemble else None,
            reward_std=out.member_std.tolist() if ensemble else None,
        )

    @app.post("/get_reward")
    async def get_reward(body: P.GetRewardRequest, request: Request) -> P.GetRewardResponse:
        """OpenRLHF remote reward model: shaped rewards of rendered query texts; empty lists give empty answers."""
        if not body.query:
            return P.GetRewardResponse(rewards=[], scores=[], extra_logs={})
        if body.prompts is not None and len(body.prompts) != len(body.query):
            raise HTTPException(422, f"{len(body.prompts)} prompts for {len(body.query)} queries")
        check_limits([len(q) for q in body.query])
        backend = request.app.state.backend
        _, out = await run(request, lambda: backend.encode_texts(body.query, body.prompts))
        logs = {"raw_reward": out.raw.tolist()}
        if out.passed is not None:
            logs["passed"] = out.passed.astype(float).tolist()
        return P.GetRewardResponse(rewards=out.shaped.tolist(), scores=out.shaped.tolist(), extra_logs=logs)

    @app.post("/verify")
    async def verify(body: P.VerifyRequest, request: Request) -> dict[str, Any]:
        """NeMo Gym: the request echoed back plus `reward` (and `reward_components` when a length penalty is on)."""
        echo = body.model_dump(exclude_unset=True)
        try:
            prompt = gym_prompt(body.responses_create_params.input, "responses_create_params")
            response = gym_response(body.response.output, "response")
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        check_limits([text_chars(prompt) + len(response)])
        backend = request.app.state.backend
        encoded, out = await run(request, lambda: backend.encode_pairs([prompt], [response]))
        result = {**echo, **out.item(0)}
        penalty = length_penalties(backend.shaping, [encoded[0].response_tokens])
        if penalty is not None:  # components sum to reward exactly: model part = reward − penalty
            parts = {"reward_model": result["reward"] - float(penalty[0]), "length_penalty": float(penalty[0])}
            result.update(reward_components=parts, **parts)
        return result

    @app.post("/seed_session")
    async def seed_session(body: dict[str, Any] | None = None) -> dict[str, Any]:
        return {}

    @app.post("/aggregate_metrics")
    async def aggregate_metrics(body: P.AggregateMetricsRequest) -> dict[str, Any]:
        return await run_in_threadpool(aggregate, body.verify_responses)

    @app.get("/reverify_mode")
    async def reverify_mode() -> str:
        return "stateless"  # a reward model keeps no per-rollout state

    def engine_inputs(body: P.EngineRequest, backend: Any) -> Callable[[], list[Encoded]]:
        """vLLM/SGLang request → a function producing Encoded items (run off the loop)."""
        if body.messages is not None:
            msgs = [{"role": m.role, "content": _content_text(m.content, "messages")} for m in body.messages]
            check_limits([text_chars(msgs)])
            split = (msgs[:-1], msgs[-1:]) if msgs and msgs[-1]["role"] == "assistant" else (msgs, [])
            return lambda: backend.encode_pairs([split[0]], [split[1]])
        data = body.input if body.input is not None else (body.text if body.text is not None else body.input_ids)
        if isinstance(data, str) or (data and isinstance(data[0], int)):
            data = [data]
        if data and isinstance(data[0], list):  # token ids, passed to every member as they are
            check_limits([len(ids) for ids in data])
            return lambda: backend.encode_ids(data)
        check_limits([len(t) for t in data])
        if body.text is not None:  # SGLang: the caller rendered the text; tokenise as the card says
            return lambda: backend.encode_texts(data)
        special = True if body.add_special_tokens is None else body.add_special_tokens  # vLLM's default for input
        return lambda: backend.encode_texts(data, add_special_tokens=special)

    def truncated(fn: Callable[[], list[Encoded]], keep: int | None, side: str = "left") -> Callable[[], list[Encoded]]:
        """Keep the last (side 'left') or first ('right') `keep` tokens of every member's ids; None or 0: as is."""
        if not keep:
            return fn
        return lambda: [Encoded(tuple(i[-keep:] if side == "left" else i[:keep] for i in e.ids), e.response_tokens)
                        for e in fn()]

    def usage(encoded: list[Encoded]) -> dict[str, Any]:
        n = sum(len(e.ids[0]) for e in encoded)
        return {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0, "prompt_tokens_details": None}

    async def engine_scores(body: P.EngineRequest, request: Request) -> tuple[list[Encoded], list[float]]:
        backend = request.app.state.backend
        keep = backend.max_length if body.truncate_prompt_tokens == -1 else body.truncate_prompt_tokens
        encoded, out = await run(request, truncated(engine_inputs(body, backend), keep, body.truncation_side))
        raw = out.raw.tolist()
        return encoded, raw if body.use_activation is False else [sigmoid(x) for x in raw]

    @app.post("/pooling")
    async def pooling(body: P.EngineRequest, request: Request) -> dict[str, Any]:
        """vLLM pooling API, task 'classify': one `data` item per input, sigmoid unless use_activation is false."""
        encoded, scores = await engine_scores(body, request)
        data = [{"index": i, "object": "pooling", "data": [s]} for i, s in enumerate(scores)]
        return {"id": f"pool-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                "model": request.app.state.backend.name, "data": data, "usage": usage(encoded)}

    @app.post("/classify", response_model=None)
    async def classify(body: P.EngineRequest, request: Request) -> dict[str, Any] | list[dict[str, Any]]:
        """vLLM /classify (`input` or `messages`), or SGLang /classify (`text`/`input_ids`; embedding = raw score)."""
        if body.text is not None or body.input_ids is not None:
            body = body.model_copy(update={"use_activation": False})
            encoded, scores = await engine_scores(body, request)
            items = [{"embedding": [s], "meta_info": {"id": uuid.uuid4().hex, "prompt_tokens": len(e.ids[0])}}
                     for s, e in zip(scores, encoded, strict=True)]
            single = isinstance(body.text, str) or (body.input_ids and isinstance(body.input_ids[0], int))
            return items[0] if single else items
        encoded, scores = await engine_scores(body, request)
        data = [{"index": i, "label": "LABEL_0", "probs": [s], "num_classes": 1} for i, s in enumerate(scores)]
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                "model": request.app.state.backend.name, "data": data, "usage": usage(encoded)}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        name, created = request.app.state.backend.name, int(time.time())
        card = {"id": name, "object": "model", "created": created, "owned_by": "rmkit", "root": name, "parent": None,
                "max_model_len": request.app.state.backend.max_length, "permission": []}
        return {"object": "list", "data": [card]}

    @app.post("/v1/score/evaluation")
    async def score_evaluation(body: P.ScoreEvaluationRequest, request: Request) -> dict[str, Any]:
        """LLaMA-Factory reward API: shaped scores of full texts; an empty list is a 400, as there."""
        if not body.messages:
            raise HTTPException(400, "Invalid request")
        check_limits([len(t) for t in body.messages])
        backend = request.app.state.backend
        _, out = await run(request, truncated(lambda: backend.encode_texts(body.messages), body.max_length))
        return {"id": f"scoreval-{uuid.uuid4().hex}", "object": "score.evaluation", "model": backend.name,
                "scores": out.shaped.tolist()}

    return app


def serve(cfg: ServeConfig) -> None:
    """Load the model(s) and serve until SIGINT/SIGTERM; in-flight requests get shutdown_timeout_s to finish."""
    import uvicorn

    from rmkit.ensemble import Ensemble

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.token:
        log.warning("binding %s without a token: anyone who can reach this port can use the server", cfg.host)

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)

    def load() -> Ensemble:
        return Ensemble.load(cfg.model_dirs, cfg.shaping, device=cfg.device, max_length=cfg.max_length,
                             max_tokens=cfg.batch_tokens, max_batch=cfg.batch_size)

    uvicorn.run(create_app(load, cfg), host=cfg.host, port=cfg.port, access_log=False, log_level="info",
                timeout_graceful_shutdown=cfg.shutdown_timeout_s)
