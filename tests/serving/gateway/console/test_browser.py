"""The console in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver (never a downloaded one). A real gateway (`build_from_settings`: SQLite database,
routes file, admin listener on its own port) runs on loopback in front of the fake OpenAI
upstream. The test logs in, creates a tenant and a key, spends the key through the OpenAI
surface, sees the usage chart, and saves the screenshots docs/console.md shows.

Without chromium this test is skipped, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from helpers.gateway_harness import LoopThread, serve_app, start_fake_upstream, stop_gateway
from helpers.paths import REPO
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.settings import GatewaySettings
from respublica.serving.gateway.wiring import build_from_settings

ADMIN = "browser-admin-key-0123456789"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The screenshots docs/console.md shows are refreshed only on request, so a test run leaves the work
# tree clean: RESPUBLICA_SCREENSHOTS=docs/console .venv/bin/pytest tests/serving/gateway/console.
# Otherwise they go to a temporary folder (still taken, so a page that cannot be drawn fails).
SCREENSHOTS_ENV = "RESPUBLICA_SCREENSHOTS"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing: CI must run the browser test (scripts/install installs it)")
    pytest.skip(f"{what} is not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(public URL, console URL) of a real gateway with its admin listener."""
    loop = LoopThread()
    tmp = tmp_path_factory.mktemp("console-browser")
    _upstream, runner, upstream_url = loop.run(start_fake_upstream())
    routes = tmp / "routes.yaml"
    routes.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": "llama-3-8b", "endpoints": [upstream_url], "max_model_len": 8192},
                    {"name": "mistral-7b", "endpoints": [upstream_url], "tenants": ["physics"]},
                ]
            }
        )
    )
    settings = GatewaySettings.model_validate(
        {
            "routes_file": routes,
            "database_url": f"sqlite:///{tmp}/gateway.db",
            "admin_key": ADMIN,
            "admin_port": 0,
        }
    )
    app = build_from_settings(settings)
    running = loop.run(serve_app(app, InMemorySpanExporter(), RouteHolder()))
    try:
        yield running.url, f"http://127.0.0.1:{app.state.admin_port}/console"
    finally:
        loop.run(stop_gateway(running))
        loop.run(runner.cleanup())
        loop.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        _missing("chromium")
    if not Path(CHROMEDRIVER).exists():
        _missing("chromedriver (chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium")
    # Selenium Manager would look for (and download) a driver or a browser: never here.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _shoot(driver: Any, name: str) -> None:
    """A full-page PNG: the window grown to the page's height first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(900, int(height) + 20), 4000))
    wanted = os.environ.get(SCREENSHOTS_ENV)
    folder = REPO / wanted if wanted else Path(tempfile.gettempdir()) / "respublica-console"
    folder.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(1280, 900)


def test_console_in_a_real_browser(gateway: tuple[str, str], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    public, console = gateway
    driver = browser

    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    def find(css: str) -> Any:
        """The element, waited for: a click on a submit button returns before the next page is in."""
        return WebDriverWait(driver, 10).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
        )

    def arrive(path: str) -> None:
        WebDriverWait(driver, 10).until(expected_conditions.url_to_be(f"{console}{path}"))

    # A page behind the login sends the browser to it; a wrong key is refused.
    driver.get(f"{console}/tenants")
    assert driver.current_url.endswith("/console/login")
    find("#admin_key").send_keys("not-the-admin-key-0000")
    find("#login").click()
    assert "That is not the admin key" in find("#login-error").text
    _shoot(driver, "login")
    find("#admin_key").send_keys(ADMIN)
    find("#login").click()
    arrive("/models")
    # The stylesheet came from the gateway and applied under the CSP.
    assert find("header").value_of_css_property("background-color") == "rgba(23, 32, 46, 1)"

    # A tenant, then a key: its secret is shown once.
    driver.get(f"{console}/tenants")
    form = find("#create-tenant")
    form.find_element(By.NAME, "name").send_keys("physics")
    form.find_element(By.NAME, "tokensPerDay").send_keys("20000")
    form.find_element(By.NAME, "tokensPerMonth").send_keys("400000")
    form.find_element(By.CSS_SELECTOR, "button").click()
    assert find("#notice").text == "Tenant physics created."
    section = find("#tenant-physics")
    section.find_element(By.NAME, "key_name").send_keys("notebook")
    section.find_element(By.NAME, "expires_in_days").send_keys("90")
    section.find_element(By.CSS_SELECTOR, "form.inline button").click()
    key = find("#secret").get_attribute("value")
    assert key.startswith("rp_")

    # The key works on the OpenAI surface; the ledger records what it spent.
    with httpx.Client(base_url=public, headers={"authorization": f"Bearer {key}"}, timeout=10) as client:
        for model, n in (("llama-3-8b", 3), ("mistral-7b", 2)):
            for _ in range(n):
                answer = client.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
                )
                assert answer.status_code == 200, answer.text
    _shoot(driver, "tenants")  # the one-time display of the new key

    # The usage chart, once the ledger has written the requests (it batches every second).
    deadline = time.monotonic() + 15
    while True:
        driver.get(f"{console}/usage")
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart-tenant svg.chart rect.s0")
        if bars or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert bars, "no bar in the usage chart"
    assert "physics" in find("#chart-tenant").text
    assert {"llama-3-8b", "mistral-7b"} <= set(find("#chart-model").text.split())
    _shoot(driver, "usage")

    driver.get(f"{console}/tenants")
    assert key not in driver.page_source  # shown once only
    # Requests now, from the gateway's gauges: all five ended.
    assert find("#tenant-physics .load").text == "Now 0 in flight, 0 queued"
    _shoot(driver, "tenants-after")
    driver.get(f"{console}/models")
    llama = find("#models tbody tr").text
    assert "llama-3-8b" in llama and "ready" in llama
    # Context length from the routes file; replicas are not known in local mode: a dash.
    assert find("#models tbody tr td.context").text == "8,192"
    assert find("#models tbody tr td.replicas").text == "—"
    _shoot(driver, "models")
    driver.get(f"{console}/audit")
    assert "key.create" in find("#audit").text and "tenant.create" in find("#audit").text
    _shoot(driver, "audit")

    # No Content-Security-Policy violation (nor any other error) in the browser's console.
    # (The wrong admin key's 401 is the one expected network error.)
    logged = driver.get_log("browser")
    errors = [e for e in logged if e["level"] == "SEVERE" and "status of 401" not in e["message"]]
    assert errors == []
    assert not [e for e in logged if "Content Security Policy" in e["message"]]
    find("#logout").click()
    arrive("/login")
    driver.get(f"{console}/models")
    assert driver.current_url.endswith("/console/login")
