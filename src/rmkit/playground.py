"""The browser playground of `rmkit serve`: router(...) → an APIRouter serving one self-contained page (GET / and
GET /playground, from the package file static/playground.html) and the JSON the page needs besides POST /score:
the model's members and calibrated temperatures, answer lengths in tokens, and example pairs to load.

The page scores through the server's own POST /score (so what it shows is exactly what an RL trainer gets) and
computes the ranking and P(A preferred over B) = σ((r_A − r_B) / T) from the raw rewards in the browser. This module
knows the served backend's members and tokenizer and where a run keeps its data; it knows nothing of batching,
shaping or HTTP auth (the gateway lets the page itself load without a token; every JSON route still needs one).

No `from __future__ import annotations`: FastAPI must resolve the route annotations.
"""

import functools
import hashlib
import logging
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from rmkit.config import DEFAULT_DATA, load_config
from rmkit.contract import Text, documented
from rmkit.data import PreferencePair, read_pairs
from rmkit.evaluation import dataset_names
from rmkit.splits import load_splits

log = logging.getLogger(__name__)

PAGE_PATHS = ("/", "/playground")
"""Where the page is served; GET on these is public (the page holds no data and asks for the token itself)."""
EXAMPLES_PER_SOURCE = 8
"""Example pairs offered per data file; the page scores them all to find one the model gets right and one wrong."""
EXAMPLE_MAX_CHARS = 1500
"""Longest example offered (prompt and both answers), so that it fits on a screen."""


class TokensRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[Text] = Field(min_length=1, max_length=64)
    """Answers to measure."""


class Example(BaseModel):
    source: str
    """Data set the pair comes from (the file's folder name)."""
    prompt: str | list[dict[str, Any]]
    """Text, or chat messages."""
    chosen: str
    """The answer people preferred."""
    rejected: str


class Examples(BaseModel):
    pairs: list[Example]
    note: str
    """Where the pairs come from (held-out split of the model's run, given files, or the vendored data)."""


@functools.cache
def page() -> str:
    return files("rmkit").joinpath("static/playground.html").read_text(encoding="utf-8")


def _text(x: Any) -> str:
    """A response as text: messages' contents joined by blank lines."""
    return x if isinstance(x, str) else "\n\n".join(str(m.get("content") or "") for m in x)


def sample(pairs: Sequence[PreferencePair], k: int = EXAMPLES_PER_SOURCE) -> list[PreferencePair]:
    """k short pairs spread over the list, chosen by a hash of each pair (the same k every time)."""
    short = [p for p in pairs if len(str(p.prompt)) + len(_text(p.chosen)) + len(_text(p.rejected)) <= EXAMPLE_MAX_CHARS
             and _text(p.chosen).strip() and _text(p.rejected).strip()]
    return sorted(short, key=lambda p: hashlib.sha256(f"{p.origin}{p.prompt_key()}".encode()).hexdigest())[:k]


def example_sources(model_dir: str | Path, example_files: Sequence[str] | None) -> tuple[dict[str, list[PreferencePair]], str]:
    """Pairs per source, and a note saying where they come from.

    Given files win; else, when model_dir is run/model of an rmkit run whose data files are here, the run's held-out
    test split (so "the model gets it right" is not memory); else the vendored data, if found in the working directory.
    """
    if example_files:
        return {n: read_pairs(p) for n, p in zip(dataset_names(example_files), example_files, strict=True)}, \
            f"from {', '.join(example_files)}"
    run = Path(model_dir).resolve().parent
    if (run / "config.yaml").exists():
        cfg = load_config(run / "config.yaml")
        if all(Path(p).exists() for p in cfg.data.paths):
            test = load_splits(cfg.data, cfg.train.seed)["test"]
            by_file = {p: [x for x in test if x.origin.rsplit(":", 1)[0] == p] for p in cfg.data.paths}
            return {n: by_file[p] for n, p in zip(dataset_names(cfg.data.paths), cfg.data.paths, strict=True)}, \
                "held-out test split of the run that trained this model"
    present = [p for p in DEFAULT_DATA if Path(p).exists()]
    return {n: read_pairs(p) for n, p in zip(dataset_names(present), present, strict=True)}, \
        "the vendored data (the model may have been trained on these pairs)"


@functools.cache
def load_examples(model_dir: str, example_files: tuple[str, ...] | None) -> Examples:
    sources, note = example_sources(model_dir, example_files)
    pairs = [Example(source=name, prompt=p.prompt, chosen=_text(p.chosen), rejected=_text(p.rejected))
             for name, found in sources.items() for p in sample(found)]
    return Examples(pairs=pairs, note=note if pairs else "no example data found: pass playground_examples=[FILE]")


def router(model_dirs: Sequence[str], example_files: Sequence[str] | None = None) -> APIRouter:
    """The playground's routes. `model_dirs` are the served models (the first one's run gives the examples)."""
    api = APIRouter()

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    @api.get("/playground", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> str:
        return page()

    @api.get("/playground/info")
    async def info(request: Request) -> dict[str, Any]:
        """The served model: name, members with their calibrated temperatures, and the shaping in use."""
        backend = request.app.state.service.backend
        found = backend.members()
        dirs = [str(d) for d in model_dirs] if len(model_dirs) == len(found) else [None] * len(found)
        members = [{"name": m.name, "path": d, "temperature": m.temperature, "max_length": m.max_length}
                   for m, d in zip(found, dirs, strict=True)]
        return {"model": backend.name, "members": members, "shaping": backend.shaping.model_dump(),
                "temperature": sum(m["temperature"] for m in members) / len(members),
                "temperature_note": "the model's calibrated temperature" if len(members) == 1 else
                "mean of the members' calibrated temperatures (an ensemble has no fitted temperature of its own)",
                "length_tokenizer": members[0]["path"] or members[0]["name"]}

    @api.post("/playground/tokens", responses=documented(400, 422))
    def tokens(body: TokensRequest, request: Request) -> dict[str, list[int]]:
        """Each text's length in tokens of the first member's tokenizer (the one length penalties use)."""
        return {"tokens": request.app.state.service.backend.count_tokens(body.texts)}

    @api.get("/playground/examples")
    async def examples() -> Examples:
        """Short example pairs; the page scores them with /score to pick one the model gets right and one wrong."""
        files_ = tuple(example_files) if example_files else None
        return await run_in_threadpool(load_examples, str(model_dirs[0]), files_)

    return api
