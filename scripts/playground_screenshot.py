"""Screenshot of the playground on a trained model, for the README (needs the system Chromium; see tests/browser.py).

    .venv/bin/python scripts/playground_screenshot.py runs/default/model docs/playground.png

Serves MODEL_DIR on 127.0.0.1 (ephemeral port), types the prompt and answers below, clicks Score, and saves a PNG of
the whole page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the browser and live-server helpers

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import browser  # noqa: E402
from live_server import live_server  # noqa: E402
from rmkit.ensemble import Ensemble  # noqa: E402
from rmkit.server import ServeConfig, create_app  # noqa: E402

PROMPT = "How do I boil an egg?"
ANSWERS = [
    "Put the egg in boiling water for 9 minutes, then cool it in cold water so it peels easily.",
    "Eggs are a food.",
    "I can't help with that.",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--width", type=int, default=900)
    args = p.parse_args()
    if browser.missing():
        raise SystemExit(browser.missing())
    cfg = ServeConfig(model_dirs=[args.model_dir], device="cpu")
    app = create_app(lambda: Ensemble.load(cfg.model_dirs, cfg.shaping, device="cpu"), cfg)
    with live_server(app) as server, browser.chromium(args.width, 900) as driver:
        driver.get(server.url + "/")
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "model-line").text.startswith("Model"))
        driver.find_element(By.ID, "prompt").send_keys(PROMPT)
        driver.find_element(By.ID, "add-answer").click()
        for i, text in enumerate(ANSWERS):
            driver.find_element(By.ID, f"answer-{i}").send_keys(text)
        driver.find_element(By.ID, "score").click()
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "status").text.startswith("Scored"))
        driver.execute_script("document.activeElement.blur()")
        browser.full_page_screenshot(driver, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
