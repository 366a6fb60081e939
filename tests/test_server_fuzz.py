"""The reward server's HTTP contract is exactly its OpenAPI document: `schemathesis run --checks all` (valid and
invalid bodies, the coverage and fuzzing phases) against a live server on 127.0.0.1 finds no failure on any route,
and the document lists the one error body for every error status a route can answer.

Bounded and repeatable: a fixed number of examples per route and a fixed seed, no shrinking. For a longer hunt:
RMKIT_FUZZ_EXAMPLES=300 RMKIT_FUZZ_SEED=1 pytest tests/test_server_fuzz.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from live_server import live_server
from rmkit.ensemble import Ensemble
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

EXAMPLES = int(os.environ.get("RMKIT_FUZZ_EXAMPLES", "6"))
SEED = int(os.environ.get("RMKIT_FUZZ_SEED", "14"))
TESTS = Path(__file__).resolve().parent
ROUTES = [("POST", "/score"), ("POST", "/get_reward"), ("POST", "/verify"), ("POST", "/seed_session"),
          ("POST", "/aggregate_metrics"), ("GET", "/reverify_mode"), ("POST", "/pooling"), ("POST", "/classify"),
          ("GET", "/v1/models"), ("POST", "/v1/score/evaluation"), ("GET", "/health"), ("GET", "/metrics")]
SCORING = {"/score", "/get_reward", "/verify", "/pooling", "/classify", "/v1/score/evaluation"}
SHAPING = ShapingConfig(length_penalty="linear", length_threshold=2, length_coef=0.1, reward_threshold=0.0)


def app_for(scorer, **cfg):
    cfg = ServeConfig(model_dirs=["x"], shaping=SHAPING, max_items=16, queue_size=64, max_text_chars=2000, **cfg)
    return create_app(lambda: Ensemble([scorer], SHAPING), cfg)


def schemathesis_cli() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if found is None:
        pytest.skip("the schemathesis CLI is not installed (pip install 'rmkit[dev]')")
    return [found]


@pytest.fixture(scope="module")
def served(llama_scorer):
    with live_server(app_for(llama_scorer)) as live:
        yield live.url, httpx.get(f"{live.url}/openapi.json").json()


def test_the_schema_lists_every_route(served):
    _, schema = served
    listed = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert set(ROUTES) <= listed


def test_every_error_status_a_route_can_answer_is_listed_with_the_one_error_body(served):
    _, schema = served
    body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            expected = {"413"} | ({"400", "422"} if method == "post" else set())
            expected |= {"500", "503", "504"} if path in SCORING else set()
            listed = {code for code in op["responses"] if code != "200"}
            assert listed == expected, (method, path, listed)
            for code in listed:
                assert op["responses"][code]["content"]["application/json"]["schema"] == body, (path, code)
            assert "401" not in op["responses"], (method, path)  # no token: no 401


def test_the_schema_states_the_served_limits_and_the_vocabulary(served, llama_scorer):
    _, schema = served
    score = schema["components"]["schemas"]["ScoreRequest"]["properties"]["items"]
    assert (score["minItems"], score["maxItems"]) == (1, 16)
    query = schema["components"]["schemas"]["GetRewardRequest"]["properties"]["query"]
    assert query["items"]["maxLength"] == 2000
    ids = schema["components"]["schemas"]["EngineRequest"]["properties"]["input_ids"]["anyOf"][0]["items"]
    assert ids["maximum"] == Ensemble([llama_scorer]).vocab_size - 1


def test_a_server_with_a_token_documents_401_and_the_bearer_scheme(llama_scorer):
    with live_server(app_for(llama_scorer, token="s3cret")) as live:
        schema = httpx.get(f"{live.url}/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            assert ("401" in op["responses"]) == ((method, path) != ("get", "/health")), (method, path)


def test_schemathesis_checks_all_finds_no_failure_on_any_route(served, tmp_path):
    url, _ = served
    cmd = [*schemathesis_cli(), "run", f"{url}/openapi.json", "--checks", "all", "--mode", "all",
           "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--no-shrink", "--workers", "1",
           "--phases", "examples,coverage,fuzzing", "--continue-on-failure", "--request-timeout", "60"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, sys.path)])}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    tail = "\n".join(line[:300] for line in run.stdout.splitlines()[-80:])
    assert run.returncode == 0, f"schemathesis exit {run.returncode}:\n{tail}\n{run.stderr[-2000:]}"
    assert "No issues found" in run.stdout or " passed" in run.stdout, tail
