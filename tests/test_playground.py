"""The playground: its routes through TestClient, then the page itself in headless Chromium against a live server on
tiny models. The browser reads the numbers a person sees and they must equal POST /score's answer."""

from __future__ import annotations

import math

import httpx
import pytest
from fastapi.testclient import TestClient

import browser
from conftest import make_model_dir
from live_server import live_server
from rmkit.ensemble import Ensemble
from rmkit.scoring import Scorer
from rmkit.server import ServeConfig, create_app
from rmkit.shaping import ShapingConfig

PROMPT = "Name a colour of the sky."
ANSWERS = ["Blue.", "The sky is usually blue on a clear day, and red or orange at sunset.", "Green, always."]


def app_for(model_dirs, **cfg):
    cfg = ServeConfig(model_dirs=[str(d) for d in model_dirs], **cfg)
    return create_app(lambda: Ensemble([Scorer.load(d, device="cpu") for d in cfg.model_dirs], cfg.shaping), cfg)


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory):
    """A tiny Llama whose card has temperature 2 (so P(A ≻ B) visibly uses T) and stored stats 0.1 / 0.5."""
    return make_model_dir(tmp_path_factory.mktemp("pg"), "tiny-llama", seed=3, temperature=2.0, reward_mean=0.1,
                          reward_std=0.5)


def test_page_loads_without_the_token_but_its_json_routes_need_it(calibrated_dir):
    with TestClient(app_for([calibrated_dir], token="s3cret")) as c:
        for path in ("/", "/playground"):
            page = c.get(path)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "rmkit playground" in page.text
            assert "http://" not in page.text and "https://" not in page.text  # nothing external to fetch
        assert c.get("/playground/info").status_code == 401
        assert c.post("/playground", json={}).status_code == 401  # only GET of the page is public
        auth = {"Authorization": "Bearer s3cret"}
        info = c.get("/playground/info", headers=auth).json()
    assert info["temperature"] == 2.0 and info["members"][0]["temperature"] == 2.0


def test_playground_off_serves_no_page(calibrated_dir):
    with TestClient(app_for([calibrated_dir], playground=False)) as c:
        assert c.get("/").status_code == 404
        assert c.get("/playground/info").status_code == 404


def test_tokens_route_counts_with_the_first_members_tokenizer(calibrated_dir):
    tokenizer = Scorer.load(calibrated_dir, device="cpu").tokenizer
    with TestClient(app_for([calibrated_dir])) as c:
        out = c.post("/playground/tokens", json={"texts": ANSWERS}).json()
        assert c.post("/playground/tokens", json={"texts": []}).status_code == 422
    assert out["tokens"] == [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in ANSWERS]


def test_examples_come_from_the_runs_held_out_test_split(tmp_path, monkeypatch):
    """A model inside a run (config.yaml beside it) offers pairs from that run's test split, named by source."""
    from rmkit.config import load_config
    from rmkit.splits import load_splits

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    rows = [f'{{"prompt": "question {i}?", "chosen": "good {i}", "rejected": "bad {i}"}}' for i in range(200)]
    (tmp_path / "d" / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  paths: [d/pairs.jsonl]\n")
    model = make_model_dir(run, "tiny-llama")
    (run / "model").symlink_to(model)
    cfg = load_config(run / "config.yaml")
    test_prompts = {p.prompt for p in load_splits(cfg.data, cfg.train.seed)["test"]}
    with TestClient(app_for([run / "model"])) as c:
        out = c.get("/playground/examples").json()
    assert "held-out test split" in out["note"]
    assert len(out["pairs"]) == 8 and {p["source"] for p in out["pairs"]} == {"d"}
    assert {p["prompt"] for p in out["pairs"]} <= test_prompts


# ---- the page in a real browser ----------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


def fill_form(driver, answers):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "prompt").send_keys(PROMPT)
    for _ in range(len(answers) - 2):
        driver.find_element(By.ID, "add-answer").click()
    for i, text in enumerate(answers):
        box = driver.find_element(By.ID, f"answer-{i}")
        box.clear()
        box.send_keys(text)


def wait_for_scores(driver):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.find_element("id", "status").text.startswith(("Scored", "/", "The")))
    status = driver.find_element("id", "status").text
    assert status.startswith("Scored"), status


