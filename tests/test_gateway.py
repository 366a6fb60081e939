"""Tests for rmkit.gateway: the Prometheus series and the bounded path labels."""

from __future__ import annotations

from rmkit.gateway import Histogram, Metrics


def test_histogram_buckets_are_cumulative():
    h = Histogram([1, 2])
    for v in (0.5, 1.5, 1.5, 3):
        h.observe(v)
    text = "\n".join(h.lines("x"))
    assert 'x_bucket{le="1"} 1' in text and 'x_bucket{le="2"} 3' in text and 'x_bucket{le="+Inf"} 4' in text
    assert "x_count 4" in text and "x_sum 6.500000" in text


def test_unknown_paths_are_counted_as_other_so_labels_stay_bounded():
    m = Metrics(frozenset({"/score"}))
    m.observe_request("/score", 200, 0.01, items=3)
    m.observe_request("/no/such/path/123", 404, 0.01, items=0)
    text = m.render()
    assert 'path="/score"' in text and 'path="other"' in text and "/no/such/path" not in text


def test_served_routes_are_the_known_paths():
    from rmkit import playground
    from rmkit.routes import ROUTERS
    from rmkit.server import ServeConfig, create_app

    app = create_app(lambda: None, ServeConfig(model_dirs=["m"]))
    paths = {route.path for router in [*ROUTERS, playground.router(["m"])] for route in router.routes}
    assert {"/score", "/get_reward", "/verify", "/pooling", "/classify", "/v1/score/evaluation", "/health"} <= paths
    assert app.state.metrics.paths == paths
