"""The reward server's routes, one APIRouter per protocol family: `rmkit` (/score, /health, /metrics), `openrlhf`
(/get_reward), `nemo_gym` (/verify and companions) and `engines` (vLLM /pooling, /classify, /v1/models; SGLang
/classify; LLaMA-Factory /v1/score/evaluation). `ROUTERS` lists them; server.create_app includes them all.

Which number each route returns: the RL-trainer routes (/score, /get_reward, /verify, /v1/score/evaluation) return
shaped rewards; the inference-engine routes (vLLM, SGLang) return the model's raw score, as those engines do (vLLM:
sigmoid unless use_activation is false). Every route gets the RewardService through `Depends(get_service)`; wire
formats come from rmkit.protocols; each route lists the error statuses it can answer (rmkit.contract.documented), all
with the one error body. Knows nothing of models, queues or start-up.
"""

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from rmkit import protocols as P
from rmkit.contract import ApiError, documented
from rmkit.ensemble import Encoded
from rmkit.gym import gym_prompt, gym_response
from rmkit.service import RewardService, get_service, truncated

Service = Annotated[RewardService, Depends(get_service)]
SCORING = documented(400, 422, 500, 503, 504)
"""What a route that scores can answer besides 200 (and 413, 401: every route, see server.create_app)."""
POSTING = documented(400, 422)

rmkit = APIRouter(tags=["rmkit"])
openrlhf = APIRouter(tags=["OpenRLHF"])
nemo_gym = APIRouter(tags=["NeMo Gym"])
engines = APIRouter(tags=["vLLM, SGLang, LLaMA-Factory"])


@rmkit.get("/health")
async def health(service: Service) -> dict[str, Any]:
    return {"status": "ok", "model": service.backend.name, "queue_depth": service.batcher.depth}


@rmkit.get("/metrics", response_class=PlainTextResponse)
async def prometheus(request: Request) -> str:
    return request.app.state.metrics.render()


@rmkit.post("/score", responses=SCORING)
async def score(body: P.ScoreRequest | P.PlainScoreRequest, request: Request, service: Service
                ) -> P.ScoreResponse | P.PlainScoreResponse:
    """rmkit's own API: shaped and raw rewards of prompt + response items (or chat messages); the plain
    {"prompt", "response"} body most FastAPI tutorials write gets {"score", "raw_score"}."""
    if isinstance(body, P.PlainScoreRequest):
        prompt, response = P.PairItem(prompt=body.prompt, response=body.response).split()
        _, out = await service.run(request, lambda: service.backend.encode_pairs([prompt], [response]))
        return P.PlainScoreResponse(score=float(out.shaped[0]), raw_score=float(out.raw[0]))
    pairs = [item.split() for item in body.items]
    backend = service.backend
    _, out = await service.run(request, lambda: backend.encode_pairs([p for p, _ in pairs], [r for _, r in pairs]))
    ensemble = out.members is not None
    return P.ScoreResponse(
        model=backend.name, rewards=out.shaped.tolist(), raw_rewards=out.raw.tolist(),
        passed=None if out.passed is None else out.passed.tolist(),
        member_names=backend.member_names if ensemble else None,
        member_rewards=out.members.T.tolist() if ensemble else None,
        reward_std=out.member_std.tolist() if ensemble else None,
        objective_rewards={k: v.tolist() for k, v in out.objectives.items()} if out.objectives else None,
        reward_components=_columns([out.components(i) for i in range(len(out.shaped))]),
    )


def _columns(parts: list[dict[str, float] | None]) -> dict[str, list[float]] | None:
    """Per-item reward components → one list per component name; None when there are none."""
    if not parts or parts[0] is None:
        return None
    return {name: [p[name] for p in parts] for name in parts[0]}


@openrlhf.post("/get_reward", responses=SCORING)
async def get_reward(body: P.GetRewardRequest, request: Request, service: Service) -> P.GetRewardResponse:
    """OpenRLHF remote reward model: shaped rewards of rendered query texts; empty lists give empty answers."""
    if not body.query:
        return P.GetRewardResponse(rewards=[], scores=[], extra_logs={})
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise ApiError(422, f"{len(body.prompts)} prompts for {len(body.query)} queries: send one prompt per query, "
                       "or none", "prompts_mismatch")
    _, out = await service.run(request, lambda: service.backend.encode_texts(body.query, body.prompts))
    logs = {"raw_reward": out.raw.tolist()}
    if out.passed is not None:
        logs["passed"] = out.passed.astype(float).tolist()
    return P.GetRewardResponse(rewards=out.shaped.tolist(), scores=out.shaped.tolist(), extra_logs=logs)


