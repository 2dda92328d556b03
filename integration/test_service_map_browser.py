"""The live service-map page in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium; no browser download).

The canary runs through a real Envoy from a client pod's address; the page,
fed live over SSE, must show client -> httpbin-v1 and client -> httpbin-v2
edges whose request counts are exactly what the client saw answered, and a
click on an edge must list that edge's recent flows. The screenshot is kept
as a test artifact ($NODEMESH_TEST_ARTIFACTS, else the test's tmp dir).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from integration.flow_rig import FlowRig, flow_rig
from integration.local_mesh import private_loopback
from nodemesh.cmd.demo.backends import BACKEND_HEADER
from nodemesh.flows.servicemap import ServiceMap
from nodemesh.flows.ui import MapServer, feed, ring_flows
from tests.support.factory import k8s_pod
from tests.support.polling import wait_until, wait_until_async

pytestmark = pytest.mark.envoy

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,800",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


async def requests_from(rig: FlowRig, client_ip: str, count: int) -> Counter[str]:
    """GETs from `client_ip` (the client pod's address), one connection each;
    answers counted by the workload that served them."""
    answered: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(force_close=True, local_addr=(client_ip, 0), limit=4)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            async with session.get(rig.url(), headers={"Host": "httpbin"}) as resp:
                assert resp.status == 200
                answered[rig.workloads[resp.headers[BACKEND_HEADER]]] += 1
    return answered


_EDGES_JS = """
return Array.from(document.querySelectorAll('#edges g.edge')).map(e => [
  e.dataset.source, e.dataset.destination, Number(e.dataset.requests)]);
"""


def edges(driver: webdriver.Chrome) -> dict[tuple[str, str], int]:
    """The edges drawn now, read in one script call (the page redraws on
    every SSE push, so elements found one by one could go stale)."""
    return {(s, d): n for s, d, n in driver.execute_script(_EDGES_JS)}


async def test_page_shows_the_canary_split_live_and_an_edges_flows(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    client_ip = private_loopback()
    pod = k8s_pod("client", ip=client_ip, labels={"app": "client"}, node="n1")
    async with flow_rig(tmp_path, manifests=[pod]) as rig:
        service_map = ServiceMap()
        page = MapServer(service_map)
        await page.start()
        feeding = asyncio.create_task(feed(service_map, ring_flows(rig.collector.ring)))
        try:
            await asyncio.to_thread(browser.get, page.url)
            answered = await requests_from(rig, client_ip, 200)
            want = {("default/client", workload): n for workload, n in answered.items()}
            await asyncio.to_thread(
                wait_until, lambda: edges(browser) == want, what=f"the page showing {want}"
            )
            link = browser.find_element(
                By.CSS_SELECTOR, '#edges g.edge[data-destination="default/httpbin-v2"] text'
            )
            await asyncio.to_thread(link.click)
            rows = "#flows tbody tr"
            await asyncio.to_thread(
                wait_until,
                lambda: len(browser.find_elements(By.CSS_SELECTOR, rows)) > 0,
                what="the v2 edge's recent flows",
            )
            cells = browser.find_elements(By.CSS_SELECTOR, rows)[0].text
            assert "default/client" in cells and "default/httpbin-v2" in cells
            assert "FORWARDED" in cells
            artifacts = Path(os.environ.get("NODEMESH_TEST_ARTIFACTS", tmp_path))
            artifacts.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(artifacts / "service-map.png"))
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            await page.stop()
        await wait_until_async(lambda: rig.collector.ring.followers == 0, what="feed gone")
