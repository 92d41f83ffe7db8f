"""End to end in headless Chromium: select FFA on the flatmap, paint, generate, watch previews, read the
activation view, stop, history, train an encoder and find it after a reload.

Needs Debian's Chromium at /usr/bin/chromium (installed by .ci/run); skipped with a reason otherwise.
Screenshots land in test-artifacts/.
"""
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import braindive as bd
from browser import CHROME_ARGS, CHROMIUM, playwright_or_skip
from ui.activation import COLOUR_A

pytestmark = pytest.mark.browser
REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
sync_api = playwright_or_skip()


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
    yield url, data
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def page(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(server[0], wait_until="load", timeout=120_000)
        page.wait_for_selector("#flatmap img", timeout=60_000)
        yield page
        browser.close()


def _click_roi(page, name: str, image: str = "#flatmap", subject: str = "S1") -> None:
    """Click a flatmap image at ROI ``name``'s label position, scaled to the displayed image."""
    subject = bd.load_subject(subject)
    x, y = bd.roi_centroids(subject, view="voxels")[name]
    # the flatmap is re-rendered after every selection: wait for the new picture to be decoded
    page.wait_for_function(f"(() => {{ const i = document.querySelector('{image} img');"
                           " return i && i.complete && i.naturalWidth > 0; })()", timeout=20_000)
    img = page.locator(f"{image} img")
    natural_w = img.evaluate("el => el.naturalWidth")
    box = img.bounding_box()
    scale = box["width"] / natural_w
    page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)


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


def test_paint_then_bin_keeps_the_map(page):
    """The editor's bin clears the paint, not the cortex under it; the paint becomes a voxel set."""
    page.get_by_text("Paint a voxel set").click()
    canvas = page.locator("#painter canvas").first
    canvas.wait_for(timeout=30_000)

    def shares(path=None) -> tuple[float, float]:  # parts of the editor showing curvature greys, and paint
        # a page screenshot clipped to the editor; each takes up to ~15 s (software GL): take few
        page.locator("#painter").scroll_into_view_if_needed()
        a = _pixels(page.screenshot(clip=page.locator("#painter").bounding_box(), path=path))
        grey = (a[..., 0] < 200) & (a[..., 0] > 60) & (np.abs(a[..., 0] - a[..., 2]) < 8)
        paint = np.abs(a - np.array([255, 212, 0])).max(-1) < 40  # the brush colour #ffd400
        return float(grey.mean()), float(paint.mean())

    def wait_for_map(share: float, timeout: float, path=None) -> tuple[float, float]:  # drawn late
        deadline, seen = time.time() + timeout, shares(path)
        while seen[0] < share and time.time() < deadline:
            time.sleep(1)
            seen = shares(path)
        return seen

    before, _ = wait_for_map(0.2, 60)
    assert before > 0.2, "the paint canvas does not show the flatmap"
    box = canvas.bounding_box()
    x, y = box["x"] + 0.78 * box["width"], box["y"] + 0.66 * box["height"]
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 25, y + 15, steps=6)
    page.mouse.up()
    assert shares(ARTIFACTS / "explore-paint.png")[1] > 0.001, "the brush stroke is not on the canvas"
    page.get_by_role("button", name="Clear canvas").click()
    time.sleep(2)
    after, paint = wait_for_map(0.9 * before, 30, ARTIFACTS / "explore-paint-cleared.png")
    assert after > 0.9 * before, f"the map is gone after the bin ({before:.2f} -> {after:.2f})"
    assert paint < 0.0002, "the bin left the paint"
    page.get_by_text("Paint a voxel set").click()  # close it again


def test_generate_streams_previews_then_shows_results(page):
    _click_roi(page, "FFA.rh")
    page.wait_for_function("document.querySelector('#selection').innerText.includes('FFA')", timeout=20_000)
    _start_generation(page, 12)
    previews, stages = set(), set()
    deadline = time.time() + 240
    while time.time() < deadline and not page.locator("#activation-map img").count():
        src = page.evaluate("(document.querySelector('#preview img') || {}).src || ''")
        if src:
            previews.add(src)
        counter = page.evaluate("document.querySelector('#step-counter').innerText")
        if counter.count("·") == 2:  # "Image 1/1 · <stage> · step 3/12"
            stages.add(counter.split("·")[1].strip())
        time.sleep(0.05)
    # the first result is shown as soon as it exists, without clicking its thumbnail
    assert page.locator("#activation-map img").count() == 1, "no activation view"
    assert page.locator("#gallery img").count() >= 1, "no result image"
    assert len(previews) >= 3, f"only {len(previews)} distinct previews streamed"
    assert {"brain-guided", "unguided comparison"} <= stages, stages
    page.wait_for_function("document.querySelector('#step-counter').innerText.includes('Done')", timeout=60_000)
    page.wait_for_selector("#roi-chart .plot-container, #roi-chart .js-plotly-plot", timeout=60_000)
    page.wait_for_selector("#result-unguided img", timeout=30_000)
    page.screenshot(path=ARTIFACTS / "explore-results.png", full_page=True)


