"""Property-based fuzz of the server's OpenAPI schema (schemathesis + hypothesis): generated valid and invalid bodies
on every route must never get a 5xx. Bounded and repeatable: a few derandomized examples per route and mode, no
shrinking phase. For a longer hunt: RMKIT_FUZZ_EXAMPLES=200 pytest tests/test_server_fuzz.py (random seeds)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from rmkit.ensemble import Ensemble
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

EXAMPLES = int(os.environ.get("RMKIT_FUZZ_EXAMPLES", "0"))
ROUTES = [("POST", "/score"), ("POST", "/get_reward"), ("POST", "/verify"), ("POST", "/seed_session"),
          ("POST", "/aggregate_metrics"), ("GET", "/reverify_mode"), ("POST", "/pooling"), ("POST", "/classify"),
          ("GET", "/v1/models"), ("POST", "/v1/score/evaluation"), ("GET", "/health"), ("GET", "/metrics")]


@pytest.fixture(scope="module")
def api_schema(llama_scorer):
    shaping = ShapingConfig(length_penalty="linear", length_threshold=2, length_coef=0.1, reward_threshold=0.0)
    cfg = ServeConfig(model_dirs=["x"], shaping=shaping, max_items=16, queue_size=64, max_text_chars=2000)
    app = create_app(lambda: Ensemble([llama_scorer], shaping), cfg)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_schema_lists_every_route(api_schema):
    listed = {(method.upper(), path) for path in api_schema for method in api_schema[path]}
    assert set(ROUTES) <= listed


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize("method, path", ROUTES)
def test_no_route_answers_5xx_to_generated_input(api_schema, method, path, mode):
    operation = api_schema[path][method]
    if mode is GenerationMode.NEGATIVE and method == "GET":
        pytest.skip("a GET route has no body or parameters to break")

    @given(operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES or 8, derandomize=not EXAMPLES, deadline=None, phases=[Phase.generate],
              database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call()
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text

    check()
