"""Wire formats of every HTTP protocol the reward server speaks (docs/protocols.md): rmkit's own /score, OpenRLHF
/get_reward, NeMo Gym /verify and companions, vLLM /pooling, /classify and /v1/models, SGLang /classify (`text`), and
LLaMA-Factory /v1/score/evaluation: their pydantic schemas plus the pure helpers that read and answer them (NeMo Gym
item parsing, text or HH transcript to chat messages, aggregation, text length, usage, sigmoid, engine inputs). Knows
nothing of models, queues or FastAPI.

Extra-field policy per protocol: our /score forbids unknown keys (a typo is an error); NeMo Gym allows them (every
field must be echoed back unchanged); the others ignore them, as their own servers do, so that a newer client version
still works. Requests are validated strictly (no "3" for 3, no 1 for true) and every rule JSON Schema can state is in
the schema, so the OpenAPI document says exactly which bodies are accepted. Every list and text is bounded by the
types of rmkit.contract (hard ceilings, lowered to the server's max_items and max_text_chars per request).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rmkit.contract import MAX_ITEMS, AtLeastMinusOne, Echoed, Items, PositiveInt, RawText, Text, TokenIds
from rmkit.metrics import bt_probability


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Ignore(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Allow(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


# ---- rmkit /score -------------------------------------------------------------------------------------------------

Role = Literal["system", "developer", "user", "assistant", "tool"]


class Message(Forbid):
    role: Role
    """Who speaks."""
    content: Text
    """What was said."""


Conversation = Annotated[list[Message], Field(max_length=MAX_ITEMS), Items]


def _dump(x: str | list[Message]) -> Any:
    return x if isinstance(x, str) else [m.model_dump() for m in x]


class PairItem(Forbid):
    """One thing to score as `prompt` + `response`, each a text or chat messages."""

    prompt: Text | Conversation
    """The prompt: text, or chat messages before the response."""
    response: Text | Conversation
    """The response: text, or assistant message(s)."""

    def split(self) -> tuple[Any, Any]:
        """(prompt, response) ready for rendering."""
        return _dump(self.prompt), _dump(self.response)


class ChatItem(Forbid):
    """One thing to score as a whole conversation."""

    messages: Annotated[Conversation, Field(min_length=1)]
    """The conversation; its last message, when it is the assistant's, is the response. A conversation that ends in
    another role is scored as it stands with an empty response (as vLLM's chat form does)."""

    def split(self) -> tuple[Any, Any]:
        """(prompt, response) ready for rendering."""
        msgs = _dump(self.messages)
        return (msgs[:-1], msgs[-1:]) if msgs[-1]["role"] == "assistant" else (msgs, [])


class ScoreRequest(Forbid):
    items: Annotated[list[PairItem | ChatItem], Field(min_length=1, max_length=MAX_ITEMS), Items]
    """What to score, answered in the same order: {"prompt", "response"} or {"messages"} items."""


class ScoreResponse(Forbid):
    model: str
    """Name of the served model (members joined by '+' for an ensemble)."""
    rewards: list[float]
    """Shaped rewards, one per item (normalised, clipped, length-penalised as configured)."""
    raw_rewards: list[float]
    """The model's raw scores (ensemble-combined), before shaping."""
    passed: list[bool] | None = None
    """reward ≥ reward_threshold per item, when a threshold is configured."""
    member_names: list[str] | None = None
    """Ensemble members, in the order of member_rewards."""
    member_rewards: list[list[float]] | None = None
    """Raw score of each member, per item (ensembles only)."""
    reward_std: list[float] | None = None
    """Population std of the raw member scores, per item (ensembles only)."""
    objective_rewards: dict[str, list[float]] | None = None
    """Multi-objective models: each objective's raw score, per item (the reward weighs them as configured)."""
    reward_components: dict[str, list[float]] | None = None
    """With a length penalty or rule terms: named parts of each reward (reward_model, length_penalty, rule names),
    which sum to `rewards`."""


class PlainScoreRequest(Forbid):
    """The body most FastAPI /score tutorials write: one prompt and one response (each text or chat messages)."""

    prompt: Text | Conversation
    """The prompt: text, or chat messages before the response."""
    response: Text | Conversation
    """The response: text, or assistant message(s)."""


class PlainScoreResponse(Forbid):
    score: float
    """The shaped reward (as `rewards` of the batch form)."""
    raw_score: float
    """The model's raw score, before shaping."""


# ---- OpenRLHF /get_reward -----------------------------------------------------------------------------------------


class GetRewardRequest(Ignore):
    query: Annotated[list[RawText], Field(max_length=MAX_ITEMS), Items]
    """Rendered prompt + response texts (the policy's template, special tokens included); may be empty."""
    prompts: Annotated[list[Text | None], Field(max_length=MAX_ITEMS), Items] | None = None
    """The prompt part of each query, as many as queries (the one rule the schema cannot state: a different count is
    a 422); the rest of each query counts as the response for length penalties."""
    labels: Annotated[list[Any], Field(max_length=MAX_ITEMS), Items] | None = None
    """Dataset labels; accepted and unused."""


class GetRewardResponse(Forbid):
    rewards: list[float]
    """Shaped rewards, aligned with query."""
    scores: list[float]
    """Equal to rewards, as OpenRLHF's reference server answers."""
    extra_logs: dict[str, list[float]]
    """Logged by the trainer: raw_reward (and passed as 0/1 when a threshold is set)."""


# ---- NeMo Gym /verify ---------------------------------------------------------------------------------------------


class GymPart(Allow):
    """A typed part of a message's content; text, input_text, output_text and refusal parts are read."""

    type: str = Field("text", max_length=64)
    text: Text | None = None
    refusal: Text | None = None


class GymItem(Allow):
    """A Responses API item (message, function_call, function_call_output, reasoning, ...), echoed as it came."""

    content: Text | Annotated[list[GymPart], Field(max_length=MAX_ITEMS), Items] | None = None
    """A message's content: a string, or typed parts."""


GymItems = Annotated[list[GymItem], Field(max_length=MAX_ITEMS), Items]


class GymCreateParams(Allow):
    input: Text | GymItems
    """The prompt: a string, or Responses API input items (messages, function calls and outputs, reasoning)."""


class GymResponse(Allow):
    output: GymItems = []
    """The policy's output items; the reward model reads message text and function calls."""


class VerifyRequest(Echoed):
    """A NeMo Gym BaseVerifyRequest; every field, unknown task fields included, is echoed back."""

    responses_create_params: GymCreateParams
    """What the policy was asked (Responses API create params)."""
    response: GymResponse
    """What the policy answered (a Responses API response)."""
    reward_threshold: float | None = Field(None, allow_inf_nan=False)
    """This row's pass mark: the answer gets `passed` = reward ≥ reward_threshold (over the server's own threshold)."""


class AggregateMetricsRequest(Echoed):
    verify_responses: list[dict[str, Any]] = Field([], max_length=100 * MAX_ITEMS)
    """/verify answers, each with _ng_task_index and numeric fields such as reward."""


# ---- vLLM /pooling, /classify; SGLang /classify; LLaMA-Factory ----------------------------------------------------


class ContentPart(Ignore):
    type: str = Field("text", max_length=64)
    """'text', 'input_text', 'output_text' and 'refusal' parts are read; others (images, files) are skipped."""
    text: Text | None = None
    refusal: Text | None = None


class ChatMessage(Ignore):
    role: str = Field(max_length=64)
    """Who speaks."""
    content: Text | Annotated[list[ContentPart], Field(max_length=MAX_ITEMS), Items] | None = None
    """A string, or OpenAI typed parts whose text parts are joined."""


Texts = Annotated[list[RawText], Field(max_length=MAX_ITEMS), Items]
TokenRows = Annotated[list[TokenIds], Field(max_length=MAX_ITEMS), Items]
_FORMS = ("input", "messages", "text", "input_ids")


def _engine_schema(schema: dict[str, Any]) -> None:
    """State the cross-field rules in the JSON schema: exactly one non-null form; no 'normalize'; not both
    add_generation_prompt and continue_final_message."""
    schema["oneOf"] = [{"required": [k], "properties": {k: {"not": {"type": "null"}}}} for k in _FORMS]
    both = {"required": ["add_generation_prompt", "continue_final_message"],
            "properties": {"add_generation_prompt": {"const": True}, "continue_final_message": {"const": True}}}
    schema["not"] = {"anyOf": [{"required": ["normalize"]}, both]}


class EngineRequest(Ignore):
    """Fields common to vLLM's /pooling and /classify (completion form `input` or chat form `messages`) and SGLang's
    /classify (`text` or `input_ids`): exactly one of the four forms."""

    model_config = ConfigDict(json_schema_extra=_engine_schema)

    model: str | None = None
    """Ignored: the server scores with the model it serves."""
    input: RawText | Texts | TokenIds | TokenRows | None = None
    """vLLM completion form: a text, texts, token ids, or lists of token ids."""
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_ITEMS), Items] | None = None
    """vLLM chat form: one conversation, rendered with the reward model's own template."""
    text: RawText | Texts | None = None
    """SGLang form: a rendered text or texts."""
    input_ids: TokenIds | TokenRows | None = None
    """SGLang form: token ids instead of text."""
    add_special_tokens: bool | None = None
    """vLLM: add the tokenizer's special tokens (default true for input, false for messages)."""
    truncate_prompt_tokens: AtLeastMinusOne | None = None
    """vLLM: keep only this many tokens (-1: the model's max length)."""
    truncation_side: Literal["left", "right"] = "left"
    """vLLM: 'left' keeps the last tokens, 'right' the first."""
    add_generation_prompt: bool = False
    """vLLM chat form; must not be combined with continue_final_message."""
    continue_final_message: bool = False
    """vLLM chat form; accepted, the conversation is scored as given."""
    use_activation: bool | None = None
    """vLLM: sigmoid of the score when absent or true (the classify default); false gives the raw logit."""
    task: Literal["classify"] | None = None
    """vLLM /pooling task; a reward model serves 'classify' only."""
    encoding_format: Literal["float"] = "float"
    """vLLM /pooling: only 'float' is served."""

    @model_validator(mode="before")
    @classmethod
    def _no_legacy_normalize(cls, data: Any) -> Any:
        if isinstance(data, dict) and "normalize" in data:
            raise ValueError("'normalize' was removed from vLLM's pooling API; use 'use_activation' instead")
        return data

    @model_validator(mode="after")
    def _one_form(self) -> EngineRequest:
        given = [k for k in ("input", "messages", "text", "input_ids") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of 'input', 'messages', 'text' or 'input_ids' (got {given or 'none'})")
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("add_generation_prompt and continue_final_message cannot both be true")
        return self


class ScoreEvaluationRequest(Ignore):
    model: str | None = None
    """Ignored: the server scores with the model it serves."""
    messages: Annotated[list[RawText], Field(max_length=MAX_ITEMS, json_schema_extra={"minItems": 1}), Items]
    """Full texts to score (LLaMA-Factory renders them itself); at least one: an empty list is a 400, as there."""
    max_length: PositiveInt | None = None
    """Keep only the last max_length tokens of each text."""


# ---- pure wire helpers --------------------------------------------------------------------------------------------


_TEXT_PARTS = {"input_text", "output_text", "text", "refusal"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def content_text(content: Any, origin: str) -> str:
    """A message content as text: a string, or the text of its typed parts joined ('input_text', 'output_text',
    'refusal'; images and files are skipped)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ValueError(f"{origin}: message content must be a string or a list of parts, got {type(content).__name__}")
    parts = [p.get("text") if p.get("type") != "refusal" else p.get("refusal") for p in content
             if isinstance(p, dict) and p.get("type", "text") in _TEXT_PARTS]
    return "".join(str(p) for p in parts if p)


def to_messages(text: str | Sequence[dict[str, Any]], role: str = "user") -> list[dict[str, str]]:
    """A prompt or response as chat messages. HH transcripts are split into turns; other text is one message.

    >>> to_messages("\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: Why?\\n\\nAssistant:")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}, {'role': 'user', 'content': 'Why?'}]
    """
    if not isinstance(text, str):
        return [{"role": m["role"], "content": m["content"]} for m in text]
    if not text.startswith("\n\nHuman:"):
        return [{"role": role, "content": text.strip()}] if text.strip() else []
    parts = _HH_TURN.split(text)[1:]  # [speaker, content, speaker, content, ...]
    turns = [
        {"role": "user" if who == "Human" else "assistant", "content": content.strip()}
        for who, content in zip(parts[::2], parts[1::2], strict=False)
    ]
    return [t for t in turns if t["content"]]  # the trailing "\n\nAssistant:" marker has no content


def text_chars(x: Any) -> int:
    """Characters of a text or of a message list's contents: text_chars([{"content": "ab"}, {"content": "c"}]) → 3."""
    if isinstance(x, str):
        return len(x)
    return sum(len(str(m.get("content") or "")) for m in x) if isinstance(x, list) else 0


