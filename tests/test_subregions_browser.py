"""In the browser: split OPA into 2, see two colours and the legend, generate for each part, see the table,
then the parts' images in History; start from an uploaded image and see reference, control and guided."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from test_app_browser import ARTIFACTS, page, server  # noqa: F401  (the app and page fixtures)
from ui.subregions import PART_COLOURS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _count(pixels: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(-1) <= 3).sum())


def test_split_opa_in_two_colours_then_generate_and_see_the_table(page):  # noqa: F811
    page.locator("#roi-list input").click()
    page.get_by_role("option", name="OPA", exact=True).click()
    page.wait_for_function("document.querySelector('#selection').innerText.includes('OPA')", timeout=30_000)
    page.get_by_text("Split region…").click()
    page.locator("#split-button").click()
    page.wait_for_function("document.querySelectorAll('#parts-legend .part-swatch').length === 2", timeout=120_000)
    legend = page.locator("#parts-legend").inner_text()
    assert "OPA·1/2" in legend and "OPA·2/2" in legend
    page.wait_for_function("(() => { const i = document.querySelector('#parts-map img');"
                           " return i && i.complete && i.naturalWidth > 0; })()", timeout=30_000)
    # the map the page shows, as the server sent it (a screenshot can catch the element before it is painted)
    src = page.locator("#parts-map img").get_attribute("src")
    png = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else page.request.get(src).body()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)
    assert _count(pixels, PART_COLOURS[0]) > 20 and _count(pixels, PART_COLOURS[1]) > 20
    page.locator("#split-seeds input[type=number]").fill("1")
    page.locator("#split-seeds input[type=number]").press("Enter")
    page.locator("#split-generate").click()
    page.wait_for_function("document.querySelector('#cross-table') && "
                           "document.querySelector('#cross-table').innerText.includes('own largest') && "
                           "document.querySelector('#cross-table').innerText.includes('OPA·2/2')", timeout=600_000)
    assert page.locator("#parts-gallery img").count() >= 2
    page.screenshot(path=ARTIFACTS / "explore-split-opa.png", full_page=True)
    # each part's image is in History, labelled as the part's target
    page.get_by_role("tab", name="History").click()
    page.locator("#history-refresh").click()
    page.wait_for_function("document.querySelector('#history-table') && "
                           "document.querySelector('#history-table').innerText.includes('max OPA·1/2') && "
                           "document.querySelector('#history-table').innerText.includes('max OPA·2/2')", timeout=120_000)
    page.screenshot(path=ARTIFACTS / "history-split-opa.png", full_page=True)



def test_start_from_an_uploaded_image(page, tmp_path):  # noqa: F811
    """The click that reached no handler before (Gradio gave a *args handler no request): upload, generate, read."""
    reference = tmp_path / "reference.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(reference)
    page.get_by_role("tab", name="Explore").click()
    page.get_by_text("Start from an image").click()
    page.locator("#reference-image input[type=file]").set_input_files(str(reference))
    page.wait_for_selector("#reference-image img", timeout=60_000)
    page.locator("#vary-button").click()
    page.wait_for_function("document.querySelector('#var-summary').innerText.includes('SSIM')", timeout=600_000)
    assert "Strength 0.5" in page.locator("#var-summary").inner_text()
    for box in ("#var-reference", "#var-control", "#var-guided"):
        assert page.locator(f"{box} img").count() == 1
    page.screenshot(path=ARTIFACTS / "explore-start-from-image.png", full_page=True)
