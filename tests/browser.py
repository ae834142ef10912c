"""Debian's chromium, driven by selenium through Debian's chromedriver, for the status page.

No browser or driver is ever downloaded: the driver's path is given (so Selenium Manager has
nothing to find) and SE_OFFLINE forbids it to fetch anything anyway. The browser may reach
loopback only: every other address goes to a proxy that does not exist (port 9 of
127.0.0.1), host names resolve to nothing, and its own background traffic (updates,
metrics, sync) is off.
"""

from __future__ import annotations

import os
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"  # kept after a run; in .gitignore
LOOPBACK_ONLY = (
    "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>;127.0.0.1",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-domain-reliability", "--no-first-run",
    "--disable-client-side-phishing-detection", "--disable-features=OptimizationHints,"
    "MediaRouter,Translate,AutofillServerCommunication",
)


def chromium(width: int = 1400, height: int = 1000) -> webdriver.Chrome:
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     *LOOPBACK_ONLY):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), path
    return path