def sigmoid(x: float) -> float:
    """σ(x) without overflow either side (metrics.bt_probability at T = 1): sigmoid(0) → 0.5, sigmoid(-1000) → 0.0."""
    return float(bt_probability(x))


def usage(token_counts: list[int]) -> dict[str, Any]:
    """vLLM's usage block of a pooling answer: every token is a prompt token."""
    n = sum(token_counts)
    return {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0, "prompt_tokens_details": None}


@dataclass(frozen=True)
class EngineInputs:
    """What a vLLM/SGLang request asks to score, in one of three forms (exactly one of pair, texts, ids is set)."""

    pair: tuple[Any, Any] | None = None  # (prompt messages, response messages), rendered with the model's template
    texts: list[str] | None = None  # rendered texts, tokenised as they are
    ids: list[list[int]] | None = None  # token ids, passed to every member as they are
    add_special_tokens: bool | None = None  # None: each model card's own setting


def engine_inputs(body: EngineRequest) -> EngineInputs:
    """Read a vLLM/SGLang request: chat `messages` become one (prompt, response) pair split at the last assistant
    turn; `input`/`text` become texts (vLLM adds special tokens by default, SGLang as the card says); token ids stay."""
    if body.messages is not None:
        msgs = [{"role": m["role"], "content": content_text(m["content"], "messages")}
                for m in body.model_dump(include={"messages"})["messages"]]
        pair = (msgs[:-1], msgs[-1:]) if msgs and msgs[-1]["role"] == "assistant" else (msgs, [])
        return EngineInputs(pair=pair)
    data: Any = body.input if body.input is not None else (body.text if body.text is not None else body.input_ids)
    if isinstance(data, str) or (data and isinstance(data[0], int)):
        data = [data]
    if data and isinstance(data[0], list):
        return EngineInputs(ids=data)
    if body.text is not None:  # SGLang: the caller rendered the text; tokenise as the card says
        return EngineInputs(texts=data)
    special = True if body.add_special_tokens is None else body.add_special_tokens  # vLLM's default for input
    return EngineInputs(texts=data, add_special_tokens=special)


