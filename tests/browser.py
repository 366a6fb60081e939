"""Headless Chromium for the playground tests, through Selenium and the system's own browser and chromedriver (Debian
`chromium` + `chromium-driver`): nothing is downloaded at run time. `missing()` says why a browser test must skip."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver"
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


def missing() -> str | None:
    """None when a browser test can run, else the reason it cannot and the command that fixes it."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"no {path}: install Chromium and its driver with `{INSTALL}` (Debian/Ubuntu)"
    return None


@contextmanager
def chromium(width: int = 1100, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium WebDriver with a window of width × height CSS pixels; quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*ARGS, f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver: Any, path: str) -> None:
    """Grow the window to the page's height, then save a PNG of all of it."""
    width = driver.execute_script("return window.outerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight + (window.outerHeight - window.innerHeight)")
    driver.set_window_size(width, height)
    driver.save_screenshot(path)
