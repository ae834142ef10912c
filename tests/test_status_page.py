"""The status page of `ksbuild serve` in a real browser (tests/browser.py: Debian's chromium,
loopback only): it loads, shows the right counts and rows, updates live when a host reports
(no reload), filters and sorts, and renders a fleet of 1,200 hosts. Screenshots go to
artifacts/ (kept, not in git)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from builder.pxe import events
from tests.browser import chromium, screenshot
from tests.pxe_support import EventServer, build, fleet_tree, host_dicts, write_site

NAMES = [f"kvm{n:02d}.example.com" for n in range(1, 7)]
HOSTS = tuple((name, f"52:54:00:12:34:{n:02x}", f"10.0.2.{20 + n}")
              for n, name in enumerate(NAMES))


@pytest.fixture()
def browser() -> Iterator[Chrome]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Chrome, condition: Callable[[], object], timeout: float = 30) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda _driver: condition())


def count(driver: Chrome, state: str) -> str:
    chip = driver.find_element(By.ID, f"count-{state}")
    return str(chip.find_element(By.TAG_NAME, "b").text)


def row_states(driver: Chrome) -> dict[str, str]:
    script = ("return Array.from(document.querySelectorAll('#hosts tr'))"
              ".map(r => [r.dataset.host, r.cells[2].textContent]);")
    return dict(driver.execute_script(script))


def test_the_page_shows_the_fleet_and_updates_live(tmp_path: Path, browser: Chrome) -> None:
    tree = tmp_path / "pxe"
    build(write_site(tmp_path, {"server": "http://10.0.2.100"}, hosts=host_dicts(HOSTS)), tree)
    fleet = events.Fleet(tree)
    for name, state in zip(NAMES, ("kickstart", "started", "installed", "booted", "failed")):
        fleet.record(name, state, f"{name.split('.')[0]} says {state}")
    server = EventServer(tree)
    try:
        driver = browser
        driver.get(f"http://127.0.0.1:{server.port}/status")
        wait_for(driver, lambda: len(row_states(driver)) == 6)
        assert row_states(driver) == dict(zip(NAMES, ("kickstart", "started", "installed",
                                                      "booted", "failed", "pending")))
        assert {s: count(driver, s) for s in ("pending", "booted", "failed", "installed")} == \
            {"pending": "1", "booted": "1", "failed": "1", "installed": "1"}
        assert driver.find_element(By.ID, "total").text == "6"
        # A host reports: the page shows it without a reload (the mark set now survives).
        driver.execute_script("window.ksbuildMark = 'same page';")
        assert server.event(NAMES[0], "booted", message="network up as configured")[0] == 200
        wait_for(driver, lambda: row_states(driver)[NAMES[0]] == "booted", timeout=15)
        assert count(driver, "booted") == "2" and count(driver, "kickstart") == "0"
        assert driver.execute_script("return window.ksbuildMark;") == "same page"
        screenshot(driver, "status-page.png")
        # Filter by text, then by a state's chip; sort by state, descending.
        driver.find_element(By.ID, "filter").send_keys("kvm05")
        wait_for(driver, lambda: list(row_states(driver)) == [NAMES[4]])
        driver.find_element(By.ID, "filter").clear()
        driver.execute_script("document.getElementById('filter').dispatchEvent("
                              "new Event('input'))")
        driver.find_element(By.ID, "count-booted").click()
        wait_for(driver, lambda: sorted(row_states(driver)) == [NAMES[0], NAMES[3]])
        driver.find_element(By.ID, "count-booted").click()
        header = driver.find_element(By.CSS_SELECTOR, "th[data-key=state]")
        header.click()
        header.click()
        wait_for(driver, lambda: list(row_states(driver).values())[0] == "degraded"
                 or list(row_states(driver).values())[0] == "failed")
        assert list(row_states(driver).values())[-1] == "pending"
    finally:
        server.stop()


def test_the_page_renders_a_fleet_of_1200_hosts(tmp_path: Path, browser: Chrome) -> None:
    tree, names = fleet_tree(tmp_path / "pxe", 1200)
    fleet = events.Fleet(tree)
    for n, name in enumerate(names[:600]):
        fleet.record(name, ("kickstart", "started", "packages", "installed", "booted")[n % 5])
    server = EventServer(tree)
    try:
        driver = browser
        began = time.monotonic()
        driver.get(f"http://127.0.0.1:{server.port}/status")
        wait_for(driver, lambda: len(row_states(driver)) == 1200, timeout=60)
        took = time.monotonic() - began
        assert count(driver, "pending") == "600" and count(driver, "booted") == "120"
        server.event(names[-1], "started")
        wait_for(driver, lambda: row_states(driver)[names[-1]] == "started", timeout=15)
        screenshot(driver, "status-page-1200-hosts.png")
        print(f"1200 hosts: first full render {took:.2f} s")
        assert took < 20
    finally:
        server.stop()