def test_activation_view_outlines_the_target_on_the_difference_map(page):
    assert page.locator("#map-kind input:checked").get_attribute("value") == "guided − unguided"
    page.wait_for_function("(() => { const i = document.querySelector('#activation-map img');"
                           " return i && i.complete && i.naturalWidth > 0; })()", timeout=20_000)
    shot = _pixels(page.locator("#activation-map img").screenshot())
    outline = (np.abs(shot - np.array(COLOUR_A)).max(-1) < 40).sum()
    assert outline > 50, f"no target outline in the activation map ({outline} px)"
    _click_roi(page, "FFA.rh", "#activation-map")
    page.wait_for_function("document.querySelector('#map-values').innerText.includes('FFA.rh mean')", timeout=20_000)
    assert "guided − unguided" in page.locator("#map-values").inner_text()
    names = page.locator("#downloads").inner_text().replace("\n", "")  # the extension is a separate element
    assert "guided_minus_unguided.npy" in names and ".lh.func.gii" in names
    page.locator("#activation-map").screenshot(path=ARTIFACTS / "explore-activation.png")


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
    # a few minutes on 2 idle cores; allow for a loaded machine
    page.wait_for_function("document.querySelector('#train-status').innerText.includes('now selectable')",
                           timeout=600_000)
    page.wait_for_selector("#train-r2 img", timeout=30_000)
    assert "FFA" in page.locator("#train-table").inner_text()
    page.screenshot(path=ARTIFACTS / "train.png", full_page=True)
    page.get_by_role("tab", name="Explore").click()
    page.locator("#encoder input").click()
    try:
        page.get_by_role("option", name="browser-enc").wait_for(timeout=10_000)
    finally:
        page.screenshot(path=ARTIFACTS / "explore-encoders.png", full_page=True)
    page.keyboard.press("Escape")


def test_a_reloaded_page_lists_encoders_trained_since_start(page, server):
    """An encoder that appeared after the app started (trained in another tab, or copied in) is listed after a reload."""
    import shutil

    shutil.copytree(REPO_ROOT / "braindive" / "assets" / "demo-encoder", server[1] / "encoders" / "copied-enc")
    page.reload(wait_until="load")
    page.wait_for_selector("#flatmap img", timeout=60_000)
    page.locator("#encoder input").click()
    for name in ("browser-enc", "copied-enc"):
        page.get_by_role("option", name=name).wait_for(timeout=20_000)
    page.keyboard.press("Escape")


def test_volume_subject_click_ffa_and_generate(page, server):
    """Issue 10: the volume subject S1-fullhead (grid voxels drawn through pycortex's fullhead transform) with an
    encoder of its own voxel space (built in: issue 22): listed by its label, FFA clicked on its flatmap, a guided
    image generated."""
    volume = bd.load_subject("S1-fullhead")
    page.reload(wait_until="load")
    page.wait_for_selector("#flatmap img", timeout=60_000)
    page.locator("#subject input").click()
    page.get_by_role("option", name=volume.label).click()
    page.wait_for_function("document.querySelector('#encoder input').value === 'demo-fullhead'", timeout=60_000)
    _click_roi(page, "FFA.rh", subject="S1-fullhead")
    page.wait_for_function("document.querySelector('#selection').innerText.includes('FFA')", timeout=30_000)
    selection = page.evaluate("document.querySelector('#selection').innerText")
    assert str(len(volume.roi("FFA.rh"))) in selection or str(len(volume.roi("FFA"))) in selection, selection
    _start_generation(page, 4)
    page.wait_for_function("document.querySelector('#step-counter').innerText.includes('Done')", timeout=240_000)
    page.wait_for_selector("#activation-map img", timeout=60_000)
    page.wait_for_selector("#roi-chart .plot-container, #roi-chart .js-plotly-plot", timeout=60_000)
    page.screenshot(path=ARTIFACTS / "explore-volume-subject.png", full_page=True)
