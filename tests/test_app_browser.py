"""End to end in headless Chromium: select FFA on the flatmap, generate, watch previews, stop, history.

Needs Debian's Chromium at /usr/bin/chromium (installed by .ci/run); skipped with a reason otherwise.
Screenshots land in test-artifacts/.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import braindive as bd

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROME_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import REPO

    port = _free_port()
    data = tmp_path_factory.mktemp("appdata")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "BRAINDIVE_IMAGE_SIZE": "128"}
    log = open(data / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--data-dir", str(data)], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((data / "server.log").read_text())
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("app did not start:\n" + (data / "server.log").read_text())
    yield url
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def page(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(server, wait_until="load", timeout=120_000)
        page.wait_for_selector("#flatmap img", timeout=60_000)
        yield page
        browser.close()


def _click_roi(page, name: str) -> None:
    """Click the flatmap at ROI ``name``'s label position, scaled to the displayed image."""
    subject = bd.load_subject("S1")
    x, y = bd.roi_centroids(subject, view="voxels")[name]
    # the flatmap is re-rendered after every selection: wait for the new picture to be decoded
    page.wait_for_function("(() => { const i = document.querySelector('#flatmap img');"
                           " return i && i.complete && i.naturalWidth > 0; })()", timeout=20_000)
    img = page.locator("#flatmap img")
    natural_w = img.evaluate("el => el.naturalWidth")
    box = img.bounding_box()
    scale = box["width"] / natural_w
    page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)


def _start_generation(page, steps: int) -> None:
    page.locator("#steps input[type=number]").fill(str(steps))
    page.locator("#steps input[type=number]").press("Enter")
    page.locator("#generate").click()


def test_click_flatmap_selects_roi(page):
    _click_roi(page, "PPA.lh")
    page.wait_for_function("document.querySelector('#selection').innerText.includes('PPA')", timeout=20_000)
    _click_roi(page, "FFA.rh")
    page.wait_for_function("document.querySelector('#selection').innerText.includes('FFA')", timeout=20_000)
    page.screenshot(path=ARTIFACTS / "explore-ffa-selected.png", full_page=True)


def test_generate_streams_previews_then_shows_results(page):
    _start_generation(page, 12)
    previews = set()
    deadline = time.time() + 240
    while time.time() < deadline and not page.locator("#gallery img").count():
        src = page.evaluate("(document.querySelector('#preview img') || {}).src || ''")
        if src:
            previews.add(src)
        time.sleep(0.05)
    assert page.locator("#gallery img").count() >= 1, "no result image"
    assert len(previews) >= 3, f"only {len(previews)} distinct previews streamed"
    page.wait_for_function("document.querySelector('#step-counter').innerText.includes('Done')", timeout=60_000)
    page.locator("#gallery img").first.click()
    page.wait_for_selector("#activation-map img", timeout=60_000)
    page.wait_for_selector("#roi-chart .plot-container, #roi-chart .js-plotly-plot", timeout=60_000)
    page.screenshot(path=ARTIFACTS / "explore-results.png", full_page=True)


def test_stop_cancels_a_running_generation(page):
    _start_generation(page, 60)
    page.wait_for_function("/step [3-9]\\//.test(document.querySelector('#step-counter').innerText)", timeout=120_000)
    page.locator("#stop").click()
    try:
        page.wait_for_function("document.querySelector('#step-counter').innerText.includes('Stopped')", timeout=60_000)
    finally:
        page.screenshot(path=ARTIFACTS / "explore-stopped.png", full_page=True)


def test_history_lists_the_generated_image(page):
    page.get_by_role("tab", name="History").click()
    page.wait_for_selector("#history-gallery img", timeout=60_000)
    assert "FFA" in page.locator("#history-table").inner_text()
    page.screenshot(path=ARTIFACTS / "history.png", full_page=True)


def test_train_tab_fits_an_encoder_that_becomes_selectable(page):
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-name input, #train-name textarea").first.fill("browser-enc")
    page.locator("#train-start").click()
    page.wait_for_function("document.querySelector('#train-status').innerText.includes('now selectable')",
                           timeout=300_000)
    page.wait_for_selector("#train-r2 img", timeout=30_000)
    assert "FFA" in page.locator("#train-table").inner_text()
    page.screenshot(path=ARTIFACTS / "train.png", full_page=True)
    page.get_by_role("tab", name="Explore").click()
    page.locator("#encoder input").click()
    try:
        page.get_by_role("option", name="browser-enc").wait_for(timeout=10_000)
    finally:
        page.screenshot(path=ARTIFACTS / "explore-encoders.png", full_page=True)