@nemo_gym.post("/verify", responses=SCORING)
async def verify(body: P.VerifyRequest, request: Request, service: Service) -> dict[str, Any]:
    """NeMo Gym: the request echoed back plus `reward`, `objective_rewards` for a multi-objective model, and
    `reward_components` (also at top level) when a length penalty or rule terms are on."""
    echo = body.model_dump(exclude_unset=True)
    try:
        prompt = gym_prompt(echo["responses_create_params"]["input"], "responses_create_params")
        response = gym_response(echo["response"].get("output", []), "response")
    except ValueError as exc:
        raise ApiError(422, str(exc), "unprocessable_input") from None
    _, out = await service.run(request, lambda: service.backend.encode_pairs([prompt], [response]))
    result = {**echo, **out.item(0)}
    if body.reward_threshold is not None:  # this row's own pass mark, over the server's
        result["passed"] = result["reward"] >= body.reward_threshold
    parts = out.components(0)
    if parts is not None:  # the parts sum to the reward exactly
        result.update(reward_components=parts, **parts)
    return result


@nemo_gym.post("/seed_session", responses=POSTING)
async def seed_session(body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {}


@nemo_gym.post("/aggregate_metrics", responses=POSTING)
async def aggregate_metrics(body: P.AggregateMetricsRequest) -> dict[str, Any]:
    return await run_in_threadpool(P.aggregate, body.verify_responses)


@nemo_gym.get("/reverify_mode")
async def reverify_mode() -> str:
    return "stateless"  # a reward model keeps no per-rollout state


async def engine_scores(body: P.EngineRequest, request: Request, service: RewardService
                        ) -> tuple[list[Encoded], list[float]]:
    """Raw scores of a vLLM/SGLang request (sigmoid unless use_activation is false), after its truncation."""
    inputs, backend = P.engine_inputs(body), service.backend
    if inputs.pair is not None:
        encode = lambda: backend.encode_pairs([inputs.pair[0]], [inputs.pair[1]])  # noqa: E731
    elif inputs.ids is not None:
        encode = lambda: backend.encode_ids(inputs.ids)  # noqa: E731
    else:
        encode = lambda: backend.encode_texts(inputs.texts, add_special_tokens=inputs.add_special_tokens)  # noqa: E731
    keep = backend.max_length if body.truncate_prompt_tokens == -1 else body.truncate_prompt_tokens
    encoded, out = await service.run(request, truncated(encode, keep, body.truncation_side))
    raw = out.raw.tolist()
    return encoded, raw if body.use_activation is False else [P.sigmoid(x) for x in raw]


@engines.post("/pooling", responses=SCORING)
async def pooling(body: P.EngineRequest, request: Request, service: Service) -> dict[str, Any]:
    """vLLM pooling API, task 'classify': one `data` item per input, sigmoid unless use_activation is false."""
    encoded, scores = await engine_scores(body, request, service)
    data = [{"index": i, "object": "pooling", "data": [s]} for i, s in enumerate(scores)]
    return {"id": f"pool-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": service.backend.name, "data": data, "usage": P.usage([len(e.ids[0]) for e in encoded])}


@engines.post("/classify", response_model=None, responses=SCORING)
async def classify(body: P.EngineRequest, request: Request, service: Service
                   ) -> dict[str, Any] | list[dict[str, Any]]:
    """vLLM /classify (`input` or `messages`), or SGLang /classify (`text`/`input_ids`; embedding = raw score)."""
    if body.text is not None or body.input_ids is not None:
        body = body.model_copy(update={"use_activation": False})
        encoded, scores = await engine_scores(body, request, service)
        items = [{"embedding": [s], "meta_info": {"id": uuid.uuid4().hex, "prompt_tokens": len(e.ids[0])}}
                 for s, e in zip(scores, encoded, strict=True)]
        single = isinstance(body.text, str) or (body.input_ids and isinstance(body.input_ids[0], int))
        return items[0] if single else items
    encoded, scores = await engine_scores(body, request, service)
    data = [{"index": i, "label": "LABEL_0", "probs": [s], "num_classes": 1} for i, s in enumerate(scores)]
    return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": service.backend.name, "data": data, "usage": P.usage([len(e.ids[0]) for e in encoded])}


@engines.get("/v1/models")
async def models(service: Service) -> dict[str, Any]:
    name, created = service.backend.name, int(time.time())
    card = {"id": name, "object": "model", "created": created, "owned_by": "rmkit", "root": name, "parent": None,
            "max_model_len": service.backend.max_length, "permission": []}
    return {"object": "list", "data": [card]}


@engines.post("/v1/score/evaluation", responses=SCORING)
async def score_evaluation(body: P.ScoreEvaluationRequest, request: Request, service: Service) -> dict[str, Any]:
    """LLaMA-Factory reward API: shaped scores of full texts; an empty list is a 400, as there."""
    if not body.messages:
        raise ApiError(400, "Invalid request: 'messages' is empty", "empty_messages")
    encode = truncated(lambda: service.backend.encode_texts(body.messages), body.max_length)
    _, out = await service.run(request, encode)
    return {"id": f"scoreval-{uuid.uuid4().hex}", "object": "score.evaluation", "model": service.backend.name,
            "scores": out.shaped.tolist()}


ROUTERS = (rmkit, openrlhf, nemo_gym, engines)
"""Every protocol family the server speaks, in the order create_app includes them."""
