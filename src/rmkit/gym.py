"""NeMo Gym rows as the reward model reads them: Responses API `input` items → prompt messages, `output` items →
one response text, and split_row for any row to score (prompt + response, chat messages, or a Gym rollout). Pure
functions over JSON values; knows nothing of models, HTTP or files.
"""

from __future__ import annotations

from typing import Any

from rmkit.protocols import content_text


def split_row(row: dict[str, Any], origin: str) -> tuple[Any, Any]:
    """(prompt, response) of a row to score, from any of three shapes:

    - `prompt` + `response` (text or chat messages);
    - chat `messages` ending in the assistant turn;
    - a NeMo Gym rollout: `responses_create_params.input` + `response.output` (see gym_prompt and gym_response).
    """
    if not isinstance(row, dict):
        raise ValueError(f"{origin}: a row to score is a JSON object, got {type(row).__name__}")
    if "responses_create_params" in row:
        params, response = row["responses_create_params"], row.get("response")
        if not isinstance(params, dict) or "input" not in params or not isinstance(response, dict):
            raise ValueError(f"{origin}: a NeMo Gym row needs 'responses_create_params' with 'input' and a 'response' "
                             "object with 'output'")
        return gym_prompt(params["input"], origin), gym_response(response.get("output") or [], origin)
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "assistant":
            raise ValueError(f"{origin}: 'messages' must be a non-empty list ending with an assistant message")
        return messages[:-1], messages[-1:]
    if "prompt" in row and "response" in row:
        return row["prompt"], row["response"]
    raise ValueError(f"{origin}: a row to score needs 'prompt' and 'response', chat 'messages', or NeMo Gym "
                     f"'responses_create_params' + 'response' (found: {', '.join(sorted(map(str, row)))})")


def _tool_call_text(item: dict[str, Any]) -> str:
    return f"Tool call: {item.get('name', '')}({item.get('arguments', '')})"


def gym_prompt(input_: Any, origin: str = "row") -> str | list[dict[str, str]]:
    """The prompt of a NeMo Gym `responses_create_params.input`, as the reward model reads it.

    A string is the user's turn. In a list of items: messages keep their role (developer → system) with their text
    parts joined; `function_call` items become an assistant turn "Tool call: name(arguments)"; `function_call_output`
    items a `tool` turn holding the output; `reasoning` and any other item types are left out (the reward model
    judges what was said and done, not hidden reasoning).
    """
    if isinstance(input_, str):
        return input_
    if not isinstance(input_, list):
        raise ValueError(f"{origin}: responses_create_params.input must be a string or a list of items")
    messages = []
    for item in input_:
        if not isinstance(item, dict):
            raise ValueError(f"{origin}: each input item must be an object, got {type(item).__name__}")
        kind = item.get("type", "message")
        if kind == "message" and "role" in item:
            role = "system" if item["role"] == "developer" else str(item["role"])
            messages.append({"role": role, "content": content_text(item.get("content"), origin)})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": _tool_call_text(item)})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": str(item.get("output", ""))})
    return messages


def gym_response(output: Any, origin: str = "row") -> str:
    """The response of a NeMo Gym `response.output`: one assistant text, its pieces joined by blank lines, in order.

    `message` items give their output_text (and refusal) parts; `function_call` items a line "Tool call:
    name(arguments)"; `reasoning` and other item types are left out, as in gym_prompt.
    """
    if not isinstance(output, list):
        raise ValueError(f"{origin}: response.output must be a list of items")
    pieces = []
    for item in output:
        if not isinstance(item, dict):
            raise ValueError(f"{origin}: each output item must be an object, got {type(item).__name__}")
        if item.get("type") == "message":
            pieces.append(content_text(item.get("content"), origin))
        elif item.get("type") == "function_call":
            pieces.append(_tool_call_text(item))
    return "\n\n".join(p for p in pieces if p)
