"""The reward server's HTTP contract, the parts every route shares: request limits (hard ceilings, lowered per server
through a context variable, enforced by the field types below), the one error body of every 4xx and 5xx answer
(ErrorBody, ApiError), and the served OpenAPI document, which states the limits enforced and every error status with
that body. Pure pydantic and dicts: knows nothing of FastAPI, models or queues; rmkit.protocols builds the wire
schemas from these types.

A request is validated strictly against the limits of the server handling it: `use_limits` (the server's Limited
middleware) sets them for the request's task, the Text/RawText/TokenIds/Items validators read them, and
`served_schema` rewrites each ceiling in the OpenAPI document to the enforced value, so the document and the server
agree on every bound.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

MAX_ITEMS = 4096
"""Hard ceiling on items in one list of a request (texts, pairs, messages), whatever the server's max_items."""
MAX_CHARS = 1_000_000
"""Hard ceiling on the characters of one text field (or token ids in one row), whatever the server's max_text_chars."""
MAX_TOKEN_ID = 2**31 - 1
"""Ceiling of a token id; a served schema states the model's vocabulary instead."""


@dataclass(frozen=True)
class Limits:
    """The limits a server enforces on every request; at most the ceilings."""

    max_items: int = MAX_ITEMS
    max_chars: int = MAX_CHARS
    max_token_id: int = MAX_TOKEN_ID


_LIMITS: ContextVar[Limits] = ContextVar("rmkit_request_limits", default=Limits())  # noqa: B039 (frozen)


@contextmanager
def use_limits(limits: Limits) -> Iterator[None]:
    """Validate the requests parsed inside this block (this task and what it awaits) against `limits`."""
    token = _LIMITS.set(limits)
    try:
        yield
    finally:
        _LIMITS.reset(token)


def _few_enough(value: list) -> list:
    limit = _LIMITS.get().max_items
    if len(value) > limit:
        raise PydanticCustomError("too_many_items", "{n} items > max_items={limit}; split the request",
                                  {"n": len(value), "limit": limit})
    return value


def _short_enough(value: str | list) -> str | list:
    limit = _LIMITS.get().max_chars
    if len(value) > limit:
        what = "characters" if isinstance(value, str) else "token ids"
        raise PydanticCustomError("text_too_long", "{n} {what} > max_text_chars={limit}",
                                  {"n": len(value), "what": what, "limit": limit})
    return value


def _integral(value: Any) -> Any:
    """2.0 → 2: JSON Schema's integer includes numbers with a zero fraction; strict mode would refuse them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Text = Annotated[str, Field(max_length=MAX_CHARS), AfterValidator(_short_enough)]
"""A text of at most max_text_chars characters (may be empty)."""
VISIBLE = r"[^\s\x00-\x1f\x7f-\x9f]"
"""A character that is neither white space nor a control character: tokenisers may drop all of those."""
RawText = Annotated[str, Field(min_length=1, max_length=MAX_CHARS, pattern=VISIBLE), AfterValidator(_short_enough)]
"""A text tokenised as it is (no chat template around it): it needs a visible character, else it may have no tokens."""
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID), BeforeValidator(_integral)]
"""A token id below the vocabulary size (the served schema states it; the model checks it)."""
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_CHARS), AfterValidator(_short_enough)]
"""One row of token ids: at least one, at most max_text_chars."""
PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(_integral)]
AtLeastMinusOne = Annotated[int, Field(ge=-1), BeforeValidator(_integral)]
Items = AfterValidator(_few_enough)
"""Add to a list type with Field(max_length=MAX_ITEMS): at most max_items elements."""


def served_schema(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """`schema` (an OpenAPI document) with each hard ceiling replaced by the limit that `limits` enforces."""
    swap = {("maxItems", MAX_ITEMS): limits.max_items, ("maxItems", MAX_CHARS): limits.max_chars,
            ("maxLength", MAX_CHARS): limits.max_chars, ("maximum", MAX_TOKEN_ID): limits.max_token_id}

    def walk(node: Any) -> Any:  # FastAPI may write the numbers as floats: 4096.0 == 4096 finds the same key
        if isinstance(node, dict):
            return {k: swap.get((k, v), v) if isinstance(v, (int, float)) and not isinstance(v, bool) else walk(v)
                    for k, v in node.items()}
        return [walk(x) for x in node] if isinstance(node, list) else node

    return walk(schema)


class Echoed(BaseModel):
    """A body whose unknown fields come back in the answer (NeMo Gym): each string must be encodable as JSON text."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="after")
    def _encodable(self) -> Echoed:
        try:
            json.dumps(self.model_dump(), ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone UTF-16 surrogate escape in some string or key
            raise ValueError("a string in the body is not valid Unicode (a lone surrogate escape such as \\ud800)") from None
        return self


# ---- the one error body --------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loc: list[str | int]
    """Where the problem is: ["body", "items", 0, "prompt"] for a field, [] for the request as a whole."""
    msg: str
    """What is wrong, and how to fix it. Never contains request text."""
    type: str
    """A stable name: pydantic's error types for 422 (missing, string_type, too_many_items, text_too_long, ...),
    json_invalid (400), unauthorized, body_too_large, unprocessable_input, prompts_mismatch, forward_failed,
    queue_full, unavailable, deadline_exceeded, not_found, method_not_allowed, internal_error."""


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer: {"detail": [{"loc": [...], "msg": "...", "type": "..."}]}, FastAPI's shape."""

    model_config = ConfigDict(extra="forbid")

    detail: list[ErrorDetail]


def error_body(msg: str, type_: str, loc: Sequence[str | int] = ()) -> dict[str, Any]:
    """An ErrorBody as JSON-ready data: error_body("queue full", "queue_full") → {"detail": [{...}]}."""
    return {"detail": [{"loc": list(loc), "msg": msg, "type": type_}]}


class ApiError(Exception):
    """An answer other than 200, sent as an ErrorBody: status, message, stable type name, optional headers."""

    def __init__(self, status: int, msg: str, type_: str, headers: dict[str, str] | None = None):
        super().__init__(msg)
        self.status, self.msg, self.type, self.headers = status, msg, type_, headers


ERRORS = {
    400: "Malformed JSON (json_invalid), or an empty /v1/score/evaluation list (as LLaMA-Factory answers).",
    401: "Missing or wrong bearer token (only when the server has a token).",
    413: "Request body over max_body_bytes.",
    422: "The body breaks the schema or a limit it states (max_items, max_text_chars; pydantic's error types), a "
         "rule the schema cannot state (/get_reward: as many prompts as queries), or the model's tokenizer or chat "
         "template refuses the input (unprocessable_input).",
    500: "The forward pass failed for this request alone, for example out of memory (forward_failed); the server "
         "keeps serving.",
    503: "Queue full (queue_full), or the server is starting up or shutting down (unavailable); retry after "
         "Retry-After seconds.",
    504: "Not scored within request_timeout_s (deadline_exceeded).",
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these error statuses, each with the one error body (and Retry-After on 503)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorBody, "description": ERRORS[code]}
        if code == 503:
            out[code]["headers"] = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}
    return out


def document_errors(schema: dict[str, Any], token: bool) -> dict[str, Any]:
    """Every error answer as JSON ErrorBody (also on routes whose 200 is text); with a token, the bearer scheme and a
    401 on every operation but GET /health."""
    json_error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    if token:
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if token and (method, path) != ("get", "/health"):
                op["security"] = [{"bearer": []}]
                op["responses"]["401"] = {"description": ERRORS[401]}
            for code, answer in op["responses"].items():
                if int(code) >= 400:
                    answer["content"] = json_error
    return schema
