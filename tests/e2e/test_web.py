"""`erel-sync web` in a real browser: Debian's headless Chromium driven by Selenium loads the
page against a running cluster (agent processes, a publisher, the real release), finds the
hosts and versions, sees a commit change the page without a reload, and saves a screenshot
(under the test's directory; with EREL_WEB_SCREENSHOT=PATH also there, for docs/web.png).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import SessionNotCreatedException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from erel_sync.dev.cluster import DevHost
from erel_sync.dev.probes import free_port, port_open
from tests.e2e.harness import E2ECluster, running_cluster
from tests.e2e.test_gitops import release
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

HOSTS = (DevHost("web-1", {"role": "web"}), DevHost("web-2", {"role": "web"}))
GROUP = """apiVersion: erel/v1
kind: Group
metadata: {name: web}
spec:
  hosts: ["web-*"]
  releases:
    - {name: hello, version: "%s"}
  rollout: {max_unavailable: 1}
"""
FILES = {
    "releases/hello.yaml": release("hello", ("0.1.0", "0.2.0")),
    "groups/web.yaml": GROUP % "0.1.0",
}
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def cluster(rabbit: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    with running_cluster(
        rabbit, tmp_path_factory, "web", HOSTS, FILES, reconcile_interval="2s"
    ) as c:
        yield c


@pytest.fixture
def page_url(cluster: E2ECluster, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with (tmp_path / "web.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "erel_sync", "web", "--listen", f"127.0.0.1:{port}",
             "--amqp-url", cluster.url],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for("erel-sync web listening", lambda: port_open(port, "127.0.0.1"), 30)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, (tmp_path / "web.log").read_text()[-2000:]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    missing = [p for p in (CHROMIUM, DRIVER) if not os.path.exists(p)]
    assert not missing, f"`make setup` installs chromium and chromium-driver; missing {missing}"
    driver = None
    # The browser gets an environment of its own (a home in the test's directory), not the
    # test process's; one that dies while starting is retried, and its driver's log shown.
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    log = tmp_path / "chromedriver.log"
    for attempt in range(3):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
            f"--user-data-dir={tmp_path / f'chrome-{attempt}'}",
        ):
            options.add_argument(arg)
        service = Service(DRIVER, service_args=["--verbose"], log_output=str(log), env=env)
        try:
            driver = webdriver.Chrome(service=service, options=options)
            break
        except SessionNotCreatedException as e:
            if attempt == 2:
                tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
                raise AssertionError(f"Chromium did not start: {e.msg}\n{tail}") from None
    assert driver is not None
    try:
        yield driver
    finally:
        driver.quit()


ROWS_JS = """
const table = document.getElementById("hosts");
const headers = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
return [...table.querySelectorAll("tbody tr")].map((tr) =>
  Object.fromEntries([...tr.children].map((td, i) => [headers[i], td.textContent])));
"""


def cells(driver: webdriver.Chrome) -> dict[str, dict[str, str]]:
    """The hosts table: host -> column -> text (each host's first row), read in one script
    run: the page replaces the rows whenever an update comes."""
    out: dict[str, dict[str, str]] = {}
    for row in driver.execute_script(ROWS_JS):
        out.setdefault(row.get("HOST", ""), row)
    return out


def running(driver: webdriver.Chrome, version: str) -> bool:
    rows = cells(driver)
    return all(
        rows.get(h.host_id, {}).get("RUNNING") == version
        and rows[h.host_id].get("HEALTH") == "healthy"
        for h in HOSTS
    )


def test_the_page_shows_the_fleet_and_follows_a_commit_without_reload(
    cluster: E2ECluster, page_url: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    cluster.wait_converged([h.host_id for h in HOSTS], timeout=90)
    browser.get(page_url)
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    wait.until(lambda d: running(d, "0.1.0"))
    assert "live" in browser.find_element(By.ID, "conn").text
    # The page may have come up before the publisher made its streams (the fixtures start
    # them together): it follows them once they exist (tests/integration/test_web_follow.py).
    seq = f"seq {cluster.publisher_seq()}"
    wait.until(lambda d: seq in d.find_element(By.ID, "current").text)
    browser.execute_script("window.__sameDocument = true")  # gone if the page reloads

    sha = cluster.commit("web: hello 0.2.0", {"groups/web.yaml": GROUP % "0.2.0"})
    wait.until(lambda d: sha[:7] in d.find_element(By.ID, "current").text)
    wait.until(lambda d: running(d, "0.2.0"))
    assert browser.execute_script("return window.__sameDocument === true")
    rows = cells(browser)
    assert all(rows[h.host_id]["DESIRED"] == "0.2.0" for h in HOSTS)
    revisions = browser.find_element(By.ID, "revisions").text
    assert "web: hello 0.2.0" in revisions and sha[:7] in revisions

    shot = tmp_path / "web.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if target := os.environ.get("EREL_WEB_SCREENSHOT"):
        shutil.copyfile(shot, target)
