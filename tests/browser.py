"""A real headless Chromium for the pages people look at (Debian's ``chromium`` + ``chromium-driver``).

Driven with selenium through the distribution's chromedriver (nothing is downloaded: both
paths are given, so Selenium Manager is not asked). Each browser (fixture ``browser``) gets a
fresh profile under the test's temporary folder; screenshots go to ``<tmp>/screenshots``.
``scripts/install_chromium.sh`` installs both packages (CI runs it); without them these tests
are skipped locally and fail under CI.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conditions import wait_for

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1600,1000")
PAGE_TIMEOUT_S = 90.0

# Every element that carries a value of /status.json, by its JSON path
_DATA_KEYS_JS = ("return Object.fromEntries(Array.from(document.querySelectorAll('[data-key]'))"
                 ".map(e => [e.dataset.key, e.textContent]));")


def chromium_paths() -> tuple[str, str] | None:
    browser = os.environ.get("MDSVQA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("MDSVQA_CHROMEDRIVER") or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class Browser:
    def __init__(self, driver: Any, folder: Path) -> None:
        self.driver = driver
        self.folder = folder

    def basic_auth(self, user: str, password: str) -> None:
        """Send basic auth with every request (DevTools: extra headers; no credentials in URLs)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})

    def open(self, url: str) -> None:
        self.driver.get(url)

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def until(self, condition: Callable[[], Any], what: str, timeout: float = PAGE_TIMEOUT_S) -> Any:
        """Poll the page until ``condition`` holds (exceptions while the page builds count as not yet)."""
        from selenium.common.exceptions import WebDriverException

        def attempt() -> Any:
            try:
                return condition()
            except WebDriverException:
                return None

        return wait_for(attempt, timeout=timeout, interval=0.2, what=what)

    def data_keys(self) -> dict[str, str]:
        return dict(self.script(_DATA_KEYS_JS) or {})

    def text(self) -> str:
        return str(self.script("return document.body ? document.body.innerText : ''") or "")

    def screenshot(self, name: str) -> Path:
        path = self.folder / name
        assert self.driver.save_screenshot(str(path)), f"no screenshot written to {path}"
        return path


def lookup(data: Any, path: str) -> Any:
    """The value at a ``data-key`` path ("projects.0.scored") of /status.json."""
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def status_page_matches(browser: Browser, url: str, fetch: Callable[[], dict], *,
                        volatile: frozenset[str] = frozenset({"generated_at"})) -> tuple[dict, dict] | None:
    """Load ``url`` (the status page) and compare every ``data-key`` value with /status.json (``fetch``).

    (page values, JSON) when the page shows exactly the JSON's numbers and the JSON did not
    move while the page loaded; None otherwise (the caller waits and tries again).
    """
    from ml_backend.server.status import shown

    before = fetch()
    browser.open(url)
    page = browser.until(lambda: browser.data_keys() or None, what="status page values")
    after = fetch()
    if {k: v for k, v in before.items() if k not in volatile} != {k: v for k, v in after.items() if k not in volatile}:
        return None
    for key, text in page.items():
        if key not in volatile and text != shown(lookup(after, key)):
            return None
    return page, after


def login_label_studio(browser: Browser, url: str, user: str, password: str) -> None:
    """Log in through Label Studio's own form, as a person would."""
    from selenium.webdriver.common.by import By

    browser.open(url + "/user/login/")
    browser.until(lambda: browser.driver.find_element(By.NAME, "email"), what="the login form")
    browser.driver.find_element(By.NAME, "email").send_keys(user)
    browser.driver.find_element(By.NAME, "password").send_keys(password)
    browser.driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    browser.until(lambda: "/user/login" not in browser.driver.current_url, what="logged in to Label Studio")


def check_screenshot(path: Path, *, min_size: tuple[int, int] = (800, 600)) -> dict[str, float]:
    """A real picture: a PNG of at least ``min_size``, not one flat colour, with content on it."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", image.format
        assert image.width >= min_size[0] and image.height >= min_size[1], image.size
        rgb = image.convert("RGB")
        small = rgb.resize((rgb.width // 4, rgb.height // 4))
        colours = small.getcolors(maxcolors=1 << 20) or []
        background = max(colours)[1] if colours else (255, 255, 255)
        pixels = small.width * small.height
        differing = sum(count for count, colour in colours if colour != background)
    stats = {"colours": float(len(colours)), "content_fraction": differing / pixels}
    assert stats["colours"] >= 16, f"{path}: {stats['colours']:.0f} colours: a blank page?"
    assert stats["content_fraction"] > 0.01, f"{path}: {stats['content_fraction']:.3%} not background: blank?"
    return stats


def open_browser(tmp_path: Path) -> Iterator[Browser]:
    """The ``browser`` fixture's body (tests/conftest.py): a fresh headless Chromium, quit afterwards."""
    paths = chromium_paths()
    if paths is None:
        message = "Debian's chromium and chromium-driver are not installed (scripts/install_chromium.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = paths
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    driver = webdriver.Chrome(service=Service(driver_path, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield Browser(driver, shots)
    finally:
        driver.quit()