def page_rows(driver):
    """{answer index: {field: shown text}} from the rewards table, and {(a, b): shown P} from the pairs table."""
    rows = {}
    for tr in driver.find_elements("css selector", "#scores-body tr"):
        rows[int(tr.get_attribute("data-answer"))] = {td.get_attribute("data-field"): td.text
                                                       for td in tr.find_elements("css selector", "td[data-field]")}
    probs = {tuple(map(int, tr.get_attribute("data-pair").split("-"))): float(tr.find_element(
        "css selector", "td[data-field=prob]").text) for tr in driver.find_elements("css selector", "#pairs-body tr")}
    return rows, probs


def shown(text: str) -> float:
    return float(text.replace("−", "-"))


@needs_chromium
def test_page_scores_answers_and_shows_the_same_numbers_as_score(calibrated_dir, tmp_path):
    """Token asked for and sent; rewards, raw rewards, ranking, token lengths and every pair's σ(Δ/T) equal /score's."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with live_server(app_for([calibrated_dir], token="s3cret")) as server, browser.chromium() as driver:
        driver.get(server.url + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "token-box").is_displayed())
        driver.find_element(By.ID, "token").send_keys("s3cret")
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model-line").text.startswith("Model"))
        fill_form(driver, ANSWERS)
        driver.find_element(By.ID, "score").click()
        wait_for_scores(driver)
        rows, probs = page_rows(driver)
        browser.full_page_screenshot(driver, str(tmp_path / "playground.png"))
        expected = httpx.post(server.url + "/score", headers={"Authorization": "Bearer s3cret"}, timeout=30,
                              json={"items": [{"prompt": PROMPT, "response": a} for a in ANSWERS]}).json()
    assert (tmp_path / "playground.png").stat().st_size > 10_000
    tokenizer = Scorer.load(calibrated_dir, device="cpu").tokenizer
    order = sorted(range(len(ANSWERS)), key=lambda i: -expected["rewards"][i])
    for i in range(len(ANSWERS)):
        assert shown(rows[i]["reward"]) == pytest.approx(expected["rewards"][i], abs=6e-5)  # shown to 4 decimals
        assert shown(rows[i]["raw"]) == pytest.approx(expected["raw_rewards"][i], abs=6e-5)
        assert int(rows[i]["rank"]) == order.index(i) + 1
        assert int(rows[i]["tokens"]) == len(tokenizer(ANSWERS[i], add_special_tokens=False)["input_ids"])
    raw = expected["raw_rewards"]
    assert set(probs) == {(0, 1), (0, 2), (1, 2)}
    for (a, b), p in probs.items():
        assert p == pytest.approx(1 / (1 + math.exp(-(raw[a] - raw[b]) / 2.0)), abs=6e-5)  # T = 2 from the card


@needs_chromium
def test_ensemble_members_example_loading_and_keyboard_at_phone_width(calibrated_dir, tmp_path):
    """Two members: each member's raw score beside the combined one; "Load an example" fills and scores a pair the
    model gets right / wrong; Ctrl+Enter scores; at 380 px nothing overflows sideways."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    other = make_model_dir(tmp_path, "tiny-llama", seed=4)
    shaping = ShapingConfig(normalize="none", clip=None, ensemble="min")
    with live_server(app_for([calibrated_dir, other], shaping=shaping)) as server, browser.chromium(380, 900) as driver:
        driver.get(server.url + "/playground")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model-line").text.startswith("Ensemble"))
        fill_form(driver, ANSWERS[:2])
        driver.find_element(By.ID, "answer-1").send_keys(Keys.CONTROL, Keys.ENTER)
        wait_for_scores(driver)
        rows, _ = page_rows(driver)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        driver.save_screenshot(str(tmp_path / "narrow.png"))
        expected = httpx.post(server.url + "/score", timeout=30, json={
            "items": [{"prompt": PROMPT, "response": a} for a in ANSWERS[:2]]}).json()
        verdicts = {}
        for which in ("right", "wrong"):
            driver.find_element(By.ID, f"example-{which}").click()
            WebDriverWait(driver, 60).until(lambda d: "Example from" in d.find_element(By.ID, "example-note").text)
            wait_for_scores(driver)
            ex_rows, _ = page_rows(driver)
            verdicts[which] = shown(ex_rows[0]["raw"]) > shown(ex_rows[1]["raw"])  # answer A is the preferred one
            driver.execute_script("document.getElementById('example-note').textContent = ''")
    assert overflow <= 0
    for i in range(2):
        for m in range(2):
            assert shown(rows[i][f"member-{m}"]) == pytest.approx(expected["member_rewards"][i][m], abs=6e-5)
        assert shown(rows[i]["raw"]) == pytest.approx(min(expected["member_rewards"][i]), abs=6e-5)
    assert verdicts == {"right": True, "wrong": False}