def _numeric_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k, v in r.items()  # booleans count 0/1: mean/passed is the pass rate
                   if isinstance(v, (int, float)) and not k.startswith("_ng_")})
    out = {}
    with np.errstate(all="ignore"):
        for k in keys:
            v = np.array([r[k] for r in rows if isinstance(r.get(k), (int, float))], dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                out.update({f"mean/{k}": v.mean(), f"max/{k}": v.max(), f"min/{k}": v.min(),
                            f"median/{k}": np.median(v), f"std/{k}": v.std()})
    return {k: float(x) for k, x in out.items() if np.isfinite(x)}  # JSON has no inf (huge inputs overflow)


def aggregate(verify_responses: list[dict[str, Any]]) -> dict[str, Any]:
    """NeMo Gym /aggregate_metrics: mean/max/min/median/std of every numeric field, overall and per task; a boolean
    field counts 0/1, so mean/passed is the pass rate."""
    if not verify_responses:
        return {"group_level_metrics": [], "agent_metrics": {}, "key_metrics": {}}
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in verify_responses:
        groups.setdefault(r.get("_ng_task_index"), []).append(r)
    agent = _numeric_stats(verify_responses)
    return {
        "group_level_metrics": [{"_ng_task_index": k, **_numeric_stats(rows)} for k, rows in groups.items()],
        "agent_metrics": agent,
        "key_metrics": {k: v for k, v in agent.items() if k.startswith("mean/")},
    }
